"""The bad-input table: every known misuse of the API and the CLIs, as a table of cases.

  python -m studies.reliability_doc          # all cases; writes docs/reliability.md + .json
  python -m studies.reliability_doc --quick --markdown /tmp/r.md --json /tmp/r.json

The in-process cases (`API_CASES`, `CHECKPOINT_CASES`, `CACHE_CASES`) are parametrised
tests in `tests/test_bad_inputs.py`, the quick CLI cases (`cli_cases`) run in
`tests/test_cli.py`. Here each case is tried and its outcome classified by code:

* **clear error** — a ``ValueError`` (or subclass) whose message names the
  argument; for a CLI: exit code 1 or 2, no traceback, and exactly one
  ``experiments.<cli>: error: …`` line that names the flag (absl log lines aside);
* **correct result** — for cases where the right answer is to work (a damaged
  sweep-cache block must be recomputed, with a warning naming the file; ``--help``
  must print the help and exit 0);
* **deep error** — any other exception type, a message that does not name the
  argument, a CLI traceback or multi-line error;
* **accepted** — no error where one was expected (or damaged data was used, or
  something outside the checkpoint folder was opened, or a rejected run's
  config.json changed).

The goal is 0 deep errors and 0 accepted. CLI cases run as subprocesses
(``sys.executable -m experiments.<cli>``) with tiny settings, ``--workers`` at a time.
"""

from __future__ import annotations

from experiments import _cli  # isort: skip  (first: one line on Ctrl-C while jax imports)

import concurrent.futures
import contextlib
import dataclasses
import functools
import hashlib
import json
import logging as std_logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from absl import flags, logging

import cfmod_jax
from cfmod_jax import analysis, checkpoints, fileio, sweep
from cfmod_jax.interventions import influence_map_sums
from cfmod_jax.models import build_module

CLEAR, RESULT, DEEP, ACCEPTED = "clear error", "correct result", "deep error", "accepted"
OUTCOMES = (CLEAR, RESULT, DEEP, ACCEPTED)
GROUPS = ("api", "checkpoint", "cache", "cli")


@dataclasses.dataclass
class Outcome:
  group: str
  case: str
  expected: str  # 'error' or 'result'
  outcome: str  # one of OUTCOMES
  detail: str  # the message (first line), or why it was classified so
  seconds: float = 0.0


def names_all(message: str, names: Sequence[str]) -> bool:
  """Whether every one of ``names`` occurs in ``message`` as a word (case-insensitive)."""
  return all(re.search(rf"(?<![\w]){re.escape(n)}(?![\w])", message, re.I) for n in names)


def short(message: object, n: int = 220) -> str:
  s = _cli.one_line(message)
  return s if len(s) <= n else s[: n - 1] + "…"


# ---- the in-process cases -----------------------------------------------------------------
class Context:
  """What the in-process cases share: a width-4 random DCGAN (site block4, C=4, built
  once), two latent pairs, and a scratch folder ``tmp`` for checkpoints and caches."""

  site = "block4"

  def __init__(self, tmp: str):
    self.tmp = tmp
    self.key = jax.random.key(0)

  @functools.cached_property
  def gen(self) -> cfmod_jax.Generator:
    return cfmod_jax.init_generator("dcgan", width=4)

  @functools.cached_property
  def latents(self) -> tuple[jax.Array, jax.Array]:
    return self.gen.sample_latents(self.key, 2), self.gen.sample_latents(jax.random.key(1), 2)

  @property
  def channels(self) -> int:
    return self.gen.site_shape(self.site)[-1]

  def masks_with(self, value: complex, dtype: Any = np.float32) -> np.ndarray:
    """One mask of the site's channels: 0 but the first, which is ``value``."""
    m = np.zeros((1, self.channels), dtype)
    m[0, 0] = value
    return m

  def hybrids(self, masks=None, z1=None, *, gen=None, site=None):
    """`cfmod_jax.hybrids` with valid arguments but those given."""
    default_z1, z2 = self.latents
    return cfmod_jax.hybrids(
      self.gen if gen is None else gen,
      self.site if site is None else site,
      self.masks_with(0.0) if masks is None else masks,
      default_z1 if z1 is None else z1,
      z2,
    )

  @functools.cached_property
  def checkpoint(self) -> str:
    """A valid checkpoint of `gen`."""
    good = os.path.join(self.tmp, "ckpt_good")
    checkpoints.save_variables(
      good, self.gen.variables, kind="generator", arch="dcgan", kwargs={"width": 4}
    )
    return good

  def checkpoint_variant(self, name, meta_change=None, data_change=None, raw_meta=None) -> str:
    """A copy of `checkpoint` in ``tmp/name``, its manifest or data file changed."""
    path = os.path.join(self.tmp, name)
    shutil.copytree(self.checkpoint, path)
    meta_path = os.path.join(path, checkpoints.META_FILE)
    if meta_change is not None:
      with open(meta_path, encoding="utf-8") as f:
        raw_meta = json.dumps(meta_change(json.load(f)))
    if raw_meta is not None:
      with open(meta_path, "w", encoding="utf-8") as f:
        f.write(raw_meta)
    if data_change is not None:
      data_path = os.path.join(path, checkpoints.DATA_FILE)
      with open(data_path, "rb") as f:
        data = f.read()
      with open(data_path, "wb") as f:
        f.write(data_change(data))
    return path

  @functools.cached_property
  def cache_reference(self) -> tuple[str, sweep.SweepResult, str]:
    """An undamaged sweep cache: (its folder, the result, the first block's path in it)."""
    ref_dir = os.path.join(self.tmp, "cache_ref")
    ref = sweep.eim_sweep(self.gen, self.site, CACHE_SWEEP, ref_dir)
    block0 = os.path.join("eims", ref.key, "block_00000.npz")
    if not os.path.isfile(os.path.join(ref_dir, block0)):
      raise RuntimeError(f"the sweep cache layout changed: no {block0} in {ref_dir}")
    return ref_dir, ref, block0


