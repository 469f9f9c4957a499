"""Trains a model of `cfmod_jax.train`, optionally exporting it for shipping.

  python -m experiments.train --config experiments/configs/dcgan.py --workdir runs/dcgan
  python -m experiments.train --config experiments/configs/dcgan.py --workdir runs/dcgan \\
      --config.num_steps=500 --export cfmod_jax/weights/dcgan-synthfaces

A run in a workdir that has checkpoints resumes from the latest one.
"""

import ast
import os
import sys
from collections.abc import Sequence

import flax
import jax
import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from cfmod_jax import checkpoints, train
from cfmod_jax.train import state_io
from cfmod_jax.train.export import export_run
from experiments import _cli  # first: one line on Ctrl-C while jax imports

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config", None, "Training config (experiments/configs/*.py).", lock_config=True
)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics.jsonl and samples.")
flags.DEFINE_string(
  "export",
  "",
  "After training, export the final network to this folder "
  "(variables, samples.png, quality, MODEL_CARD.md).",
)
flags.DEFINE_enum(
  "storage_dtype",
  "float32",
  ["float32", "float16"],
  "Storage dtype of the exported floating arrays.",
)
flags.DEFINE_string(
  "featnet",
  "featnet-synthfaces",
  "Feature network of the exported generator's Fréchet distance (shipped name or folder).",
)
flags.DEFINE_string(
  "export_step",
  "",
  "Checkpoint to export: '' (the last), a step number, or 'best' (the lowest Fréchet "
  "distance in <workdir>/quality_curve.json, see experiments.quality_curve).",
)
flags.DEFINE_string("machine", None, "Machine description for the model card (default: auto).")
flags.mark_flags_as_required(["config", "workdir"])


def check_resume(config: ml_collections.ConfigDict, workdir: str) -> None:
  """ValueError if ``workdir`` holds checkpoints of a run that ``config`` cannot
  resume (another model, or train-state shapes that differ, e.g. another width).

  `train.train_and_evaluate` would find out only after rewriting the run's
  config.json; this reads the latest checkpoint's metadata (not its arrays) first.
  """
  trainer = train.validate_config(config)
  directory = state_io.checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    return
  manager = state_io.open_manager(directory, read_only=True)
  try:
    step = manager.latest_step()
    if step is None:
      return
    try:
      import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top

      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception:  # pylint: disable=broad-except
      return  # unreadable: train_and_evaluate's restore names the damaged checkpoint
    if not isinstance(meta, dict) or "manifest" not in meta:
      return
    where = os.path.join(directory, str(step))
    if meta.get("model") != config.model:
      raise ValueError(
        f"config.model={config.model!r}, but {where} holds a "
        f"{meta.get('model')!r} run; use another --workdir"
      )
    target = flax.serialization.to_state_dict(state_io.abstract_state(trainer, config))
    try:
      checkpoints.check_structure(
        meta["manifest"], target, where=where, arch=f"{trainer.name} trainer state of this config"
      )
    except checkpoints.CheckpointError as e:
      raise ValueError(
        f"this config cannot resume the run in --workdir={workdir}: {e}; "
        "use the run's own config (config.json) or another --workdir"
      ) from None
  finally:
    manager.close()


def main(argv: Sequence[str]) -> None:
  del argv
  config_file = config_flags.get_config_filename(FLAGS["config"])
  if not os.path.isfile(config_file.split(":")[0]):
    raise app.UsageError(f"--config={config_file}: no such file")
  try:
    _ = "model" in FLAGS.config  # loads the config file lazily
  except (OSError, SyntaxError) as e:
    raise app.UsageError(f"--config={config_file}: could not load it: {_cli.one_line(e)}") from None
  try:
    train.validate_config(FLAGS.config)
  except ValueError as e:
    raise app.UsageError(f"--config: {_cli.one_line(e)}") from None
  if FLAGS.config.batch_size % jax.device_count():
    raise app.UsageError(
      f"--config: config.batch_size={FLAGS.config.batch_size} must be a "
      f"multiple of the number of devices ({jax.device_count()})"
    )
  if os.path.exists(FLAGS.workdir) and not os.path.isdir(FLAGS.workdir):
    raise app.UsageError(f"--workdir={FLAGS.workdir}: exists and is not a folder")
  try:
    check_resume(FLAGS.config, FLAGS.workdir)
  except ValueError as e:
    raise app.UsageError(f"--config: {_cli.one_line(e)}") from None
  if FLAGS.export and FLAGS.config.model != "featnet":  # the export measures quality with it
    with _cli.blame("featnet"):
      checkpoints.read_meta(checkpoints.resolve(FLAGS.featnet, (checkpoints.SHIPPED_FEATNET,)))
  export_step = None
  if FLAGS.export_step:
    if FLAGS.export_step != "best" and not FLAGS.export_step.isdigit():
      raise app.UsageError(
        f"--export_step={FLAGS.export_step!r}: expected '', 'best' or a step number"
      )
    export_step = "best" if FLAGS.export_step == "best" else int(FLAGS.export_step)
  _cli.check_output_dir("workdir")
  if FLAGS.export:
    _cli.check_output_dir("export")
  _cli.set_interrupt_message(
    f"interrupted; finished checkpoints are kept in "
    f"{state_io.checkpoint_dir(FLAGS.workdir)}, rerun the same command "
    "to resume"
  )
  result = train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  logging.info("finished at step %d, wall time %.1f s", result.step, result.wall_time_s)
  if FLAGS.export:
    command = " ".join(["python -m experiments.train", *sys.argv[1:]])
    with open(config_flags.get_config_filename(FLAGS["config"])) as f:
      notes = ast.get_docstring(ast.parse(f.read()))
    meta = export_run(
      FLAGS.workdir,
      FLAGS.export,
      storage_dtype=FLAGS.storage_dtype,
      featnet=FLAGS.featnet,
      command=command,
      machine=FLAGS.machine,
      notes=notes,
      step=export_step,
    )
    logging.info("exported to %s: %s", FLAGS.export, meta["quality"])


__all__ = ["check_resume", "main"]

if __name__ == "__main__":
  _cli.run(main, hard_exit_on_interrupt=True)
