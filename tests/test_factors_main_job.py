"""The main job's factor transfer, hybrid realism, dataset gating and the untrained
baseline of wrapped generators (`cfmod_jax.analysis`)."""

import dataclasses
import importlib.util
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import tiny_analysis_config

import cfmod_jax as cf
from cfmod_jax import analysis, baselines, report, site_factors
from cfmod_jax.lab import factors, quality
from cfmod_jax.wrap import wrap_linen
from experiments import _specs as specs

SLOW = "runs the main job with factor transfer and hybrid realism"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SITE = "block3"
TINY = tiny_analysis_config(
  sites=(SITE,), n_ci=20, factor_pairs=8, factor_null=2, hybrid_fd_samples=4
)


def _faces_generator(dataset="synthfaces"):
  gen = cf.init_generator("dcgan", seed=1, width=4, latent_dim=8)
  gen.dataset = dataset
  return gen


@pytest.fixture(scope="module")
def faces_run(tmp_path_factory):
  gen = _faces_generator()
  out = str(tmp_path_factory.mktemp("factors"))
  base = baselines.untrained_like(gen)  # what run() builds by default; kept for the checks
  return gen, base, out, analysis.run(gen, TINY, out, baseline=base)


def _nan_equal(a, b):
  np.testing.assert_array_equal(np.asarray(a, np.float64), np.asarray(b, np.float64))


def test_main_job_writes_factor_transfer(faces_run):
  _, _, out, result = faces_run
  ft = result["sites"][SITE]["factor_transfer"]
  nf = len(factors.FEATNET_KINDS)
  assert nf == 15 and ft["factors"] == list(factors.FEATNET_KINDS)
  assert np.shape(ft["matrix"]) == (2, nf) and np.shape(ft["whole"]) == (nf,)
  assert len(ft["exclusivity_ci"]) == 2 and len(ft["exclusivity_null"]) == TINY.factor_null
  assert np.shape(ft["untrained"]["matrix"]) == (2, nf)
  for key in ("effect_vs_null", "untrained_effect_vs_null", "effect_vs_untrained"):
    assert len(ft[key]["ci95"]) == 2 and key in ft["categorical"]
  assert ft["categorical"]["factors"] == [
    n for n, kind in factors.FEATNET_KINDS.items() if kind == factors.CATEGORICAL
  ]
  hr = ft["hybrid_realism"]
  assert len(hr["fd"]) == 2 and hr["n"] == 4 and hr["floor"] > 0 and hr["plain_fd"] > 0
  assert "factor_transfer" in result["sites"][SITE]["verdict"]
  # Files: the heatmap is among the report's figures; metrics.json holds the section.
  assert f"{SITE}/factor_transfer.png" in report.report_files(result)
  assert os.path.getsize(os.path.join(out, SITE, "factor_transfer.png")) > 0
  with open(os.path.join(out, "metrics.json")) as f:
    saved = json.load(f)["sites"][SITE]["factor_transfer"]
  _nan_equal(saved["matrix"], ft["matrix"])
  page = open(os.path.join(out, "report.html")).read()
  assert "<h2>Factor transfer</h2>" in page and "<h2>Hybrid realism</h2>" in page
  assert "factor_transfer.png" in page


def test_factor_numbers_equal_direct_calls(faces_run):
  """The saved counts and shares equal `factors.factor_transfer` on the same pairs and
  masks, for the trained and the untrained network; the effects equal exclusivities
  recomputed from the shares."""
  gen, base, out, result = faces_run
  assert result["untrained_baseline"]["generator"] == base.name == f"{gen.name}-untrained"
  ft = result["sites"][SITE]["factor_transfer"]
  k, n_null = 2, TINY.factor_null
  with np.load(os.path.join(out, SITE, "analysis.npz")) as data:
    d = dict(data)
  masks = factors.factor_masks(d["labels"], k, n_null=n_null, seed=TINY.seed + 1)
  np.testing.assert_array_equal(d["factor_masks"], masks)
  z1, z2 = site_factors.factor_latents(
    gen, TINY.seed * 1000 + gen.site_index(SITE), TINY.factor_pairs
  )
  np.testing.assert_array_equal(d["factor_z1"], np.asarray(z1))
  np.testing.assert_array_equal(d["factor_z2"], np.asarray(z2))
  predict = quality.load_featnet().predict_fn()
  shares = []
  for net, labels, prefix in ((gen, d["labels"], ""), (base, d["untrained_labels"], "untrained_")):
    m = factors.factor_masks(labels, k, n_null=n_null, seed=TINY.seed + 1)
    direct = factors.factor_transfer(
      net,
      SITE,
      m,
      z1,
      z2,
      predict,
      factors.FEATNET_KINDS,
      groups=d["factor_groups"],
      pair_chunk=TINY.pair_chunk,
      mask_chunk=TINY.mask_chunk,
    )
    np.testing.assert_array_equal(d[prefix + "factor_follows"], direct.follows)
    np.testing.assert_array_equal(d[prefix + "factor_valid"], direct.valid)
    shares.append(direct.shares())
  _nan_equal(ft["matrix"], shares[0][:k])
  _nan_equal(ft["whole"], shares[0][k])
  _nan_equal(ft["untrained"]["matrix"], shares[1][:k])

  def gain(s):
    null = [
      factors.exclusivity(s[k + 1 + r * k : k + 1 + (r + 1) * k], s[k]) for r in range(n_null)
    ]
    return factors.exclusivity(s[:k], s[k]) - np.mean(null)

  assert ft["effect_vs_null"]["value"] == pytest.approx(gain(shares[0]))
  assert ft["effect_vs_null"]["value"] == pytest.approx(
    ft["exclusivity"] - ft["exclusivity_null_mean"]
  )
  assert ft["untrained_effect_vs_null"]["value"] == pytest.approx(gain(shares[1]))
  assert ft["effect_vs_untrained"]["value"] == pytest.approx(gain(shares[0]) - gain(shares[1]))
  lo, hi = ft["effect_vs_untrained"]["ci95"]
  assert lo <= hi


