"""Adaptive pairs: the split-half reliability, the stopping rule of `eim_sweep`, its
cache and resume behaviour, and the main job's ``eim_target_reliability``."""

import dataclasses
import json
import os
import shutil

import jax
import numpy as np
import pytest
from _helpers import tiny_analysis_config
from scipy.ndimage import gaussian_filter

import cfmod_jax as cf
from cfmod_jax import analysis, fingerprint, split_half, sweep
from cfmod_jax.sweep import SweepConfig, eim_sweep

SLOW = "runs the main job end to end (adaptive pair counts, precision)"

SITE = "block3"  # 8 channels in the width-4 DCGAN
BASE = SweepConfig(n_pairs=12, block_pairs=2, seed=1, pair_chunk=2, mask_chunk=8)
#: How far the sweep's reliability may sit from the plain loop's (float32 vs float64 sums).
TRACE_TOL = 2e-7


# ---- an independent implementation of the statistic ---------------------------------------
def _numpy_reliability(block_sums, counts, sigma):
  """Per channel, with plain loops: smoothed half maps without their component
  along the channels' mean unit-norm map, np.corrcoef, and the unequal-halves
  Spearman–Brown projection solved with np.roots."""
  block_sums, counts = np.asarray(block_sums, np.float64), np.asarray(counts)
  n_channels = block_sums.shape[1]
  residuals, sizes = [], []
  for half in (range(0, len(counts), 2), range(1, len(counts), 2)):
    n = sum(counts[i] for i in half)
    maps = []
    for c in range(n_channels):
      m = sum(block_sums[i, c] for i in half) / n
      m = (gaussian_filter(m, sigma, mode="reflect") if sigma else m).ravel()
      maps.append(m - m.mean())
    common = np.mean([m / np.linalg.norm(m) for m in maps], axis=0)
    common /= np.linalg.norm(common)
    residuals.append([m - np.dot(m, common) * common for m in maps])
    sizes.append(n)
  n1, n2 = sizes
  out = []
  for c in range(n_channels):
    r = np.corrcoef(residuals[0][c], residuals[1][c])[0, 1]
    if r <= 0:
      out.append(0.0)
      continue
    # (1 + a/n1)(1 + a/n2) = 1/r²  ->  a²/(n1 n2) + a (1/n1 + 1/n2) + 1 - 1/r² = 0
    roots = np.roots([1 / (n1 * n2), 1 / n1 + 1 / n2, 1 - 1 / r**2]).real
    a = roots[roots >= -1e-12].max()
    out.append((n1 + n2) / (n1 + n2 + a))
  return np.array(out)


def test_reliability_matches_numpy():
  rng = np.random.default_rng(0)
  signal = rng.gamma(2.0, size=(6, 24, 20))
  counts = np.array([4, 4, 4, 4, 3])  # odd block count: halves of 12 and 7 pairs
  noise_sd = (
    np.array([0.3, 0.6, 1, 2, 3, 4])[None, :, None, None] * np.sqrt(counts)[:, None, None, None]
  )
  sums = signal[None] * counts[:, None, None, None] + noise_sd * rng.normal(size=(5, 6, 24, 20))
  sums = np.abs(sums).astype(np.float32)
  for sigma in (0.0, 1.5):
    want = _numpy_reliability(sums, counts, sigma)
    got = split_half.channel_reliability(sums, counts, sigma=sigma)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert 0.05 < want.min() and want.max() < 0.999  # a non-trivial range
    assert split_half.eim_reliability(sums, counts, sigma=sigma) == pytest.approx(
      np.percentile(want, 10), rel=1e-9
    )
  # sigma=None is the clustering's smoothing, max(H, W) / 32.
  np.testing.assert_allclose(
    split_half.channel_reliability(sums, counts),
    _numpy_reliability(sums, counts, 24 / 32),
    rtol=1e-9,
  )
  # Equal halves: the classical Spearman–Brown 2r / (1 + r).
  r = np.linspace(-0.5, 1.0, 13)
  np.testing.assert_allclose(
    split_half.spearman_brown(r, 64, 64), np.where(r > 0, 2 * r / (1 + r), 0.0), rtol=1e-12
  )
  # A channel constant in both halves counts as reliable and is left out of the
  # common pattern; constant in one half only, it counts as 0.
  flat = sums.copy()
  flat[:, 0] = 0.0
  rel = split_half.channel_reliability(flat, counts)
  assert rel[0] == 1.0
  np.testing.assert_allclose(rel[1:], _numpy_reliability(sums[:, 1:], counts, 24 / 32), rtol=1e-9)
  flat[1::2, 1] = 0.0
  assert split_half.channel_reliability(flat, counts)[1] == 0.0
  # One channel: no relative pattern to estimate.
  assert split_half.channel_reliability(sums[:, :1], counts).tolist() == [1.0]


