"""Robustness of a hair-colour classifier to module swaps of a synthetic-face generator.

  python -m experiments.robustness --generator dcgan-synthfaces --k 3 --n_pairs 512 \
      --out docs/robustness

The classifier is the hair-colour head of the shipped feature network
(``featnet-synthfaces``). For every site and module (modules from the EIMs, K
modules by NMF) and for the whole site (control), it reports the share of hybrids
that keep the hair colour predicted on the original, the mean shift of that class's
confidence, and which module acts on the hair region (``synthfaces.part_prior``,
with skin, eyes and mouth merged into "face"). Writes ``robustness.json``,
``robustness.png``, ``table.md`` and hybrid panels of ``--panel_site`` under ``--out``.
"""

import dataclasses
import json
import os

import jax
import numpy as np
from absl import flags, logging

from cfmod_jax import interventions as iv
from cfmod_jax import viz
from cfmod_jax.data import synthfaces
from cfmod_jax.lab import classifiers, plots, quality
from cfmod_jax.lab import robustness as rb
from experiments import _cli, _specs  # _cli first: one line on Ctrl-C while jax imports

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The flags (defined only when run as a program, so that the library-like
  functions here can be imported next to other experiments' flags)."""
  flags.DEFINE_string(
    "generator", "dcgan-synthfaces", "Shipped name, a checkpoint path, or random:<arch>[:<width>]."
  )
  flags.DEFINE_list("sites", [], "Sites (default: all).")
  flags.DEFINE_integer("k", 3, "Modules per site.")
  flags.DEFINE_integer("n_pairs", 512, "Evaluation pairs (z1, z2).")
  flags.DEFINE_integer("eim_pairs", 128, "Latent pairs for the EIMs.")
  flags.DEFINE_enum("method", "nmf", ["nmf", "kmeans"], "Clustering of channels.")
  flags.DEFINE_string("factor", "hair_color", "Categorical factor the classifier predicts.")
  flags.DEFINE_integer("seed", 0, "Random seed.", lower_bound=0)
  flags.DEFINE_string("out", "out/robustness", "Output folder.")
  flags.DEFINE_string(
    "panel_site",
    "block3",
    "Site whose module hybrids are drawn as panels (panel_<site>_module<k>.png); empty: none.",
  )


def rows(result: rb.RobustnessResult) -> list[dict]:
  """One flat dict per (site, intervention); with part maps, also the module's
  part label, its share inside the hair region and whether it is the hair module."""
  out = []
  for s in result.sites.values():
    for e in s.effects:
      row = dataclasses.asdict(e)
      if s.part_shares is not None and e.name in s.part_shares:
        row["label"] = s.module_labels[e.name]
        row["hair_share"] = s.part_shares[e.name].get("hair", float("nan"))
        row["is_hair_module"] = e.name == (s.part_modules or {}).get("hair")
      out.append(row)
  return out


def markdown_table(result: rb.RobustnessResult) -> str:
  """The results as a Markdown table (one row per site and intervention)."""
  lines = [
    "| site | swapped | channels | part label | hair share | keep rate | "
    "confidence shift | donor rate | image change |",
    "|---|---|---|---|---|---|---|---|---|",
  ]
  for row in rows(result):
    hair = row.get("hair_share")
    label = row.get("label", "—") + (" (hair module)" if row.get("is_hair_module") else "")
    lines.append(
      f"| {row['site']} | {row['name']} | {row['n_channels']} | {label} | "
      f"{'—' if hair is None else f'{hair:.2f}'} | "
      f"{row['keep_rate']:.3f} ± {row['keep_rate_se']:.3f} | "
      f"{row['confidence_shift']:+.3f} ± {row['confidence_shift_se']:.3f} | "
      f"{row['donor_rate']:.3f} | {row['image_change']:.3f} |"
    )
  return "\n".join(lines)


def write_json(result: rb.RobustnessResult, path: str) -> str:
  """``result.to_dict()`` with each site's ``hair_module`` added, as JSON."""
  d = result.to_dict()
  for name, site in d["sites"].items():
    site["hair_module"] = (result.sites[name].part_modules or {}).get("hair")
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(d, f, indent=2)
  return path


def _panels(gen, result, site, out):
  """Originals down the left, donors across the top, module hybrids in the grid."""
  if site not in result.sites:
    logging.warning("--panel_site=%s was not analysed; no panels", site)
    return
  labels = result.sites[site].labels
  masks = iv.masks_from_labels(labels, result.k)
  ka, kb = jax.random.split(jax.random.key(result.seed + 1))
  z_rows, z_cols = gen.sample_latents(ka, 4), gen.sample_latents(kb, 5)
  originals, donors = np.asarray(gen(z_rows)), np.asarray(gen(z_cols))
  for j, mask in enumerate(masks):
    cells = iv.hybrid_grid(gen, site, mask, z_rows, z_cols)
    viz.save_rgb(
      os.path.join(out, f"panel_{site}_module{j}.png"), viz.grid_panel(originals, donors, cells)
    )


def main(argv: list[str]) -> None:
  del argv
  with _cli.blame("generator"):
    gen = _specs.generator_from_spec(FLAGS.generator)
  with _cli.blame("factor"):
    clf = classifiers.factor_classifier(quality.load_featnet(), FLAGS.factor)
  _cli.check_output_dir("out")
  parts, names = synthfaces.face_regions()
  try:
    result = rb.module_robustness(
      gen,
      clf,
      sites=FLAGS.sites or None,
      k=FLAGS.k,
      n_pairs=FLAGS.n_pairs,
      eim_pairs=FLAGS.eim_pairs,
      method=FLAGS.method,
      seed=FLAGS.seed,
      part_maps=parts,
      part_names=names,
    )
  except (ValueError, TypeError) as exc:  # the message names the argument = the flag
    raise _cli.name_flag(
      exc, ("sites", "k", "n_pairs", "eim_pairs", "method", "seed"), aliases={"site": "sites"}
    ) from None
  write_json(result, os.path.join(FLAGS.out, "robustness.json"))
  plots.plot_robustness(result, os.path.join(FLAGS.out, "robustness.png"), highlight_part="hair")
  table = markdown_table(result)
  with open(os.path.join(FLAGS.out, "table.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n")
  if FLAGS.panel_site:
    _panels(gen, result, FLAGS.panel_site, FLAGS.out)
  print(table)
  logging.info("chance keep rate %.3f; wrote %s", result.chance_keep_rate, FLAGS.out)


__all__ = ["main", "markdown_table", "rows", "write_json"]


if __name__ == "__main__":
  _define_flags()
  _cli.run(main)
