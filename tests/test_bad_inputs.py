"""Misuses of the API, checkpoints and the sweep cache: a clear error naming the argument,
or a correct result. The cases are the table of `studies/reliability_doc.py`, which also
generates docs/reliability.md from them; its CLI cases run in tests/test_cli.py."""

import pytest

from studies import reliability_doc as rd


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
  return rd.Context(str(tmp_path_factory.mktemp("bad_inputs")))


ERROR_CASES = [c for c in rd.API_CASES + rd.CHECKPOINT_CASES if c.expect == "error"]


@pytest.mark.parametrize("case", ERROR_CASES, ids=str)
def test_misuse_raises_a_value_error_naming_the_argument(case, ctx):
  forbidden = [case.forbidden(ctx)] if case.forbidden else []
  with rd.watch_opens(forbidden) as opened, pytest.raises(ValueError) as info:
    case.call(ctx)
  assert rd.names_all(str(info.value), case.names), f"does not name {case.names}: {info.value}"
  assert not opened, f"opened {opened}"


@pytest.mark.parametrize("case", rd.CACHE_CASES, ids=str)
def test_damaged_cache_block_is_recomputed_with_a_warning(case, ctx):
  assert case.expect == "result"
  assert case.call(ctx) == []


def test_the_table_covers_every_case_once():
  cases = rd.API_CASES + rd.CHECKPOINT_CASES + rd.CACHE_CASES
  assert len(ERROR_CASES) + len(rd.CACHE_CASES) == len(cases) >= 45
  assert len({c.name for c in cases}) == len(cases)


# ---- the doc's classifier -------------------------------------------------------------------
def test_names_all_matches_whole_words_only():
  assert rd.names_all("--k=abc: k must be an integer", ["--k"])
  assert rd.names_all("masks contain NaN at row 0", ["masks", "nan"])
  assert not rd.names_all("k_values=(1,): none fits", ["k"])
  assert not rd.names_all("value out of range", ["masks"])


@pytest.mark.parametrize(
  "rc, stderr, expected",
  [
    (
      2,
      "I1130 17:00:00.1 1 x.py:1] log line\nexperiments.analyze: error: --k=1: k must be ≥ 2\n",
      rd.CLEAR,
    ),
    (2, "experiments.analyze: error: k must be ≥ 2\n", rd.DEEP),  # flag not named
    (1, "Traceback (most recent call last):\n  File x\nValueError: --k\n", rd.DEEP),
    (1, "usage text\nmore usage\nexperiments.analyze: error: --k=1: bad\n", rd.DEEP),
    (3, "experiments.analyze: error: --k=1: bad\n", rd.DEEP),  # odd exit code
    (0, "", rd.ACCEPTED),
  ],
)
def test_classify_cli(rc, stderr, expected):
  case = rd.CliCase("", [], ["--k"])
  assert rd.classify_cli(case, rc, "", stderr)[0] == expected


def test_classify_cli_help():
  case = rd.CliCase("", ["--help"], expect="help")
  assert rd.classify_cli(case, 0, "usage\n  --k: modules\n", "")[0] == rd.RESULT
  assert rd.classify_cli(case, 1, "", "Traceback (most recent call last):\n")[0] == rd.DEEP


def _raise(e):
  raise e


@pytest.mark.parametrize(
  "call, forbidden, expected",
  [
    (lambda ctx: _raise(ValueError("width must be ≥ 1")), None, rd.CLEAR),
    (lambda ctx: _raise(ValueError("out of range")), None, rd.DEEP),  # width not named
    (lambda ctx: _raise(TypeError("width")), None, rd.DEEP),
    (lambda ctx: None, None, rd.ACCEPTED),
    # a clear error, but after opening a file it must not open
    (lambda ctx: open(__file__).close() or _raise(ValueError("width")), __file__, rd.ACCEPTED),
  ],
)
def test_try_case_classifies_errors(call, forbidden, expected):
  case = rd.Case("api", "c", call, ("width",), forbidden=forbidden and (lambda ctx: forbidden))
  assert rd.try_case(case, rd.Context("unused")).outcome == expected


@pytest.mark.parametrize(
  "wrong, expected", [([], rd.RESULT), (["damaged data was used"], rd.ACCEPTED)]
)
def test_try_case_classifies_results(wrong, expected):
  case = rd.Case("cache", "c", lambda ctx: wrong, expect="result")
  assert rd.try_case(case, rd.Context("unused")).outcome == expected


def test_markdown_counts_every_outcome():
  results = [
    rd.Outcome("api", "a", "error", rd.CLEAR, "ValueError: a"),
    rd.Outcome("api", "b", "error", rd.DEEP, "TypeError: b | c"),
    rd.Outcome("cache", "c", "result", rd.RESULT, "ok"),
  ]
  md = rd.markdown(results, 1.0, "python -m studies.reliability_doc")
  assert "| 3 | 1 | 1 | 1 | 0 |" in md
  assert md.count("\n| api |") == 2 and "| **deep error** | TypeError: b \\| c |" in md
  assert md.startswith("# Reliability: the bad-input table") and "## Notes" in md