@dataclasses.dataclass(frozen=True)
class Case:
  """One misuse. ``expect='error'``: ``call(ctx)`` must raise a ValueError whose message
  names every word of ``names``, without opening the file ``forbidden(ctx)`` (if
  given). ``expect='result'``: ``call(ctx)`` must work and returns what is wrong with
  its result (an empty list when it is right)."""

  group: str
  name: str
  call: Callable[[Context], Any]
  names: tuple[str, ...] = ()
  expect: str = "error"
  forbidden: Callable[[Context], str] | None = None

  def __str__(self) -> str:  # the pytest id
    return self.name


def _init(arch="dcgan", **kwargs):
  return lambda ctx: cfmod_jax.init_generator(arch, **kwargs)


def _influence_map_sums(groups):
  def call(ctx):
    z1, z2 = ctx.latents
    return influence_map_sums(
      ctx.gen, ctx.site, ctx.masks_with(0.0), z1, z2, groups=np.array(groups)
    )

  return call


def _mismatched_generator(ctx):
  """A width-4 module with width-8 variables (zeros, from shapes only: nothing compiled)."""
  del ctx
  wide = build_module("dcgan", width=8)
  z = jax.ShapeDtypeStruct((1, *wide.latent_shape), np.float32)
  shapes = jax.eval_shape(wide.init, jax.random.key(0), z)
  variables = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)
  return cfmod_jax.Generator(build_module("dcgan", width=4), variables)


def _check_analysis_config(**kwargs):
  return lambda ctx: analysis.check_config(ctx.gen, analysis.AnalysisConfig(**kwargs))


API_CASES = [
  Case("api", "init_generator('dcgan', width=0)", _init(width=0), ("width",)),
  Case("api", "init_generator('dcgan', width=-1)", _init(width=-1), ("width",)),
  Case("api", "init_generator('dcgan', width='a')", _init(width="a"), ("width",)),
  Case("api", "init_generator('dcgan', width=1.5)", _init(width=1.5), ("width",)),
  Case("api", "init_generator('dcgan', depth=3) (unknown keyword)", _init(depth=3), ("depth",)),
  Case("api", "init_generator('dcgan', latent_dim=0)", _init(latent_dim=0), ("latent_dim",)),
  Case("api", "init_generator('nope')", _init("nope"), ("arch",)),
  Case("api", "init_generator('dcgan', seed=-1)", _init(seed=-1, width=4), ("seed",)),
  Case(
    "api", "hybrids: complex masks", lambda ctx: ctx.hybrids(ctx.masks_with(0.5) + 0.5j), ("masks",)
  ),
  Case(
    "api",
    "hybrids: NaN in a mask (message must say NaN)",
    lambda ctx: ctx.hybrids(ctx.masks_with(np.nan)),
    ("masks", "NaN"),
  ),
  Case(
    "api",
    "hybrids: mask value 1.5 (outside [0, 1])",
    lambda ctx: ctx.hybrids(ctx.masks_with(1.5)),
    ("masks",),
  ),
  Case(
    "api", "hybrids: mask value -0.5", lambda ctx: ctx.hybrids(ctx.masks_with(-0.5)), ("masks",)
  ),
  Case(
    "api",
    "hybrids: mask length 5 for C=4",
    lambda ctx: ctx.hybrids(np.zeros((1, ctx.channels + 1))),
    ("masks",),
  ),
  Case("api", "hybrids: unknown site", lambda ctx: ctx.hybrids(site="block9"), ("site",)),
  Case(
    "api",
    "hybrids: z1 of the wrong latent size",
    lambda ctx: ctx.hybrids(z1=np.zeros((2, 7))),
    ("z1",),
  ),
  Case(
    "api",
    "hybrids: NaN in z1",
    lambda ctx: ctx.hybrids(z1=np.full(ctx.latents[0].shape, np.nan)),
    ("z1",),
  ),
  Case("api", "hybrids: gen is a str", lambda ctx: ctx.hybrids(gen="dcgan-synthfaces"), ("gen",)),
  Case(
    "api",
    "influence_map_sums: empty group (groups=[0, 2])",
    _influence_map_sums([0, 2]),
    ("groups",),
  ),
  Case(
    "api", "influence_map_sums: groups of the wrong length", _influence_map_sums([0]), ("groups",)
  ),
  Case(
    "api", "sample_latents(key, True)", lambda ctx: ctx.gen.sample_latents(ctx.key, True), ("n",)
  ),
  Case("api", "sample_latents(key, 0)", lambda ctx: ctx.gen.sample_latents(ctx.key, 0), ("n",)),
  Case(
    "api", "sample_latents(0, 2) (int as key)", lambda ctx: ctx.gen.sample_latents(0, 2), ("key",)
  ),
  Case(
    "api",
    "sample_latents(np.ones(3), 2) (numpy array as key)",
    lambda ctx: ctx.gen.sample_latents(np.ones(3), 2),
    ("key",),
  ),
  Case(
    "api",
    "elementary_influence_maps(n_pairs=0)",
    lambda ctx: cfmod_jax.elementary_influence_maps(ctx.gen, ctx.site, 0, ctx.key),
    ("n_pairs",),
  ),
  Case(
    "api",
    "elementary_influence_maps(key=5)",
    lambda ctx: cfmod_jax.elementary_influence_maps(ctx.gen, ctx.site, 2, 5),
    ("key",),
  ),
  Case(
    "api", "Generator(width-4 module, width-8 variables)", _mismatched_generator, ("variables",)
  ),
  Case(
    "api", "SweepConfig(seed=-1).check()", lambda ctx: sweep.SweepConfig(seed=-1).check(), ("seed",)
  ),
  Case("api", "analysis.check_config(seed=-1)", _check_analysis_config(seed=-1), ("seed",)),
  Case("api", "analysis.check_config(k=1)", _check_analysis_config(k=1), ("k",)),
]


