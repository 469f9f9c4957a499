"""Trains a model of `cfmod_jax.train`, optionally exporting it for shipping.

  python -m experiments.train --config experiments/configs/dcgan.py --workdir runs/dcgan
  python -m experiments.train --config experiments/configs/dcgan.py --workdir runs/dcgan \\
      --config.num_steps=500 --export cfmod_jax/checkpoints/dcgan-synthfaces

A run in a workdir that has checkpoints resumes from the latest one.
"""

import ast
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cfmod_jax import train

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Training config (experiments/configs/*.py).",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics.jsonl and samples.")
flags.DEFINE_string("export", "", "After training, export the final network to this folder "
                    "(variables, samples.png, quality, MODEL_CARD.md).")
flags.DEFINE_enum("storage_dtype", "float32", ["float32", "float16"],
                  "Storage dtype of the exported floating arrays.")
flags.DEFINE_string("featnet", "featnet-synthfaces", "Feature network of the exported "
                    "generator's Fréchet distance (shipped name or folder).")
flags.DEFINE_string("machine", None, "Machine description for the model card (default: auto).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    train.validate_config(FLAGS.config)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  logging.info("finished at step %d, wall time %.1f s", result.step, result.wall_time_s)
  if FLAGS.export:
    command = " ".join(["python -m experiments.train", *sys.argv[1:]])
    with open(config_flags.get_config_filename(FLAGS["config"])) as f:
      notes = ast.get_docstring(ast.parse(f.read()))
    meta = train.export_run(FLAGS.workdir, FLAGS.export, storage_dtype=FLAGS.storage_dtype,
                            featnet=FLAGS.featnet, command=command, machine=FLAGS.machine,
                            notes=notes)
    logging.info("exported to %s: %s", FLAGS.export, meta["quality"])


if __name__ == "__main__":
  app.run(main)
