"""Export of a trained run: network variables, sample grid, quality and model card.

``export_run(workdir, out_dir)`` reads the run's latest checkpoint, writes the
exported folder of `cfmod_jax.checkpoints` (``variables.msgpack`` +
``checkpoint.json``) and, for generators, reloads it with
`cfmod_jax.load_generator` (so what is evaluated is exactly what ships), writes
``samples.png`` (the fixed latents of the training grids) and measures
`cfmod_jax.lab.quality.sample_quality`. For the feature network it reports the
held-out accuracy / RMSE of every factor and the real-vs-real floor. Finally it
writes ``MODEL_CARD.md``.

``quality_curve(workdir)`` measures the Fréchet distance of every checkpoint of
a generator run and keeps it in ``<workdir>/quality_curve.json`` (resumable: a
step already measured with the same settings is not measured again). When that
file exists, the export copies the curve into ``checkpoint.json``, draws
``quality_curve.png`` and puts the table in the model card; ``step='best'``
exports the checkpoint with the lowest distance.

Generators trained on CelebA (``config.dataset='celeba'``) are compared with two
disjoint held-out sets of CelebA's 'test' split (`cfmod_jax.data.celeba.heldout_images`;
training reads 'train') in the features of the same network, which was trained on
the synthetic faces: such numbers rank CelebA checkpoints against each other and
are not comparable with published (Inception) FIDs.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time
from typing import Any

import jax
import numpy as np

from cfmod_jax import checkpoints, fileio, viz
from cfmod_jax.data import synthfaces
from cfmod_jax.lab import quality
from cfmod_jax.train import state_io
from cfmod_jax.train.rng import sample_latents
from cfmod_jax.train.state_io import latest_checkpoint, load_run

_DESCRIPTIONS = {
  "dcgan": "DCGAN generator (`cfmod_jax.models.DCGANGenerator`), non-saturating GAN loss",
  "vae": "β-VAE decoder (`cfmod_jax.models.VAEDecoder`) of a `BetaVAE`",
  "began": "BEGAN generator (`cfmod_jax.models.BEGANGenerator`), autoencoder discriminator",
  "featnet": "factor-predicting feature network (`cfmod_jax.models.FeatNet`)",
}


def machine_description() -> str:
  devices = jax.devices()
  if devices[0].platform == "cpu":
    return f"{os.cpu_count()}-core CPU ({platform.machine()}), jax {jax.__version__}"
  return f"{len(devices)}× {devices[0].device_kind}, jax {jax.__version__}"


def _update_meta(path: str, **fields):
  meta = checkpoints.read_meta(path)
  meta.update(fields)
  fileio.atomic_write_text(
    os.path.join(path, checkpoints.META_FILE), json.dumps(meta, indent=1, sort_keys=True)
  )


def featnet_accuracy(featnet: quality.FeatureNet, n: int) -> dict[str, float]:
  """Held-out accuracy (categorical) and RMSE in factor units (continuous)."""
  faces = synthfaces.generate(n, seed=quality.HELDOUT_SEEDS[0])
  pred = featnet.predict(faces.images)
  out = {}
  for name, _ in quality.CATEGORICAL:
    out[f"acc_{name}"] = float(np.mean(pred[name] == faces.factors[name]))
  for name, *_ in quality.CONTINUOUS:
    out[f"rmse_{name}"] = float(np.sqrt(np.mean(np.square(pred[name] - faces.factors[name]))))
  return out


def _celeba_heldout(config, n: int, split: str | None):
  """``(real_images, description)`` of a CelebA run's held-out sets for `sample_quality`."""
  from cfmod_jax.data import celeba  # pylint: disable=g-import-not-at-top

  split = celeba.HELDOUT_SPLIT if split is None else split
  if split == celeba.TRAIN_SPLIT:
    raise ValueError(
      f"heldout_split={split!r} is the split the trainers read; the held-out "
      f"real images need another one (e.g. {celeba.HELDOUT_SPLIT!r})"
    )
  source = celeba.load_source(config.data_dir, split)  # clear errors before anything is written
  if 2 * n > len(source):
    raise ValueError(
      f"quality_samples={n}: split {split!r} of {celeba.DATASET!r} in "
      f"data_dir={config.data_dir!r} has {len(source)} examples, and the two disjoint "
      f"held-out sets need {2 * n}; quality_samples must be <= {len(source) // 2}, half of them"
    )
  real_images = functools.partial(celeba.heldout_images, config.data_dir, split=split)
  heldout = {
    "dataset": celeba.DATASET,
    "data_dir": config.data_dir,
    "split": split,
    "train_split": celeba.TRAIN_SPLIT,
  }
  return real_images, heldout


