"""Adaptive pairs: how many EIM pairs the stopping rule saves, and whether the answer holds.

  nice -n 15 python -m studies.adaptive_pairs   # writes docs/adaptive_pairs.{md,json}

For every generator and site: the full sweep (``--n_pairs`` in blocks of
``--block_pairs``, the main job's seeds and chunks) and, per ``--targets`` value,
the adaptive sweep (`cfmod_jax.sweep.SweepConfig.target_reliability`). Answers are
compared with the main job's clustering defaults (`analysis.AnalysisConfig`): the
modules at the full run's K (chosen by `clustering.choose_k` on the full blocks) and
with K chosen again on the adaptive blocks, by adjusted Rand index (ARI) against
the full run's labels; plus the relative error of the EIMs. The adaptive blocks
are a prefix of the full ones (which inflates these ARIs), so for reference the
table also gives the ARI between the labels of the even and of the odd blocks of the
full run: two disjoint halves of the pairs, i.e. how reproducible the full run's
labels are at all.

Timing: the first sweep of a site fills ``--cache_dir`` (and compiles); then, all
compiled, the full sweep and each adaptive sweep are timed in fresh temporary
caches in this process (wall and CPU seconds, load average recorded), and each
adaptive sweep is run once more on the shared cache: it must compute no block and
give bitwise the same maps and stopping block.

Reruns: with the same settings, a run of some ``--generators`` replaces their rows in
the JSON and keeps the other generators' (e.g. after a new shipped DCGAN:
``--generators dcgan-synthfaces``); ``--markdown_only`` rewrites the Markdown from
the JSON. The Markdown's "## Reading" section is written by hand and kept.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time

import numpy as np
from absl import flags, logging
from sklearn.metrics import adjusted_rand_score

import cfmod_jax as cf
from cfmod_jax import clustering, fingerprint, split_half, sweep
from cfmod_jax.analysis import AnalysisConfig
from experiments import _cli

FLAGS = flags.FLAGS
flags.DEFINE_list(
  "generators", ["dcgan-synthfaces", "vae-synthfaces", "began-synthfaces"], "Generators."
)
flags.DEFINE_list("sites", [], "Sites (default: every site of each generator).")
flags.DEFINE_integer("n_pairs", 256, "Maximum (and full-run) pairs.", lower_bound=2)
flags.DEFINE_integer("block_pairs", 32, "Pairs per block.", lower_bound=1)
flags.DEFINE_list("targets", ["0.9", "0.95", "0.98"], "Target reliabilities.")
flags.DEFINE_integer("min_blocks", 2, "Fewest blocks of an adaptive sweep.", lower_bound=2)
flags.DEFINE_string("cache_dir", "out/adaptive_pairs/cache", "Shared sweep cache.")
flags.DEFINE_string("out", "docs/adaptive_pairs.md", "Markdown output; JSON beside it.")
flags.DEFINE_bool("markdown_only", False, "Only rewrite the Markdown from the JSON beside it.")

_MAIN = AnalysisConfig()  # the main job's defaults (seed, chunks, clustering settings)
_QUANTILES = (0.0, 0.1, 0.25, 0.5)


def _timed(fn):
  """(fn(), wall seconds, CPU seconds of this process)."""
  t, c = time.perf_counter(), time.process_time()
  out = fn()
  return out, time.perf_counter() - t, time.process_time() - c


def _fresh_sweep(gen, site, cfg):
  """A sweep in a fresh temporary cache (timed), then the cache is deleted."""
  folder = tempfile.mkdtemp(prefix="adaptive_pairs_")
  try:
    return _timed(lambda: sweep.eim_sweep(gen, site, cfg, folder))
  finally:
    shutil.rmtree(folder, ignore_errors=True)


class _Answers:
  """The main job's modules of given EIMs, memoised by number of blocks."""

  def __init__(self, groups: np.ndarray, counts: np.ndarray):
    self.groups, self.counts = groups, counts
    self.common = dict(sigma=_MAIN.sigma, percentile=_MAIN.percentile)
    self.ks = [k for k in _MAIN.k_values if k <= groups.shape[1]]
    self._auto = {}

  def eims(self, blocks) -> np.ndarray:
    c = self.counts[blocks].astype(np.float64)
    return np.tensordot(c / c.sum(), self.groups[blocks].astype(np.float64), 1)

  def labels(self, blocks, k: int) -> np.ndarray:
    eims = self.eims(blocks)
    return clustering.cluster_channels(eims, k, _MAIN.method, seed=_MAIN.seed, **self.common).labels

  def auto(self, m: int) -> tuple[int, np.ndarray]:
    """K chosen on the first m blocks, and the labels at that K."""
    if m not in self._auto:
      k, _ = clustering.choose_k(
        self.groups[:m],
        self.ks,
        n_boot=_MAIN.n_boot,
        seed=_MAIN.seed,
        method=_MAIN.method,
        **self.common,
      )
      self._auto[m] = (int(k), self.labels(slice(0, m), k))
    return self._auto[m]