def _load(prepare: Callable[[Context], str]):
  """`load_generator` of the folder that ``prepare(ctx)`` makes."""
  return lambda ctx: checkpoints.load_generator(prepare(ctx))


def _variant(name, **change):
  return _load(lambda ctx: ctx.checkpoint_variant(name, **change))


def _without(key):
  return lambda meta: {k: v for k, v in meta.items() if k != key}


def _with_fields(**fields):
  return lambda meta: {**meta, **fields}


def _flip_middle_byte(data: bytes, bits: int = 0xFF) -> bytes:
  i = len(data) // 2
  return data[:i] + bytes([data[i] ^ bits]) + data[i + 1 :]


def _without_data_file(ctx):
  path = ctx.checkpoint_variant("ckpt_nodata")
  os.remove(os.path.join(path, checkpoints.DATA_FILE))
  return path


def _a_regular_file(ctx):
  path = os.path.join(ctx.tmp, "ckpt_file")
  with open(path, "w", encoding="utf-8") as f:
    f.write("not a folder")
  return path


def _outside(ctx) -> str:
  """A file beside the checkpoints with the size and sha256 that their manifest accepts."""
  path = os.path.join(ctx.tmp, "outside.msgpack")
  if not os.path.exists(path):
    shutil.copy(os.path.join(ctx.checkpoint, checkpoints.DATA_FILE), path)
  return path


def _escaping_to_outside(ctx):
  _outside(ctx)
  return ctx.checkpoint_variant("ckpt_escape", _with_fields(file="../outside.msgpack"))


