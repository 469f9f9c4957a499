"""cfmod_jax.distributed: a plain function API, flags only in the programs."""

import ast
import os

import pytest

from cfmod_jax import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.fast


def test_single_process_is_a_no_op(monkeypatch):
  calls = []
  monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda *a, **k: calls.append(k))
  distributed.initialize()
  distributed.initialize("")
  assert calls == []


def test_explicit_coordinator_passes_its_arguments(monkeypatch):
  calls = []
  monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda *a, **k: calls.append(k))
  distributed.initialize("127.0.0.1:1234", num_processes=3, process_id=2)
  assert calls == [{"coordinator_address": "127.0.0.1:1234", "num_processes": 3, "process_id": 2}]
  distributed.initialize("auto")
  assert calls[-1] == {}


@pytest.mark.parametrize(
  "num_processes, process_id, message",
  [
    (2, 2, r"process_id must be in \[0, num_processes=2\)"),
    (2, -1, "process_id"),
    (0, 0, "num_processes must be a positive integer"),
  ],
)
def test_bad_process_numbers_are_refused(monkeypatch, num_processes, process_id, message):
  monkeypatch.setattr(distributed.jax.distributed, "initialize", lambda *a, **k: 1 / 0)
  with pytest.raises(ValueError, match=message):
    distributed.initialize("h:1", num_processes=num_processes, process_id=process_id)


def test_library_defines_no_flags():
  """No module of cfmod_jax defines absl flags (the programs in experiments/ do)."""
  offenders = []
  for dirpath, _, files in os.walk(os.path.join(ROOT, "cfmod_jax")):
    for f in files:
      if not f.endswith(".py"):
        continue
      path = os.path.join(dirpath, f)
      for node in ast.walk(ast.parse(open(path).read())):
        if (
          isinstance(node, ast.Call)
          and isinstance(node.func, ast.Attribute)
          and node.func.attr.startswith("DEFINE")
        ):
          offenders.append(f"{os.path.relpath(path, ROOT)}:{node.lineno}")
  assert offenders == []


def test_program_flags_reach_initialize(monkeypatch):
  from absl import flags

  from experiments import _distributed

  calls = []
  monkeypatch.setattr(_distributed.distributed, "initialize", lambda *a, **k: calls.append((a, k)))
  argv = ["prog", "--coordinator=h:7", "--num_processes=4", "--process_id=3"]
  fv = flags.FLAGS
  was_parsed = fv.is_parsed()
  saved = {name: fv[name].value for name in ("coordinator", "num_processes", "process_id")}
  fv(argv, known_only=True)
  try:
    _distributed.initialize_from_flags()
  finally:  # leave the flags as they were for the other tests
    if was_parsed:
      for name, value in saved.items():
        fv[name].value = value
    else:
      fv.unparse_flags()
  assert calls == [(("h:7",), {"num_processes": 4, "process_id": 3})]
