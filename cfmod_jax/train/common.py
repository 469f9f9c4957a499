"""The training loop shared by every trainer: mesh, data, RNG, checkpoints, logs.

A *trainer* (`Trainer`) is a bundle of pure functions — ``create_state``,
``train_step``, ``make_batch`` … — and `train_and_evaluate` runs any of them:

* **Data parallel.** A `jax.sharding.Mesh` over the devices (all local devices
  by default) with one axis, ``'data'``. Every batch array is sharded along its
  leading (batch) axis, the train state is replicated, and the jitted step is
  compiled once for these shardings: XLA inserts the cross-device reductions
  (gradient means, BatchNorm batch statistics), so one CPU and eight devices run
  the same code and compute the same function of the global batch.
* **Deterministic by step.** Batch ``step`` is ``make_batch(config, step)`` (for
  the synthetic faces ``generate(batch_size, seed=(data_seed, step))``) and its
  random key is ``fold_in(step_key_base(seed), step)``; nothing else carries
  randomness. So a run restored from its step-``s`` checkpoint computes exactly
  the steps an uninterrupted run computes after step ``s``.
* **Checkpoints** (`orbax.checkpoint.CheckpointManager` under
  ``<workdir>/checkpoints/<step>``) every ``checkpoint_every`` steps and at the
  end; each holds the state and a JSON item (`checkpoint_meta`) with the model,
  the generator's architecture, the config, the cumulative wall time and a
  sha256 manifest of every array (`cfmod_jax.checkpoints.array_manifest`), which
  is verified on every restore. A new run in a workdir with checkpoints resumes
  from the latest one.
* **Outputs:** ``metrics.jsonl`` (one JSON line per logged step; lines past the
  restored step are dropped on resume), sample grids
  ``samples/step_<step>.png`` and an absl progress line with steps/s and ETA.

Step numbers count *completed* steps: the checkpoint at step 6 holds the state
after six updates, and a run with ``num_steps=10`` resumed from it runs updates
7…10.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from cfmod_jax import checkpoints, fileio
from cfmod_jax.data import synthfaces

DATA_AXIS = "data"
CHECKPOINT_FORMAT = "cfmod_jax.train/1"

# Config fields that only steer the loop; they do not change the compiled step.
LOOP_FIELDS = (
  "num_steps",
  "log_every",
  "sample_every",
  "checkpoint_every",
  "keep_checkpoints",
  "num_samples",
  "quality_samples",
)


@dataclasses.dataclass(frozen=True)
class Trainer:
  """The pure functions that define one model's training.

  Attributes:
    name: the ``config.model`` value.
    validate: ``config -> None``; raises ValueError for bad trainer fields.
    create_state: ``(config, key) -> state``; a pytree whose ``.step`` is an
      int32 scalar (completed steps).
    train_step: ``(config, state, batch, key) -> (state, metrics)``; metrics is
      a dict of float32 scalars. ``batch`` is ``make_batch``'s dict as arrays.
    make_batch: ``(config, step) -> dict[str, np.ndarray]`` (leading axis =
      ``config.batch_size``); a pure function of ``(config, step)``.
    export_spec: ``config -> (arch, kwargs)`` of the exported module.
    export_variables: ``state -> variables`` of the exported module.
    sample: ``(config, state, latents) -> images [N, 64, 64, 3]`` in [-1, 1],
      or None for models that do not generate (the feature network).
    latent_dim: ``config -> int`` (only used when ``sample`` is set).
  """

  name: str
  validate: Callable[[ml_collections.ConfigDict], None]
  create_state: Callable[..., Any]
  train_step: Callable[..., tuple[Any, dict[str, jax.Array]]]
  make_batch: Callable[[ml_collections.ConfigDict, int], dict[str, np.ndarray]]
  export_spec: Callable[[ml_collections.ConfigDict], tuple[str, dict[str, Any]]]
  export_variables: Callable[[Any], Any]
  sample: Callable[..., jax.Array] | None = None
  latent_dim: Callable[[ml_collections.ConfigDict], int] | None = None


# ---- trainers registry --------------------------------------------------------------
def _registry() -> dict[str, Trainer]:
  from cfmod_jax.train import began, dcgan, featnet, vae  # pylint: disable=g-import-not-at-top

  return {t.name: t for t in (dcgan.TRAINER, vae.TRAINER, began.TRAINER, featnet.TRAINER)}


def get_trainer(model: str) -> Trainer:
  """The trainer of ``config.model``; a ValueError lists the valid names."""
  trainers = _registry()
  if model not in trainers:
    raise ValueError(
      f"config.model={model!r} is unknown; valid models: {', '.join(sorted(trainers))}"
    )
  return trainers[model]


# ---- configs ----------------------------------------------------------------------------
def base_config(model: str) -> ml_collections.ConfigDict:
  """The loop fields every config has; model files add their own fields.

  Fields:
    model: trainer name (dcgan, vae, began, featnet).
    seed: parameter initialisation and per-step random keys.
    dataset: 'synthfaces' (embedded default) or 'celeba' (tfds, read from data_dir).
    data_dir: tfds data_dir holding the prepared celeb_a (array_record), for 'celeba'.
    data_seed: batch ``s`` is ``synthfaces.generate(batch_size, seed=(data_seed, s))``,
      or CelebA batch ``s`` of the stream shuffled by data_seed (`celeba.celeba_batch`).
    batch_size: global batch (a multiple of the number of devices).
    num_steps: total train steps (a resumed run continues up to it).
    log_every: steps between metrics.jsonl lines / progress lines.
    sample_every: steps between sample grids (0: none).
    checkpoint_every: steps between checkpoints (the last step is always saved).
    keep_checkpoints: how many checkpoints to keep.
    num_samples: images in a sample grid.
    quality_samples: images per set of the Fréchet distance at export.
  """
  return ml_collections.ConfigDict(
    {
      "model": model,
      "dataset": "synthfaces",
      "data_dir": "",
      "seed": 0,
      "data_seed": 0,
      "batch_size": 64,
      "num_steps": 1000,
      "log_every": 50,
      "sample_every": 500,
      "checkpoint_every": 500,
      "keep_checkpoints": 2,
      "num_samples": 64,
      "quality_samples": 2000,
    }
  )


# ---- config validation ----------------------------------------------------------------
def check_int(config, field: str, minimum: int = 1) -> None:
  value = config
  for part in field.split("."):
    if part not in value:
      raise ValueError(f"config.{field} is missing")
    value = value[part]
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"config.{field} must be an integer >= {minimum}, got {value!r}")


def check_float(
  config,
  field: str,
  low: float,
  high: float = float("inf"),
  *,
  low_open: bool = False,
  high_open: bool = False,
) -> None:
  """Checks that ``config.<field>`` is a finite number in the given interval."""
  value = config
  for part in field.split("."):
    if part not in value:
      raise ValueError(f"config.{field} is missing")
    value = value[part]
  ok = (
    isinstance(value, (int, float, np.floating, np.integer))
    and not isinstance(value, bool)
    and bool(np.isfinite(value))
  )
  if ok:
    ok = (value > low if low_open else value >= low) and (
      value < high if high_open else value <= high
    )
  if not ok:
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    raise ValueError(f"config.{field} must be a number in {lo}{low}, {high}{hi}, got {value!r}")


def adam(config) -> optax.GradientTransformation:
  """Adam from ``config.optimizer`` (learning_rate, b1, b2), as every trainer uses."""
  o = config.optimizer
  return optax.adam(o.learning_rate, b1=o.b1, b2=o.b2)


def check_adam(config) -> None:
  """ValueError unless ``config.optimizer`` holds a valid `adam` setting."""
  check_float(config, "optimizer.learning_rate", 0.0, low_open=True)
  check_float(config, "optimizer.b1", 0.0, 1.0, high_open=True)
  check_float(config, "optimizer.b2", 0.0, 1.0, high_open=True)


def validate_config(config: ml_collections.ConfigDict) -> Trainer:
  """Checks the loop fields and the trainer's own fields; returns the trainer.

  Everything is checked before anything is compiled; errors are ValueErrors
  naming the field.
  """
  if "model" not in config:
    raise ValueError("config.model is missing")
  trainer = get_trainer(config.model)
  for field in (
    "num_steps",
    "batch_size",
    "log_every",
    "checkpoint_every",
    "keep_checkpoints",
    "num_samples",
    "quality_samples",
  ):
    check_int(config, field, 1)
  for field in ("seed", "data_seed", "sample_every"):
    check_int(config, field, 0)
  check_dataset(config)
  trainer.validate(config)
  return trainer


def check_dataset(config) -> None:
  """Unknown dataset → ValueError; CelebA missing or unprepared → the loader's clear error."""
  dataset = config.get("dataset", "synthfaces")
  if dataset not in DATASETS:
    raise ValueError(f"config.dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
  if dataset != "synthfaces" and config.model == "featnet":
    raise ValueError(
      "config.model='featnet' learns the synthetic faces' factors; it needs "
      "config.dataset='synthfaces'"
    )
  if dataset == "celeba":
    if not config.get("data_dir"):
      raise ValueError(
        "config.dataset='celeba' needs config.data_dir: the tfds data_dir "
        "holding the prepared celeb_a dataset"
      )
    _celeba_source(config.data_dir)


# ---- mesh and sharding ------------------------------------------------------------------
def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh with axis ``'data'`` over ``devices`` (default: all devices)."""
  devices = jax.devices() if devices is None else list(devices)
  if not devices:
    raise ValueError("need at least one device")
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def shard_batch(batch: Mapping[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Puts every array of ``batch`` on the mesh, split along its leading axis."""
  sharding = batch_sharded(mesh)
  return {k: jax.device_put(np.asarray(v), sharding) for k, v in batch.items()}


def training_images(config, step: int) -> dict[str, np.ndarray]:
  """Batch ``step`` of the training images: ``{'images': [B, 64, 64, 3]}`` in [-1, 1],
  from the synthetic faces or CelebA (``config.dataset``); a function of
  (data_seed, step), so resumed runs see the same data."""
  if config.get("dataset", "synthfaces") == "celeba":
    from cfmod_jax.data import celeba  # pylint: disable=g-import-not-at-top

    source = _celeba_source(config.data_dir)
    return {"images": celeba.celeba_batch(source, step, config.batch_size, config.data_seed)}
  return {"images": synthfaces.generate(config.batch_size, seed=(config.data_seed, step)).images}


DATASETS = ("synthfaces", "celeba")


@functools.lru_cache(maxsize=2)
def _celeba_source(data_dir: str):
  from cfmod_jax.data import celeba  # pylint: disable=g-import-not-at-top

  return celeba.load_source(data_dir, celeba.TRAIN_SPLIT)


# ---- random keys ----------------------------------------------------------------------------
# Keys use the 'rbg' implementation (random bits from XLA's RngBitGenerator; split
# and fold_in still hash with threefry): on CPU it compiles ~5× faster than the
# default threefry, whose unrolled rounds cost seconds of compilation per
# initializer. Its streams are deterministic for a given jax version and backend
# and do not depend on how the computation is sharded, which is all that
# resumption and data parallelism need.
PRNG_IMPL = "rbg"


def _base_keys(seed: int):
  return jax.random.split(jax.random.key(seed, impl=PRNG_IMPL))


def init_key(seed: int) -> jax.Array:
  """Key of the parameter initialisation."""
  return _base_keys(seed)[0]


def step_key(seed: int, step) -> jax.Array:
  """Key of train step ``step`` (a function of ``(seed, step)`` only)."""
  return jax.random.fold_in(_base_keys(seed)[1], step)


def sample_latents(seed: int, n: int, latent_dim: int) -> jax.Array:
  """Fixed latents of the sample grids: ``[n, latent_dim]`` standard normal."""
  return jax.random.normal(jax.random.fold_in(jax.random.key(seed), 0x5A3), (n, latent_dim))


# ---- compiled functions -----------------------------------------------------------------------
def _step_fn_key(config, mesh: Mesh):
  cfg = {k: v for k, v in config.to_dict().items() if k not in LOOP_FIELDS}
  return json.dumps(cfg, sort_keys=True, default=str), tuple(d.id for d in mesh.devices.flat)


@functools.lru_cache(maxsize=16)
def _compiled(trainer_name: str, cfg_key, mesh: Mesh):
  trainer = get_trainer(trainer_name)
  config = ml_collections.ConfigDict(json.loads(cfg_key[0]))
  repl, data = replicated(mesh), batch_sharded(mesh)

  def step(state, batch):
    return trainer.train_step(config, state, batch, step_key(config.seed, state.step))

  def init(key):
    return trainer.create_state(config, key)

  step_fn = jax.jit(
    step, in_shardings=(repl, data), out_shardings=(repl, repl), donate_argnums=(0,)
  )
  init_fn = jax.jit(init, out_shardings=repl)
  return step_fn, init_fn


def compiled_functions(trainer: Trainer, config, mesh: Mesh):
  """``(step_fn, init_fn)`` jitted for ``mesh``, cached per (config, devices):
  ``step_fn(state, batch) -> (state, metrics)``, ``init_fn(key) -> state``."""
  return _compiled(trainer.name, _step_fn_key(config, mesh), mesh)


# ---- checkpoints ------------------------------------------------------------------------------
def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def checkpoint_meta(trainer: Trainer, config, state_dict, step: int, wall_time_s: float):
  """The JSON item stored beside the state in every trainer checkpoint."""
  arch, kwargs = trainer.export_spec(config)
  return {
    "format": CHECKPOINT_FORMAT,
    "model": trainer.name,
    "step": int(step),
    "arch": arch,
    "kwargs": kwargs,
    "config": config.to_dict(),
    "wall_time_s": float(wall_time_s),
    "jax_version": jax.__version__,
    "manifest": checkpoints.array_manifest(state_dict),
  }


def abstract_state(trainer: Trainer, config, mesh: Mesh | None = None):
  """Shapes, dtypes (and shardings) of the train state, without computing it."""
  state = jax.eval_shape(functools.partial(trainer.create_state, config), init_key(0))
  sharding = replicated(mesh) if mesh is not None else None
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)