def _relative_patterns(maps):
  """[C, P]: pixel-centred maps without their component along the mean unit-norm map."""
  m = maps.reshape(len(maps), -1)
  m = m - m.mean(1, keepdims=True)
  common = (m / np.linalg.norm(m, axis=1, keepdims=True)).mean(0)
  common /= np.linalg.norm(common)
  return m - np.outer(m @ common, common)


def test_reliability_predicts_the_full_maps_agreement_with_the_truth():
  """The projected reliability (halves of unequal size) estimates the squared
  correlation of the all-pairs map's relative pattern with the population's; a
  strong pattern shared by every channel does not make a noisy channel reliable."""
  rng = np.random.default_rng(1)
  shared = 3.0 * rng.normal(size=(64, 64))  # common to all channels, dominant
  truth = shared + rng.normal(size=(6, 64, 64))
  noise_sd = np.array([1.0, 2.0, 3.0, 5.0, 8.0, 12.0])  # per pair
  counts = np.array([5, 5, 5, 5, 5, 5, 5])  # halves of 20 and 15 pairs
  per_pair = truth[None] + noise_sd[None, :, None, None] * rng.normal(size=(35, 6, 64, 64))
  sums = np.stack([per_pair[5 * b : 5 * b + 5].sum(0) for b in range(7)])
  got = split_half.channel_reliability(sums, counts, sigma=0)
  full, true = _relative_patterns(per_pair.mean(0)), _relative_patterns(truth)
  want = [np.corrcoef(full[c], true[c])[0, 1] ** 2 for c in range(6)]
  np.testing.assert_allclose(got, want, atol=0.03)
  assert np.all(np.diff(got) < 0) and got[0] > 0.8 and got[-1] < 0.4
  # The whole maps' correlation with the truth is high for every channel: the
  # shared pattern carries it.
  whole = [np.corrcoef(per_pair.mean(0)[c].ravel(), truth[c].ravel())[0, 1] ** 2 for c in range(6)]
  assert min(whole) > got[-1] + 0.2


@pytest.fixture(scope="module")
def gen():
  return cf.init_generator("dcgan", seed=3, width=4, latent_dim=8)


@pytest.fixture(scope="module")
def full(gen, tmp_path_factory):
  """A non-adaptive sweep, its cache, the trace a plain loop over blocks predicts
  and a target that stops strictly between min_blocks and the last block."""
  cache = str(tmp_path_factory.mktemp("full"))
  res = eim_sweep(gen, SITE, BASE, cache)
  assert res.computed_blocks == BASE.n_blocks and not res.stopped_early
  assert np.all(np.isnan(res.reliability))  # no rule without a target
  sums = res.eim_groups.astype(np.float64) * res.counts[:, None, None, None]
  trace = {
    m: np.float32(np.quantile(_numpy_reliability(sums[:m], res.counts[:m], 64 / 32), 0.1))
    for m in range(2, BASE.n_blocks + 1)
  }

  # The target sits midway between the best value before the stopping block and the
  # value at it, so the sweep's own reliability (another summation, equal to the trace
  # within TRACE_TOL) falls on the same side on every machine.
  def gap(m):  # how far block m's value rises above every earlier one
    return float(trace[m]) - float(max(trace[j] for j in range(2, m)))

  # Far more than rounding separates the two sides; an early, not immediate, stop.
  stop = next((m for m in range(3, BASE.n_blocks) if gap(m) > 100 * TRACE_TOL), None)
  assert stop is not None, trace
  target = float(trace[stop]) - gap(stop) / 2
  return res, cache, trace, target, stop


