"""k=auto on generators with planted modules: does clustering find the planted K and groups?

  python -m studies.planted_suite --out docs/planted_suite.md

For every variant of `cfmod_jax.testing.planted.VARIANTS`, seed and method (nmf,
kmeans) and for the current library defaults ("new") and the defaults before issue 14
("old": sigma = size/32, 80th-percentile threshold, one random NMF start per
stability fit, "largest K within 0.02 of the best stability"), it builds a planted
generator (seed draws its weights, layout details and latent pairs, and seeds the
bootstrap), computes its grouped EIMs, picks K among --k_values and clusters.
Writes a Markdown table to --out and all results (with the curves) to the same path
with a .json suffix.
"""

import json
import os
import time
from collections.abc import Sequence

from absl import app, flags, logging

from cfmod_jax.testing import planted
from experiments import _cli  # first: one line on Ctrl-C while jax imports

FLAGS = flags.FLAGS
flags.DEFINE_list("variants", list(planted.VARIANTS), "Variants of the suite.")
flags.DEFINE_list("methods", ["nmf", "kmeans"], "Clustering methods.")
flags.DEFINE_integer("n_seeds", 10, "Seeds 0 .. n_seeds-1.", lower_bound=1)
flags.DEFINE_list(
  "seeds",
  [],
  "Run only these seeds (to split the run over processes; merge the JSON files with --merge).",
)
flags.DEFINE_list("merge", [], "Do not run: merge these JSON outputs into --out.")
flags.DEFINE_list(
  "settings",
  ["new", "old"],
  "Settings to compare: new (library defaults), "
  "old (before issue 14), p0, p50, sigma2, new_fits_old_rule.",
)
flags.DEFINE_list("k_values", [str(k) for k in range(2, 9)], "Candidate K.")
flags.DEFINE_integer("n_boot", 8, "Bootstrap resamples for K selection.", lower_bound=2)
flags.DEFINE_integer("n_pairs", 64, "Latent pairs for the EIMs.", lower_bound=2)
flags.DEFINE_integer("n_groups", 8, "Groups of pairs (bootstrap units).", lower_bound=2)
flags.DEFINE_string("out", "docs/planted_suite.md", "Markdown output; JSON beside it.")

SETTINGS = {
  "new": planted.NEW_SETTINGS,
  "old": planted.OLD_SETTINGS,
  # Preprocessing alternatives with the new fits and rule.
  "p0": {"percentile": 0.0},
  "p50": {"percentile": 50.0},
  "sigma2": {"sigma": 2.0},
  # The new fits with the old rule.
  "new_fits_old_rule": {"rule": "stability", "tol": 0.02},
}


def suite_markdown(rows: Sequence[dict], settings: dict[str, dict]) -> str:
  """Markdown tables of `planted.run_suite` rows: per settings, variant x method ->
  K chosen per seed, ARI per seed, and the count of seeds with K right and
  ARI >= 0.95."""
  lines = []
  for set_name in settings:
    sub = [r for r in rows if r["settings"] == set_name]
    if not sub:
      continue
    st = ", ".join(f"{k}={v}" for k, v in settings[set_name].items()) or "library defaults"
    lines += [
      f"### Settings `{set_name}` ({st})",
      "",
      "| variant | method | K true | K chosen per seed | ARI per seed | correct |",
      "|---|---|---|---|---|---|",
    ]
    total = correct = 0
    for name in dict.fromkeys(r["variant"] for r in sub):
      for method in dict.fromkeys(r["method"] for r in sub):
        cell = sorted(
          (r for r in sub if r["variant"] == name and r["method"] == method),
          key=lambda r: r["seed"],
        )
        if not cell:
          continue
        n_ok = sum(r["correct"] for r in cell)
        total += len(cell)
        correct += n_ok
        lines.append(
          f"| {name} | {method} | {cell[0]['k_true']} | "
          f"{' '.join(str(r['k']) for r in cell)} | "
          f"{' '.join(format(r['ari'], '.2f') for r in cell)} | "
          f"{n_ok}/{len(cell)} |"
        )
    lines += ["", f"All: {correct}/{total} cases with K right and ARI >= 0.95.", ""]
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  del argv
  for v in FLAGS.variants:
    with _cli.blame("variants"):
      planted.variant(v)
  for s in FLAGS.settings:
    if s not in SETTINGS:
      raise app.UsageError(f"--settings: {s!r} is not one of {sorted(SETTINGS)}")
  for m in FLAGS.methods:
    if m not in ("nmf", "kmeans"):
      raise app.UsageError(f"--methods: {m!r} is not nmf or kmeans")
  settings = {s: SETTINGS[s] for s in FLAGS.settings}
  cmd = "python -m studies.planted_suite " + " ".join(
    f"--{f}={','.join(map(str, v)) if isinstance(v, list) else v}"
    for f in (
      "variants",
      "methods",
      "n_seeds",
      "settings",
      "k_values",
      "n_boot",
      "n_pairs",
      "n_groups",
    )
    for v in [getattr(FLAGS, f)]
  )
  if FLAGS.merge:
    rows, seconds, cmds = [], 0.0, []
    for path in FLAGS.merge:
      with open(path) as f:
        part = json.load(f)
      rows += part["rows"]
      seconds += part["seconds"]
      cmds.append(part["command"])
    cmd = " ; ".join(cmds)
  else:
    seeds = [int(s) for s in FLAGS.seeds] or list(range(FLAGS.n_seeds))
    if FLAGS.seeds:
      cmd += f" --seeds={','.join(map(str, seeds))}"
    t0 = time.perf_counter()
    rows = planted.run_suite(
      FLAGS.variants,
      FLAGS.methods,
      seeds,
      settings,
      k_values=[int(k) for k in FLAGS.k_values],
      n_pairs=FLAGS.n_pairs,
      n_groups=FLAGS.n_groups,
      n_boot=FLAGS.n_boot,
      log=logging.info,
    )
    seconds = time.perf_counter() - t0
  parent = os.path.dirname(FLAGS.out)
  if parent:
    os.makedirs(parent, exist_ok=True)
  with open(os.path.splitext(FLAGS.out)[0] + ".json", "w") as f:
    json.dump({"command": cmd, "seconds": seconds, "settings": settings, "rows": rows}, f, indent=1)
  with open(FLAGS.out, "w") as f:
    f.write(f"# Planted-structure suite\n\nCommand: `{cmd}` ({seconds:.0f} s of compute).\n\n")
    f.write(suite_markdown(rows, settings))
  logging.info("wrote %s (%.0f s)", FLAGS.out, seconds)


if __name__ == "__main__":
  _cli.run(main)