def measure_site(gen, site: str, targets: list[float], cache_dir: str) -> dict:
  """Full and adaptive sweeps of one site: savings and agreement (module docstring)."""
  base = sweep.SweepConfig(
    n_pairs=FLAGS.n_pairs,
    block_pairs=FLAGS.block_pairs,
    seed=_MAIN.seed * 1000 + gen.site_index(site),  # the main job's site seed
    pair_chunk=_MAIN.pair_chunk,
    mask_chunk=_MAIN.mask_chunk,
  )
  full = sweep.eim_sweep(gen, site, base, cache_dir)  # fills the cache, compiles
  c, nb = full.eims.shape[0], base.n_blocks
  load0 = os.getloadavg()[0]
  timed_full, wall_full, cpu_full = _fresh_sweep(gen, site, base)
  np.testing.assert_array_equal(timed_full.eims, full.eims)
  ans = _Answers(full.eim_groups, full.counts)
  k_full, labels_full = ans.auto(nb)
  sums = full.eim_groups * full.counts[:, None, None, None].astype(np.float32)
  trace, floor_ari = [], None
  for m in range(2, nb + 1):
    rel = split_half.channel_reliability(sums[:m], full.counts[:m])
    trace.append(
      {
        "blocks": m,
        "pairs": int(full.counts[:m].sum()),
        "reliability": float(np.float32(np.quantile(rel, split_half.RELIABILITY_QUANTILE))),
        "channel_quantiles": {str(q): float(np.quantile(rel, q)) for q in _QUANTILES},
        "ari_same_k": float(adjusted_rand_score(labels_full, ans.labels(slice(0, m), k_full))),
        "eim_rel_error": float(
          np.linalg.norm(ans.eims(slice(0, m)) - full.eims) / np.linalg.norm(full.eims)
        ),
      }
    )
  floor_ari = float(
    adjusted_rand_score(
      ans.labels(slice(0, None, 2), k_full), ans.labels(slice(1, None, 2), k_full)
    )
  )
  rows = []
  for t in targets:
    cfg = dataclasses.replace(base, target_reliability=t, min_blocks=FLAGS.min_blocks)
    timed, wall, cpu = _fresh_sweep(gen, site, cfg)
    cached = sweep.eim_sweep(gen, site, cfg, cache_dir)
    m = timed.blocks_used
    assert cached.computed_blocks == 0 and cached.blocks_used == m, (site, t)
    np.testing.assert_array_equal(cached.eims, timed.eims)
    predicted = next((e["blocks"] for e in trace if e["reliability"] >= t), nb)
    assert predicted == m, (site, t, predicted, m)  # the rule, replayed on the full blocks
    k_auto, labels_auto = ans.auto(m)
    rows.append(
      {
        "target": t,
        "blocks_used": m,
        "pairs_used": timed.pairs_used,
        "stopped_early": timed.stopped_early,
        "reliability": float(timed.reliability[m - 1]),
        "hybrids_saved": (FLAGS.n_pairs - timed.pairs_used) * c,
        "seconds": wall,
        "cpu_seconds": cpu,
        "rule_seconds": timed.reliability_seconds,
        "ari_same_k": float(adjusted_rand_score(labels_full, ans.labels(slice(0, m), k_full))),
        "k_auto": k_auto,
        "ari_auto": float(adjusted_rand_score(labels_full, labels_auto)),
        "eim_rel_error": float(np.linalg.norm(timed.eims - full.eims) / np.linalg.norm(full.eims)),
      }
    )
  return {
    "site": site,
    "channels": c,
    "n_blocks": nb,
    "full": {
      "pairs": FLAGS.n_pairs,
      "hybrids": FLAGS.n_pairs * c,
      "seconds": wall_full,
      "cpu_seconds": cpu_full,
      "k": k_full,
    },
    "even_vs_odd_ari": floor_ari,
    "load_average": [load0, os.getloadavg()[0]],
    "trace": trace,
    "targets": rows,
  }


