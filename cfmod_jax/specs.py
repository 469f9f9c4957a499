"""Which data set a generator was trained on, as far as the analysis cares.

`uses_synthfaces_parts(gen)` says whether a generator was trained on the
synthetic faces (``gen.dataset``), whose ground-truth part maps then score its
modules (used by `cfmod_jax.analysis`).

The command-line ``--generator`` spec parser (`generator_from_spec`,
`parse_generator_args`, `FORMS`) is an application's and lives in
``experiments/_specs.py``; the names are still reachable here, lazily, for older
callers (a temporary alias, to be removed).
"""

from __future__ import annotations

from typing import Any

from cfmod_jax.generator import Generator

_MOVED_TO_EXPERIMENTS = ("FORMS", "generator_from_spec", "parse_generator_args")


def uses_synthfaces_parts(gen: Generator) -> bool:
  """True iff ``gen`` was trained on the synthetic faces (``gen.dataset ==
  'synthfaces'``, from its checkpoint), so that the faces' ground-truth part maps
  can score its modules."""
  return getattr(gen, "dataset", None) == "synthfaces"


def __getattr__(name: str) -> Any:
  # Temporary alias: experiments._specs is not part of the installed package.
  if name in _MOVED_TO_EXPERIMENTS:
    from experiments import _specs  # pylint: disable=g-import-not-at-top

    return getattr(_specs, name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["uses_synthfaces_parts"]
