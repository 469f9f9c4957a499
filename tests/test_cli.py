"""Command-line interfaces: one line per user error, --help, Ctrl-C, rejected resumes.

Each case is a subprocess (`python -m experiments.<cli>`, ~4 s of imports), so
there are few of them: the misuses of experiments.analyze's flags and ``--config.*``
fields are here, the other CLIs' quick ones come from `studies.reliability_doc` (all
of them run when docs/reliability.md is regenerated).
"""

import concurrent.futures
import dataclasses
import glob
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from cfmod_jax import analysis
from experiments.configs import analyze as analyze_config
from studies import reliability_doc as bi

SLOW = "starts the CLIs as subprocesses (~4 s of imports each)"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _non_log_lines(text):
  return [l for l in text.splitlines() if l.strip() and not bi.LOG_LINE.match(l)]


def test_analyze_config_is_analysis_config():
  """experiments/configs/analyze.py has one field per AnalysisConfig field, and no
  override gives AnalysisConfig's defaults."""
  config = analyze_config.get_config()
  assert sorted(config) == sorted(f.name for f in dataclasses.fields(analysis.AnalysisConfig))
  assert analyze_config.analysis_config(config) == analysis.AnalysisConfig()


@pytest.mark.parametrize(
  "field,text,value",
  [
    ("k", "auto", None),
    ("k", "3", 3),
    ("k_values", "2,3", (2, 3)),
    ("sites", "block3,block4", ("block3", "block4")),
    ("sites", "all", None),
    ("pair_chunk", "auto", None),
    ("mask_chunk", "8", 8),
    ("sigma", "1.5", 1.5),
    ("eim_target_reliability", "0.9", 0.9),
    ("eim_target_reliability", "off", None),
  ],
)
def test_analyze_config_text_fields(field, text, value):
  config = analyze_config.get_config()
  config[field] = text
  assert getattr(analyze_config.analysis_config(config), field) == value


@pytest.mark.parametrize(
  "field,text,form",
  [
    ("k", "abc", "an integer or 'auto'"),
    ("k_values", "2,x", "a comma-separated list of integers"),
    ("mask_chunk", "1.5", "an integer or 'auto'"),
    ("eim_target_reliability", "high", "a number or 'off'"),
  ],
)
def test_analyze_config_text_errors_name_the_field(field, text, form):
  config = analyze_config.get_config()
  config[field] = text
  message = f"--config.{field}={text}: {field} must be {form}, got '{text}'"
  with pytest.raises(ValueError, match=re.escape(message)):
    analyze_config.analysis_config(config)


def _analyze_cases(tmp):
  """Misuses of experiments.analyze: each is one line naming the flag (or the
  ``--config.<field>``) to fix; ``--help`` prints the help."""
  regular = os.path.join(tmp, "regular_file")
  with open(regular, "w", encoding="utf-8") as f:
    f.write("x")
  out = os.path.join(tmp, "cli_out")
  tiny = ["--generator", "random:dcgan:4", "--config.sites=block4", "--config.n_pairs=32"]
  tiny += ["--config.block_pairs=16", "--out", out]
  case = lambda args, *names: bi.CliCase("", args, list(names))
  return [
    case(["--generator", "nope", "--out", out], "--generator"),
    case([*tiny, "--config.n_pairs=0"], "--config.n_pairs=0"),
    case([*tiny, "--config.n_pairs=abc"], "--config.n_pairs"),
    case([*tiny, "--config.k=abc"], "--config.k=abc", "'auto'"),
    case([*tiny, "--config.k=1"], "--config.k=1"),
    case([*tiny, "--config.k_values=1,2"], "--config.k_values=1,2"),
    case([*tiny, "--config.pair_chunk=abc"], "--config.pair_chunk=abc", "'auto'"),
    case([*tiny, "--config.sites=block9"], "--config.sites=block9"),
    case([*tiny, "--config.seed=-1"], "--config.seed=-1"),
    case([*tiny, "--config.block_pairs=32"], "--config.n_pairs"),
    case([*tiny, "--config.bogus=1"], "--config.bogus"),
    case([*tiny, "--n_pairs=8"], "--config.n_pairs=<value>"),  # an old flag: says the new one
    case([*tiny, "--out", os.path.join(regular, "out")], "--out"),
    case([*tiny, "extra"], "extra"),
    bi.CliCase("", ["--help"], expect="help"),
  ]


