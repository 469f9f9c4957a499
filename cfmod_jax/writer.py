"""The main job's files: figures, ``analysis.npz``, ``metrics.json``, the report, and
the output-folder rules.

Every file is written atomically (`cfmod_jax.fileio`): a temporary file in the same
folder, renamed over the destination once complete, so a job killed at any moment
leaves each output either absent, as the previous complete version, or new. A run
holds ``<out_dir>/.lock`` (`fileio.RunLock`) from start to end, and the folder's
manifest ``run.json`` says which run its outputs belong to (`claim_output_folder`);
a finished site folder holds exactly `site_files` (`remove_stale_files`).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
from collections.abc import Iterator, Sequence

import jax
import numpy as np
from absl import logging

from cfmod_jax import fileio, report, viz
from cfmod_jax.lab import plots

__all__ = [
  "OutputFolderError",
  "claim_output_folder",
  "output_folder",
  "remove_stale_files",
  "site_files",
  "write_results",
  "write_site",
]


def site_files(k: int, untrained: bool, factor_figure: bool, stability: bool) -> list[str]:
  """Names of the files a finished site folder holds (`write_site`)."""
  names = ["eims.png", "templates.png", "module_maps.png", "analysis.npz"]
  names += [f"hybrids_module{j}.png" for j in range(k)]
  names += ["untrained_module_maps.png"] * untrained + ["factor_transfer.png"] * factor_figure
  names += ["stability.png"] * stability
  return names


_OUTPUT_NAME = re.compile(r"(.*\.(png|npz|json|html)|\..*\.tmp.*)$")


def remove_stale_files(folder: str, keep: Sequence[str]) -> list[str]:
  """Deletes the output-like files of ``folder`` (``*.png``, ``*.npz``, ``*.json``,
  ``*.html`` and temporary files ``.<name>.*.tmp*`` of killed writers) that are not in
  ``keep``: figures of an earlier run (``hybrids_module5.png`` after a run with fewer
  modules, ``stability.png`` after one with a given K) never sit beside new results.
  Returns the removed names."""
  removed = []
  keep = set(keep)
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if name not in keep and _OUTPUT_NAME.fullmatch(name) and os.path.isfile(path):
      os.unlink(path)
      removed.append(name)
  if removed:
    logging.info("removed stale files of an earlier run from %s: %s", folder, ", ".join(removed))
  return removed


class OutputFolderError(ValueError):
  """The output folder holds results of a different run."""


def _flatten(d, prefix=""):
  out = {}
  for key, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = v
  return out


def claim_output_folder(out_dir: str, settings: dict, fingerprint: str) -> bool:
  """Checks that ``out_dir`` is empty or holds outputs of this very run (same
  settings and generator fingerprint, per its manifest ``run.json``), then writes the
  manifest. Returns whether earlier outputs of this run are there (a resume).

  A folder holding a different run's outputs, or outputs without a manifest (an
  older version), is refused with `OutputFolderError` (a ValueError naming the
  folder and the differences): results of two runs are never mixed, and nothing of
  the old run is changed. Call with the folder's `fileio.RunLock` held.
  """
  meta = fileio.read_manifest(out_dir)
  ignore = {fileio.LOCK_FILE, "cache"}
  if meta is None:
    leftovers = sorted(
      n for n in os.listdir(out_dir) if n not in ignore and not re.fullmatch(r"\..*\.tmp.*", n)
    )
    if leftovers:
      raise OutputFolderError(
        f"{out_dir} holds outputs without a run manifest ({', '.join(leftovers[:4])}"
        f"{', …' if len(leftovers) > 4 else ''}), written by an older version or "
        "another program; choose another --out or delete it"
      )
    fileio.write_manifest(out_dir, settings, fingerprint)
    return False
  if fileio.manifest_matches(out_dir, settings, fingerprint):
    return True
  old = _flatten(meta["settings"])
  new = _flatten(json.loads(json.dumps(settings, default=str)))
  diffs = [
    f"{key} {old.get(key, '—')!r} vs {new.get(key, '—')!r}"
    for key in sorted(set(old) | set(new))
    if old.get(key) != new.get(key)
  ]
  if meta["fingerprint"] != fingerprint:
    diffs.append("generator fingerprint (different weights or code)")
  raise OutputFolderError(
    f"{out_dir} holds outputs of a different run ({'; '.join(diffs[:4])}"
    f"{'; …' if len(diffs) > 4 else ''}; old vs this run); choose another --out or "
    "delete it"
  )


@contextlib.contextmanager
def output_folder(out_dir: str, settings: dict, fingerprint: str) -> Iterator[None]:
  """Holds ``out_dir``'s lock and claims the folder for this run
  (`claim_output_folder`) for the duration of the block; with several processes
  only process 0 does (the others write nothing)."""
  if jax.process_index() != 0:
    yield
    return
  os.makedirs(out_dir, exist_ok=True)
  with fileio.RunLock(out_dir):
    if claim_output_folder(out_dir, settings, fingerprint):
      logging.info("%s holds earlier outputs of this run: resuming", out_dir)
    yield


def write_site(out_dir: str, gen_name: str, res) -> None:
  """Writes the figures and ``analysis.npz`` of one site (`analysis.SiteResult`)
  into ``<out_dir>/<site>`` and removes the stale files of earlier runs there."""
  sdir = os.path.join(out_dir, res.site)
  os.makedirs(sdir, exist_ok=True)
  fit, u, k = res.fit, res.untrained, res.fit.k
  if res.chose_k:
    with fileio.atomic_path(os.path.join(sdir, "stability.png")) as tmp:
      viz.plot_stability_curve(fit.curve, tmp, k_best=k, title=f"{gen_name} {res.site}")
  sizes = res.metrics["module_sizes"]
  mod_titles = [f"module {j} · {sizes[j]} ch" for j in range(k)]
  viz.save_map_grid(
    os.path.join(sdir, "eims.png"),
    fit.eims,
    labels=fit.labels,
    colorbar_label="fraction of the channel's own maximum",
    title=f"EIMs of the {fit.eims.shape[0]} channels, ordered by module",
  )
  templates_name = (
    "k-means centroids" if fit.clus.method == "kmeans" else "NMF templates (rows of H)"
  )
  viz.save_map_grid(
    os.path.join(sdir, "templates.png"),
    fit.clus.templates,
    ncols=k,
    titles=mod_titles,
    colorbar_label="fraction of the template's maximum",
    title=f"{templates_name}, preprocessed EIM space",
  )
  viz.save_map_grid(
    os.path.join(sdir, "module_maps.png"),
    fit.all_maps[:k],
    ncols=k,
    normalize="global",
    titles=mod_titles,
    colorbar_label="mean |Δ pixel| (images in [-1, 1])",
    title="module influence maps, one scale",
  )
  arrays = {}
  if u is not None:
    usizes = res.metrics["untrained_module_sizes"]
    viz.save_map_grid(
      os.path.join(sdir, "untrained_module_maps.png"),
      u.all_maps[:k],
      ncols=k,
      normalize="each",
      titles=[f"module {j} · {usizes[j]} ch" for j in range(k)],
      colorbar_label="fraction of the map's own maximum",
      title="untrained network: module maps, each to its max",
    )
    arrays = dict(
      untrained_labels=u.labels,
      untrained_module_maps=u.all_maps[:k],
      untrained_null_maps=u.all_maps[k:],
      untrained_templates=u.clus.templates,
    )
  if res.factor_arrays:
    ft = res.metrics["factor_transfer"]
    plots.plot_factor_matrix(
      os.path.join(sdir, "factor_transfer.png"),
      np.array(ft["matrix"] + [ft["whole"]]),
      [f"module {j} · {sizes[j]} ch" for j in range(k)] + ["whole site"],
      ft["factors"],
      title=f"{res.site}: share of pairs whose hybrid follows the donor",
    )
    arrays.update(res.factor_arrays)
  for j, panel in enumerate(res.hybrid_panels):
    viz.save_rgb(os.path.join(sdir, f"hybrids_module{j}.png"), panel)
  fileio.atomic_savez(
    os.path.join(sdir, "analysis.npz"),
    eims=fit.eims,
    eim_groups=fit.eim_groups,
    labels=fit.labels,
    templates=fit.clus.templates,
    weights=fit.clus.weights,
    module_maps=fit.all_maps[:k],
    null_maps=fit.all_maps[k:],
    eval_z1=res.eval_z1,
    eval_z2=res.eval_z2,
    eval_groups=res.eval_groups,
    **arrays,
  )
  remove_stale_files(sdir, site_files(k, u is not None, bool(res.factor_arrays), res.chose_k))


def write_results(out_dir: str, result: dict) -> None:
  """Writes ``metrics.json`` (``result``) and ``report.html`` (`report.write_report`)."""
  fileio.atomic_write_json(os.path.join(out_dir, "metrics.json"), result, sort_keys=False)
  report.write_report(result, out_dir)
