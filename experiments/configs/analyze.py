"""The main job's settings (``python -m experiments.analyze``): `cfmod_jax.analysis.AnalysisConfig`
as an ml_collections config, one field per dataclass field, with its default.

  python -m experiments.analyze --out out/default --config.sites=block3,block4 --config.k=3

Nothing is restated here: the fields, their types and their defaults are read from
`AnalysisConfig` (its docstring and comments say what each one does). A field that
`AnalysisConfig` types as optional or as a sequence is text on the command line:

* a sequence is comma-separated: ``--config.sites=block3,block4``, ``--config.k_values=2,3,4``;
* ``None`` is a word (or ``None``): ``--config.k=auto`` (the silhouette rule), ``--config.pair_chunk=auto``
  (from the device's memory), ``--config.sigma=auto``, ``--config.sites=all``,
  ``--config.eim_target_reliability=off``.

`analysis_config` turns the config back into an `AnalysisConfig` (ValueError naming
``--config.<field>`` and the expected form for text that does not parse); the values'
ranges are checked by `cfmod_jax.analysis.check_config`.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Sequence
from typing import Any

import ml_collections

from cfmod_jax import analysis

# The word that stands for None on the command line (default: "auto").
_NONE_WORDS = {"sites": "all", "eim_target_reliability": "off"}


def _kind(field_type: Any) -> tuple[str, type, bool]:
  """(``'scalar'`` or ``'sequence'``, element type, whether None is allowed)."""
  args = typing.get_args(field_type)
  optional = typing.get_origin(field_type) in (typing.Union, types.UnionType) and (
    type(None) in args
  )
  if optional:
    (field_type,) = [a for a in args if a is not type(None)]
  if typing.get_origin(field_type) in (Sequence, tuple, list):
    return "sequence", typing.get_args(field_type)[0], optional
  return "scalar", field_type, optional


def _fields() -> list[tuple[str, Any, tuple[str, type, bool]]]:
  hints = typing.get_type_hints(analysis.AnalysisConfig)
  return [
    (f.name, f.default, _kind(hints[f.name])) for f in dataclasses.fields(analysis.AnalysisConfig)
  ]


def _text(name: str, value: Any, kind: str) -> str:
  if value is None:
    return _NONE_WORDS.get(name, "auto")
  return ",".join(map(str, value)) if kind == "sequence" else str(value)


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  for name, default, (kind, element, optional) in _fields():
    textual = kind == "sequence" or optional
    config[name] = _text(name, default, kind) if textual else element(default)
  return config


def _expected(name: str, kind: str, element: type, optional: bool) -> str:
  """The form of a textual field, e.g. ``a comma-separated list of integers``."""
  if kind == "sequence":
    form = "a comma-separated list of " + {int: "integers", float: "numbers", str: "names"}[element]
  else:
    form = {int: "an integer", float: "a number", str: "a name"}[element]
  return form + (f" or {_NONE_WORDS.get(name, 'auto')!r}" if optional else "")


def analysis_config(config: ml_collections.ConfigDict) -> analysis.AnalysisConfig:
  """The `AnalysisConfig` of ``config`` (`get_config`'s fields, overridden by
  ``--config.<field>``). ValueError: ``--config.<field>=<text>: <field> must be <form>``."""
  values = {}
  for name, _, (kind, element, optional) in _fields():
    value = config[name]
    if not (kind == "sequence" or optional):
      values[name] = value
      continue
    text = str(value).strip()
    try:
      if optional and text in (_NONE_WORDS.get(name, "auto"), "None"):
        values[name] = None
      elif kind == "sequence":
        items = tuple(element(v.strip()) for v in text.split(",") if v.strip())
        values[name] = items if items or not optional else None
      else:
        values[name] = element(text)
    except ValueError:
      raise ValueError(
        f"--config.{name}={value}: {name} must be {_expected(name, kind, element, optional)}, "
        f"got {value!r}"
      ) from None
  return analysis.AnalysisConfig(**values)