def test_stopping_block_is_what_a_plain_loop_predicts(gen, full, tmp_path):
  ref, _, trace, target, stop = full
  cfg = dataclasses.replace(BASE, target_reliability=target)
  res = eim_sweep(gen, SITE, cfg, str(tmp_path))
  assert res.blocks_used == stop and res.computed_blocks == stop and res.stopped_early
  assert res.pairs_used == stop * BASE.block_pairs and list(res.counts) == [2] * stop
  assert res.key == ref.key  # the target is not part of the cache key
  assert np.isnan(res.reliability[0])  # min_blocks = 2: first evaluated after block 1
  for m in range(2, stop + 1):
    assert res.reliability[m - 1] == pytest.approx(trace[m], abs=TRACE_TOL)
  np.testing.assert_array_equal(res.eim_groups, ref.eim_groups[:stop])
  np.testing.assert_allclose(res.eims, ref.eim_groups[:stop].mean(0), rtol=1e-5)
  assert np.isfinite(res.block_seconds).all() and res.reliability_seconds > 0
  # min_blocks later than the natural stop: it stops exactly at min_blocks.
  late = eim_sweep(gen, SITE, dataclasses.replace(cfg, min_blocks=stop + 1), str(tmp_path))
  assert late.blocks_used == stop + 1 and late.computed_blocks == 1
  # A target never reached: every block, not stopped early.
  never = eim_sweep(gen, SITE, dataclasses.replace(cfg, target_reliability=0.9999), str(tmp_path))
  assert never.blocks_used == BASE.n_blocks and not never.stopped_early
  np.testing.assert_array_equal(never.eims, ref.eims)
  # The rule is "reaches": a target equal to the sweep's own value at the stopping
  # block (same code, same machine, so bitwise) stops there, not one block later.
  exact = float(never.reliability[stop - 1])
  assert exact == pytest.approx(trace[stop], abs=TRACE_TOL)
  at = eim_sweep(gen, SITE, dataclasses.replace(cfg, target_reliability=exact), str(tmp_path))
  assert at.blocks_used == stop and at.stopped_early and at.reliability[stop - 1] == exact


def test_adaptive_sweep_reuses_a_full_sweeps_blocks(gen, full, tmp_path):
  ref, cache, _, target, stop = full
  work = str(tmp_path / "cache")
  shutil.copytree(cache, work)
  res = eim_sweep(gen, SITE, dataclasses.replace(BASE, target_reliability=target), work)
  assert res.computed_blocks == 0 and res.blocks_used == stop  # extra cached blocks unused
  np.testing.assert_array_equal(res.eim_groups, ref.eim_groups[:stop])
  # The other way round: a full run after an adaptive one computes only the rest.
  fresh = str(tmp_path / "fresh")
  eim_sweep(gen, SITE, dataclasses.replace(BASE, target_reliability=target), fresh)
  rest = eim_sweep(gen, SITE, BASE, fresh)
  assert rest.computed_blocks == BASE.n_blocks - stop
  np.testing.assert_array_equal(rest.eims, ref.eims)


class _Killed(Exception):
  pass


def test_resumed_adaptive_sweep_is_bitwise_the_same(gen, full, tmp_path, monkeypatch):
  _, _, _, target, stop = full
  cfg = dataclasses.replace(BASE, target_reliability=target)
  ref = eim_sweep(gen, SITE, cfg, str(tmp_path / "ref"))
  # Killed after two blocks were written.
  real, calls = sweep.elementary_influence_map_sums, []

  def dying(*args, **kwargs):
    if len(calls) == 2:
      raise _Killed
    calls.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(sweep, "elementary_influence_map_sums", dying)
  with pytest.raises(_Killed):
    eim_sweep(gen, SITE, cfg, str(tmp_path / "killed"))
  monkeypatch.setattr(sweep, "elementary_influence_map_sums", real)
  folder = tmp_path / "killed" / "eims" / ref.key
  assert sorted(os.listdir(folder)) == ["block_00000.npz", "block_00001.npz", "config.json"]
  resumed = eim_sweep(gen, SITE, cfg, str(tmp_path / "killed"))
  # A block deleted in the middle of a finished run.
  os.remove(tmp_path / "ref" / "eims" / ref.key / "block_00001.npz")
  healed = eim_sweep(gen, SITE, cfg, str(tmp_path / "ref"))
  assert resumed.computed_blocks == stop - 2 and healed.computed_blocks == 1
  for res in (resumed, healed):
    assert res.blocks_used == ref.blocks_used == stop and res.stopped_early
    for name in ("eims", "eim_groups", "counts", "reliability"):
      np.testing.assert_array_equal(getattr(res, name), getattr(ref, name))


