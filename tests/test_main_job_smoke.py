"""The main job (`analysis.run`) end to end on every kind of generator, with the tiny
config: a shipped architecture (staged Flax DCGAN), a class-conditional staged BigGAN
loaded from its folder, and a user's own Linen and NNX models wrapped with
`wrap_linen` / `wrap_nnx`. Each writes the maps, the module maps, every figure of the
report and the untrained baseline's scores; none has dataset metadata, so none has part
or factor-transfer scores. What the main job computes is tested on the DCGAN in
test_analysis.py, test_factors_main_job.py and test_adaptive_pairs.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _helpers import own_generator_example, random_biggan_variables, tiny_analysis_config
from flax import nnx

import cfmod_jax as cf
from cfmod_jax import analysis, report
from cfmod_jax.models import biggan as bg
from cfmod_jax.testing import tiny_biggan_config

SLOW = "runs the main job end to end on four kinds of generator"


def _dcgan(tmp_path):
  return cf.init_generator("dcgan", seed=1, width=4, latent_dim=8), "block3", None


def _biggan(tmp_path):
  cfg = tiny_biggan_config()  # 16×16, 4 blocks, width 4, 10 classes
  folder = str(tmp_path / "biggan")
  bg.save_biggan(folder, random_biggan_variables(cfg), cfg)
  return bg.load_biggan(folder, truncation=0.5), "block1", None


def _wrapped_linen(tmp_path):
  ex = own_generator_example()
  module = ex.OwnLinenGenerator(latent_dim=8, width=4)
  variables = module.init(jax.random.key(0), jnp.zeros((1, 8)))
  gen = cf.wrap_linen(
    module, variables, sites=["block2/conv1", "block3"], latent_shape=(8,), name="own-linen"
  )
  return gen, "block2/conv1", None  # the baseline: re-initialised by the main job


def _wrapped_nnx(tmp_path):
  """NNX has no generic re-initialisation: the baseline is the same class built with
  another seed."""
  ex = own_generator_example()

  def wrap(seed, name):
    model = ex.OwnNNXGenerator(8, width=4, rngs=nnx.Rngs(seed))
    return cf.wrap_nnx(
      model, {"b2.conv1": "blocks/1/conv1", "b3": "blocks/2"}, latent_shape=(8,), name=name
    )

  return wrap(0, "own-nnx"), "b2.conv1", wrap(99, "own-nnx-untrained")


KINDS = {"dcgan": _dcgan, "biggan": _biggan, "wrap_linen": _wrapped_linen, "wrap_nnx": _wrapped_nnx}


@pytest.mark.parametrize("kind", KINDS)
def test_main_job_runs_end_to_end(kind, tmp_path):
  gen, site, baseline = KINDS[kind](tmp_path)
  out = tmp_path / "out"
  cfg = tiny_analysis_config(sites=(site,), hybrid_fd_samples=4)
  result = analysis.run(gen, cfg, str(out), baseline=baseline)

  assert result["generator"] == gen.name and list(result["sites"]) == [site]
  m = result["sites"][site]
  c = gen.site_shape(site)[-1]
  h, w = gen(gen.sample_latents(jax.random.key(0), 1)).shape[1:3]
  assert m["channels"] == c and m["k"] == 2
  with np.load(out / site / "analysis.npz") as data:
    assert data["eims"].shape == (c, h, w) and float(data["eims"].max()) > 0
    assert data["eim_groups"].shape == (2, c, h, w)
    assert data["module_maps"].shape == (2, h, w)
    assert data["labels"].shape == (c,) and set(data["labels"]) <= {0, 1}
  for rel in report.report_files(result):
    assert (out / rel).is_file(), rel
  html = (out / "report.html").read_text()
  # the untrained baseline: built by the main job (`baselines.untrained_like`) or given
  assert result["untrained_baseline"]["generator"] == f"{gen.name}-untrained"
  assert "untrained" in m["overlap"] and "untrained" in m["in_support"]
  # no dataset metadata: no part or factor scores (gating by gen.dataset)
  assert gen.dataset is None and "factor_transfer" not in m and "part_agreement" not in m
  assert not (out / site / "factor_transfer.png").exists() and "Factor transfer" not in html
