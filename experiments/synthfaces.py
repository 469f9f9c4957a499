"""Writes a PNG grid of procedural synthetic faces (`cfmod_jax.data.synthfaces`).

python -m experiments.synthfaces --out docs/synthfaces_grid.png
"""

from absl import flags

from cfmod_jax.data import synthfaces
from experiments import _cli

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "docs/synthfaces_grid.png", "PNG file to write.")
flags.DEFINE_integer("n", 64, "Number of faces.", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Random seed.", lower_bound=0)
flags.DEFINE_integer("ncols", 8, "Faces per row.", lower_bound=1)


def main(argv: list[str]) -> None:
  del argv
  synthfaces.save_sample_grid(FLAGS.out, FLAGS.n, FLAGS.seed, FLAGS.ncols)
  print(f"wrote {FLAGS.out}")


__all__ = ["main"]


if __name__ == "__main__":
  _cli.run(main)
