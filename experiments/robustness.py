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

import os

import jax
import numpy as np
from absl import flags, logging

from cfmod_jax import analysis, quality, viz
from cfmod_jax import robustness as rb
from cfmod_jax.data import synthfaces
from experiments import _cli  # first: one line on Ctrl-C while jax imports

FLAGS = flags.FLAGS
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


def face_regions() -> tuple[np.ndarray, tuple[str, ...]]:
  """Part prior maps [3, 64, 64]: background, hair, face (skin + eyes + mouth)."""
  p = synthfaces.part_prior()
  face = p[synthfaces.SKIN] + p[synthfaces.EYES] + p[synthfaces.MOUTH]
  return np.stack([p[synthfaces.BACKGROUND], p[synthfaces.HAIR], face]), (
    "background",
    "hair",
    "face",
  )


def _panels(gen, result, site, out):
  """Originals down the left, donors across the top, module hybrids in the grid."""
  if site not in result.sites:
    logging.warning("--panel_site=%s was not analysed; no panels", site)
    return
  labels = result.sites[site].labels
  masks = analysis.module_masks(labels, result.k)
  ka, kb = jax.random.split(jax.random.key(result.seed + 1))
  z_rows, z_cols = gen.sample_latents(ka, 4), gen.sample_latents(kb, 5)
  for j, mask in enumerate(masks):
    viz.save_rgb(
      os.path.join(out, f"panel_{site}_module{j}.png"),
      analysis.hybrid_panel(gen, site, mask, z_rows, z_cols, 4, 5),
    )


def main(argv):
  del argv
  with _cli.blame("generator"):
    gen = analysis.generator_from_spec(FLAGS.generator)
  with _cli.blame("factor"):
    clf = rb.factor_classifier(quality.load_featnet(), FLAGS.factor)
  _cli.check_output_dir("out")
  parts, names = face_regions()
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
  rb.write_json(result, os.path.join(FLAGS.out, "robustness.json"))
  rb.plot_robustness(result, os.path.join(FLAGS.out, "robustness.png"))
  table = rb.markdown_table(result)
  with open(os.path.join(FLAGS.out, "table.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n")
  if FLAGS.panel_site:
    _panels(gen, result, FLAGS.panel_site, FLAGS.out)
  print(table)
  logging.info("chance keep rate %.3f; wrote %s", result.chance_keep_rate, FLAGS.out)


if __name__ == "__main__":
  _cli.run(main)
