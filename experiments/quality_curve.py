"""Fréchet distance of every checkpoint of a generator run (the model card's curve).

  python -m experiments.quality_curve --workdir runs/dcgan
  python -m experiments.train --config experiments/configs/dcgan.py --workdir runs/dcgan \\
      --export cfmod_jax/weights/dcgan-synthfaces --export_step best

Writes ``<workdir>/quality_curve.json`` (`cfmod_jax.train.export.quality_curve`;
steps already measured are kept, so it can run while training goes on).
"""

from collections.abc import Sequence

from absl import flags, logging

from cfmod_jax import checkpoints
from cfmod_jax.train.export import best_step, quality_curve
from experiments import _cli

FLAGS = flags.FLAGS

if __name__ == "__main__":
  flags.DEFINE_string("workdir", None, "Training run folder (experiments.train --workdir).")
  flags.DEFINE_integer("n", 2000, "Images per set of each Fréchet distance.", lower_bound=2)
  flags.DEFINE_string("featnet", checkpoints.SHIPPED_FEATNET, "Feature network (name or folder).")
  flags.DEFINE_list("steps", [], "Only these checkpoint steps (default: every checkpoint).")
  flags.mark_flags_as_required(["workdir"])


def main(argv: Sequence[str]) -> None:
  del argv
  with _cli.blame("steps"):
    steps = [int(s) for s in FLAGS.steps] or None
  with _cli.blame("workdir"):
    curve = quality_curve(
      FLAGS.workdir, n=FLAGS.n, featnet=FLAGS.featnet, steps=steps, log=logging.info
    )
  for e in curve:
    print(f"step {e['step']:>7d}  FD {e['fd']:8.2f}  (floor {e['floor']:.2f}, n={e['n']})")
  print(f"best: step {best_step(FLAGS.workdir)}")


__all__ = ["main"]

if __name__ == "__main__":
  _cli.run(main)
