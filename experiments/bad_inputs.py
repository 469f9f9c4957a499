"""Bad-input table: tries every known misuse of the API and the CLIs, classifies each outcome.

  python -m experiments.bad_inputs                      # writes docs/reliability.md + .json
  python -m experiments.bad_inputs --quick --markdown /tmp/r.md --json /tmp/r.json

Outcomes (decided by code, not by hand):

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

from absl import flags, logging

from experiments import _cli

__all__ = [
  "ACCEPTED",
  "CLEAR",
  "DEEP",
  "OUTCOMES",
  "RESULT",
  "CliCase",
  "Outcome",
  "abbreviate",
  "api_cases",
  "cache_cases",
  "checkpoint_cases",
  "classify_cli",
  "cli_cases",
  "counts",
  "main",
  "markdown",
  "names_all",
  "run_all",
  "run_cli",
  "short",
  "tiny_generator",
  "try_error",
  "try_result",
  "watch_opens",
]

FLAGS = flags.FLAGS
flags.DEFINE_string("markdown", "docs/reliability.md", "Markdown table to write.")
flags.DEFINE_string("json", "docs/reliability.json", "JSON of every case to write.")
flags.DEFINE_bool(
  "quick",
  False,
  "Fewer CLI subprocesses (one or two per CLI, no training run): the configuration of the test.",
)
flags.DEFINE_list("groups", ["api", "checkpoint", "cache", "cli"], "Groups of cases to run.")
flags.DEFINE_integer("workers", 2, "CLI subprocesses run at the same time.", lower_bound=1)
flags.DEFINE_integer("cli_timeout", 300, "Seconds before a CLI case counts as hung.", lower_bound=1)

CLEAR, RESULT, DEEP, ACCEPTED = "clear error", "correct result", "deep error", "accepted"
OUTCOMES = (CLEAR, RESULT, DEEP, ACCEPTED)


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


# ---- in-process cases ---------------------------------------------------------------------
def try_error(
  group: str,
  case: str,
  fn: Callable[[], object],
  names: Sequence[str],
  extra_check: Callable[[], str | None] | None = None,
) -> Outcome:
  """Runs ``fn``, which must raise a ValueError naming every one of ``names``.

  ``extra_check`` (run afterwards) returns a reason to count the case as accepted
  (e.g. a file outside a checkpoint folder was opened), or None.
  """
  t0 = time.perf_counter()
  try:
    fn()
  except ValueError as e:
    msg = str(e)
    outcome = CLEAR if names_all(msg, names) else DEEP
    detail = short(f"{type(e).__name__}: {msg}")
    if outcome == DEEP:
      detail = f"message does not name {', '.join(names)}: " + detail
  except Exception as e:  # pylint: disable=broad-except
    outcome, detail = DEEP, short(f"{type(e).__name__}: {e}")
  else:
    outcome, detail = ACCEPTED, "no error"
  if extra_check is not None:
    reason = extra_check()
    if reason:
      outcome, detail = ACCEPTED, reason + "; " + detail
  return Outcome(group, case, "error", outcome, detail, time.perf_counter() - t0)


def try_result(group: str, case: str, fn: Callable[[], str | None]) -> Outcome:
  """Runs ``fn``, which returns None when the result is right, else what is wrong."""
  t0 = time.perf_counter()
  try:
    wrong = fn()
  except Exception as e:  # pylint: disable=broad-except
    outcome, detail = DEEP, short(f"{type(e).__name__}: {e}")
  else:
    outcome, detail = (RESULT, "ok") if wrong is None else (ACCEPTED, short(wrong))
  return Outcome(group, case, "result", outcome, detail, time.perf_counter() - t0)


@functools.cache
def tiny_generator() -> Any:
  """The width-4 random DCGAN that every in-process case uses (built once)."""
  import cfmod_jax  # pylint: disable=g-import-not-at-top

  return cfmod_jax.init_generator("dcgan", width=4)


def _zeros_like_init(module):
  """Variables of ``module`` (zeros, built from shapes only: nothing is compiled)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  z = jax.ShapeDtypeStruct((1, *module.latent_shape), np.float32)
  shapes = jax.eval_shape(module.init, jax.random.key(0), z)
  return jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), shapes)


