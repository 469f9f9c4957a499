"""PyTorch generators as `cfmod_jax.Generator` objects, with sites at submodules.

    import cfmod_jax as cf
    from cfmod_jax.torch_bridge import from_torch

    gen = from_torch(netG.eval(), latent_shape=(100, 1, 1), sites=["main.5", "main.8"])
    cf.elementary_influence_maps(gen, "main.5", n_pairs=64)

The model's computation is exported once with ``torch.export.export`` (dynamic
batch size), lowered to core ATen ops, and interpreted with JAX through a table
of op implementations (`cfmod_jax.torch_bridge.ops`); its parameters and buffers
become JAX arrays in ``gen.variables`` (arguments of the compiled functions, like
every `Generator`'s variables). A site is named by its PyTorch submodule path
(``"main.8"``, ``"blocks.2.conv1"``, as in ``model.named_modules()``) or a name of
your own (``sites={"early": "blocks.0"}``); its activations are that module's
output (at its first call), handed out channels last (NCHW → NHWC). Then
`cfmod_jax.hybrids`, `influence_maps` and `elementary_influence_maps` work
unchanged: masks are arguments of the compiled functions, so a new mask never
retraces; the prefix runs the graph up to the site only, and the suffix runs
only what the image needs once the site is known (so layers before the site run
in the suffix only where another path, e.g. a skip connection, reads them — on
z1's inputs, which is the counterfactual).

Conditional generators (``forward(z, y)``): pass example ``conditions`` (one tensor
per further input, batch first) and a ``condition_sampler``; the latent is then one
flat float array ``concat(z, y)`` (`TorchGenerator.make_latents` /
`TorchGenerator.split_latents`), and in a hybrid every stage after the site is
conditioned on z1's inputs (the rule of `StagedGenerator.call_stage`).

Requires PyTorch (``pip install 'cfmod_jax[torch]'``); ``import cfmod_jax`` does not.
Checkpoint files: `load_torch_checkpoint` (``torch.load(..., weights_only=True)``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cfmod_jax.torch_bridge.export import (
  Program,
  check_eval_mode,
  check_module_paths,
  export_model,
  import_torch,
)
from cfmod_jax.torch_bridge.generator import TorchGenerator
from cfmod_jax.torch_bridge.ops import jax_dtype, register_op


def _normalise_sites(sites) -> dict[str, str]:
  if isinstance(sites, str):
    raise ValueError(
      f"sites must be a list of submodule paths or a mapping name → path, got the string "
      f"{sites!r} (write [{sites!r}])"
    )
  items = list(sites.items()) if isinstance(sites, Mapping) else [(s, s) for s in sites]
  if not items:
    raise ValueError("sites is empty: give at least one submodule path (e.g. 'main.5')")
  for site, path in items:
    if not isinstance(site, str) or not isinstance(path, str) or not path:
      raise ValueError(
        f"sites must map names (str) to '.'-separated submodule paths (str), got {site!r}: {path!r}"
      )
  names = [s for s, _ in items]
  if len(set(names)) != len(names):
    raise ValueError(f"site names must be distinct, got {names}")
  return dict(items)


#: Module types whose outputs are the default sites: the non-linearities, as in the
#: paper (a site is a layer's output after its activation).
ACTIVATIONS = (
  "ReLU",
  "ReLU6",
  "LeakyReLU",
  "PReLU",
  "ELU",
  "SELU",
  "CELU",
  "GELU",
  "SiLU",
  "Mish",
  "Softplus",
  "Hardswish",
)


def default_sites(model: Any) -> list[str]:
  """The submodule paths of ``model``'s activation modules (`ACTIVATIONS`), in the
  order of ``model.named_modules()`` — the default sites of `from_torch`.

  For the PyTorch DCGAN tutorial's generator these are ``main.2``, ``main.5``,
  ``main.8`` and ``main.11``: the outputs of its four blocks, as in the paper.
  """
  return [p for p, m in model.named_modules() if p and type(m).__name__ in ACTIVATIONS]


def infer_latent_shape(model: Any) -> tuple[int, ...]:
  """The shape of one noise sample, read from ``model``'s first layer that has
  parameters: ``(in_channels, 1, 1)`` for a (transposed) 2-D convolution, as in the
  DCGAN tutorial; ``(in_features,)`` for a linear layer.

  Raises:
    ValueError: the first such layer is of another kind (pass ``latent_shape``).
  """
  torch = import_torch()
  for path, m in model.named_modules():
    if not list(m.parameters(recurse=False)):
      continue
    if isinstance(m, (torch.nn.ConvTranspose2d, torch.nn.Conv2d)):
      return (int(m.in_channels), 1, 1)
    if isinstance(m, torch.nn.Linear):
      return (int(m.in_features),)
    raise ValueError(
      f"latent_shape cannot be read from {type(model).__name__}: its first layer with "
      f"parameters, {path!r}, is a {type(m).__name__} (not a Conv2d, ConvTranspose2d or "
      "Linear); pass latent_shape, e.g. (100, 1, 1)"
    )
  raise ValueError(f"{type(model).__name__} has no parameters: pass latent_shape")


def _shape(latent_shape) -> tuple[int, ...]:
  shape = tuple(latent_shape) if isinstance(latent_shape, (tuple, list)) else None
  if not shape or not all(isinstance(d, (int, np.integer)) and d > 0 for d in shape):
    raise ValueError(
      f"latent_shape must be a tuple of positive ints (one sample of the model's first "
      f"input, e.g. (100, 1, 1)), got {latent_shape!r}"
    )
  return tuple(int(d) for d in shape)


def from_torch(
  model: Any,
  latent_shape: Sequence[int] | None = None,
  sites: Sequence[str] | Mapping[str, str] | None = None,
  *,
  conditions: Sequence[Any] = (),
  condition_sampler: Callable[[Any, int], Sequence[Any]] | None = None,
  name: str | None = None,
  latent_sampler: Callable[[Any, int], Any] | None = None,
) -> TorchGenerator:
  """Imports a PyTorch generator as a `cfmod_jax.Generator`.

  Args:
    model: a ``torch.nn.Module`` in eval mode whose ``model(z, *conditions)``
      returns images ``[N, C, H, W]`` (in [-1, 1] for the influence maps to mean
      what they do for the shipped generators). It is not modified.
    latent_shape: shape of one sample of the first input (the noise), e.g.
      ``(100, 1, 1)`` for the DCGAN tutorial's generator (default: read from the
      first layer, `infer_latent_shape`).
    sites: PyTorch submodule paths (``"main.5"``, ``"blocks.2.conv1"``) or a mapping
      ``{site name: path}``. ``gen.sites`` lists them in forward order. Default: the
      outputs of the activation modules (`default_sites`).
    conditions: example tensors of the further inputs, batch first (e.g.
      ``[torch.tensor([3])]`` for a class label); their per-sample shapes and dtypes
      are the model's.
    condition_sampler: ``(key, n) -> (y, …)`` arrays ``[n, *shape]`` of the
      conditions, used by ``gen.sample_latents`` (required with integer conditions;
      float conditions default to standard normal).
    name: a label used in outputs (default: the class name).
    latent_sampler: ``(key, n) -> [n, *latent_shape]`` noise (default: standard normal).
  Returns:
    A `TorchGenerator`.
  Raises:
    ValueError: a model in training mode; a site that is not a submodule (the message
      lists close and available names) or whose module is not called, or does not
      return one tensor; a model that ``torch.export`` cannot export (e.g.
      data-dependent control flow); an ATen op without a JAX implementation (named,
      with how to add one); output that is not images.
    TypeError: ``model`` is not a ``torch.nn.Module``.
  """
  torch = import_torch()
  if not isinstance(model, torch.nn.Module):
    raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
  name = name or type(model).__name__
  shape = _shape(infer_latent_shape(model) if latent_shape is None else latent_shape)
  if sites is None:
    sites = default_sites(model)
    if not sites:
      raise ValueError(
        f"{name} has no activation modules ({', '.join(ACTIVATIONS)}) to take as default "
        "sites (functional activations are not submodules): pass sites, e.g. ['main.5']"
      )
  sites = _normalise_sites(sites)
  check_eval_mode(model, name)
  check_module_paths(model, list(sites.values()), name)
  conds = []
  for i, c in enumerate(conditions):
    if not isinstance(c, torch.Tensor) or c.ndim < 1 or c.shape[0] < 1:
      raise ValueError(
        f"conditions[{i}] must be an example tensor with a batch dimension, e.g. "
        f"torch.tensor([3]) for a class label; got {c!r:.80}"
      )
    conds.append(c)
  specs = [(tuple(c.shape[1:]), jax_dtype(c.dtype)) for c in conds]
  if any(not np.issubdtype(d, np.floating) for _, d in specs) and condition_sampler is None:
    raise ValueError(
      "condition_sampler is required for integer conditions (e.g. class labels): "
      "(key, n) -> (labels [n],), e.g. lambda key, n: (jax.random.randint(key, (n,), 0, 10),)"
    )
  if condition_sampler is None and specs:

    def condition_sampler(key, n):
      import jax  # pylint: disable=import-outside-toplevel

      keys = jax.random.split(key, len(specs))
      return tuple(jax.random.normal(k, (n, *s)) for k, (s, _) in zip(keys, specs))

  batch = 2  # the exported graph keeps the batch dimension symbolic
  gen_t = torch.Generator().manual_seed(0)
  example = (torch.randn((batch, *shape), generator=gen_t),)
  example += tuple(c[:1].expand(batch, *c.shape[1:]).clone() for c in conds)
  program = Program(export_model(model, example, name), name)
  for site, path in sites.items():
    if path not in program.module_types:
      raise ValueError(
        f"site {site!r}: submodule {path!r} of {name} is not called in its forward pass "
        f"(or computes nothing: an nn.Identity or a no-op); submodules that compute "
        f"something: {', '.join(program.module_types) or '(none)'}"
      )
    if program.module_outputs[path] is None:
      raise ValueError(
        f"site {site!r}: the output of {path!r} of {name} is not one tensor computed "
        "inside it (a module that returns its input unchanged, or several outputs); "
        "choose its parent or the module that computes the value"
      )
  return TorchGenerator(
    program,
    sites,
    shape,
    specs,
    name=name,
    latent_sampler=latent_sampler,
    condition_sampler=condition_sampler,
    torch_model=model,
  )


def load_torch_checkpoint(path: str, model: Any, *, trust_pickle: bool = False) -> Any:
  """Loads a state dict (or ``{"state_dict": …}``) from ``path`` into ``model``.

  The file is read with ``torch.load(path, weights_only=True)`` (tensors and plain
  containers only: a file cannot run code). A file that needs full unpickling (a
  pickled module, custom classes) is refused unless ``trust_pickle=True`` — only for
  files from a source you trust, since unpickling can run arbitrary code.
  Returns ``model`` (for chaining: ``from_torch(load_torch_checkpoint(p, G()).eval(), …)``).
  """
  torch = import_torch()
  if not isinstance(model, torch.nn.Module):
    raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
  except FileNotFoundError:
    raise
  except Exception as e:  # pylint: disable=broad-except  # UnpicklingError and friends
    if trust_pickle:
      raise
    raise ValueError(
      f"{path} cannot be read with torch.load(weights_only=True): it needs full "
      f"unpickling, which can run arbitrary code ({type(e).__name__}: {str(e)[:300]}). "
      "Save a state dict instead (torch.save(model.state_dict(), path)), or pass "
      "trust_pickle=True if you trust the file's source."
    ) from e
  if isinstance(obj, torch.nn.Module):
    obj = obj.state_dict()
  if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
    obj = obj["state_dict"]
  if not isinstance(obj, Mapping):
    raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
  model.load_state_dict(obj)
  return model


__all__ = [
  "Program",
  "TorchGenerator",
  "default_sites",
  "from_torch",
  "infer_latent_shape",
  "load_torch_checkpoint",
  "register_op",
]
