"""The benchmark's shared workload: one DCGAN-64 (`benchmark_generator`), saved once
by the parent and loaded by every worker (`save_generator`, `load_generator`,
`load_numpy_variables`: the exported format of `cfmod_jax.checkpoints`), and one
set of latent pairs (`benchmark_pairs`, drawn as `elementary_influence_maps` draws
them with `benchmark_key`)."""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from cfmod_jax import checkpoints
from cfmod_jax.generator import Generator

ARCH = "dcgan"


def benchmark_generator(
  width: int = 64, seed: int = 0, latent_dim: int = 100, calib_pairs: int = 256
) -> Generator:
  """DCGAN-64 with random weights and non-trivial BatchNorm statistics.

  Weights are drawn with numpy (DCGAN's N(0, 0.02²) for kernels; no compilation,
  so a worker process starts fast). The running mean/var of every BatchNorm are set
  to the batch statistics of ``calib_pairs`` prior samples (so activations keep a
  sensible scale, as in a trained model), then perturbed (mean ± 0.3 σ, var ×
  U[0.5, 2]); BN scale ~ U[0.5, 1.5], bias ~ N(0, 0.2²), RGB bias ~ N(0, 0.1²).
  Returns a `cfmod_jax.Generator`.
  """
  import jax.numpy as jnp
  from flax import traverse_util

  from cfmod_jax.generator import StagedGenerator
  from cfmod_jax.models.dcgan import DCGANGenerator

  module = DCGANGenerator(latent_dim=latent_dim, width=width)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, latent_dim)))
  rng = np.random.default_rng(seed)
  flat = {}
  for path, leaf in traverse_util.flatten_dict(shapes, sep="/").items():
    kind = path.rsplit("/", 1)[-1]
    if kind == "kernel":
      flat[path] = 0.02 * rng.standard_normal(leaf.shape)
    elif kind in ("scale", "var"):
      flat[path] = np.ones(leaf.shape)
    else:
      flat[path] = np.zeros(leaf.shape)
  init = traverse_util.unflatten_dict(
    {k: jnp.asarray(v, jnp.float32) for k, v in flat.items()}, sep="/"
  )
  gen = Generator(module, init)
  module, n_stages = gen.module, len(gen.sites) + 1
  draws = {}  # all random numbers first, so the calibration below is one jitted function
  for i in range(n_stages):
    name = f"stages_{i}"
    if name in gen.variables["batch_stats"]:
      c = gen.variables["batch_stats"][name]["bn"]["mean"].shape[0]
      draws[name] = {
        "mean_noise": 0.3 * rng.standard_normal(c),
        "var_factor": rng.uniform(0.5, 2.0, c),
        "scale": rng.uniform(0.5, 1.5, c),
        "bias": 0.2 * rng.standard_normal(c),
      }
    else:
      draws[name] = {
        "rgb_bias": 0.1 * rng.standard_normal(gen.variables["params"][name]["conv"]["bias"].shape)
      }
  draws = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), draws)
  z = gen.sample_latents(jax.random.key(seed + 2), calib_pairs)

  @jax.jit
  def calibrate(variables, draws, z):
    params, stats = dict(variables["params"]), dict(variables["batch_stats"])
    x = z
    for i in range(n_stages):
      name, d = f"stages_{i}", draws[f"stages_{i}"]
      v = {"params": params, "batch_stats": stats}
      if name in stats:
        pre = module.apply(v, i, x, method=StagedGenerator.stage_pre)
        mean, var = pre.mean(axis=(0, 1, 2)), pre.var(axis=(0, 1, 2))
        stats[name] = {
          "bn": {"mean": mean + d["mean_noise"] * jnp.sqrt(var), "var": var * d["var_factor"]}
        }
        params[name] = {**params[name], "bn": {"scale": d["scale"], "bias": d["bias"]}}
      else:
        params[name] = {**params[name], "conv": {**params[name]["conv"], "bias": d["rgb_bias"]}}
      v = {"params": params, "batch_stats": stats}
      if i < n_stages - 1:
        x = module.apply(v, z, x, start=i, stop=i + 1) if i else module.apply(v, z, start=0, stop=1)
    return {"params": params, "batch_stats": stats}

  variables = calibrate(gen.variables, draws, z)
  return Generator(module, variables, name=f"dcgan-w{width}-bench")


def save_generator(gen: Generator, path: str, *, width: int, latent_dim: int = 100) -> str:
  """Writes ``gen``'s variables as an exported folder (`cfmod_jax.checkpoints.save_variables`,
  float32, arch ``dcgan``); returns ``path``."""
  return checkpoints.save_variables(
    path,
    gen.variables,
    kind="generator",
    arch=ARCH,
    kwargs={"latent_dim": latent_dim, "width": width},
  )


def load_generator(path: str) -> Generator:
  """The `Generator` that `save_generator` wrote to ``path``
  (`cfmod_jax.checkpoints.load_variables`: verified, float32)."""
  from cfmod_jax.models.dcgan import DCGANGenerator

  variables, meta = checkpoints.load_variables(path, kind="generator")
  if meta["arch"] != ARCH:
    raise checkpoints.CheckpointError(f"{path} holds arch {meta['arch']!r}, not {ARCH!r}")
  kwargs = meta["kwargs"]
  return Generator(DCGANGenerator(**kwargs), variables, name=f"dcgan-w{kwargs['width']}-bench")


def load_numpy_variables(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """``(variables, meta)`` of a `save_generator` folder as numpy arrays, without
  starting a JAX runtime (the torch worker's memory stays its own): the folder's
  ``checkpoint.json`` (`cfmod_jax.checkpoints.read_meta`), its data file decoded
  with flax's msgpack and checked against the sha256 manifest
  (`cfmod_jax.checkpoints.verify_manifest`)."""
  import flax

  meta = checkpoints.read_meta(path)
  data_path = os.path.join(path, checkpoints.DATA_FILE)
  with open(data_path, "rb") as f:
    variables = flax.serialization.msgpack_restore(f.read())
  checkpoints.verify_manifest(meta["manifest"], variables, where=data_path)
  return variables, meta


def benchmark_key(seed: int) -> jax.Array:
  """The key `elementary_influence_maps` gets in every run of the benchmark."""
  return jax.random.key(seed + 100)


def benchmark_pairs(gen: Generator, n_pairs: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The ``(z1, z2)`` that ``elementary_influence_maps(gen, site, n_pairs,
  benchmark_key(seed))`` draws, as numpy ``[N, latent_dim]``."""
  k1, k2 = jax.random.split(benchmark_key(seed))
  return np.asarray(gen.sample_latents(k1, n_pairs)), np.asarray(gen.sample_latents(k2, n_pairs))


__all__ = [
  "benchmark_generator",
  "benchmark_key",
  "benchmark_pairs",
  "load_generator",
  "load_numpy_variables",
  "save_generator",
]