def api_cases() -> list[Outcome]:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  import cfmod_jax  # pylint: disable=g-import-not-at-top
  from cfmod_jax import analysis  # pylint: disable=g-import-not-at-top
  from cfmod_jax.models import build_module  # pylint: disable=g-import-not-at-top
  from cfmod_jax.sweep import SweepConfig  # pylint: disable=g-import-not-at-top

  init = cfmod_jax.init_generator
  gen = tiny_generator()
  site = "block4"
  c = gen.site_shape(site)[-1]
  key = jax.random.key(0)
  z1, z2 = gen.sample_latents(key, 2), gen.sample_latents(jax.random.key(1), 2)
  ok_mask = np.zeros((1, c), np.float32)

  def masks_with(value, dtype=np.float32):
    m = np.zeros((1, c), dtype)
    m[0, 0] = value
    return m

  g = "api"
  out = [
    try_error(g, "init_generator('dcgan', width=0)", lambda: init("dcgan", width=0), ["width"]),
    try_error(g, "init_generator('dcgan', width=-1)", lambda: init("dcgan", width=-1), ["width"]),
    try_error(g, "init_generator('dcgan', width='a')", lambda: init("dcgan", width="a"), ["width"]),
    try_error(g, "init_generator('dcgan', width=1.5)", lambda: init("dcgan", width=1.5), ["width"]),
    try_error(
      g,
      "init_generator('dcgan', depth=3) (unknown keyword)",
      lambda: init("dcgan", depth=3),
      ["depth"],
    ),
    try_error(
      g,
      "init_generator('dcgan', latent_dim=0)",
      lambda: init("dcgan", latent_dim=0),
      ["latent_dim"],
    ),
    try_error(g, "init_generator('nope')", lambda: init("nope"), ["arch"]),
    try_error(
      g, "init_generator('dcgan', seed=-1)", lambda: init("dcgan", seed=-1, width=4), ["seed"]
    ),
    try_error(
      g,
      "hybrids: complex masks",
      lambda: cfmod_jax.hybrids(gen, site, masks_with(0.5) + 0.5j, z1, z2),
      ["masks"],
    ),
    try_error(
      g,
      "hybrids: NaN in a mask (message must say NaN)",
      lambda: cfmod_jax.hybrids(gen, site, masks_with(np.nan), z1, z2),
      ["masks", "NaN"],
    ),
    try_error(
      g,
      "hybrids: mask value 1.5 (outside [0, 1])",
      lambda: cfmod_jax.hybrids(gen, site, masks_with(1.5), z1, z2),
      ["masks"],
    ),
    try_error(
      g,
      "hybrids: mask value -0.5",
      lambda: cfmod_jax.hybrids(gen, site, masks_with(-0.5), z1, z2),
      ["masks"],
    ),
    try_error(
      g,
      f"hybrids: mask length {c + 1} for C={c}",
      lambda: cfmod_jax.hybrids(gen, site, np.zeros((1, c + 1)), z1, z2),
      ["masks"],
    ),
    try_error(
      g,
      "hybrids: unknown site",
      lambda: cfmod_jax.hybrids(gen, "block9", ok_mask, z1, z2),
      ["site"],
    ),
    try_error(
      g,
      "hybrids: z1 of the wrong latent size",
      lambda: cfmod_jax.hybrids(gen, site, ok_mask, np.zeros((2, 7)), z2),
      ["z1"],
    ),
    try_error(
      g,
      "hybrids: NaN in z1",
      lambda: cfmod_jax.hybrids(gen, site, ok_mask, np.full(z1.shape, np.nan), z2),
      ["z1"],
    ),
    try_error(
      g,
      "hybrids: gen is a str",
      lambda: cfmod_jax.hybrids("dcgan-synthfaces", site, ok_mask, z1, z2),
      ["gen"],
    ),
    try_error(
      g,
      "influence_map_sums: empty group (groups=[0, 2])",
      lambda: cfmod_jax.interventions.influence_map_sums(
        gen, site, ok_mask, z1, z2, groups=np.array([0, 2])
      ),
      ["groups"],
    ),
    try_error(
      g,
      "influence_map_sums: groups of the wrong length",
      lambda: cfmod_jax.interventions.influence_map_sums(
        gen, site, ok_mask, z1, z2, groups=np.array([0])
      ),
      ["groups"],
    ),
    try_error(g, "sample_latents(key, True)", lambda: gen.sample_latents(key, True), ["n"]),
    try_error(g, "sample_latents(key, 0)", lambda: gen.sample_latents(key, 0), ["n"]),
    try_error(g, "sample_latents(0, 2) (int as key)", lambda: gen.sample_latents(0, 2), ["key"]),
    try_error(
      g,
      "sample_latents(np.ones(3), 2) (numpy array as key)",
      lambda: gen.sample_latents(np.ones(3), 2),
      ["key"],
    ),
    try_error(
      g,
      "elementary_influence_maps(n_pairs=0)",
      lambda: cfmod_jax.elementary_influence_maps(gen, site, 0, key),
      ["n_pairs"],
    ),
    try_error(
      g,
      "elementary_influence_maps(key=5)",
      lambda: cfmod_jax.elementary_influence_maps(gen, site, 2, 5),
      ["key"],
    ),
    try_error(
      g,
      "Generator(width-4 module, width-8 variables)",
      lambda: cfmod_jax.Generator(
        build_module("dcgan", width=4), _zeros_like_init(build_module("dcgan", width=8))
      ),
      ["variables"],
    ),
    try_error(g, "SweepConfig(seed=-1).check()", lambda: SweepConfig(seed=-1).check(), ["seed"]),
    try_error(
      g,
      "analysis.check_config(seed=-1)",
      lambda: analysis.check_config(gen, analysis.AnalysisConfig(seed=-1)),
      ["seed"],
    ),
    try_error(
      g,
      "analysis.check_config(k=1)",
      lambda: analysis.check_config(gen, analysis.AnalysisConfig(k=1)),
      ["k"],
    ),
  ]
  return out


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