def test_quick_cli_cases_are_clear_errors(tmp_path):
  cases = [(m, c) for m, c in bi.cli_cases(str(tmp_path), quick=True) if m != "analyze"]
  cases += [("analyze", c) for c in _analyze_cases(str(tmp_path))]
  assert len(cases) >= 10
  with concurrent.futures.ThreadPoolExecutor(2) as pool:
    results = list(pool.map(lambda mc: bi.run_cli(mc[0], mc[1], 300, ROOT), cases))
  bad = [
    f"{r.outcome}: {r.case}: {r.detail}" for r in results if r.outcome not in (bi.CLEAR, bi.RESULT)
  ]
  assert not bad, "\n".join(bad)
  # --help is a result, everything else an error naming its flag
  assert sum(r.outcome == bi.RESULT for r in results) == sum(c.expect == "help" for _, c in cases)


def _popen(args, **kw):
  # A shell that started us in the background may ignore SIGINT; the child must not.
  return subprocess.Popen(
    [sys.executable, "-m", "experiments.analyze", *args],
    cwd=ROOT,
    env=ENV,
    text=True,
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    **kw,
  )


def _wait_for(predicate, proc, timeout=240):
  t0 = time.time()
  while not predicate():
    assert proc.poll() is None, "the job ended before it could be interrupted"
    assert time.time() - t0 < timeout, "timed out"
    time.sleep(0.1)


def test_ctrl_c_prints_one_line_keeps_blocks_and_rerun_resumes(tmp_path):
  out = str(tmp_path / "out")
  args = ["--generator", "random:dcgan:4", "--config.sites=block4", "--config.n_pairs=8192"]
  args += ["--config.block_pairs=16", "--config.k=2", "--out", out]
  blocks = lambda: glob.glob(os.path.join(out, "cache", "eims", "*", "block_*.npz"))
  proc = _popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  _wait_for(lambda: len(blocks()) >= 2, proc)
  proc.send_signal(signal.SIGINT)
  stdout, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 130, stderr[-2000:]
  lines = _non_log_lines(stdout + stderr)
  assert lines == [
    f"experiments.analyze: interrupted; finished blocks are kept in "
    f"{os.path.join(out, 'cache')}, rerun the same command to resume"
  ], lines
  kept = len(blocks())
  assert 2 <= kept < 512

  # The same command again: the sweep loads the finished blocks (it logs how many).
  log = tmp_path / "rerun.log"
  with open(log, "w") as f:
    proc = _popen(args, stdout=f, stderr=subprocess.STDOUT)
    pattern = re.compile(r"site block4: resuming, (\d+)/512 blocks already in")
    _wait_for(lambda: pattern.search(log.read_text()), proc)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
  text = log.read_text()
  assert int(pattern.search(text).group(1)) >= kept
  # interrupted again (130), or finished already on a fast machine (0)
  assert proc.returncode in (0, 130) and "Traceback" not in text


def test_train_rejects_a_config_that_cannot_resume_the_run_before_writing(tmp_path):
  case = bi.rejected_resume_case(str(tmp_path))
  result = bi.run_cli("train", case, 300, ROOT)
  assert result.outcome == bi.CLEAR, result.detail
  assert "cannot resume" in result.detail
  # the same run with its own config still resumes (and finishes at once)
  p = subprocess.run(
    [sys.executable, "-m", "experiments.train", *case.args[:-1]],
    cwd=ROOT,
    env=ENV,
    capture_output=True,
    text=True,
    check=False,
  )
  assert p.returncode == 0, p.stderr[-2000:]
  assert "resumed from step 1" in p.stderr