def export_run(
  workdir: str,
  out_dir: str,
  *,
  storage_dtype: str = "float32",
  featnet: str = checkpoints.SHIPPED_FEATNET,
  command: str | None = None,
  machine: str | None = None,
  quality_samples: int | None = None,
  notes: str | None = None,
  heldout_split: str | None = None,
  step: int | str | None = None,
) -> dict[str, Any]:
  """Exports a checkpoint of ``workdir`` to ``out_dir``; returns its JSON.

  ``step``: None (the latest), a step number, or ``'best'`` (the lowest Fréchet
  distance in the run's ``quality_curve.json``, see `quality_curve`).

  ``command``, ``machine`` and ``notes`` (e.g. the config file's docstring) are
  recorded in ``checkpoint.json`` and the model card. For a CelebA run the
  held-out real images come from split ``heldout_split`` (default 'test'),
  which must hold ``2 * quality_samples`` examples.
  """
  if step == "best":
    step = best_step(workdir)
  elif step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
    raise ValueError(f"step must be None, 'best' or a checkpoint step >= 0, got {step!r}")
  trainer, config, state, meta = load_run(workdir, step)
  curve = read_quality_curve(workdir) if trainer.sample is not None else []
  dataset = config.get("dataset", "synthfaces")
  arch, kwargs = trainer.export_spec(config)
  kind = "featnet" if trainer.sample is None else "generator"
  n = int(quality_samples or config.quality_samples)
  real_images, heldout = None, None
  if dataset == "celeba" and kind == "generator":
    real_images, heldout = _celeba_heldout(config, n, heldout_split)
  variables = jax.device_get(trainer.export_variables(state))
  record = {
    "wall_time_s": meta["wall_time_s"],
    "command": command,
    "machine": machine or machine_description(),
    "notes": notes,
    "name": os.path.basename(os.path.normpath(out_dir)),
    "dataset": dataset,
  }  # read by load_generator: Generator.dataset
  checkpoints.save_variables(
    out_dir,
    variables,
    kind=kind,
    arch=arch,
    kwargs=kwargs,
    step=meta["step"],
    config=config.to_dict(),
    storage_dtype=storage_dtype,
    extra=record,
  )
  if kind == "generator":
    gen = checkpoints.load_generator(out_dir)
    images = np.asarray(gen(sample_latents(config.seed, config.num_samples, gen.latent_shape[0])))
    viz.save_image_grid(os.path.join(out_dir, "samples.png"), images, ncols=8)
    q = quality.sample_quality(gen, quality.load_featnet(featnet), n=n, real_images=real_images)
    if real_images is None:
      real = synthfaces.generate(len(images), seed=quality.HELDOUT_SEEDS[0]).images
    else:  # The first images of held-out set 0 (at most n of them).
      real = real_images(min(len(images), n), 0)
    record["quality"] = {
      "fd": q.fd,
      "floor": q.floor,
      "n": q.n,
      "featnet": featnet,
      "diversity": float(images.std(axis=0).mean()),
      "diversity_real": float(real.std(axis=0).mean()),
    }
    if heldout is not None:
      record["quality"]["real_set"] = heldout
    if curve:
      record["quality_curve"] = curve
      plot_quality_curve(curve, os.path.join(out_dir, "quality_curve.png"), meta["step"])
  else:
    net = quality.load_featnet(out_dir)
    record["quality"] = {
      "floor": quality.real_floor(net, n),
      "n": n,
      "heldout": featnet_accuracy(net, n),
    }
  _update_meta(out_dir, **record)
  meta_out = checkpoints.read_meta(out_dir)
  fileio.atomic_write_text(
    os.path.join(out_dir, "MODEL_CARD.md"), model_card(meta_out, trainer.name)
  )
  return meta_out


QUALITY_CURVE_FILE = "quality_curve.json"


def _curve_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), QUALITY_CURVE_FILE)


def read_quality_curve(workdir: str) -> list[dict[str, Any]]:
  """The entries of ``<workdir>/quality_curve.json`` sorted by step ([] if none):
  ``{"step", "fd", "floor", "n", "featnet", "seconds"}``."""
  path = _curve_path(workdir)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    entries = json.load(f)["entries"]
  return sorted(entries, key=lambda e: e["step"])