CHECKPOINT_CASES = [
  Case("checkpoint", "load_generator: " + name, call, names, forbidden=forbidden)
  for name, call, names, forbidden in [
    (
      "manifest without file_bytes",
      _variant("ckpt_nobytes", meta_change=_without("file_bytes")),
      ("file_bytes",),
      None,
    ),
    (
      "manifest without manifest",
      _variant("ckpt_nomanifest", meta_change=_without("manifest")),
      ("manifest",),
      None,
    ),
    (
      "manifest file_bytes='12'",
      _variant("ckpt_strbytes", meta_change=_with_fields(file_bytes="12")),
      ("file_bytes",),
      None,
    ),
    (
      "checkpoint.json not JSON",
      _variant("ckpt_badjson", raw_meta="{not json"),
      (checkpoints.META_FILE,),
      None,
    ),
    (
      "data file truncated",
      _variant("ckpt_trunc", data_change=lambda d: d[: len(d) // 2]),
      (checkpoints.DATA_FILE,),
      None,
    ),
    (
      "data file with a flipped byte",
      _variant("ckpt_flip", data_change=_flip_middle_byte),
      (checkpoints.DATA_FILE,),
      None,
    ),
    ("data file missing", _load(_without_data_file), (checkpoints.DATA_FILE,), None),
    (
      "declared width 8, width-4 arrays",
      _variant("ckpt_width", meta_change=_with_fields(kwargs={"width": 8})),
      ("ckpt_width",),
      None,
    ),
    ("checkpoint path is a file", _load(_a_regular_file), ("ckpt_file",), None),
    (
      "checkpoint path does not exist",
      _load(lambda ctx: os.path.join(ctx.tmp, "nowhere")),
      ("nowhere",),
      None,
    ),
    (
      "manifest file='../outside.msgpack' (valid sha256)",
      _load(_escaping_to_outside),
      ("file",),
      _outside,
    ),
    (
      "manifest file='../../../../etc/passwd'",
      _variant("ckpt_passwd", meta_change=_with_fields(file="../../../../etc/passwd")),
      ("file",),
      lambda ctx: "/etc/passwd",
    ),
  ]
]


# The sweep that every cache case damages and reruns: 8 pairs in 2 blocks.
CACHE_SWEEP = sweep.SweepConfig(n_pairs=8, block_pairs=4, seed=0)


class _Capture(std_logging.Handler):
  def __init__(self):
    super().__init__()
    self.messages: list[str] = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def damaged_cache_problems(ctx: Context, name: str, damage: Callable[[str, dict], None]):
  """Damages the first block of a copy of the reference cache (``damage(path,
  arrays)``) and reruns the sweep: what is wrong (an empty list when the block was
  recomputed, bit-identical, with a warning naming the file)."""
  ref_dir, ref, block0 = ctx.cache_reference
  work = os.path.join(ctx.tmp, "cache_" + re.sub(r"\W+", "_", name))
  shutil.copytree(ref_dir, work)
  path = os.path.join(work, block0)
  with np.load(path) as d:
    arrays = {k: d[k] for k in d.files}
  damage(path, arrays)
  handler = _Capture()
  absl_logger = logging.get_absl_logger()
  absl_logger.addHandler(handler)
  try:
    with warnings.catch_warnings(record=True) as caught:
      warnings.simplefilter("always")
      res = sweep.eim_sweep(ctx.gen, ctx.site, CACHE_SWEEP, work)
  finally:
    absl_logger.removeHandler(handler)
  said = [str(w.message) for w in caught] + handler.messages
  problems = []
  if not np.array_equal(res.eims, ref.eims):
    problems.append("the maps differ from an undamaged run (damaged data was used)")
  if res.computed_blocks != 1:
    problems.append(f"{res.computed_blocks} blocks recomputed, expected 1")
  if not any(path in s or block0 in s for s in said):
    problems.append("no warning names the damaged file")
  return problems


def _rewrite(**changes):
  """The block saved again with ``changes(arrays)`` (a change of None drops the key)."""

  def damage(path, arrays):
    new = {k: v(arrays) if callable(v) else v for k, v in changes.items()}
    with open(path, "wb") as f:
      np.savez(f, **{k: v for k, v in {**arrays, **new}.items() if v is not None})

  return damage


def _raw(change):
  """The block's bytes changed."""

  def damage(path, arrays):
    del arrays
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(change(data))

  return damage


def _cache_case(name, damage):
  return Case(
    "cache",
    f"sweep cache block: {name}",
    lambda ctx: damaged_cache_problems(ctx, name, damage),
    expect="result",
  )


CACHE_CASES = [
  _cache_case("empty file", _raw(lambda d: b"")),
  _cache_case("truncated to half", _raw(lambda d: d[: len(d) // 2])),
  _cache_case("one byte flipped (in the sums)", _raw(lambda d: _flip_middle_byte(d, 0x01))),
  _cache_case(
    "sums of the wrong shape",
    _rewrite(sums=lambda a: np.concatenate([a["sums"], a["sums"][:1]])),
  ),
  _cache_case(
    "sums of the wrong dtype (float64, same values)",
    _rewrite(sums=lambda a: a["sums"].astype(np.float64)),
  ),
  _cache_case("sums doubled (sha256 of the original)", _rewrite(sums=lambda a: a["sums"] * 2)),
  _cache_case("count of another block size", _rewrite(count=np.int64(3))),
  _cache_case("missing key 'sums'", _rewrite(sums=None)),
]

IN_PROCESS_CASES = {"api": API_CASES, "checkpoint": CHECKPOINT_CASES, "cache": CACHE_CASES}


@contextlib.contextmanager
def watch_opens(paths: Sequence[str]) -> Iterator[list[str]]:
  """Records every `open` (audit event) of one of ``paths`` in the yielded list."""
  seen: list[str] = []
  targets = {os.path.realpath(p) for p in paths}
  active = [True]

  def hook(event, args):
    if active[0] and event == "open" and args and isinstance(args[0], (str, bytes)):
      p = os.fsdecode(args[0])
      if os.path.realpath(p) in targets:
        seen.append(p)

  sys.addaudithook(hook)  # audit hooks cannot be removed; this one is switched off below
  try:
    yield seen
  finally:
    active[0] = False


def try_case(case: Case, ctx: Context) -> Outcome:
  """Runs ``case`` and classifies its outcome (see the module's docstring)."""
  t0 = time.perf_counter()
  if case.expect == "result":
    try:
      wrong = case.call(ctx)
    except Exception as e:  # pylint: disable=broad-except
      outcome, detail = DEEP, short(f"{type(e).__name__}: {e}")
    else:
      outcome, detail = (ACCEPTED, short("; ".join(wrong))) if wrong else (RESULT, "ok")
  else:
    forbidden = [case.forbidden(ctx)] if case.forbidden else []
    with watch_opens(forbidden) as opened:
      try:
        case.call(ctx)
      except ValueError as e:
        msg = str(e)
        outcome = CLEAR if names_all(msg, case.names) else DEEP
        detail = short(f"{type(e).__name__}: {msg}")
        if outcome == DEEP:
          detail = f"message does not name {', '.join(case.names)}: " + detail
      except Exception as e:  # pylint: disable=broad-except
        outcome, detail = DEEP, short(f"{type(e).__name__}: {e}")
      else:
        outcome, detail = ACCEPTED, "no error"
    if opened:
      outcome, detail = ACCEPTED, f"opened {opened[0]}; " + detail
  expected = "result" if case.expect == "result" else "error"
  return Outcome(case.group, case.name, expected, outcome, detail, time.perf_counter() - t0)


# ---- CLI cases ----------------------------------------------------------------------------
LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")


_TINY = (
  "--generator",
  "random:dcgan:4",
  "--config.sites=block4",
  "--config.n_pairs=32",
  "--config.block_pairs=16",
  "--out",
  "$TMP/cli_out",
)


@dataclasses.dataclass
class CliCase:
  case: str
  args: list[str]
  names: Sequence[str] = ()  # words the error line must contain
  expect: str = "error"  # 'error' or 'help'
  setup: Callable[[], None] | None = None
  after: Callable[[], str | None] | None = None  # reason to count as accepted, or None
  quick: bool = False


def classify_cli(c: CliCase, rc: int, stdout: str, stderr: str) -> tuple[str, str]:
  lines = [l for l in stderr.splitlines() if l.strip() and not LOG_LINE.match(l)]
  if "Traceback (most recent call last)" in stderr:
    tail = [l for l in lines if l.strip()][-1:] or ["?"]
    return DEEP, short(f"traceback (rc {rc}): {tail[0]}")
  if c.expect == "help":
    if rc == 0 and "--" in stdout and not lines:
      return RESULT, f"rc 0, {len(stdout.splitlines())} lines of help"
    return ACCEPTED if rc == 0 else DEEP, short(f"rc {rc}; stderr: {' | '.join(lines)}")
  if rc == 0:
    return ACCEPTED, "rc 0 (no error)"
  errors = [l for l in lines if re.match(r"^experiments\.\w+: error: ", l)]
  if rc not in (1, 2) or len(errors) != 1 or len(lines) != 1:
    return DEEP, short(f"rc {rc}, {len(lines)} non-log stderr lines: {' | '.join(lines)}")
  if not names_all(errors[0], c.names):
    return DEEP, short(f"does not name {', '.join(c.names)}: {errors[0]}")
  return CLEAR, short(f"rc {rc}: {errors[0]}")


def run_cli(module: str, c: CliCase, timeout: float, cwd: str) -> Outcome:
  t0 = time.perf_counter()
  if c.setup is not None:
    c.setup()
  env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
  cmd = [sys.executable, "-m", f"experiments.{module}", *c.args]
  try:
    p = subprocess.run(
      cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env, check=False
    )
    outcome, detail = classify_cli(c, p.returncode, p.stdout, p.stderr)
  except subprocess.TimeoutExpired:
    outcome, detail = DEEP, f"hung for more than {timeout:.0f} s"
  if c.after is not None:
    reason = c.after()
    if reason:
      outcome, detail = ACCEPTED, reason + "; " + detail
  shown = " ".join(c.args)
  return Outcome(
    "cli",
    f"{module} {shown}".strip() + (f" ({c.case})" if c.case else ""),
    "result" if c.expect == "help" else "error",
    outcome,
    detail,
    time.perf_counter() - t0,
  )


_ABBREVIATIONS: list[tuple[str, str]] = []


def abbreviate(text: str) -> str:
  """The table's text with the run's temporary folder as $TMP and the tiny
  analyze settings as $TINY (so that the table does not change between runs)."""
  for old, new in _ABBREVIATIONS:
    text = text.replace(old, new)
  return text


def _file_digest(path: str) -> str | None:
  if not os.path.isfile(path):
    return None
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()


def cli_cases(tmp: str, quick: bool) -> list[tuple[str, CliCase]]:
  regular = os.path.join(tmp, "regular_file")
  with open(regular, "w", encoding="utf-8") as f:
    f.write("x")
  out = os.path.join(tmp, "cli_out")
  tiny = [*_TINY[:-1], out]
  bad_metrics = os.path.join(tmp, "bad_metrics")
  os.makedirs(bad_metrics, exist_ok=True)
  with open(os.path.join(bad_metrics, "metrics.json"), "w", encoding="utf-8") as f:
    f.write("{\"sites\": ")
  cases = [
    (
      "analyze",
      CliCase(
        "unknown generator", ["--generator", "nope", "--out", out], ["--generator"], quick=True
      ),
    ),
    ("analyze", CliCase("unknown site", [*tiny, "--config.sites=block9"], ["--config.sites"])),
    ("analyze", CliCase("", [*tiny, "--config.n_pairs=0"], ["--config.n_pairs"], quick=True)),
    ("analyze", CliCase("", [*tiny, "--config.k=abc"], ["--config.k"], quick=True)),
    ("analyze", CliCase("", [*tiny, "--config.k=1"], ["--config.k"])),
    (
      "analyze",
      CliCase("", [*tiny, "--config.pair_chunk=abc"], ["--config.pair_chunk"], quick=True),
    ),
    ("analyze", CliCase("", [*tiny, "--config.mask_chunk=0"], ["--config.mask_chunk"])),
    ("analyze", CliCase("", [*tiny, "--config.precision=fp16"], ["--config.precision"])),
    ("analyze", CliCase("", [*tiny, "--config.seed=-1"], ["--config.seed"], quick=True)),
    ("analyze", CliCase("", [*tiny, "--config.n_pairs=abc"], ["--config.n_pairs"])),
    ("analyze", CliCase("", [*tiny, "--config.block_pairs=32"], ["--config.n_pairs"])),
    ("analyze", CliCase("an old flag", [*tiny, "--sites=block3"], ["--config.sites"])),
    ("analyze", CliCase("", ["--generator", "random:dcgan:0", "--out", out], ["--generator"])),
    ("analyze", CliCase("", ["--generator", "random:dcgan:x", "--out", out], ["--generator"])),
    (
      "analyze",
      CliCase(
        "--out under a regular file",
        [*tiny, "--out", os.path.join(regular, "out")],
        ["--out"],
        quick=True,
      ),
    ),
    (
      "analyze",
      CliCase(
        "--cache_dir under a regular file",
        [*tiny, "--cache_dir", os.path.join(regular, "c")],
        ["--cache_dir"],
      ),
    ),
    ("analyze", CliCase("extra positional argument", [*tiny, "extra"], ["extra"], quick=True)),
    ("analyze", CliCase("unknown flag", [*tiny, "--bogus", "1"], ["bogus"])),
    ("analyze", _foreign_out_case(bad_metrics)),
    ("analyze", _locked_out_case(os.path.join(tmp, "locked_out"))),
    ("summarize", CliCase("", ["--help"], expect="help", quick=True)),
    (
      "summarize",
      CliCase("missing folder", [os.path.join(tmp, "nowhere")], ["nowhere"], quick=True),
    ),
    ("summarize", CliCase("no folder", [], ["folders"])),
    ("summarize", CliCase("damaged metrics.json", [bad_metrics], ["bad_metrics"])),
    (
      "train",
      CliCase(
        "unknown --config.x",
        [
          "--config",
          "experiments/configs/dcgan.py",
          "--workdir",
          os.path.join(tmp, "w"),
          "--config.x=1",
        ],
        ["--config.x"],
        quick=True,
      ),
    ),
    (
      "train",
      CliCase(
        "",
        [
          "--config",
          "experiments/configs/dcgan.py",
          "--workdir",
          os.path.join(tmp, "w"),
          "--config.num_steps=0",
        ],
        ["num_steps"],
      ),
    ),
    (
      "train",
      CliCase(
        "",
        ["--config", os.path.join(tmp, "nofile.py"), "--workdir", os.path.join(tmp, "w")],
        ["--config"],
      ),
    ),
    (
      "train",
      CliCase(
        "extra positional argument",
        ["--config", "experiments/configs/dcgan.py", "--workdir", os.path.join(tmp, "w"), "extra"],
        ["extra"],
      ),
    ),
    (
      "train",
      CliCase(
        "unknown feature network for the export",
        [
          "--config",
          "experiments/configs/dcgan.py",
          "--workdir",
          os.path.join(tmp, "w"),
          "--export",
          os.path.join(tmp, "ex"),
          "--featnet",
          "nope",
        ],
        ["--featnet"],
      ),
    ),
    (
      "train",
      CliCase(
        "--workdir is a regular file",
        ["--config", "experiments/configs/dcgan.py", "--workdir", regular],
        ["--workdir"],
      ),
    ),
    (
      "benchmark",
      CliCase("", ["--quick", "--sites", "block9", "--out", out], ["--sites"], quick=True),
    ),
    ("robustness", CliCase("", ["--generator", "nope", "--out", out], ["--generator"])),
    (
      "style_transfer",
      CliCase("", ["--biggan", os.path.join(tmp, "nowhere"), "--out", out], ["--biggan"]),
    ),
    (
      "convert_biggan",
      CliCase(
        "", ["--state_dict", os.path.join(tmp, "nowhere.bin"), "--out", out], ["--state_dict"]
      ),
    ),
  ]
  for module in ("analyze", "train", "benchmark", "robustness", "style_transfer", "convert_biggan"):
    cases.append((module, CliCase("", ["--help"], expect="help", quick=module == "analyze")))
  if not quick:
    cases.append(("train", rejected_resume_case(tmp)))
  return [(m, c) for m, c in cases if not quick or c.quick]


def rejected_resume_case(tmp: str) -> CliCase:
  """A one-step width-4 DCGAN run, then a resume with width 8: rejected, and the
  run's config.json unchanged."""
  workdir = os.path.join(tmp, "run")
  base = [
    "--config",
    "experiments/configs/dcgan.py",
    "--workdir",
    workdir,
    "--config.num_steps=1",
    "--config.batch_size=4",
    "--config.sample_every=0",
    "--config.log_every=1",
    "--config.generator.width=4",
    "--config.discriminator.width=4",
  ]
  before: list[str | None] = []

  def setup():
    p = subprocess.run(
      [sys.executable, "-m", "experiments.train", *base],
      capture_output=True,
      text=True,
      check=False,
      env={**os.environ, "JAX_PLATFORMS": "cpu"},
      cwd=_repo_root(),
    )
    if p.returncode != 0:
      raise RuntimeError(f"the training run for the resume case failed:\n{p.stderr[-2000:]}")
    before.append(_file_digest(os.path.join(workdir, "config.json")))

  def after():
    now = _file_digest(os.path.join(workdir, "config.json"))
    return None if now == before[0] else "the run's config.json was rewritten"

  return CliCase(
    "resume a width-4 run with width 8",
    [*base, "--config.generator.width=8"],
    ["--config"],
    setup=setup,
    after=after,
  )


def _foreign_out_case(folder: str) -> CliCase:
  """``--out`` holds outputs without a run manifest: refused, nothing changed."""
  before = {n: _file_digest(os.path.join(folder, n)) for n in os.listdir(folder)}

  def after():
    now = {n: _file_digest(os.path.join(folder, n)) for n in os.listdir(folder) if n != ".lock"}
    return None if now == before else "the folder's files were changed"

  return CliCase(
    "--out holds outputs of another run (no manifest)",
    [*_TINY[:-1], folder],
    [os.path.basename(folder)],
    after=after,
  )


def _locked_out_case(folder: str) -> CliCase:
  """Another run holds ``--out``'s lock: one line naming the folder."""
  lock = fileio.RunLock(folder)

  def after():
    lock.release()
    return None

  return CliCase(
    "--out locked by another run",
    [*_TINY[:-1], folder],
    [os.path.basename(folder)],
    setup=lock.acquire,
    after=after,
  )


def _repo_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- the table ----------------------------------------------------------------------------
def run_all(
  groups: Sequence[str], quick: bool, workers: int = 2, cli_timeout: float = 300
) -> list[Outcome]:
  """Every case of ``groups`` ('api', 'checkpoint', 'cache', 'cli'), in that order."""
  unknown = sorted(set(groups) - set(GROUPS))
  if unknown:
    raise ValueError(f"groups: unknown group(s) {unknown}; valid: api, checkpoint, cache, cli")
  results: list[Outcome] = []
  with tempfile.TemporaryDirectory(prefix="cfmod_bad_inputs_") as tmp:
    _ABBREVIATIONS[:] = [
      (" ".join([*_TINY[:-1], os.path.join(tmp, "cli_out")]), "$TINY"),
      (tmp, "$TMP"),
    ]
    futures = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
      if "cli" in groups:
        futures = [
          pool.submit(run_cli, m, c, cli_timeout, _repo_root()) for m, c in cli_cases(tmp, quick)
        ]
      ctx = Context(tmp)
      for group, cases in IN_PROCESS_CASES.items():
        if group in groups:
          results += [try_case(case, ctx) for case in cases]
      results += [f.result() for f in futures]
  return [
    dataclasses.replace(r, case=abbreviate(r.case), detail=abbreviate(r.detail)) for r in results
  ]


def counts(results: Sequence[Outcome]) -> dict[str, int]:
  return {"tried": len(results), **{o: sum(r.outcome == o for r in results) for o in OUTCOMES}}


NOTES = """\
## Notes

* **CLIs.** Every CLI of `experiments/` runs through `experiments/_cli.py`: flags that do
  not parse, unknown flags and `--config.<field>` overrides, positional arguments
  (only `summarize` takes some) and the library's `ValueError`s about a flag's value
  give one line `experiments.<cli>: error: --flag=value: …` and exit code 2; `--help`
  exits 0. Values are checked before any expensive work (`analyze` builds the
  generator and runs `analysis.check_config`, then checks that `--out`/`--cache_dir`
  are writable folders; `--seed` must be ≥ 0 at flag parsing).
* **Ctrl-C** prints one line and exits 130: `analyze` says where the finished sweep
  blocks are (`…/cache`) and that rerunning the same command resumes; `train` where
  the finished checkpoints are. `tests/test_cli.py` sends SIGINT to a running
  `analyze` after two blocks are on disk, checks the one line and exit code, reruns
  the same command and checks that the sweep logs `resuming, k/512 blocks` with k at
  least the blocks kept. Ctrl-C while a CLI is still importing jax also gives one line.
* **Output folders of `analyze`.** A run holds `<out>/.lock` (a second run into the
  same folder gets one line naming it) and records its settings and generator
  fingerprint in `<out>/run.json`; a folder holding another run's outputs, or outputs
  without a manifest, is refused with one line and left unchanged (the two cases
  above); a rerun with the same settings resumes. Every output file is written
  atomically, so a killed run leaves no half-written file (`tests/test_main_job_reliability.py`
  kills the job in the sweep, the clustering, the figures and `analysis.npz`, reruns it
  and compares the files byte for byte with an uninterrupted run's).
* **Resuming training** with a config that cannot resume the run (another model, or
  other state shapes such as another width) is refused by `experiments.train` before
  anything is written (it reads the latest checkpoint's metadata and compares the
  shapes); the run's `config.json` is unchanged (the last CLI case above).
* **Limits.** A sweep-cache block *without* a sha256 (written before checksums were
  added) whose numbers are plausible is accepted by design: it cannot be told from a
  valid old block. `train` leaves with `os._exit` after Ctrl-C, so a checkpoint being
  written asynchronously at that moment is dropped (an orbax temporary folder, ignored
  on resume); if Ctrl-C lands while the trainer waits for a save, orbax logs its own
  error with a traceback before the one line (a fix belongs in
  `cfmod_jax/train/loop.py`: finish or abandon the save, then re-raise). Ctrl-C in
  the first fraction of a second (Python's own start-up) still prints Python's
  traceback.
* **Regenerate** with `python -m studies.reliability_doc` (all cases; about 2 minutes of
  CPU time, run 2 CLI subprocesses at a time). The cases are one table in
  `studies/reliability_doc.py`: `tests/test_bad_inputs.py` runs each API, checkpoint
  and cache case as a parametrised test, `tests/test_cli.py` the quick CLI cases, the
  Ctrl-C test and the rejected resume; both assert 0 deep errors and 0 accepted.
"""


def markdown(results: Sequence[Outcome], seconds: float, command: str) -> str:
  n = counts(results)
  lines = [
    "# Reliability: the bad-input table",
    "",
    f"Generated by `{command}` ({seconds:.0f} s); do not edit by hand. Each case is tried "
    "and classified by code (see `studies/reliability_doc.py`): **clear error** = a "
    "`ValueError` whose message names the argument, or for a CLI exit code 1/2 with one "
    "`experiments.<cli>: error:` line naming the flag and no traceback; **correct result** "
    "= the input must work (a damaged sweep-cache block is recomputed, bit-identical, with "
    "a warning naming the file; `--help` prints the help and exits 0); **deep error** = any "
    "other exception, a message not naming the argument, or a CLI traceback; **accepted** "
    "= no error where one was due (or damaged data used, a file outside a checkpoint "
    "opened, a rejected run's config.json rewritten). Goal: 0 deep, 0 accepted.",
    "",
    "In the CLI cases `$TMP` is a fresh temporary folder and `$TINY` stands for "
    f"`{' '.join(_TINY)}` (a width-4 random DCGAN, "
    "one site, 32 pairs); CLI runs use `JAX_PLATFORMS=cpu`.",
    "",
    "| tried | clear error | correct result | deep error | accepted |",
    "|---:|---:|---:|---:|---:|",
    f"| {n['tried']} | {n[CLEAR]} | {n[RESULT]} | {n[DEEP]} | {n[ACCEPTED]} |",
    "",
    "| group | case | outcome | message / detail |",
    "|---|---|---|---|",
  ]
  for r in results:
    mark = r.outcome if r.outcome in (CLEAR, RESULT) else f"**{r.outcome}**"
    detail = r.detail.replace("|", "\\|").replace("\n", " ")
    case = r.case.replace("|", "\\|")
    lines.append(f"| {r.group} | `{case}` | {mark} | {detail} |")
  return "\n".join(lines) + "\n\n" + NOTES


def _define_flags() -> None:
  flags.DEFINE_string("markdown", "docs/reliability.md", "Markdown table to write.")
  flags.DEFINE_string("json", "docs/reliability.json", "JSON of every case to write.")
  flags.DEFINE_bool(
    "quick",
    False,
    "Fewer CLI subprocesses (one or two per CLI, no training run): the test's selection.",
  )
  flags.DEFINE_list("groups", list(GROUPS), "Groups of cases to run.")
  flags.DEFINE_integer("workers", 2, "CLI subprocesses run at the same time.", lower_bound=1)
  flags.DEFINE_integer(
    "cli_timeout", 300, "Seconds before a CLI case counts as hung.", lower_bound=1
  )


def main(argv: list[str]) -> None:
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  t0 = time.perf_counter()
  try:
    results = run_all(FLAGS.groups, FLAGS.quick, FLAGS.workers, FLAGS.cli_timeout)
  except ValueError as e:
    raise _cli.name_flag(e, ("groups",)) from None
  seconds = time.perf_counter() - t0
  command = "python -m studies.reliability_doc" + (" --quick" if FLAGS.quick else "")
  for path in (FLAGS.markdown, FLAGS.json):
    if os.path.dirname(path):
      os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(FLAGS.markdown, "w", encoding="utf-8") as f:
    f.write(markdown(results, seconds, command))
  with open(FLAGS.json, "w", encoding="utf-8") as f:
    json.dump(
      {
        "counts": counts(results),
        "seconds": seconds,
        "command": command,
        "cases": [dataclasses.asdict(r) for r in results],
      },
      f,
      indent=1,
    )
  n = counts(results)
  print(
    f"{n['tried']} cases: {n[CLEAR]} clear errors, {n[RESULT]} correct results, "
    f"{n[DEEP]} deep errors, {n[ACCEPTED]} accepted ({seconds:.0f} s); wrote "
    f"{FLAGS.markdown}, {FLAGS.json}"
  )
  for r in results:
    if r.outcome in (DEEP, ACCEPTED):
      print(f"  {r.outcome}: [{r.group}] {r.case}: {r.detail}")


if __name__ == "__main__":
  _define_flags()
  _cli.run(main)
