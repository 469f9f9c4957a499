"""The bad-input table (experiments/bad_inputs.py): its classifier, and its
in-process cases (API, checkpoints, sweep cache) with 0 deep errors and 0
accepted. The CLI cases run in tests/test_cli.py."""

import pytest

from experiments import bad_inputs as bi


def test_names_all_matches_whole_words_only():
  assert bi.names_all("--k=abc: k must be an integer", ["--k"])
  assert bi.names_all("masks contain NaN at row 0", ["masks", "nan"])
  assert not bi.names_all("k_values=(1,): none fits", ["k"])
  assert not bi.names_all("value out of range", ["masks"])


@pytest.mark.parametrize(
  "rc, stderr, expected",
  [
    (
      2,
      "I1130 17:00:00.1 1 x.py:1] log line\nexperiments.analyze: error: --k=1: k must be ≥ 2\n",
      bi.CLEAR,
    ),
    (2, "experiments.analyze: error: k must be ≥ 2\n", bi.DEEP),  # flag not named
    (1, "Traceback (most recent call last):\n  File x\nValueError: --k\n", bi.DEEP),
    (1, "usage text\nmore usage\nexperiments.analyze: error: --k=1: bad\n", bi.DEEP),
    (3, "experiments.analyze: error: --k=1: bad\n", bi.DEEP),  # odd exit code
    (0, "", bi.ACCEPTED),
  ],
)
def test_classify_cli(rc, stderr, expected):
  case = bi.CliCase("", [], ["--k"])
  assert bi.classify_cli(case, rc, "", stderr)[0] == expected


def test_classify_cli_help():
  case = bi.CliCase("", ["--help"], expect="help")
  assert bi.classify_cli(case, 0, "usage\n  --k: modules\n", "")[0] == bi.RESULT
  assert bi.classify_cli(case, 1, "", "Traceback (most recent call last):\n")[0] == bi.DEEP


def test_try_error_classification():
  def raise_(e):
    raise e

  assert (
    bi.try_error("g", "c", lambda: raise_(ValueError("width must be ≥ 1")), ["width"]).outcome
    == bi.CLEAR
  )
  assert (
    bi.try_error("g", "c", lambda: raise_(ValueError("out of range")), ["width"]).outcome == bi.DEEP
  )
  assert bi.try_error("g", "c", lambda: raise_(TypeError("width")), ["width"]).outcome == bi.DEEP
  assert bi.try_error("g", "c", lambda: None, ["width"]).outcome == bi.ACCEPTED
  assert (
    bi.try_error(
      "g",
      "c",
      lambda: raise_(ValueError("width")),
      ["width"],
      extra_check=lambda: "opened /etc/passwd",
    ).outcome
    == bi.ACCEPTED
  )


def test_in_process_cases_have_no_deep_errors_and_accept_nothing():
  results = bi.run_all(["api", "checkpoint", "cache"], quick=True)
  assert len(results) >= 45
  bad = [
    f"{r.outcome}: [{r.group}] {r.case}: {r.detail}"
    for r in results
    if r.outcome in (bi.DEEP, bi.ACCEPTED)
  ]
  assert not bad, "\n".join(bad)
  md = bi.markdown(results, 1.0, "cmd")
  assert f"| {len(results)} | " in md and md.count("\n| api |") == sum(
    r.group == "api" for r in results
  )