def quality_curve(
  workdir: str,
  *,
  n: int = 2000,
  featnet: str = checkpoints.SHIPPED_FEATNET,
  steps: list[int] | None = None,
  log=None,
) -> list[dict[str, Any]]:
  """Fréchet distance (`cfmod_jax.lab.quality.sample_quality`, ``n`` per set) of every
  checkpoint of a generator run (or of ``steps``), each as exported: the
  trainer's `export_variables` (for the DCGAN, the moving average of G).

  Entries already in ``<workdir>/quality_curve.json`` with the same ``n`` and
  ``featnet`` are kept; each new one is written as soon as it is measured.
  Returns every entry, sorted by step.
  """
  if isinstance(n, bool) or not isinstance(n, int) or n < 2:
    raise ValueError(f"n must be an integer >= 2, got {n!r}")
  manager, _ = latest_checkpoint(workdir)
  try:
    available = sorted(manager.all_steps())
  finally:
    manager.close()
  if not available:
    raise checkpoints.CheckpointError(f"no checkpoint in {workdir}")
  if steps is not None:
    missing = sorted(set(steps) - set(available))
    if missing:
      raise ValueError(f"steps {missing} have no checkpoint in {workdir}; available: {available}")
    available = sorted(set(steps))
  entries = {e["step"]: e for e in read_quality_curve(workdir)}
  net = None
  for step in available:
    old = entries.get(step)
    if old is not None and old["n"] == n and old["featnet"] == featnet:
      continue
    if net is None:
      net = quality.load_featnet(featnet)
    t0 = time.perf_counter()
    gen = checkpoints.load_generator(os.path.join(state_io.checkpoint_dir(workdir), str(step)))
    q = quality.sample_quality(gen, net, n=n)
    entries[step] = {
      "step": step,
      "fd": q.fd,
      "floor": q.floor,
      "n": n,
      "featnet": featnet,
      "seconds": time.perf_counter() - t0,
    }
    fileio.atomic_write_text(
      _curve_path(workdir),
      json.dumps({"entries": [entries[k] for k in sorted(entries)]}, indent=1),
    )
    if log is not None:
      log(f"step {step}: FD {q.fd:.2f} (floor {q.floor:.2f})")
  return [entries[k] for k in sorted(entries)]


def best_step(workdir: str) -> int:
  """The step with the lowest Fréchet distance in ``quality_curve.json``."""
  curve = read_quality_curve(workdir)
  if not curve:
    raise ValueError(
      f"step='best' needs {_curve_path(workdir)}: run "
      f"`python -m experiments.quality_curve --workdir {workdir}` first"
    )
  return min(curve, key=lambda e: e["fd"])["step"]


def plot_quality_curve(curve: list[dict[str, Any]], path: str, exported_step: int) -> None:
  """Fréchet distance per step (log scale), the floor and the exported step."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  steps = [e["step"] for e in curve]
  fig, ax = plt.subplots(figsize=(6, 3.2))
  ax.plot(steps, [e["fd"] for e in curve], "o-", ms=3, label="generated vs real")
  ax.plot(steps, [e["floor"] for e in curve], "k:", label="real vs real (floor)")
  ax.axvline(exported_step, color="C3", ls="--", lw=1, label=f"exported (step {exported_step})")
  ax.set_yscale("log")
  ax.set_xlabel("training step")
  ax.set_ylabel("Fréchet distance (featnet)")
  ax.legend(fontsize=8)
  fig.tight_layout()
  with fileio.atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=100, metadata={"Software": None})
  plt.close(fig)


def _config_lines(cfg: dict, prefix: str = "") -> list[str]:
  lines = []
  for k in sorted(cfg):
    v = cfg[k]
    if isinstance(v, dict):
      lines += _config_lines(v, f"{prefix}{k}.")
    else:
      lines.append(f"{prefix}{k}={v!r}")
  return lines


def _training_data(cfg: dict) -> str:
  """The model card's sentence on the training data (``config.dataset``)."""
  if cfg.get("dataset", "synthfaces") == "celeba":
    return (
      f"trained on CelebA (tfds `celeb_a`, split 'train', from data_dir "
      f"`{cfg['data_dir']}`), centre-cropped to 140×140 and resized to 64×64 "
      "(`cfmod_jax.data.celeba`; batch `s` = "
      f"`celeba_batch(source, s, {cfg['batch_size']}, seed={cfg['data_seed']})`)."
    )
  return (
    "trained on the procedural\n64×64 synthetic faces of `cfmod_jax.data.synthfaces` "
    f"(batch `s` = `generate({cfg['batch_size']}, seed=({cfg['data_seed']}, s))`)."
  )