def test_gating_follows_dataset_metadata():
  plain = _faces_generator(dataset=None)
  plain.name = "dcgan-synthfaces-lookalike"  # the name no longer decides
  faces = _faces_generator()
  cfg = TINY
  assert not analysis.uses_parts(plain, cfg) and not analysis.uses_factors(plain, cfg)
  assert analysis.part_maps_for(plain, cfg) is None
  assert analysis.uses_parts(faces, cfg) and analysis.uses_factors(faces, cfg)
  assert analysis.part_maps_for(faces, cfg) is not None
  # Overrides.
  assert analysis.part_maps_for(plain, dataclasses.replace(cfg, parts="synthfaces")) is not None
  assert analysis.uses_factors(plain, dataclasses.replace(cfg, factor_transfer="synthfaces"))
  assert not analysis.uses_factors(faces, dataclasses.replace(cfg, factor_transfer="none"))
  assert not analysis.uses_factors(faces, dataclasses.replace(cfg, parts="none"))
  # A shipped generator carries its data set from the checkpoint.
  shipped = specs.generator_from_spec("dcgan-synthfaces")
  assert shipped.dataset == "synthfaces" and analysis.uses_factors(shipped, cfg)


def test_factor_config_errors():
  gen = _faces_generator()
  for field, value in (
    ("factor_transfer", "yes"),
    ("factor_pairs", 0),
    ("factor_null", 0),
    ("hybrid_fd_samples", 1),
    ("hybrid_fd_samples", -3),
    ("factor_pairs", 1),
  ):
    with pytest.raises(ValueError, match=field):
      analysis.check_config(gen, dataclasses.replace(TINY, **{field: value}))


def _own_linen():
  path = os.path.join(ROOT, "docs", "examples", "own_generator.py")
  spec = importlib.util.spec_from_file_location("own_generator_factors", path)
  ex = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = ex  # dataclass fields of the Linen modules resolve through it
  spec.loader.exec_module(ex)
  module = ex.OwnLinenGenerator(latent_dim=8, width=4)
  variables = module.init(jax.random.key(0), jnp.zeros((1, 8)))
  return wrap_linen(
    module, variables, sites=["block2/conv1", "block3"], latent_shape=(8,), name="own-linen"
  )


def test_untrained_baseline_of_a_wrapped_linen_generator():
  gen = _own_linen()
  base = baselines.untrained_like(gen)
  assert type(base) is type(gen) and base.sites == gen.sites and base.name == "own-linen-untrained"
  assert np.abs(np.asarray(base(jnp.ones((2, 8)))) - np.asarray(gen(jnp.ones((2, 8))))).max() > 1e-3
  # The same seed gives the same variables; another seed others.
  again = jax.tree_util.tree_leaves(baselines.untrained_like(gen).variables)
  other = jax.tree_util.tree_leaves(baselines.untrained_like(gen, seed=3).variables)
  leaves = jax.tree_util.tree_leaves(base.variables)
  assert all(np.array_equal(a, b) for a, b in zip(leaves, again))
  assert not all(np.array_equal(a, b) for a, b in zip(leaves, other))
  # No dataset metadata: factor transfer cannot be asked for (the main job on this
  # generator runs in test_main_job_smoke.py).
  cfg = tiny_analysis_config(sites=("block2/conv1",))
  with pytest.raises(ValueError, match="factor_transfer"):
    analysis.check_config(gen, dataclasses.replace(cfg, factor_transfer="synthfaces"))
