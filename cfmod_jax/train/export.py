"""Export of a trained run: network variables, sample grid, quality and model card.

``export_run(workdir, out_dir)`` reads the run's latest checkpoint, writes the
exported folder of `cfmod_jax.checkpoints` (``variables.msgpack`` +
``checkpoint.json``) and, for generators, reloads it with
`cfmod_jax.load_generator` (so what is evaluated is exactly what ships), writes
``samples.png`` (the fixed latents of the training grids) and measures
`cfmod_jax.quality.sample_quality`. For the feature network it reports the
held-out accuracy / RMSE of every factor and the real-vs-real floor. Finally it
writes ``MODEL_CARD.md``.
"""

from __future__ import annotations

import json
import os
import platform
from typing import Any

import jax
import numpy as np

from cfmod_jax import checkpoints, quality, viz
from cfmod_jax.data import synthfaces
from cfmod_jax.train import common

_DESCRIPTIONS = {
    "dcgan": "DCGAN generator (`cfmod_jax.models.DCGANGenerator`), non-saturating GAN loss",
    "vae": "β-VAE decoder (`cfmod_jax.models.VAEDecoder`) of a `BetaVAE`",
    "began": "BEGAN generator (`cfmod_jax.models.BEGANGenerator`), autoencoder discriminator",
    "featnet": "factor-predicting feature network (`cfmod_jax.quality.FeatNet`)",
}


def machine_description() -> str:
  devices = jax.devices()
  if devices[0].platform == "cpu":
    return f"{os.cpu_count()}-core CPU ({platform.machine()}), jax {jax.__version__}"
  return f"{len(devices)}× {devices[0].device_kind}, jax {jax.__version__}"


def _update_meta(path: str, **fields):
  meta = checkpoints.read_meta(path)
  meta.update(fields)
  with open(os.path.join(path, checkpoints.META_FILE), "w") as f:
    json.dump(meta, f, indent=1, sort_keys=True)


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