def open_manager(workdir_or_dir: str, keep: int | None = None, read_only: bool = False):
  options = ocp.CheckpointManagerOptions(
    max_to_keep=keep, create=not read_only, read_only=read_only
  )
  return ocp.CheckpointManager(
    os.path.abspath(workdir_or_dir), options=options, item_names=("state", "meta")
  )


def restore_checkpoint(
  manager: ocp.CheckpointManager, step: int, trainer: Trainer, config, mesh: Mesh | None = None
):
  """``(state, meta)`` of checkpoint ``step``, verified against its manifest.

  Raises:
    checkpoints.CheckpointError: unreadable, truncated or corrupted data, or a
      state that does not match the manifest (shapes or sha256).
  """
  path = os.path.join(str(manager.directory), str(step))
  try:
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  except Exception as e:  # orbax raises many types; say what is wrong.
    raise checkpoints.CheckpointError(
      f"checkpoint {path} has no readable metadata (truncated or corrupted?): {e}"
    ) from e
  if not isinstance(meta, dict) or meta.get("format") != CHECKPOINT_FORMAT:
    raise checkpoints.CheckpointError(
      f"checkpoint {path} is not a cfmod_jax trainer checkpoint (format {CHECKPOINT_FORMAT})"
    )
  target = abstract_state(trainer, config, mesh)
  target_dict = flax.serialization.to_state_dict(target)
  checkpoints.check_structure(
    meta["manifest"], target_dict, where=path, arch=f"{trainer.name} trainer state"
  )
  try:
    restored = manager.restore(
      step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target_dict))
    )["state"]
  except Exception as e:
    detail = str(e).split(" See full TensorStore details")[0][:400]
    raise checkpoints.CheckpointError(
      f"could not read the arrays of checkpoint {path} (truncated or corrupted?): "
      f"{type(e).__name__}: {detail}"
    ) from e
  checkpoints.verify_manifest(meta["manifest"], restored, where=path)
  return flax.serialization.from_state_dict(target, restored), meta


