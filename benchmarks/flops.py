"""Work accounting of the EIM benchmark: FLOPs and the memory-traffic floor, one
definition for every contender.

Per-image FLOPs come from XLA's cost analysis (``cost_analysis()['flops']``,
compiled for a batch and divided by its size; transcendentals such as tanh are not
in it): ``F_prefix`` of `Generator.prefix` (latent → site), ``F_suffix`` of
`Generator.suffix` (site → image), and, at a site whose next stage has a linear
split (`Generator.has_linear_split`), ``F_next`` of `Generator.suffix_pre` (the
next stage's linear part, with its bias) and ``F_rest`` of `Generator.suffix_post`
(everything after it). With C the site's channels (C_in = C: the inputs of the
next linear layer) and N pairs:

**Plain algorithm** (`plain_algorithm_flops`): the prefix once for each code of a
pair, the suffix once for the reference G(z1) and once per hybrid,

    N · (2 · F_prefix + (C + 1) · F_suffix).

**Minimal FLOPs** (`minimal_flops`) of the algorithm cfmod_jax runs at a site with a
linear split: per pair the two prefixes, the reference G(z1) (the next stage's
linear part + the rest) and, per channel, its rank-1 share of the next linear
layer (F_next / C_in) and the rest of the suffix,

    N · (2 · F_prefix + F_next + F_rest + C · (F_next / C_in + F_rest)).

The ``|hybrid − G(z1)|`` reduction (2 · 3 · H · W per hybrid: a subtraction and an
accumulation per colour value) is left out of both (≤ 0.5 % of either at every
DCGAN site; `site_costs` reports it as ``reduction_flops``). A contender that
recomputes the prefix per channel does more work than the plain algorithm; the
efficiency of every contender is measured against the minimal FLOPs.

**Memory-traffic floor** (`bytes_per_hybrid`): per hybrid, the linear path must at
least write and read (float32) the next stage's pre-activation for its channel
and the output of every stage after the next one (the next stage's activation is
applied on the fly; the final tanh, ``|·|`` and sum can be fused onto the read of the
last tensor): ``2 · 4 · (|pre_next| + Σ_later |out|)`` bytes. Per-pair traffic
(prefixes, G(z1)) and weights are left out.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from cfmod_jax.generator import Generator

PLAIN_DEFINITION = (
  "N * (2 * F_prefix + (C + 1) * F_suffix); F_* = XLA cost_analysis()['flops'] per image "
  "of Generator.prefix (latent -> site) / Generator.suffix (site -> image), batch 32"
)
MINIMAL_DEFINITION = (
  "N * (2 * F_prefix + F_next + F_rest + C * (F_next / C_in + F_rest)); F_next / F_rest = "
  "XLA cost_analysis()['flops'] per image of Generator.suffix_pre (the next stage's linear "
  "part) / Generator.suffix_post (the rest of the suffix), batch 32; C_in = C, the site's "
  "channels; the |hybrid - G(z1)| reduction (2*3*H*W per hybrid) is left out"
)
MEMORY_DEFINITION = (
  "per hybrid 2 * 4 * (|pre_next| + sum of |out| of every stage after the next one) bytes: "
  "float32, written once and read once; memory floor = hybrids * that / the measured "
  "bandwidth (best of 5 jitted x + 1.0, bytes read + written per second)"
)
EFFICIENCY_DEFINITION = (
  "minimal_flops / seconds / peak; peak = the best float32 matmul GFLOP/s (jax or torch) "
  "measured in the same run"
)


def _flops(fn, variables, *args, batch: int) -> float:
  cost = jax.jit(fn).lower(variables, *args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) / batch


def flops_per_image(gen: Generator, site: str, batch: int = 32) -> tuple[float, float]:
  """``(F_prefix, F_suffix)``: XLA cost-analysis FLOPs per image of the prefix up to
  ``site`` and the suffix from ``site``, compiled for a batch of ``batch``."""
  z = jax.ShapeDtypeStruct((batch, *gen.latent_shape), jnp.float32)
  h = jax.ShapeDtypeStruct((batch, *gen.site_shape(site)), jnp.float32)
  return (
    _flops(lambda v, z: gen.prefix(v, z, site), gen.variables, z, batch=batch),
    _flops(lambda v, h, z: gen.suffix(v, h, z, site), gen.variables, h, z, batch=batch),
  )


def split_flops_per_image(gen: Generator, site: str, batch: int = 32) -> tuple[float, float]:
  """``(F_next, F_rest)``: XLA cost-analysis FLOPs per image of `Generator.suffix_pre`
  and `Generator.suffix_post` at ``site`` (which must have a linear split)."""
  if not gen.has_linear_split(site):
    raise ValueError(f"site {site!r} of {gen.name} has no linear split of its next stage")
  z = jax.ShapeDtypeStruct((batch, *gen.latent_shape), jnp.float32)
  h = jax.ShapeDtypeStruct((batch, *gen.site_shape(site)), jnp.float32)
  pre = jax.eval_shape(lambda v, h: gen.suffix_pre(v, h, site), gen.variables, h)
  return (
    _flops(lambda v, h: gen.suffix_pre(v, h, site), gen.variables, h, batch=batch),
    _flops(lambda v, y, z: gen.suffix_post(v, y, z, site), gen.variables, pre, z, batch=batch),
  )


def plain_algorithm_flops(f_prefix: float, f_suffix: float, channels: int, n_pairs: int) -> float:
  """``N · (2 · F_prefix + (C + 1) · F_suffix)`` (see the module docstring)."""
  return n_pairs * (2.0 * f_prefix + (channels + 1) * f_suffix)


def minimal_flops(
  f_prefix: float, f_next: float, f_rest: float, channels: int, n_pairs: int
) -> float:
  """``N · (2 · F_prefix + F_next + F_rest + C · (F_next / C_in + F_rest))`` with
  ``C_in = C`` (see the module docstring)."""
  c_in = channels
  return n_pairs * (2.0 * f_prefix + f_next + f_rest + channels * (f_next / c_in + f_rest))


def _size(shape) -> int:
  out = 1
  for d in shape:
    out *= int(d)
  return out


def bytes_per_hybrid(gen: Generator, site: str) -> tuple[int, dict[str, int]]:
  """``(bytes, elements)``: the memory-traffic floor of one hybrid at ``site`` (module
  docstring) and its parts in float32 elements per image (``pre_next`` and
  ``later_outputs``)."""
  i = gen.site_index(site)
  h = jax.ShapeDtypeStruct((1, *gen.site_shape(site)), jnp.float32)
  pre = jax.eval_shape(lambda v, h: gen.suffix_pre(v, h, site), gen.variables, h)
  later = [_size(gen.site_shape(s)) for s in gen.sites[i + 2 :]]
  if i + 1 < len(gen.sites):  # the next stage is not the last: the image comes later
    later.append(_size(gen.image_shape))
  parts = {"pre_next": _size(pre.shape[1:]), "later_outputs": sum(later)}
  return 2 * 4 * (parts["pre_next"] + parts["later_outputs"]), parts


def site_costs(gen: Generator, site: str, n_pairs: int, batch: int = 32) -> dict[str, float]:
  """Every per-site work figure of the benchmark (module docstring): the per-image
  FLOPs, ``plain_algorithm_flops``, ``minimal_flops`` and ``bytes_per_hybrid``
  (None without a linear split), ``reduction_flops`` (left out of both) and
  ``prefix_share_of_minimal`` (the two prefixes per pair: most of the work at the
  last sites)."""
  c = gen.site_shape(site)[-1]
  fp, fs = flops_per_image(gen, site, batch)
  out = {
    "channels": c,
    "n_pairs": n_pairs,
    "hybrids": c * n_pairs,
    "f_prefix": fp,
    "f_suffix": fs,
    "plain_algorithm_flops": plain_algorithm_flops(fp, fs, c, n_pairs),
    "f_next": None,
    "f_rest": None,
    "c_in": c,
    "minimal_flops": None,
    "bytes_per_hybrid": None,
    "traffic_elements": None,
    "prefix_share_of_minimal": None,
  }
  hh, ww = gen.image_shape[:2]
  out["reduction_flops"] = 2.0 * 3 * hh * ww * c * n_pairs
  if gen.has_linear_split(site):
    fn, fr = split_flops_per_image(gen, site, batch)
    out.update(f_next=fn, f_rest=fr, minimal_flops=minimal_flops(fp, fn, fr, c, n_pairs))
    out["prefix_share_of_minimal"] = 2.0 * fp * n_pairs / out["minimal_flops"]
    out["bytes_per_hybrid"], out["traffic_elements"] = bytes_per_hybrid(gen, site)
  return out


__all__ = [
  "EFFICIENCY_DEFINITION",
  "MEMORY_DEFINITION",
  "MINIMAL_DEFINITION",
  "PLAIN_DEFINITION",
  "bytes_per_hybrid",
  "flops_per_image",
  "minimal_flops",
  "plain_algorithm_flops",
  "site_costs",
  "split_flops_per_image",
]