@pytest.mark.parametrize(
  "changes, pattern",
  [
    (dict(target_reliability=0.0), "target_reliability must be None"),
    (dict(target_reliability=1.0), "target_reliability must be None"),
    (dict(target_reliability=1.5), "target_reliability must be None"),
    (dict(target_reliability=float("nan")), "target_reliability must be None"),
    (dict(target_reliability=True), "target_reliability must be None"),
    (dict(target_reliability="0.9"), "target_reliability must be None"),
    (dict(min_blocks=1), "min_blocks must be an integer ≥ 2"),
    (dict(min_blocks=2.5), "min_blocks must be an integer ≥ 2"),
    (dict(target_reliability=0.9, min_blocks=7), "min_blocks=7 exceeds the 6 block"),
  ],
)
def test_bad_adaptive_config_names_the_field(gen, tmp_path, changes, pattern):
  with pytest.raises(ValueError, match=pattern):
    eim_sweep(gen, SITE, dataclasses.replace(BASE, **changes), str(tmp_path))
  assert not os.listdir(tmp_path)


# ---- the main job ------------------------------------------------------------------------
TINY = tiny_analysis_config(
  sites=(SITE,),
  n_pairs=12,
  block_pairs=2,
  hybrid_rows=1,
  hybrid_cols=1,
  parts="none",
  factor_transfer="none",
  hybrid_fd_samples=0,
  pair_chunk=2,
  mask_chunk=8,
  untrained_baseline=False,
)


def _outputs(out):
  with open(os.path.join(out, "metrics.json")) as f:
    metrics = json.load(f)
  with open(os.path.join(out, "run.json")) as f:
    manifest = json.load(f)
  with np.load(os.path.join(out, SITE, "analysis.npz")) as data:
    arrays = {k: data[k] for k in data.files}
  return metrics, manifest, arrays


def _drop_seconds(d):
  if isinstance(d, dict):
    return {k: _drop_seconds(v) for k, v in d.items() if not k.startswith("seconds")}
  return d


def test_fingerprint_does_not_depend_on_earlier_calls(gen):
  """The generator's code is found by tracing it; a compiled call on one latent
  before (which shares jax's trace cache) must not hide its modules."""
  before = fingerprint.generator_fingerprint(gen)
  gen(gen.sample_latents(jax.random.key(0), 1))
  assert fingerprint.generator_fingerprint(gen) == before