def latest_checkpoint(workdir: str):
  """``(manager, step)`` of the latest checkpoint in a run's workdir (or its
  ``checkpoints/`` folder); step is None when there is none."""
  directory = workdir
  if os.path.isdir(os.path.join(workdir, "checkpoints")):
    directory = os.path.join(workdir, "checkpoints")
  manager = open_manager(directory, read_only=True)
  return manager, manager.latest_step()


# ---- logs -------------------------------------------------------------------------------------
class MetricsLog:
  """``metrics.jsonl``: one JSON object per logged step (``{"step": s, ...}``)."""

  def __init__(self, path: str, resume_step: int):
    self.path = path
    lines = []
    if os.path.exists(path):  # Drop what an interrupted run logged past its checkpoint.
      with open(path) as f:
        for line in f:
          try:
            if json.loads(line)["step"] <= resume_step:
              lines.append(line)
          except (ValueError, KeyError):
            pass
    fileio.atomic_write_text(path, "".join(lines))

  def write(self, step: int, metrics: Mapping[str, Any]):
    # One line appended per record (a kill can tear only the last line, which
    # `read_metrics` and the next resume skip).
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()


def format_duration(seconds: float) -> str:
  seconds = int(round(seconds))
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def read_metrics(workdir: str) -> list[dict[str, float]]:
  """The records of ``<workdir>/metrics.jsonl``."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    lines = [line for line in f if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except ValueError:
      if i < len(lines) - 1 or line.endswith("\n"):
        raise
      # A last line torn by a killed writer.
  return records


# ---- the loop ---------------------------------------------------------------------------------
@dataclasses.dataclass
class RunResult:
  """What `train_and_evaluate` returns: the final state, its step, the
  run's cumulative wall time (over all resumptions) and the step it resumed
  from (None for a fresh run)."""

  state: Any
  step: int
  wall_time_s: float
  resumed_from: int | None


def save_samples(trainer: Trainer, config, state, path: str) -> str | None:
  from cfmod_jax import viz  # pylint: disable=g-import-not-at-top

  if trainer.sample is None:
    return None
  z = sample_latents(config.seed, config.num_samples, trainer.latent_dim(config))
  images = jax.jit(functools.partial(trainer.sample, config))(state, z)
  return viz.save_image_grid(path, np.asarray(images), ncols=8)


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, devices=None
) -> RunResult:
  """Trains ``config.model`` in ``workdir``, resuming from its latest checkpoint.

  Args:
    config: a config of `experiments/configs` (validated here, before compiling).
    workdir: output folder (checkpoints, metrics.jsonl, samples/).
    devices: devices of the data-parallel mesh (default: ``jax.devices()``);
      ``config.batch_size`` must be a multiple of their number.
  Returns:
    A `RunResult` (the state is replicated on the mesh).
  """
  trainer = validate_config(config)
  devices = jax.devices() if devices is None else list(devices)
  if config.batch_size % len(devices):
    raise ValueError(
      f"config.batch_size={config.batch_size} must be a multiple of the "
      f"number of devices ({len(devices)})"
    )
  mesh = make_mesh(devices)
  os.makedirs(workdir, exist_ok=True)

  manager = open_manager(checkpoint_dir(workdir), keep=config.keep_checkpoints)
  step_fn, init_fn = compiled_functions(trainer, config, mesh)
  start = manager.latest_step()
  wall_before = 0.0
  if start is not None:
    state, meta = restore_checkpoint(manager, start, trainer, config, mesh)
    wall_before = meta["wall_time_s"]
    changed = sorted(
      k
      for k in set(meta["config"]) | set(config.to_dict())
      if k not in LOOP_FIELDS and meta["config"].get(k) != config.to_dict().get(k)
    )
    if changed:
      logging.warning(
        "[%s] resuming with a config that differs from the checkpoint's in: %s",
        trainer.name,
        ", ".join(changed),
      )
    logging.info("[%s] resumed from step %d (%s)", trainer.name, start, checkpoint_dir(workdir))
  else:
    state = init_fn(init_key(config.seed))
  # Written only once the checkpoint (if any) has been restored with this config, so a
  # rejected resume leaves the run's config.json as it was.
  fileio.atomic_write_text(
    os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=2, sort_keys=True)
  )
  first = 0 if start is None else start
  log = MetricsLog(os.path.join(workdir, "metrics.jsonl"), first)

  t_start = time.perf_counter()
  t_window, step_window = t_start, first

  def wall():
    return wall_before + time.perf_counter() - t_start

  for step in range(first, config.num_steps):
    batch = shard_batch(trainer.make_batch(config, step), mesh)
    state, metrics = step_fn(state, batch)
    done = step + 1
    last = done == config.num_steps
    if done % config.log_every == 0 or last:
      metrics = jax.device_get(metrics)
      now = time.perf_counter()
      rate = (done - step_window) / max(now - t_window, 1e-9)
      t_window, step_window = now, done
      log.write(done, {**metrics, "steps_per_s": rate, "wall_time_s": wall()})
      eta = format_duration((config.num_steps - done) / max(rate, 1e-9))
      logging.info(
        "[%s] step %d/%d (%.0f%%) %.2f steps/s, ETA %s | %s",
        trainer.name,
        done,
        config.num_steps,
        100 * done / config.num_steps,
        rate,
        eta,
        " ".join(f"{k}={float(v):.4g}" for k, v in sorted(metrics.items())),
      )
    if config.sample_every and (done % config.sample_every == 0 or last):
      save_samples(trainer, config, state, os.path.join(workdir, "samples", f"step_{done:06d}.png"))
    if done % config.checkpoint_every == 0 or last:
      state_dict = jax.device_get(flax.serialization.to_state_dict(state))
      meta = checkpoint_meta(trainer, config, state_dict, done, wall())
      manager.save(
        done,
        args=ocp.args.Composite(
          state=ocp.args.StandardSave(flax.serialization.to_state_dict(state)),
          meta=ocp.args.JsonSave(meta),
        ),
        force=True,
      )
  manager.wait_until_finished()
  manager.close()
  step = int(jax.device_get(state.step))
  return RunResult(state=state, step=step, wall_time_s=wall(), resumed_from=start)


def load_run(workdir: str, step: int | None = None, devices=None):
  """``(trainer, config, state, meta)`` of a run's checkpoint (latest by default)."""
  manager, latest = latest_checkpoint(workdir)
  try:
    step = latest if step is None else step
    if step is None:
      raise checkpoints.CheckpointError(f"no checkpoint in {workdir}")
    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    except Exception as e:
      raise checkpoints.CheckpointError(
        f"checkpoint {workdir} step {step} has no readable metadata: {e}"
      ) from e
    config = ml_collections.ConfigDict(meta["config"])
    trainer = get_trainer(meta["model"])
    mesh = make_mesh(jax.devices()[:1] if devices is None else devices)
    state, meta = restore_checkpoint(manager, step, trainer, config, mesh)
  finally:
    manager.close()
  return trainer, config, state, meta