def export_run(workdir: str, out_dir: str, *, storage_dtype: str = "float32",
               featnet: str = checkpoints.SHIPPED_FEATNET, command: str | None = None,
               machine: str | None = None, quality_samples: int | None = None,
               notes: str | None = None) -> dict[str, Any]:
  """Exports the latest checkpoint of ``workdir`` to ``out_dir``; returns its JSON.

  ``command``, ``machine`` and ``notes`` (e.g. the config file's docstring) are
  recorded in ``checkpoint.json`` and the model card.
  """
  trainer, config, state, meta = common.load_run(workdir)
  if config.get("dataset", "synthfaces") != "synthfaces":
    raise ValueError(f"export computes the synthetic-faces quality number and model card; "
                     f"the run in {workdir} trained on {config.dataset!r}: load its generator "
                     f"with cfmod_jax.load_generator({workdir!r}) instead")
  arch, kwargs = trainer.export_spec(config)
  kind = "featnet" if trainer.sample is None else "generator"
  variables = jax.device_get(trainer.export_variables(state))
  n = int(quality_samples or config.quality_samples)
  record = {"wall_time_s": meta["wall_time_s"], "command": command,
            "machine": machine or machine_description(), "notes": notes,
            "name": os.path.basename(os.path.normpath(out_dir))}
  checkpoints.save_variables(out_dir, variables, kind=kind, arch=arch, kwargs=kwargs,
                             step=meta["step"], config=config.to_dict(),
                             storage_dtype=storage_dtype, extra=record)
  if kind == "generator":
    gen = checkpoints.load_generator(out_dir)
    images = np.asarray(gen(common.sample_latents(config.seed, config.num_samples,
                                                  gen.latent_shape[0])))
    viz.save_image_grid(os.path.join(out_dir, "samples.png"), images, ncols=8)
    q = quality.sample_quality(gen, quality.load_featnet(featnet), n=n)
    real = synthfaces.generate(len(images), seed=quality.HELDOUT_SEEDS[0]).images
    record["quality"] = {"fd": q.fd, "floor": q.floor, "n": q.n, "featnet": featnet,
                         "diversity": float(images.std(axis=0).mean()),
                         "diversity_real": float(real.std(axis=0).mean())}
  else:
    net = quality.load_featnet(out_dir)
    record["quality"] = {"floor": quality.real_floor(net, n), "n": n,
                         "heldout": featnet_accuracy(net, n)}
  _update_meta(out_dir, **record)
  meta_out = checkpoints.read_meta(out_dir)
  with open(os.path.join(out_dir, "MODEL_CARD.md"), "w") as f:
    f.write(model_card(meta_out, trainer.name))
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
      f"{_DESCRIPTIONS[model]}, `{meta['arch']}({kwargs})`, trained on the procedural",
      "64×64 synthetic faces of `cfmod_jax.data.synthfaces` (batch `s` = "
      f"`generate({cfg['batch_size']}, seed=({cfg['data_seed']}, s))`).",
      "",
      "## Use",
      "",
      "```python",
  ]
  if meta["kind"] == "generator":
    lines += ["import jax, cfmod_jax",
              f"gen = cfmod_jax.load_generator({name!r})",
              "images = gen(gen.sample_latents(jax.random.key(0), 16))  "
              "# [16, 64, 64, 3] in [-1, 1]"]
  else:
    lines += ["from cfmod_jax import quality",
              f"net = quality.load_featnet({name!r})",
              "net.features(images)  # [N, %d]; net.predict(images)['hair_color']  # [N]"
              % meta["kwargs"]["feature_dim"]]
  lines += ["```", "", "## Training", "",
            f"- command: `{meta['command']}`" if meta.get("command") else "- command: (not recorded)",
            f"- seed {cfg['seed']}, data seed {cfg['data_seed']}, {meta['step']} steps of "
            f"batch {cfg['batch_size']}",
            f"- wall time {minutes:.1f} min (training, incl. compilation and checkpoints) on "
            f"{meta['machine']}, shared with other jobs",
            "- config: `" + " ".join(_config_lines(cfg)) + "`",
            "",
            "## Files", "",
            f"- `{meta['file']}`: {size_mb:.2f} MB, {meta['storage_dtype']} storage "
            "(float32 when loaded); sha256 in `checkpoint.json`",
            "- `checkpoint.json`: architecture, config, sha256 manifest, the numbers below",
            ]
  if meta["kind"] == "generator":
    lines += ["- `samples.png`: 64 samples (the fixed latents of the training grids)",
              "", "## Sample quality", "",
              f"Fréchet distance in the features of `{q['featnet']}` "
              f"(`cfmod_jax.quality.sample_quality`, n = {q['n']} per set):",
              "", "| generated vs held-out real | real vs real (floor) |",
              "| --- | --- |", f"| {q['fd']:.3f} | {q['floor']:.3f} |", "",
              f"Sample diversity (per-pixel standard deviation across the {cfg['num_samples']} "
              f"samples below, averaged over pixels): {q['diversity']:.3f} "
              f"(real faces: {q['diversity_real']:.3f}).", "",
              "## Samples", "", "![samples](samples.png)", ""]
  else:
    held = q["heldout"]
    lines += ["", "## Held-out performance", "",
              f"On {q['n']} held-out faces (`quality.HELDOUT_SEEDS[0]`):", "",
              "| factor | accuracy / RMSE |", "| --- | --- |"]
    lines += [f"| {k[4:]} | {v:.3f} (acc) |" for k, v in held.items() if k.startswith("acc_")]
    lines += [f"| {k[5:]} | {v:.3f} (RMSE) |" for k, v in held.items() if k.startswith("rmse_")]
    lines += ["", f"Real-vs-real Fréchet distance floor at n = {q['n']}: {q['floor']:.3f}", ""]
  if meta.get("notes"):
    lines += ["## Notes (from the config file)", "", meta["notes"].strip(), ""]
  return "\n".join(lines)