def checkpoint_cases(tmp: str) -> list[Outcome]:
  from cfmod_jax import checkpoints  # pylint: disable=g-import-not-at-top

  gen = tiny_generator()
  good = os.path.join(tmp, "ckpt_good")
  checkpoints.save_variables(
    good, gen.variables, kind="generator", arch="dcgan", kwargs={"width": 4}
  )
  meta_file, data_file = checkpoints.META_FILE, checkpoints.DATA_FILE
  with open(os.path.join(good, meta_file), encoding="utf-8") as f:
    meta = json.load(f)

  def variant(name: str, meta_change=None, data_change=None, raw_meta: str | None = None):
    path = os.path.join(tmp, name)
    shutil.copytree(good, path)
    if meta_change is not None or raw_meta is not None:
      text = raw_meta if raw_meta is not None else json.dumps(meta_change(dict(meta)))
      with open(os.path.join(path, meta_file), "w", encoding="utf-8") as f:
        f.write(text)
    if data_change is not None:
      p = os.path.join(path, data_file)
      with open(p, "rb") as f:
        data = f.read()
      with open(p, "wb") as f:
        f.write(data_change(data))
    return path

  def without(key):
    return lambda m: {k: v for k, v in m.items() if k != key}

  def with_fields(**fields):
    return lambda m: {**m, **fields}

  # A file outside the folder with the size and sha256 the manifest would accept.
  outside = os.path.join(tmp, "outside.msgpack")
  shutil.copy(os.path.join(good, data_file), outside)
  escape = variant("ckpt_escape", with_fields(file="../outside.msgpack"))
  passwd = variant("ckpt_passwd", with_fields(file="../../../../etc/passwd"))
  as_file = os.path.join(tmp, "ckpt_file")
  with open(as_file, "w", encoding="utf-8") as f:
    f.write("not a folder")

  def flip(data: bytes) -> bytes:
    i = len(data) // 2
    return data[:i] + bytes([data[i] ^ 0xFF]) + data[i + 1 :]

  cases = [
    ("manifest without file_bytes", variant("ckpt_nobytes", without("file_bytes")), ["file_bytes"]),
    ("manifest without manifest", variant("ckpt_nomanifest", without("manifest")), ["manifest"]),
    (
      "manifest file_bytes='12'",
      variant("ckpt_strbytes", with_fields(file_bytes="12")),
      ["file_bytes"],
    ),
    ("checkpoint.json not JSON", variant("ckpt_badjson", raw_meta="{not json"), [meta_file]),
    (
      "data file truncated",
      variant("ckpt_trunc", data_change=lambda d: d[: len(d) // 2]),
      [data_file],
    ),
    ("data file with a flipped byte", variant("ckpt_flip", data_change=flip), [data_file]),
    ("data file missing", None, [data_file]),
    (
      "declared width 8, width-4 arrays",
      variant("ckpt_width", with_fields(kwargs={"width": 8})),
      ["ckpt_width"],
    ),
    ("checkpoint path is a file", as_file, ["ckpt_file"]),
    ("checkpoint path does not exist", os.path.join(tmp, "nowhere"), ["nowhere"]),
  ]
  missing = variant("ckpt_nodata")
  os.remove(os.path.join(missing, data_file))
  out = []
  for case, path, names in cases:
    path = missing if path is None else path
    out.append(
      try_error(
        "checkpoint", f"load_generator: {case}", lambda p=path: checkpoints.load_generator(p), names
      )
    )
  for case, path, target in (
    ("manifest file='../outside.msgpack' (valid sha256)", escape, outside),
    ("manifest file='../../../../etc/passwd'", passwd, "/etc/passwd"),
  ):
    with watch_opens([target]) as seen:
      o = try_error(
        "checkpoint",
        f"load_generator: {case}",
        lambda p=path: checkpoints.load_generator(p),
        ["file"],
        extra_check=lambda: f"opened {seen[0]}" if seen else None,
      )
    out.append(o)
  return out


class _Capture(std_logging.Handler):
  def __init__(self):
    super().__init__()
    self.messages: list[str] = []

  def emit(self, record):
    self.messages.append(record.getMessage())


def cache_cases(tmp: str) -> list[Outcome]:
  import numpy as np  # pylint: disable=g-import-not-at-top

  from cfmod_jax import sweep  # pylint: disable=g-import-not-at-top

  gen = tiny_generator()
  cfg = sweep.SweepConfig(n_pairs=8, block_pairs=4, seed=0)
  site = "block4"
  ref_dir = os.path.join(tmp, "cache_ref")
  ref = sweep.eim_sweep(gen, site, cfg, ref_dir)
  block0 = os.path.join("eims", ref.key, "block_00000.npz")
  if not os.path.isfile(os.path.join(ref_dir, block0)):
    raise RuntimeError(f"the sweep cache layout changed: no {block0} in {ref_dir}")
  with np.load(os.path.join(ref_dir, block0)) as d:
    arrays = {k: d[k] for k in d.files}

  def rewrite(**changes):
    def damage(p):
      new = {**arrays, **changes}
      with open(p, "wb") as f:
        np.savez(f, **{k: v for k, v in new.items() if v is not None})

    return damage

  def raw(change):
    def damage(p):
      with open(p, "rb") as f:
        data = f.read()
      with open(p, "wb") as f:
        f.write(change(data))

    return damage

  sums = arrays["sums"]
  damages = [
    ("empty file", raw(lambda d: b"")),
    ("truncated to half", raw(lambda d: d[: len(d) // 2])),
    (
      "one byte flipped (in the sums)",
      raw(lambda d: d[: len(d) // 2] + bytes([d[len(d) // 2] ^ 0x01]) + d[len(d) // 2 + 1 :]),
    ),
    ("sums of the wrong shape", rewrite(sums=np.concatenate([sums, sums[:1]]))),
    ("sums of the wrong dtype (float64, same values)", rewrite(sums=sums.astype(np.float64))),
    ("sums doubled (sha256 of the original)", rewrite(sums=sums * 2)),
    ("count of another block size", rewrite(count=np.int64(3))),
    ("missing key 'sums'", rewrite(sums=None)),
  ]
  out = []
  for name, damage in damages:

    def check(name=name, damage=damage):
      work = os.path.join(tmp, "cache_" + re.sub(r"\W+", "_", name))
      shutil.copytree(ref_dir, work)
      path = os.path.join(work, block0)
      damage(path)
      handler = _Capture()
      absl_logger = logging.get_absl_logger()
      absl_logger.addHandler(handler)
      try:
        with warnings.catch_warnings(record=True) as caught:
          warnings.simplefilter("always")
          res = sweep.eim_sweep(gen, site, cfg, work)
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
      return "; ".join(problems) or None

    out.append(try_result("cache", f"sweep cache block: {name}", check))
  return out


# ---- CLI cases ----------------------------------------------------------------------------
_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d")


_TINY = (
  "--generator",
  "random:dcgan:4",
  "--sites",
  "block4",
  "--n_pairs",
  "32",
  "--block_pairs",
  "16",
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
  lines = [l for l in stderr.splitlines() if l.strip() and not _LOG_LINE.match(l)]
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
    ("analyze", CliCase("unknown site", [*tiny, "--sites", "block9"], ["--sites"])),
    ("analyze", CliCase("", [*tiny, "--n_pairs", "0"], ["--n_pairs"], quick=True)),
    ("analyze", CliCase("", [*tiny, "--k", "abc"], ["--k"], quick=True)),
    ("analyze", CliCase("", [*tiny, "--k", "1"], ["--k"])),
    ("analyze", CliCase("", [*tiny, "--pair_chunk", "abc"], ["--pair_chunk"], quick=True)),
    ("analyze", CliCase("", [*tiny, "--mask_chunk", "0"], ["--mask_chunk"])),
    ("analyze", CliCase("", [*tiny, "--precision", "fp16"], ["--precision"])),
    ("analyze", CliCase("", [*tiny, "--seed", "-1"], ["--seed"], quick=True)),
    ("analyze", CliCase("", [*tiny, "--n_pairs", "abc"], ["--n_pairs"])),
    ("analyze", CliCase("", [*tiny, "--block_pairs", "32"], ["--n_pairs"])),
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
    cases.append(("train", _rejected_resume_case(tmp)))
  return [(m, c) for m, c in cases if not quick or c.quick]


def _rejected_resume_case(tmp: str) -> CliCase:
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
  from cfmod_jax import fileio  # pylint: disable=g-import-not-at-top

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
  unknown = sorted(set(groups) - {"api", "checkpoint", "cache", "cli"})
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
      if "api" in groups:
        results += api_cases()
      if "checkpoint" in groups:
        results += checkpoint_cases(tmp)
      if "cache" in groups:
        results += cache_cases(tmp)
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
* **Regenerate** with `python -m experiments.bad_inputs` (all cases; about 2 minutes of
  CPU time, run 2 CLI subprocesses at a time). `tests/test_bad_inputs.py` runs the API,
  checkpoint and cache cases and `tests/test_cli.py` the quick CLI cases, the Ctrl-C
  test and the rejected resume; both assert 0 deep errors and 0 accepted.
"""


def markdown(results: Sequence[Outcome], seconds: float, command: str) -> str:
  n = counts(results)
  lines = [
    "# Reliability: the bad-input table",
    "",
    f"Generated by `{command}` ({seconds:.0f} s); do not edit by hand. Each case is tried "
    "and classified by code (see `experiments/bad_inputs.py`): **clear error** = a "
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


def main(argv: list[str]) -> None:
  del argv
  t0 = time.perf_counter()
  try:
    results = run_all(FLAGS.groups, FLAGS.quick, FLAGS.workers, FLAGS.cli_timeout)
  except ValueError as e:
    raise _cli.name_flag(e, ("groups",)) from None
  seconds = time.perf_counter() - t0
  command = "python -m experiments.bad_inputs" + (" --quick" if FLAGS.quick else "")
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
  _cli.run(main)
