"""Command-line interfaces: one line per user error, --help, Ctrl-C, rejected resumes.

Each case is a subprocess (`python -m experiments.<cli>`, ~4 s of imports), so
there are few of them; the full list is in `studies.reliability_doc` (the quick
ones run here, all of them when docs/reliability.md is regenerated).
"""

import concurrent.futures
import glob
import os
import re
import signal
import subprocess
import sys
import time

from studies import reliability_doc as bi

SLOW = "starts the CLIs as subprocesses (~4 s of imports each)"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "JAX_PLATFORMS": "cpu"}


def _non_log_lines(text):
  return [l for l in text.splitlines() if l.strip() and not bi.LOG_LINE.match(l)]


def test_quick_cli_cases_are_clear_errors(tmp_path):
  cases = bi.cli_cases(str(tmp_path), quick=True)
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
  args = [
    "--generator",
    "random:dcgan:4",
    "--sites",
    "block4",
    "--n_pairs",
    "8192",
    "--block_pairs",
    "16",
    "--k",
    "2",
    "--out",
    out,
  ]
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