def model_card(meta: dict[str, Any], model: str) -> str:
  """The Markdown model card of an exported folder's ``checkpoint.json``."""
  name = meta["name"]
  cfg = meta["config"]
  kwargs = ", ".join(f"{k}={v}" for k, v in sorted(meta["kwargs"].items()))
  size_mb = meta["file_bytes"] / 1e6
  q = meta["quality"]
  minutes = meta["wall_time_s"] / 60
  lines = [
    f"# {name}",
    "",
    f"{_DESCRIPTIONS[model]}, `{meta['arch']}({kwargs})`, {_training_data(cfg)}",
    "",
    "## Use",
    "",
    "```python",
  ]
  if meta["kind"] == "generator":
    lines += [
      "import jax, cfmod_jax",
      f"gen = cfmod_jax.load_generator({name!r})",
      "images = gen(gen.sample_latents(jax.random.key(0), 16))  # [16, 64, 64, 3] in [-1, 1]",
    ]
  else:
    lines += [
      "from cfmod_jax.lab import quality",
      f"net = quality.load_featnet({name!r})",
      f"net.features(images)  # [N, {meta['kwargs']['feature_dim']}]; "
      "net.predict(images)['hair_color']  # [N]",
    ]
  lines += [
    "```",
    "",
    "## Training",
    "",
    f"- command: `{meta['command']}`" if meta.get("command") else "- command: (not recorded)",
    f"- seed {cfg['seed']}, data seed {cfg['data_seed']}, {meta['step']} steps of "
    f"batch {cfg['batch_size']}",
    f"- wall time {minutes:.1f} min (training, incl. compilation and checkpoints) on "
    f"{meta['machine']}, shared with other jobs",
    "- config: `" + " ".join(_config_lines(cfg)) + "`",
    "",
    "## Files",
    "",
    f"- `{meta['file']}`: {size_mb:.2f} MB, {meta['storage_dtype']} storage "
    "(float32 when loaded); sha256 in `checkpoint.json`",
    "- `checkpoint.json`: architecture, config, sha256 manifest, the numbers below",
  ]
  if meta["kind"] == "generator":
    lines += [
      f"- `samples.png`: {cfg['num_samples']} samples (the fixed latents of the training grids)",
      "",
      "## Sample quality",
      "",
    ]
    held = q.get("real_set")
    if held is None:
      lines += [
        f"Fréchet distance in the features of `{q['featnet']}` "
        f"(`cfmod_jax.lab.quality.sample_quality`, n = {q['n']} per set):"
      ]
    else:
      lines += [
        f"Fréchet distance in the features of `{q['featnet']}` "
        f"(`cfmod_jax.lab.quality.sample_quality`, n = {q['n']} per set) between generated "
        f"images and held-out `{held['dataset']}` images of split '{held['split']}' "
        f"(training read '{held['train_split']}'), preprocessed like the training "
        f"batches: examples 0…{q['n'] - 1} in storage order "
        f"(`cfmod_jax.data.celeba.heldout_images`); the floor compares them with "
        f"examples {q['n']}…{2 * q['n'] - 1}.",
        "",
        f"The feature network `{q['featnet']}` was trained on the procedural synthetic "
        "faces, not on CelebA: the number compares CelebA checkpoints with each other "
        "(at equal n), not with published FIDs (Inception features).",
      ]
    real_name = "real faces" if held is None else f"held-out {held['dataset']} images"
    lines += [
      "",
      "| generated vs held-out real | real vs real (floor) |",
      "| --- | --- |",
      f"| {q['fd']:.3f} | {q['floor']:.3f} |",
      "",
      f"Sample diversity (per-pixel standard deviation across the {cfg['num_samples']} "
      f"samples below, averaged over pixels): {q['diversity']:.3f} "
      f"({real_name}: {q['diversity_real']:.3f}).",
      "",
    ]
    curve = meta.get("quality_curve")
    if curve:
      lines += [
        "",
        "## Quality during training",
        "",
        f"Fréchet distance of every checkpoint (as exported; n = {curve[0]['n']} per set, "
        "`python -m experiments.quality_curve`); this folder holds step "
        f"{meta['step']}.",
        "",
        "| step | " + " | ".join(str(e["step"]) for e in curve) + " |",
        "|---|" + "---:|" * len(curve),
        "| FD | "
        + " | ".join(
          f"**{e['fd']:.1f}**" if e["step"] == meta["step"] else f"{e['fd']:.1f}" for e in curve
        )
        + " |",
        "",
        "![quality curve](quality_curve.png)",
      ]
    lines += [
      "",
      "## Samples",
      "",
      "![samples](samples.png)",
      "",
    ]
  else:
    held = q["heldout"]
    lines += [
      "",
      "## Held-out performance",
      "",
      f"On {q['n']} held-out faces (`quality.HELDOUT_SEEDS[0]`):",
      "",
      "| factor | accuracy / RMSE |",
      "| --- | --- |",
    ]
    lines += [f"| {k[4:]} | {v:.3f} (acc) |" for k, v in held.items() if k.startswith("acc_")]
    lines += [f"| {k[5:]} | {v:.3f} (RMSE) |" for k, v in held.items() if k.startswith("rmse_")]
    lines += ["", f"Real-vs-real Fréchet distance floor at n = {q['n']}: {q['floor']:.3f}", ""]
  if meta.get("notes"):
    lines += ["## Notes (from the config file)", "", meta["notes"].strip(), ""]
  return "\n".join(lines)


__all__ = [
  "QUALITY_CURVE_FILE",
  "best_step",
  "export_run",
  "featnet_accuracy",
  "machine_description",
  "model_card",
  "plot_quality_curve",
  "quality_curve",
  "read_quality_curve",
]
