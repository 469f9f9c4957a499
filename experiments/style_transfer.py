"""Cross-class module hybrids ("style transfer") with a converted BigGAN-deep.

  python -m experiments.style_transfer --biggan path/to/converted --class_a 850 \
      --class_b 105 --site block5 --k 3 --out out/transfer

``--biggan`` is a folder written by ``experiments.convert_biggan`` (see
docs/biggan.md); nothing is downloaded. Writes ``module<k>.png`` (rows: class-A
samples; columns: class-B donors; cell: A with module k from B), ``eims.png``,
``module_maps.png`` and ``transfer.json`` under ``--out``.
"""

import json
import os

import numpy as np
from absl import flags, logging

from cfmod_jax import viz
from cfmod_jax.lab import transfer
from cfmod_jax.models.biggan import load_biggan
from experiments import _cli  # first: one line on Ctrl-C while jax imports

FLAGS = flags.FLAGS


def _define_flags() -> None:
  """The flags (defined only when run as a program, so that the library-like
  functions here can be imported next to other experiments' flags)."""
  flags.DEFINE_string(
    "biggan",
    None,
    "Folder of converted BigGAN-deep weights (written by experiments.convert_biggan).",
  )
  flags.DEFINE_integer("class_a", 850, "Class of the originals (850: teddy bear).")
  flags.DEFINE_integer("class_b", 105, "Class of the donors (105: koala).")
  flags.DEFINE_string("site", "block5", "Block whose modules are swapped.")
  flags.DEFINE_integer("k", 3, "Number of modules.")
  flags.DEFINE_float("truncation", 0.4, "Truncation of the noise, in (0, 1].")
  flags.DEFINE_integer("n_rows", 4, "Class-A originals per panel.")
  flags.DEFINE_integer("n_cols", 4, "Class-B donors per panel.")
  flags.DEFINE_integer("n_pairs", 64, "Latent pairs (classes A and B) for the EIMs.")
  flags.DEFINE_enum("method", "nmf", ["nmf", "kmeans"], "Clustering of channels.")
  flags.DEFINE_integer("seed", 0, "Random seed.", lower_bound=0)
  flags.DEFINE_string("out", "out/transfer", "Output folder.")
  flags.mark_flag_as_required("biggan")


def write_transfer(result: transfer.TransferResult, generator_name: str, out_dir: str) -> list[str]:
  """Writes the panels, maps and ``transfer.json`` of a `TransferResult`."""
  os.makedirs(out_dir, exist_ok=True)
  files = []
  for j in range(result.k):
    panel = viz.grid_panel(result.originals, result.donors, result.hybrids[j])
    files.append(viz.save_rgb(os.path.join(out_dir, f"module{j}.png"), panel))
  files.append(
    viz.save_map_grid(os.path.join(out_dir, "eims.png"), result.eims, labels=result.labels)
  )
  files.append(
    viz.save_map_grid(
      os.path.join(out_dir, "module_maps.png"),
      result.module_maps,
      ncols=result.k,
      normalize="global",
    )
  )
  files.append(
    viz.save_image_grid(
      os.path.join(out_dir, "originals.png"), result.originals, ncols=len(result.originals)
    )
  )
  files.append(
    viz.save_image_grid(
      os.path.join(out_dir, "donors.png"), result.donors, ncols=len(result.donors)
    )
  )
  meta = {
    "generator": generator_name,
    "site": result.site,
    "class_a": result.class_a,
    "class_b": result.class_b,
    "k": result.k,
    "method": result.method,
    "channels": int(len(result.labels)),
    "module_sizes": np.bincount(result.labels, minlength=result.k).tolist(),
    "labels": np.asarray(result.labels).tolist(),
    "module_mean_change": [float(m.mean()) for m in result.module_maps],
    "n_rows": int(len(result.originals)),
    "n_cols": int(len(result.donors)),
    "layout": "module<k>.png: top row = class-B donors, left column = class-A "
    "originals, cell = original with module k taken from the donor",
  }
  path = os.path.join(out_dir, "transfer.json")
  with open(path, "w", encoding="utf-8") as f:
    json.dump(meta, f, indent=2)
  files.append(path)
  return files


def main(argv: list[str]) -> None:
  del argv
  with _cli.blame("truncation", (ValueError,)):
    if not 0 < FLAGS.truncation <= 1:
      raise ValueError("must lie in (0, 1]")
  with _cli.blame("biggan"):
    gen = load_biggan(FLAGS.biggan, truncation=FLAGS.truncation)
  _cli.check_output_dir("out")
  try:
    result = transfer.style_transfer(
      gen,
      FLAGS.class_a,
      FLAGS.class_b,
      FLAGS.site,
      FLAGS.k,
      n_rows=FLAGS.n_rows,
      n_cols=FLAGS.n_cols,
      n_pairs=FLAGS.n_pairs,
      seed=FLAGS.seed,
      method=FLAGS.method,
    )
  except (ValueError, TypeError) as exc:  # the message names the argument = the flag
    raise _cli.name_flag(
      exc, ("class_a", "class_b", "site", "k", "n_rows", "n_cols", "n_pairs", "method", "seed")
    ) from None
  files = write_transfer(result, gen.name, FLAGS.out)
  logging.info(
    "module sizes %s; wrote %d files to %s",
    [int((result.labels == j).sum()) for j in range(result.k)],
    len(files),
    FLAGS.out,
  )


__all__ = ["main", "write_transfer"]


if __name__ == "__main__":
  _define_flags()
  _cli.run(main)
