"""Convert ``pytorch-pretrained-biggan`` state dicts to `BigGANDeep` variables.

The PyTorch port wraps every linear and convolutional layer (except the class
embedding) in ``torch.nn.utils.spectral_norm``; its state dict stores
``weight_orig`` and the power-iteration vectors ``weight_u``, ``weight_v``. In
eval mode PyTorch uses ``W = W_orig / σ`` with ``σ = u · (W_mat v)`` (``W_mat``:
``W_orig`` reshaped to ``[out, -1]``) and no power iteration; we fold exactly that
into our kernels. (In train mode — the port's default after ``from_pretrained``,
which never calls ``eval()`` — each forward first runs one power iteration,
``v ← normalize(W_matᵀ u)``, ``u ← normalize(W_mat v)``; ``power_iterations=1``
reproduces that first forward. For the released weights, whose u and v have
converged, the two agree closely.)

Layouts: convolutions OIHW → HWIO, linear ``[out, in]`` → ``[in, out]``; the
final convolution keeps only the 3 filters the port uses (after σ is computed on
the full weight). The torch index of the blocks after the self-attention layer
is shifted by one (``generator.layers``).

PyTorch is needed only to read ``.bin``/``.pt`` files (`load_torch_state_dict`);
`convert_state_dict` takes any mapping of names to arrays.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from cfmod_jax.models.biggan import BigGANConfig, get_config, save_biggan

# ---- the expected state dict ----------------------------------------------------------------


def _sn(prefix: str, shape: tuple[int, ...], bias: bool) -> dict[str, tuple[int, ...]]:
  out = {
    f"{prefix}.weight_orig": shape,
    f"{prefix}.weight_u": (shape[0],),
    f"{prefix}.weight_v": (int(np.prod(shape[1:])),),
  }
  if bias:
    out[f"{prefix}.bias"] = (shape[0],)
  return out


def _cbn(prefix: str, features: int, cond_dim: int, n_stats: int):
  out = {
    f"{prefix}.running_means": (n_stats, features),
    f"{prefix}.running_vars": (n_stats, features),
  }
  out.update(_sn(f"{prefix}.scale", (features, cond_dim), False))
  out.update(_sn(f"{prefix}.offset", (features, cond_dim), False))
  return out


def _torch_block_indices(cfg: BigGANConfig) -> list[int]:
  """Index in ``generator.layers`` of each residual block (attention takes one)."""
  return [i + (i >= cfg.attention_layer_position) for i in range(len(cfg.layers))]


def expected_state_dict_shapes(config: Any) -> dict[str, tuple[int, ...]]:
  """Names and shapes of the PyTorch state dict of a BigGAN-deep ``config``."""
  cfg = get_config(config)
  ch, cond, ns = cfg.channel_width, 2 * cfg.z_dim, cfg.n_stats
  shapes = {"embeddings.weight": (cfg.z_dim, cfg.num_classes)}
  shapes.update(_sn("generator.gen_z", (4 * 4 * 16 * ch, cond), True))
  for i, t in enumerate(_torch_block_indices(cfg)):
    _, cin, cout = cfg.layers[i]
    cin, cout, mid = ch * cin, ch * cout, ch * cin // 4
    if i == cfg.attention_layer_position:
      p = f"generator.layers.{t - 1}"
      shapes[f"{p}.gamma"] = (1,)
      for name, o, c in [
        ("theta", cin // 8, cin),
        ("phi", cin // 8, cin),
        ("g", cin // 2, cin),
        ("o_conv", cin, cin // 2),
      ]:
        shapes.update(_sn(f"{p}.snconv1x1_{name}", (o, c, 1, 1), False))
    p = f"generator.layers.{t}"
    dims = [(cin, mid, 1), (mid, mid, 3), (mid, mid, 3), (mid, cout, 1)]
    for k, (fin, fout, ks) in enumerate(dims):
      shapes.update(_cbn(f"{p}.bn_{k}", fin, cond, ns))
      shapes.update(_sn(f"{p}.conv_{k}", (fout, fin, ks, ks), True))
  shapes.update(
    {
      "generator.bn.weight": (ch,),
      "generator.bn.bias": (ch,),
      "generator.bn.running_means": (ns, ch),
      "generator.bn.running_vars": (ns, ch),
    }
  )
  shapes.update(_sn("generator.conv_to_rgb", (ch, ch, 3, 3), True))
  return shapes


def check_state_dict(state_dict: Mapping[str, Any], config: Any) -> None:
  """ValueError naming every missing, unexpected or mis-shaped entry."""
  want = expected_state_dict_shapes(config)
  missing = [k for k in want if k not in state_dict]
  unexpected = [k for k in state_dict if k not in want]
  misshaped = [
    f"{k}: expected {want[k]}, got {tuple(np.shape(state_dict[k]))}"
    for k in want
    if k in state_dict and tuple(np.shape(state_dict[k])) != want[k]
  ]
  problems = []
  for label, items in [
    ("missing keys", missing),
    ("unexpected keys", unexpected),
    ("mis-shaped entries", misshaped),
  ]:
    if items:
      more = f" (and {len(items) - 10} more)" if len(items) > 10 else ""
      problems.append(f"{len(items)} {label}: {', '.join(items[:10])}{more}")
  if problems:
    name = config if isinstance(config, str) else "the given config"
    raise ValueError(f"state dict does not match {name}: " + "; ".join(problems))


# ---- folding spectral normalisation ----------------------------------------------------------


def _normalize(x: np.ndarray, eps: float) -> np.ndarray:
  """``torch.nn.functional.normalize(x, dim=0, eps=eps)``."""
  return x / max(float(np.linalg.norm(x)), eps)


def spectral_normalized(
  sd: Mapping[str, np.ndarray], prefix: str, eps: float, power_iterations: int = 0
) -> np.ndarray:
  """``W_orig / σ`` as ``torch.nn.utils.spectral_norm`` computes it (float32).

  With ``power_iterations = 0`` (eval mode) ``σ = u · (W_mat v)`` from the stored
  vectors; otherwise u and v are first refined as in train mode.
  """
  w = np.asarray(sd[f"{prefix}.weight_orig"], np.float64)
  u = np.asarray(sd[f"{prefix}.weight_u"], np.float64)
  v = np.asarray(sd[f"{prefix}.weight_v"], np.float64)
  mat = w.reshape(w.shape[0], -1)
  for _ in range(power_iterations):
    v = _normalize(mat.T @ u, eps)
    u = _normalize(mat @ v, eps)
  sigma = float(u @ (mat @ v))
  if not np.isfinite(sigma) or sigma == 0.0:
    raise ValueError(
      f"{prefix}: spectral norm estimate σ = {sigma}; weight_u/weight_v are not usable"
    )
  return (w / sigma).astype(np.float32)


def convert_state_dict(
  state_dict: Mapping[str, Any], config: Any, *, power_iterations: int = 0
) -> dict[str, Any]:
  """BigGAN-deep variables ``{'params', 'batch_stats'}`` from a PyTorch state dict.

  Args:
    state_dict: names → arrays (numpy or torch tensors on CPU), as saved by the port.
    config: a name in `CONFIGS`, a dict or a `BigGANConfig` matching the weights.
    power_iterations: 0 matches the port in eval mode (see module docstring).
  Raises:
    ValueError: naming missing, unexpected or mis-shaped entries.
  """
  cfg = get_config(config)
  check_state_dict(state_dict, config)
  sd = {
    k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
    for k, v in state_dict.items()
  }
  f32 = lambda k: np.asarray(sd[k], np.float32)
  sn = lambda p: spectral_normalized(sd, p, cfg.eps, power_iterations)

  def dense(p, bias=False):
    out = {"kernel": sn(p).T}
    if bias:
      out["bias"] = f32(f"{p}.bias")
    return out

  def conv(p, bias=True, keep=None):
    kernel = sn(p).transpose(2, 3, 1, 0)  # OIHW → HWIO
    out = {"kernel": kernel[..., :keep] if keep else kernel}
    if bias:
      out["bias"] = f32(f"{p}.bias")[:keep] if keep else f32(f"{p}.bias")
    return out

  def stats(p):
    return {"running_means": f32(f"{p}.running_means"), "running_vars": f32(f"{p}.running_vars")}

  params = {
    "embeddings": {"kernel": f32("embeddings.weight").T},
    "gen_z": {"dense": dense("generator.gen_z", bias=True)},
  }
  batch_stats = {}
  for i, t in enumerate(_torch_block_indices(cfg)):
    p = f"generator.layers.{t}"
    block_p, block_s = {}, {}
    for k in range(4):
      block_p[f"bn_{k}"] = {
        "scale": dense(f"{p}.bn_{k}.scale"),
        "offset": dense(f"{p}.bn_{k}.offset"),
      }
      block_s[f"bn_{k}"] = stats(f"{p}.bn_{k}")
      block_p[f"conv_{k}"] = conv(f"{p}.conv_{k}")
    stage = {"block": block_p}
    if i == cfg.attention_layer_position:
      a = f"generator.layers.{t - 1}"
      stage["attention"] = {
        name: conv(f"{a}.snconv1x1_{name}", bias=False) for name in ("theta", "phi", "g", "o_conv")
      }
      stage["attention"]["gamma"] = f32(f"{a}.gamma")
    params[f"blocks_{i}"] = stage
    batch_stats[f"blocks_{i}"] = {"block": block_s}
  params["output"] = {
    "bn": {"scale": f32("generator.bn.weight"), "bias": f32("generator.bn.bias")},
    "conv_to_rgb": conv("generator.conv_to_rgb", keep=3),
  }
  batch_stats["output"] = {"bn": stats("generator.bn")}
  return {"params": params, "batch_stats": batch_stats}


# ---- files ---------------------------------------------------------------------------------


def load_torch_state_dict(path: str) -> dict[str, np.ndarray]:
  """Reads a ``.bin``/``.pt`` state dict with ``torch.load`` (CPU) into numpy arrays."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(
      "reading PyTorch checkpoints needs torch: pip install 'cfmod_jax[torch]'"
    ) from e
  sd = torch.load(path, map_location="cpu", weights_only=True)
  if not isinstance(sd, Mapping):
    raise ValueError(f"{path} does not hold a state dict (got {type(sd).__name__})")
  return {k: v.detach().cpu().float().numpy() for k, v in sd.items()}


def convert_file(
  state_dict_path: str, config: Any, out: str, *, power_iterations: int = 0
) -> dict[str, Any]:
  """Converts a PyTorch state dict file and writes the folder ``out`` with
  `cfmod_jax.models.biggan.save_biggan` (cfmod_jax's exported format:
  ``variables.msgpack`` + ``checkpoint.json``; load with
  `cfmod_jax.models.biggan.load_biggan` or `cfmod_jax.load_generator`). Returns the
  variables."""
  variables = convert_state_dict(
    load_torch_state_dict(state_dict_path), config, power_iterations=power_iterations
  )
  save_biggan(out, variables, config)
  return variables


__all__ = [
  "check_state_dict",
  "convert_file",
  "convert_state_dict",
  "expected_state_dict_shapes",
  "load_torch_state_dict",
  "spectral_normalized",
]
