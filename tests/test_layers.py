"""Layers of `cfmod_jax`: its import graph (module-level and function-level imports,
read with `ast`, nothing imported) has no cycle, no module imports another module's
private name, and the core never imports the applications of `cfmod_jax.lab` or the
trainers of `cfmod_jax.train`."""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cfmod_jax"
# Outside the core: the applications, the trainers and the main job's modules (the
# main job uses lab.factors and lab.quality for its factor and realism sections).
NOT_CORE = ("cfmod_jax.lab", "cfmod_jax.train", "cfmod_jax.analysis", "cfmod_jax.report")
NOT_CORE += ("cfmod_jax.writer", "cfmod_jax.site_factors")


def _modules(package: pathlib.Path = PACKAGE) -> dict[str, pathlib.Path]:
  out = {}
  for path in sorted(package.rglob("*.py")):
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
      parts.pop()
    out[".".join(parts)] = path
  return out


def _imports(modules: dict[str, pathlib.Path]) -> tuple[dict[str, set[str]], list[str]]:
  """``({module: modules it imports}, ["module: private name"])`` of every import
  statement, at any depth (functions included)."""
  graph, private = {}, []
  for name, path in modules.items():
    is_package = path.name == "__init__.py"
    edges = graph.setdefault(name, set())
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
      if isinstance(node, ast.Import):
        for alias in node.names:
          target = alias.name
          while target.startswith("cfmod_jax") and target not in modules:
            target = target.rpartition(".")[0]
          if target:
            edges.add(target)
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          here = name.split(".") if is_package else name.split(".")[:-1]
          here = here[: len(here) - node.level + 1]
          base = ".".join(here + ([base] if base else []))
        if not base.startswith("cfmod_jax"):
          continue
        for alias in node.names:
          if f"{base}.{alias.name}" in modules:
            edges.add(f"{base}.{alias.name}")
          else:
            edges.add(base)
            if alias.name.startswith("_"):
              private.append(f"{name}: from {base} import {alias.name}")
    edges.discard(name)
  return graph, private


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
  state, stack, found = {}, [], []

  def visit(u):
    state[u] = "open"
    stack.append(u)
    for v in sorted(graph.get(u, ())):
      if state.get(v) == "open":
        found.append([*stack[stack.index(v) :], v])
      elif v not in state and v in graph:
        visit(v)
    stack.pop()
    state[u] = "done"

  for u in sorted(graph):
    if u not in state:
      visit(u)
  return found


def test_the_graph_reader_sees_every_kind_of_import(tmp_path):
  pkg = tmp_path / "cfmod_jax"
  (pkg / "sub").mkdir(parents=True)
  (pkg / "__init__.py").write_text("from cfmod_jax import a\n")
  (pkg / "a.py").write_text("def f():\n  from cfmod_jax.sub import b\n")
  (pkg / "sub" / "__init__.py").write_text("")
  (pkg / "sub" / "b.py").write_text("from .. import a\nfrom cfmod_jax.a import _secret\n")
  graph, private = _imports(_modules(pkg))
  assert graph["cfmod_jax.a"] == {"cfmod_jax.sub.b"}  # function-level
  assert graph["cfmod_jax.sub.b"] == {"cfmod_jax.a"}  # relative
  assert private == ["cfmod_jax.sub.b: from cfmod_jax.a import _secret"]
  assert _cycles(graph) == [["cfmod_jax.a", "cfmod_jax.sub.b", "cfmod_jax.a"]]


@pytest.fixture(scope="module")
def graph_and_private():
  return _imports(_modules())


def test_no_import_cycle(graph_and_private):
  graph, _ = graph_and_private
  assert "cfmod_jax.interventions" in graph and len(graph) > 40
  assert _cycles(graph) == []


def test_no_module_imports_a_private_name(graph_and_private):
  _, private = graph_and_private
  assert private == []


def test_core_imports_no_application_or_trainer(graph_and_private):
  graph, _ = graph_and_private
  core = [m for m in graph if not m.startswith(NOT_CORE)]
  assert "cfmod_jax.checkpoints" in core and "cfmod_jax.interventions" in core
  upward = {
    m: sorted(v for v in graph[m] if v.startswith(("cfmod_jax.lab", "cfmod_jax.train")))
    for m in core
  }
  assert {m: v for m, v in upward.items() if v} == {}


def test_the_engine_draws_nothing(graph_and_private):
  graph, _ = graph_and_private
  engine = ("cfmod_jax.interventions", "cfmod_jax._engine", "cfmod_jax._arguments")
  for m in engine:
    assert "cfmod_jax.viz" not in graph[m]
    assert not any(
      line.startswith(("import matplotlib", "from matplotlib"))
      for line in _modules()[m].read_text(encoding="utf-8").splitlines()
    )