def markdown(result: dict) -> str:
  """The table of `main`'s result."""
  lines = [
    "| generator | site | C | K full | target | pairs used | hybrids saved | CPU s adaptive / "
    "full | wall s adaptive / full | ARI same K | K auto | ARI auto K | EIM rel. error | "
    "ARI even/odd halves |",
    "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for g in result["generators"]:
    for s in g["sites"]:
      for r in s["targets"]:
        lines.append(
          f"| {g['generator']} | {s['site']} | {s['channels']} | {s['full']['k']} | "
          f"{r['target']:g} | {r['pairs_used']}/{s['full']['pairs']} | {r['hybrids_saved']} | "
          f"{r['cpu_seconds']:.1f} / {s['full']['cpu_seconds']:.1f} | "
          f"{r['seconds']:.1f} / {s['full']['seconds']:.1f} | {r['ari_same_k']:.2f} | "
          f"{r['k_auto']} | {r['ari_auto']:.2f} | {r['eim_rel_error']:.3f} | "
          f"{s['even_vs_odd_ari']:.2f} |"
        )
  return "\n".join(lines) + "\n"


def _summary(result: dict) -> str:
  """Per target, over every measured site: pairs, hybrids and time used; worst ARIs."""
  lines = [
    "| target | sites stopped early | pairs used / max | hybrids used / max | CPU s adaptive / "
    "full | wall s adaptive / full | min ARI same K | min ARI auto K | sites with another "
    "auto K | max EIM rel. error |",
    "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  sites = [s for g in result["generators"] for s in g["sites"]]
  for i, t in enumerate(result["targets"]):
    rows = [s["targets"][i] for s in sites]
    hyb = sum(r["pairs_used"] * s["channels"] for r, s in zip(rows, sites))
    hyb_max = sum(s["full"]["hybrids"] for s in sites)
    lines.append(
      f"| {t:g} | {sum(r['stopped_early'] for r in rows)}/{len(rows)} | "
      f"{sum(r['pairs_used'] for r in rows)}/{sum(s['full']['pairs'] for s in sites)} | "
      f"{hyb / hyb_max:.0%} | {sum(r['cpu_seconds'] for r in rows):.0f} / "
      f"{sum(s['full']['cpu_seconds'] for s in sites):.0f} | "
      f"{sum(r['seconds'] for r in rows):.0f} / {sum(s['full']['seconds'] for s in sites):.0f} | "
      f"{min(r['ari_same_k'] for r in rows):.2f} | {min(r['ari_auto'] for r in rows):.2f} | "
      f"{sum(r['k_auto'] != s['full']['k'] for r, s in zip(rows, sites))} | "
      f"{max(r['eim_rel_error'] for r in rows):.3f} |"
    )
  return "\n".join(lines) + "\n"


def write_markdown(path: str, result: dict) -> None:
  """The tables of ``result``; the "## Reading" section of an existing file is kept."""
  reading = ""
  if os.path.exists(path):
    with open(path, encoding="utf-8") as f:
      old = f.read()
    if "\n## Reading" in old:
      reading = old[old.index("\n## Reading") + 1 :]
  loads = [x for g in result["generators"] for s in g["sites"] for x in s["load_average"]]
  text = (
    "# Adaptive pairs: when the EIM sweep may stop early\n\n"
    f"Generated by `{result['command']}` ({result['seconds']:.0f} s, {result['cpus']} CPUs, "
    f"1-min load average {min(loads):.1f}–{max(loads):.1f}); the tables are rewritten by "
    "each run, the Reading section is kept. Stopping rule: `cfmod_jax.split_half.eim_reliability` "
    f"(the {result['rule']['quantile']:g} quantile over channels of the split-half, "
    "Spearman–Brown corrected reliability of each channel's smoothed EIM with the "
    "pattern shared by the site's channels projected out), evaluated after each "
    f"block from block {result['min_blocks']} on. Clustering: the main job's defaults "
    "(NMF, K by `clustering.choose_k` over k_values 2–6). ARIs compare with the labels of "
    "the full run. Times are of the sweep alone, all compiled (compilation excluded, the "
    "same for both), measured in one process one after the other: CPU seconds of the "
    "process (the steadier measure on this shared machine) and wall seconds, which "
    "follow the machine's load (per site in the JSON).\n\n## Summary over all sites\n\n"
    + _summary(result)
    + "\n## Per site\n\n"
    + markdown(result)
  )
  with open(path, "w", encoding="utf-8") as f:
    f.write(text + ("\n" + reading if reading else ""))


def main(argv: list[str]) -> None:
  del argv
  targets = []
  for v in FLAGS.targets:
    with _cli.blame("targets"):
      try:
        t = float(v)
      except ValueError:
        t = v
      targets.append(sweep.check_target_reliability(t, "targets"))
  settings = {
    "n_pairs": FLAGS.n_pairs,
    "block_pairs": FLAGS.block_pairs,
    "targets": targets,
    "min_blocks": FLAGS.min_blocks,
  }
  json_path = os.path.splitext(FLAGS.out)[0] + ".json"
  if FLAGS.markdown_only:
    with _cli.blame("out"), open(json_path, encoding="utf-8") as f:
      write_markdown(FLAGS.out, json.load(f))
    return
  out = {"generators": []}
  if os.path.exists(json_path):  # a rerun of some generators keeps the others' rows
    with open(json_path, encoding="utf-8") as f:
      old = json.load(f)
    if all(old.get(k) == v for k, v in settings.items()):
      out = old
  for name in FLAGS.generators:
    with _cli.blame("generators"):
      gen = cf.load_generator(name)
    sites = FLAGS.sites or list(gen.sites)
    entry = {"generator": name, "fingerprint": fingerprint.generator_fingerprint(gen), "sites": []}
    tg = time.perf_counter()
    for site in sites:
      with _cli.blame("sites"):
        gen.site_index(site)
      entry["sites"].append(measure_site(gen, site, targets, FLAGS.cache_dir))
      logging.info("%s %s: %s", name, site, json.dumps(entry["sites"][-1]["targets"]))
    entry["seconds"] = time.perf_counter() - tg
    out["generators"] = [g for g in out["generators"] if g["generator"] != name] + [entry]
  out.update(settings)
  flag_values = {f: getattr(FLAGS, f) for f in ("sites", "block_pairs", "targets", "min_blocks")}
  flag_values = {"generators": [g["generator"] for g in out["generators"]], **flag_values}
  out["command"] = "python -m studies.adaptive_pairs " + " ".join(
    f"--{f}={','.join(map(str, v)) if isinstance(v, list) else v}"
    for f, v in {**flag_values, "n_pairs": FLAGS.n_pairs}.items()
    if v != []
  )
  out["rule"] = {"statistic": "eim_reliability", "quantile": split_half.RELIABILITY_QUANTILE}
  out["cpus"] = os.cpu_count()
  out["seconds"] = sum(g["seconds"] for g in out["generators"])
  if os.path.dirname(json_path):
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
  with open(json_path, "w", encoding="utf-8") as f:
    json.dump(out, f, indent=1)
  write_markdown(FLAGS.out, out)
  logging.info("wrote %s and %s (%.0f s)", FLAGS.out, json_path, out["seconds"])


if __name__ == "__main__":
  _cli.run(main)