def test_main_job_off_is_unchanged_and_on_records_the_sweep(gen, tmp_path):
  cache = str(tmp_path / "cache")
  off_dir, on_dir, all_dir = (str(tmp_path / n) for n in ("off", "on", "all"))
  analysis.run(gen, TINY, off_dir, cache)
  off, off_manifest, off_arrays = _outputs(off_dir)
  fields = {f.name for f in dataclasses.fields(analysis.AnalysisConfig)}
  assert set(off["config"]) == set(off_manifest["settings"]["config"]) == fields
  assert not any("eim_sweep" in site for site in off["sites"].values())
  # On, with a target no site reaches: every block used, so every number is the off
  # run's; only the setting and the records of the sweep are added.
  never = dataclasses.replace(TINY, eim_target_reliability=0.9999)
  analysis.run(gen, never, all_dir, cache)
  full, full_manifest, full_arrays = _outputs(all_dir)
  assert full["config"].pop("eim_target_reliability") == 0.9999
  assert full_manifest["settings"]["config"].pop("eim_target_reliability") == 0.9999
  assert off["config"].pop("eim_target_reliability") is None
  assert off_manifest["settings"]["config"].pop("eim_target_reliability") is None
  assert full_manifest["settings"] == off_manifest["settings"]
  entry = full["sites"][SITE].pop("eim_sweep")
  assert entry["pairs_used"] == entry["max_pairs"] == 12 and not entry["stopped_early"]
  assert [e["blocks"] for e in entry["reliability_trace"]] == list(range(2, 7))
  assert _drop_seconds(full) == _drop_seconds(off)
  assert full_arrays.keys() == off_arrays.keys()
  for name, value in off_arrays.items():
    np.testing.assert_array_equal(full_arrays[name], value, err_msg=name)
  # On, with a target reached early: fewer pairs, recorded per site (the untrained
  # baseline's sweep too).
  on = dataclasses.replace(TINY, eim_target_reliability=0.05, untrained_baseline=True)
  analysis.run(gen, on, on_dir, cache)
  got, _, arrays = _outputs(on_dir)
  for net in ("eim_sweep", "untrained_eim_sweep"):
    entry = got["sites"][SITE][net]
    assert entry["pairs_used"] == 4 and entry["blocks_used"] == 2 and entry["stopped_early"]
    assert entry["reliability_trace"] == [
      {
        "blocks": 2,
        "pairs": 4,
        "reliability": pytest.approx(entry["reliability_trace"][0]["reliability"]),
      }
    ]
    assert entry["reliability_trace"][0]["reliability"] >= 0.05 and entry["seconds"] >= 0
  assert arrays["eim_groups"].shape[0] == 2
  np.testing.assert_array_equal(arrays["eim_groups"], off_arrays["eim_groups"][:2])
  with open(os.path.join(on_dir, "report.html"), encoding="utf-8") as f:
    page = f.read()
  assert "up to 12 latent pairs (adaptive" in page and f"pairs used: {SITE} 4)" in page
  with open(os.path.join(off_dir, "report.html"), encoding="utf-8") as f:
    assert "\n12 latent pairs. Metrics" in f.read()
  # The setting is part of the run: another value into the same folder is refused.
  for cfg in (TINY, dataclasses.replace(TINY, eim_target_reliability=0.5)):
    with pytest.raises(analysis.OutputFolderError, match="eim_target_reliability"):
      analysis.run(gen, cfg, on_dir, cache)
  with pytest.raises(analysis.OutputFolderError, match="eim_target_reliability"):
    analysis.run(gen, on, off_dir, cache)


def test_main_job_precision_is_recorded_and_reaches_the_sweep(gen, tmp_path):
  """precision='bfloat16': recorded in metrics.json and the manifest (as float32
  is), the sweep's EIMs differ from float32's by bf16 rounding only; a bad
  value is refused before any work, naming the field."""
  cache = str(tmp_path / "cache")
  analysis.run(gen, TINY, str(tmp_path / "f32"), cache)
  bf = dataclasses.replace(TINY, precision="bfloat16", pair_chunk=None, mask_chunk=None)
  analysis.run(gen, bf, str(tmp_path / "bf16"), cache)
  f32, _, f32_arrays = _outputs(str(tmp_path / "f32"))
  got, manifest, arrays = _outputs(str(tmp_path / "bf16"))
  assert f32["config"]["precision"] == "float32"
  assert got["config"]["precision"] == manifest["settings"]["config"]["precision"] == "bfloat16"
  assert got["config"]["pair_chunk"] is None
  a, b = f32_arrays["eim_groups"], arrays["eim_groups"]
  assert not np.array_equal(a, b)
  assert np.abs(a - b).mean() / a.mean() < 0.05
  with open(os.path.join(str(tmp_path / "bf16"), "report.html"), encoding="utf-8") as f:
    assert "computed in bfloat16 (module maps and metrics in float32)" in f.read()
  with pytest.raises(ValueError, match="precision must be one of"):
    analysis.run(gen, dataclasses.replace(TINY, precision="fp16"), str(tmp_path / "bad"))
  assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize("value", [0.0, 1.0, -0.5, 2, float("inf"), "0.9", True])
def test_main_job_rejects_a_bad_target_before_any_work(gen, tmp_path, value):
  cfg = dataclasses.replace(TINY, eim_target_reliability=value)
  with pytest.raises(ValueError, match="eim_target_reliability must be None"):
    analysis.run(gen, cfg, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
