"""A PyTorch model as an exported ATen graph, interpreted with JAX.

`export_program` runs ``torch.export.export`` (the stable API) with a dynamic
batch size, lowers the graph to core ATen ops (``run_decompositions``), checks
that every op has a JAX implementation (`cfmod_jax.torch_bridge.ops`), and
returns a `Program`: the graph's nodes, its parameters, buffers and constants as
numpy arrays, and the node that computes each submodule's output.

`Program.run` interprets the graph with JAX: from the inputs to the output, or
to one node (the prefix of a site), or with one node's value given (the suffix:
only the nodes that the output needs once that node is known are run — the
layers before the site run only where another path, e.g. a skip connection,
reads them, and then on the given inputs).
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from cfmod_jax.torch_bridge import ops as _ops
from cfmod_jax.torch_bridge import ops_nn  # noqa: F401  # registers the nn ops


def import_torch():
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:  # pragma: no cover - torch is in the test extras
    raise ImportError("cfmod_jax.torch_bridge needs PyTorch: pip install 'cfmod_jax[torch]'") from e
  return torch


def to_numpy(t) -> np.ndarray:
  """A tensor as numpy, floating types as float32 and 64-bit integers as int32 (JAX's
  default precision)."""
  torch = import_torch()
  t = t.detach().cpu()
  if t.is_floating_point():
    return t.to(torch.float32).numpy()
  if t.dtype == torch.int64:
    return t.to(torch.int32).numpy()
  return t.numpy()


def check_module_paths(model, paths: Sequence[str], name: str) -> None:
  """ValueError for a path that is not a submodule of ``model`` (with close names)."""
  available = [p for p, _ in model.named_modules() if p]
  for path in paths:
    if path not in available:
      close = difflib.get_close_matches(path, available, n=5, cutoff=0.5)
      hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
      raise ValueError(
        f"site {path!r} is not a submodule of {name}{hint} Submodule paths are PyTorch's "
        f"names from model.named_modules(): {', '.join(available) or '(none)'}"
      )


def check_eval_mode(model, name: str) -> None:
  training = [p or "(the model)" for p, m in model.named_modules() if m.training]
  if training:
    raise ValueError(
      f"{name} is in training mode ({', '.join(training[:5])}"
      f"{', …' if len(training) > 5 else ''}): call model.eval() first, so that "
      "BatchNorm uses its running statistics and Dropout is off (a hybrid must not "
      "depend on which samples share its batch)"
    )


def _short(e: BaseException, limit: int = 1200) -> str:
  text = f"{type(e).__name__}: {e}"
  return text if len(text) <= limit else text[:limit] + " …"


def export_model(model, example_inputs: tuple, name: str):
  """``torch.export.export`` with a dynamic batch size, lowered to core ATen ops."""
  torch = import_torch()
  batch = torch.export.Dim("batch")
  dynamic = tuple({0: batch} for _ in example_inputs)
  try:
    ep = torch.export.export(model, tuple(example_inputs), dynamic_shapes=dynamic)
  except Exception as e:  # pylint: disable=broad-except  # torch raises many kinds
    raise ValueError(
      f"torch.export could not export {name} ({type(model).__name__}) with a batch of "
      f"any size: {_short(e)}\nCommon causes: data-dependent control flow (an `if` or a "
      "loop on tensor values; rewrite it with torch.cond or without the branch), a batch "
      "size fixed in the code (use x.shape[0] or -1 in view/reshape), or Python-side "
      "effects in forward."
    ) from e
  try:
    return ep.run_decompositions()
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{name}: lowering the exported graph to ATen ops failed: {_short(e)}") from e


class Program:
  """An exported graph ready to be interpreted with JAX.

  Attributes:
    variables: ``{"params": {name: array}, "buffers": {…}, "constants": {…}}`` with
      PyTorch's names (``"main.1.running_mean"``); float32 numpy arrays.
    n_inputs: number of user inputs (the noise, then any conditioning inputs).
    module_outputs: submodule path → the graph node holding its output (first call).
  """

  def __init__(self, exported, name: str):
    torch = import_torch()
    from torch.export.graph_signature import InputKind  # pylint: disable=import-outside-toplevel

    self.name = name
    graph = exported.graph
    self.graph_text = str(graph)  # the ATen graph (targets and arguments of every node)
    self.nodes = list(graph.nodes)
    self._kinds: dict[str, tuple[str, str]] = {}  # placeholder name → (collection, key)
    self.input_names: list[str] = []
    state, constants = exported.state_dict, exported.constants
    variables: dict[str, dict[str, np.ndarray]] = {"params": {}, "buffers": {}, "constants": {}}
    for spec in exported.graph_signature.input_specs:
      arg = spec.arg.name
      if spec.kind == InputKind.USER_INPUT:
        self.input_names.append(arg)
      elif spec.kind == InputKind.PARAMETER:
        variables["params"][spec.target] = to_numpy(state[spec.target])
        self._kinds[arg] = ("params", spec.target)
      elif spec.kind == InputKind.BUFFER:
        value = state[spec.target] if spec.target in state else constants[spec.target]
        variables["buffers"][spec.target] = to_numpy(value)
        self._kinds[arg] = ("buffers", spec.target)
      elif spec.kind == InputKind.CONSTANT_TENSOR:
        variables["constants"][spec.target] = to_numpy(constants[spec.target])
        self._kinds[arg] = ("constants", spec.target)
      else:
        raise ValueError(f"{name}: graph input {arg!r} of kind {spec.kind} is not supported")
    self.variables = variables
    self.n_inputs = len(self.input_names)
    outputs = [n for n in self.nodes if n.op == "output"]
    out_args = outputs[0].args[0]
    if not isinstance(out_args, (tuple, list)) or len(out_args) != 1:
      raise ValueError(f"{name} must return one tensor (the images), got {len(out_args)} outputs")
    self.output = out_args[0]
    self._check_ops()
    self.module_outputs, self.module_types = self._module_outputs()
    del torch

  def __repr__(self):
    # Part of `cfmod_jax.fingerprint.generator_fingerprint` (repr of ``gen.module``): a digest
    # of the graph, so that another computation never reuses cached results.
    digest = hashlib.sha256(self.graph_text.encode()).hexdigest()[:16]
    return f"Program({self.name}, graph sha256 {digest}, {len(self.nodes)} nodes)"

  def _check_ops(self) -> None:
    for n in self.nodes:
      if n.op == "call_function" and _ops.op_key(n.target) not in _ops.OPS:
        key = _ops.op_key(n.target)
        stack = n.meta.get("nn_module_stack") or {}
        where = ""
        if stack:
          path, kind = list(stack.values())[-1]
          where = f" (in submodule {path or '(root)'!r}, {kind})"
        raise ValueError(
          f"{self.name}: the ATen op {key}{where} has no JAX implementation in "
          "cfmod_jax.torch_bridge. Add one before calling from_torch: "
          f"cfmod_jax.torch_bridge.register_op({str(key)!r}, fn), where fn takes the op's "
          "arguments (JAX arrays for tensors, NCHW layout) and returns what the ATen op "
          "returns; test it against torch on random inputs."
        )
      if n.op not in ("placeholder", "call_function", "output"):
        raise ValueError(f"{self.name}: graph node {n.name} of kind {n.op} is not supported")

  def _module_outputs(self):
    """Each submodule's output node: the node inside the module's first call that a
    node outside it reads (None when there is not exactly one)."""
    scopes: dict[str, str] = {}  # path → scope key of its first call
    types: dict[str, str] = {}
    for n in self.nodes:
      for key, (path, kind) in (n.meta.get("nn_module_stack") or {}).items():
        if path and path not in scopes:
          scopes[path], types[path] = key, kind
    inside: dict[str, set] = {p: set() for p in scopes}
    for n in self.nodes:
      stack = n.meta.get("nn_module_stack") or {}
      for path, key in scopes.items():
        if key in stack:
          inside[path].add(n)
    outs = {}
    for path, members in inside.items():
      read = [m for m in members if any(u not in members for u in m.users)]
      read = [m for m in self.nodes if m in read]  # graph order
      outs[path] = read[0] if len(read) == 1 else None
    return outs, types

  def is_variable(self, node: Any) -> bool:
    """Whether ``node`` is a parameter, buffer or constant of the model."""
    return getattr(node, "name", None) in self._kinds

  def variable(self, variables: Any, node: Any) -> Any:
    """The value of the variable placeholder ``node`` in ``variables``."""
    coll, key = self._kinds[node.name]
    return variables[coll][key]

  # ---- interpretation -------------------------------------------------------------------
  def _needed(self, targets: Sequence[Any], known: Sequence[Any] = ()) -> list:
    """The call nodes that ``targets`` need, in graph order, given ``known`` nodes."""
    need, stack = set(), list(targets)
    known = set(known)
    while stack:
      n = stack.pop()
      if n in need or n in known or not hasattr(n, "op"):
        continue
      need.add(n)
      stack.extend(n.all_input_nodes)
    return [n for n in self.nodes if n in need and n.op == "call_function"]

  def run(
    self,
    variables: Any,
    inputs: Sequence[Any],
    *,
    stop: Any = None,
    given: tuple[Any, Any] | None = None,
    on_trace: Callable[[], None] | None = None,
  ):
    """Interprets the graph with JAX (call it inside jit; every op is traced once).

    ``inputs``: the user inputs (JAX arrays). ``stop``: a node; returns its value
    instead of the output. ``given``: ``(node, value)``; that node's value is ``value``
    and only what the output needs beyond it is computed.
    """
    from torch.fx.node import map_arg  # pylint: disable=import-outside-toplevel

    if on_trace is not None:
      on_trace()
    env: dict[Any, Any] = {}
    for n in self.nodes:
      if n.op == "placeholder" and n.name in self._kinds:
        coll, key = self._kinds[n.name]
        env[n] = variables[coll][key]
    for n, x in zip((n for n in self.nodes if n.name in self.input_names), inputs):
      env[n] = x
    target = self.output if stop is None else stop
    known = ()
    if given is not None:
      env[given[0]] = given[1]
      known = (given[0],)
    for n in self._needed([target], known):
      args = map_arg(n.args, env.__getitem__)
      kwargs = map_arg(n.kwargs, env.__getitem__)
      kwargs = {k: v for k, v in kwargs.items() if k not in ("device", "layout", "pin_memory")}
      env[n] = _ops.OPS[_ops.op_key(n.target)](*args, **kwargs)
    return env[target]


__all__ = [
  "Program",
  "check_eval_mode",
  "import_torch",
  "check_module_paths",
  "export_model",
  "to_numpy",
]
