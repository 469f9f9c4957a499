"""Export of a trained run: network variables, sample grid, quality and model card.

``export_run(workdir, out_dir)`` reads the run's latest checkpoint, writes the
exported folder of `cfmod_jax.checkpoints` (``variables.msgpack`` +
``checkpoint.json``) and, for generators, reloads it with
`cfmod_jax.load_generator` (so what is evaluated is exactly what ships), writes
``samples.png`` (the fixed latents of the training grids) and measures
`cfmod_jax.quality.sample_quality`. For the feature network it reports the
held-out accuracy / RMSE of every factor and the real-vs-real floor. Finally it
writes ``MODEL_CARD.md``.

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
from typing import Any

import jax
import numpy as np

from cfmod_jax import checkpoints, fileio, quality, viz
from cfmod_jax.data import synthfaces
from cfmod_jax.train.rng import sample_latents
from cfmod_jax.train.state_io import load_run

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
) -> dict[str, Any]:
  """Exports the latest checkpoint of ``workdir`` to ``out_dir``; returns its JSON.

  ``command``, ``machine`` and ``notes`` (e.g. the config file's docstring) are
  recorded in ``checkpoint.json`` and the model card. For a CelebA run the
  held-out real images come from split ``heldout_split`` (default 'test'),
  which must hold ``2 * quality_samples`` examples.
  """
  trainer, config, state, meta = load_run(workdir)
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
      "from cfmod_jax import quality",
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
        f"(`cfmod_jax.quality.sample_quality`, n = {q['n']} per set):"
      ]
    else:
      lines += [
        f"Fréchet distance in the features of `{q['featnet']}` "
        f"(`cfmod_jax.quality.sample_quality`, n = {q['n']} per set) between generated "
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


__all__ = ["export_run", "featnet_accuracy", "machine_description", "model_card"]
