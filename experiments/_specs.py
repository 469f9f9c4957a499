"""Naming a generator in one string: the ``--generator`` of the experiments.

`generator_from_spec(spec, args)` is the one parser of every form:

* ``random:<arch>[:<width>]`` — a random initialisation of a shipped or
  registered architecture (`cfmod_jax.models.init_generator`; ``args`` are more
  keyword arguments, e.g. ``{"latent_dim": 16}``);
* a shipped name (``dcgan-synthfaces``, ``vae-synthfaces``, ``began-synthfaces``)
  or a checkpoint folder: an exported folder, a trainer workdir or one of its
  checkpoints (`cfmod_jax.load_generator`; user architectures once registered with
  `cfmod_jax.register_architecture`), or a BigGAN folder written by
  ``experiments.convert_biggan`` (``args``: ``truncation``, ``classes``);
* ``<module>:<factory>`` or ``<path/to/file.py>:<factory>`` — your own code: the
  module is imported by name (``my_pkg.my_module``) or the file loaded from its
  path, and ``factory(**args)`` must return a `cfmod_jax.Generator` — or a PyTorch
  ``nn.Module``, imported with `cfmod_jax.torch_bridge.from_torch` (put in eval mode;
  sites: its activation modules, named by their PyTorch paths; latent shape read
  from its first layer). ``<…>:<factory>@<checkpoint.pt>`` first loads a state dict
  into that module with ``torch.load(weights_only=True)`` (no pickled code runs).

This is command-line spec parsing, so it lives with the experiments (not in the
installed package); `experiments.analyze`, `experiments.robustness` and the tests
import it from here. `generator_from_flags` is the same for a CLI's ``--generator`` and
``--generator_args`` flags (help texts: `GENERATOR_HELP`, `GENERATOR_ARGS_HELP`).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import sys
from collections.abc import Mapping
from typing import Any

from cfmod_jax.generator import Generator

FORMS = (
  "random:<arch>[:<width>]",
  "a shipped name",
  "a checkpoint folder",
  "<module>:<factory>",
  "<path/to/file.py>:<factory>",
)
GENERATOR_HELP = (
  "Shipped name (dcgan-synthfaces, vae-synthfaces, began-synthfaces), a checkpoint folder "
  "(exported, trainer workdir, BigGAN conversion), random:<arch>[:<width>] for a random "
  "initialisation, or your own factory returning a cfmod_jax.Generator or a PyTorch "
  "nn.Module: <module>:<factory> (imported by name) or <path/to/file.py>:<factory>, "
  "optionally @<state_dict.pt> to load weights into the nn.Module first."
)
GENERATOR_ARGS_HELP = (
  "JSON object of keyword arguments for the --generator factory (or random:<arch>'s "
  "init_generator, a BigGAN folder's truncation/classes), e.g. '{\"width\": 16}'."
)
_MODULE_NAME = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_IDENTIFIER = re.compile(r"^[A-Za-z_]\w*$")


def _expected() -> str:
  from cfmod_jax.checkpoints import SHIPPED_GENERATORS  # pylint: disable=g-import-not-at-top
  from cfmod_jax.models import architectures  # pylint: disable=g-import-not-at-top

  return (
    f"expected random:<arch>[:<width>] (arch one of {architectures()}), a shipped name "
    f"({', '.join(SHIPPED_GENERATORS)}), a checkpoint folder, <module>:<factory> or "
    "<path/to/file.py>:<factory>"
  )


def parse_generator_args(text: str | Mapping[str, Any] | None) -> dict[str, Any]:
  """``--generator_args``: a JSON object (or a mapping) of keyword arguments → dict;
  empty or None → ``{}``. Anything else → ValueError naming ``generator_args``."""
  if text is None or (isinstance(text, str) and not text.strip()):
    return {}
  if isinstance(text, Mapping):
    value = dict(text)
  else:
    if not isinstance(text, str):
      raise ValueError(
        f"generator_args must be a JSON object such as '{{\"width\": 8}}', got "
        f"{type(text).__name__}"
      )
    try:
      value = json.loads(text)
    except ValueError as e:
      raise ValueError(
        f"generator_args must be a JSON object such as '{{\"width\": 8}}': {e}"
      ) from None
    if not isinstance(value, dict):
      raise ValueError(
        f"generator_args must be a JSON object such as '{{\"width\": 8}}', got {text!r}"
      )
  bad = [k for k in value if not isinstance(k, str) or not _IDENTIFIER.match(k)]
  if bad:
    raise ValueError(
      f"generator_args keys must be Python identifiers (keyword arguments), got {bad}"
    )
  return value


def generator_from_spec(spec: str, args: Mapping[str, Any] | str | None = None) -> Generator:
  """The `Generator` named by ``spec`` (see the module docstring for the forms).

  Args:
    spec: ``random:<arch>[:<width>]``, a shipped name, a checkpoint folder,
      ``<module>:<factory>`` or ``<path/to/file.py>:<factory>``.
    args: keyword arguments (a dict, or a JSON object as text) for the factory,
      `init_generator` (random) or BigGAN folders; exported checkpoints take none.
  Raises:
    ValueError: a spec of none of the forms, an unknown architecture or name, a
      module or file that cannot be imported, a missing or non-callable factory,
      a factory that fails on ``args`` or does not return a `Generator` — the
      message names ``generator`` (or ``generator_args``) and the expected forms.
      Checkpoint errors are `cfmod_jax.checkpoints.CheckpointError` (a ValueError).
  """
  kwargs = parse_generator_args(args)
  if not isinstance(spec, (str, os.PathLike)) or not os.fspath(spec).strip():
    raise ValueError(f"generator must be a non-empty string; {_expected()}; got {spec!r}")
  spec = os.fspath(spec)
  if spec.startswith("random:"):
    return _random(spec, kwargs)
  from cfmod_jax import checkpoints  # pylint: disable=g-import-not-at-top

  if spec in checkpoints.SHIPPED_GENERATORS or os.path.exists(spec):
    path = checkpoints.resolve(spec)
    if os.path.isdir(path) and checkpoints.is_biggan_folder(path):
      try:
        return checkpoints.load_biggan_folder(
          path, name=os.path.basename(os.path.normpath(path)), **kwargs
        )
      except TypeError as e:
        raise ValueError(
          f"generator_args {kwargs} do not fit a BigGAN folder (it takes "
          f"truncation, classes, class_sampler): {e}"
        ) from None
    if kwargs:
      raise ValueError(
        f"generator_args must be empty for a checkpoint ({spec!r}): its "
        f"checkpoint.json fixes the architecture; got {kwargs}"
      )
    return checkpoints.load_generator(spec)
  if ":" in spec:
    return _from_factory(spec, kwargs)
  raise ValueError(
    f"generator={spec!r} is neither a shipped name nor an existing path, and "
    f"has no ':'; {_expected()}"
  )


def generator_from_flags(spec_flag: str = "generator", args_flag: str = "generator_args"):
  """`generator_from_spec` of the values of two absl flags; a user error is an
  ``app.UsageError`` naming the flag to blame (``--generator_args`` when the message
  starts with ``generator_args``, else ``--generator``)."""
  from absl import flags  # pylint: disable=g-import-not-at-top

  from experiments import _cli  # pylint: disable=g-import-not-at-top

  with _cli.blame(args_flag):
    args = parse_generator_args(flags.FLAGS[args_flag].value)
  try:
    return generator_from_spec(flags.FLAGS[spec_flag].value, args)
  except (ValueError, TypeError, OSError) as exc:
    to_blame = args_flag if _cli.one_line(exc).startswith("generator_args") else spec_flag
    raise _cli.flag_error(to_blame, exc) from None


def _random(spec: str, kwargs: dict[str, Any]) -> Generator:
  from cfmod_jax.models import architectures, init_generator  # pylint: disable=g-import-not-at-top

  _, arch, *rest = spec.split(":")
  if not arch or len(rest) > 1 or (rest and not rest[0].isdigit()):
    raise ValueError(
      f"generator must be random:<arch>[:<width>] with <width> a positive integer, got {spec!r}"
    )
  if arch not in architectures():
    raise ValueError(
      f"generator={spec!r}: arch={arch!r} is unknown; expected one of "
      f"{architectures()} (add your own with "
      "cfmod_jax.register_architecture(name, build_fn))"
    )
  user_args = dict(kwargs)
  if rest:
    if "width" in kwargs:
      raise ValueError(f"generator={spec!r} gives the width; generator_args must not give it again")
    kwargs = {**kwargs, "width": int(rest[0])}
  try:
    return init_generator(arch, **kwargs)
  except ValueError as e:  # blame generator_args when the message names one of them
    if any(re.search(rf"(?<!\w){re.escape(k)}(?!\w)", str(e)) for k in user_args):
      raise ValueError(f"generator_args {user_args} do not fit {spec}: {e}") from None
    raise


def _import_file(path: str):
  """The Python file ``path`` as a module (registered in `sys.modules`, so that
  dataclasses and `inspect` find it; its folder is put on `sys.path` first, as
  ``python path/to/file.py`` would, so that it can import its neighbours)."""
  path = os.path.abspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"generator: the file {path} does not exist; {_expected()}")
  stem = re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  name = f"cfmod_user_{stem}_{hashlib.sha256(path.encode()).hexdigest()[:10]}"
  if name in sys.modules:
    return sys.modules[name]
  folder = os.path.dirname(path)
  if folder not in sys.path:
    sys.path.insert(0, folder)
  spec = importlib.util.spec_from_file_location(name, path)
  if spec is None or spec.loader is None:
    raise ValueError(f"generator: cannot load {path} as a Python file; {_expected()}")
  module = importlib.util.module_from_spec(spec)
  sys.modules[name] = module
  try:
    spec.loader.exec_module(module)
  except BaseException:
    del sys.modules[name]
    raise
  return module


def _from_factory(spec: str, kwargs: dict[str, Any]) -> Generator:
  where, _, attr = spec.rpartition(":")
  attr, _, checkpoint = attr.partition("@")
  if not where or not re.match(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$", attr):
    raise ValueError(
      f"generator={spec!r}: <factory> after the last ':' must be a name "
      f"(e.g. make_generator); {_expected()}"
    )
  is_file = where.endswith(".py") or os.sep in where or "/" in where
  try:
    if is_file:
      module = _import_file(where)
    elif _MODULE_NAME.match(where):
      module = importlib.import_module(where)
    else:
      raise ValueError(
        f"generator={spec!r}: {where!r} is neither a module name "
        f"(my_pkg.my_module) nor a .py file; {_expected()}"
      )
  except ImportError as e:
    raise ValueError(f"generator={spec!r}: cannot import {where!r}: {e}; {_expected()}") from None
  factory = module
  for part in attr.split("."):
    factory = getattr(factory, part, None)
    if factory is None:
      raise ValueError(f"generator={spec!r}: {where} has no attribute {attr!r}")
  if not callable(factory):
    raise ValueError(
      f"generator={spec!r}: {attr} is a {type(factory).__name__}, not a "
      "callable returning a cfmod_jax.Generator"
    )
  try:
    gen = factory(**kwargs)
  except TypeError as e:
    if kwargs:
      raise ValueError(f"generator_args {kwargs} do not fit {attr}(): {e}") from None
    raise
  torch = sys.modules.get("torch")
  if torch is not None and isinstance(gen, torch.nn.Module):
    return _from_torch_module(spec, attr, gen, checkpoint)
  if checkpoint:
    raise ValueError(
      f"generator={spec!r}: '@{checkpoint}' loads a state dict into a PyTorch nn.Module, "
      f"but {attr}() returned a {type(gen).__name__}"
    )
  if not isinstance(gen, Generator):
    raise ValueError(
      f"generator={spec!r}: {attr}() returned a {type(gen).__name__}, not a "
      "cfmod_jax.Generator (build one with cfmod_jax.Generator(module, "
      "variables), cfmod_jax.wrap_linen or cfmod_jax.wrap_nnx) nor a PyTorch nn.Module"
    )
  return gen


def _from_torch_module(spec: str, attr: str, model: Any, checkpoint: str) -> Generator:
  """A factory's PyTorch module as a Generator: weights from ``checkpoint`` (if any),
  eval mode (the analysis runs models in inference mode), default sites and latent
  shape (`cfmod_jax.torch_bridge.from_torch`)."""
  from cfmod_jax import torch_bridge  # pylint: disable=g-import-not-at-top

  name = attr
  if checkpoint:
    if not os.path.isfile(checkpoint):
      raise ValueError(f"generator={spec!r}: checkpoint file {checkpoint!r} does not exist")
    try:
      torch_bridge.load_torch_checkpoint(checkpoint, model)
    except (ValueError, RuntimeError) as e:
      raise ValueError(f"generator={spec!r}: {e}") from None
    name = os.path.splitext(os.path.basename(checkpoint))[0]
  try:
    return torch_bridge.from_torch(model.eval(), name=name)
  except (TypeError, ValueError) as e:
    raise ValueError(
      f"generator={spec!r}: {e} (for other sites or latent shapes, return "
      "cfmod_jax.torch_bridge.from_torch(model, latent_shape, sites) from the factory)"
    ) from None


__all__ = [
  "FORMS",
  "GENERATOR_ARGS_HELP",
  "GENERATOR_HELP",
  "generator_from_flags",
  "generator_from_spec",
  "parse_generator_args",
]
