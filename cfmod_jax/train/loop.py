"""The training loop shared by every trainer: `train_and_evaluate`.

A *trainer* (`cfmod_jax.train.config.Trainer`) is a bundle of pure functions —
``create_state``, ``train_step``, ``make_batch`` … — and `train_and_evaluate`
runs any of them:

* **Data parallel.** A `jax.sharding.Mesh` over the devices (all local devices
  by default) with one axis, ``'data'`` (`cfmod_jax.train.mesh`). Every batch
  array is sharded along its leading (batch) axis, the train state is
  replicated, and the jitted step is compiled once for these shardings: XLA
  inserts the cross-device reductions (gradient means, BatchNorm batch
  statistics), so one CPU and eight devices run the same code and compute the
  same function of the global batch.
* **Deterministic by step.** Batch ``step`` is ``make_batch(config, step)`` (for
  the synthetic faces ``generate(batch_size, seed=(data_seed, step))``,
  `cfmod_jax.train.data`) and its random key is ``fold_in(step_key_base(seed),
  step)`` (`cfmod_jax.train.rng`); nothing else carries randomness. So a run
  restored from its step-``s`` checkpoint computes exactly the steps an
  uninterrupted run computes after step ``s``.
* **Checkpoints** (`cfmod_jax.train.state_io`: orbax, under
  ``<workdir>/checkpoints/<step>``) every ``checkpoint_every`` steps and at the
  end, verified against their sha256 manifest on every restore. A new run in a
  workdir with checkpoints resumes from the latest one.
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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.sharding import Mesh

from cfmod_jax import fileio
from cfmod_jax.train.config import LOOP_FIELDS, Trainer
from cfmod_jax.train.mesh import batch_sharded, make_mesh, replicated, shard_batch
from cfmod_jax.train.registry import get_trainer, validate_config
from cfmod_jax.train.rng import init_key, sample_latents, step_key
from cfmod_jax.train.state_io import (
  checkpoint_dir,
  checkpoint_meta,
  open_manager,
  restore_checkpoint,
)


def _step_fn_key(config: ml_collections.ConfigDict, mesh: Mesh) -> tuple[str, tuple[int, ...]]:
  cfg = {k: v for k, v in config.to_dict().items() if k not in LOOP_FIELDS}
  return json.dumps(cfg, sort_keys=True, default=str), tuple(d.id for d in mesh.devices.flat)


@functools.lru_cache(maxsize=16)
def _compiled(trainer_name: str, cfg_key: tuple[str, tuple[int, ...]], mesh: Mesh) -> tuple:
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


def compiled_functions(
  trainer: Trainer, config: ml_collections.ConfigDict, mesh: Mesh
) -> tuple[Callable[..., Any], Callable[..., Any]]:
  """``(step_fn, init_fn)`` jitted for ``mesh``, cached per (config, devices):
  ``step_fn(state, batch) -> (state, metrics)``, ``init_fn(key) -> state``."""
  return _compiled(trainer.name, _step_fn_key(config, mesh), mesh)


class MetricsLog:
  """``metrics.jsonl``: one JSON object per logged step (``{"step": s, ...}``)."""

  def __init__(self, path: str, resume_step: int) -> None:
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

  def write(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Appends the record of ``step``."""
    # One line appended per record (a kill can tear only the last line, which
    # `read_metrics` and the next resume skip).
    record = {"step": int(step), **{k: float(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
      f.flush()


def format_duration(seconds: float) -> str:
  """``1h02m03s`` / ``2m03s``."""
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


@dataclasses.dataclass
class RunResult:
  """What `train_and_evaluate` returns: the final state, its step, the
  run's cumulative wall time (over all resumptions) and the step it resumed
  from (None for a fresh run)."""

  state: Any
  step: int
  wall_time_s: float
  resumed_from: int | None


def save_samples(
  trainer: Trainer, config: ml_collections.ConfigDict, state: Any, path: str
) -> str | None:
  """The sample grid of ``state`` at the fixed latents, written to ``path`` (None for
  models that do not generate)."""
  from cfmod_jax import viz  # pylint: disable=g-import-not-at-top

  if trainer.sample is None:
    return None
  z = sample_latents(config.seed, config.num_samples, trainer.latent_dim(config))
  images = jax.jit(functools.partial(trainer.sample, config))(state, z)
  return viz.save_image_grid(path, np.asarray(images), ncols=8)


def train_and_evaluate(
  config: ml_collections.ConfigDict, workdir: str, *, devices: Sequence[jax.Device] | None = None
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


__all__ = [
  "MetricsLog",
  "RunResult",
  "compiled_functions",
  "format_duration",
  "read_metrics",
  "save_samples",
  "train_and_evaluate",
]
