"""The main job on a tiny config: every file is written, the report shows only
files that exist, the metrics are sane, and bad settings fail early."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import cfmod_jax as cf
from cfmod_jax import analysis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = analysis.AnalysisConfig(sites=("block3", "block4"), n_pairs=8, block_pairs=4,
                               k_values=(2, 3), n_boot=2, eval_pairs=6, eval_groups=2,
                               n_null=3, n_ci=20, hybrid_rows=2, hybrid_cols=2,
                               parts="synthfaces", pair_chunk=4, mask_chunk=4)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  gen = cf.init_generator("dcgan", seed=1, width=4, latent_dim=8)
  out = str(tmp_path_factory.mktemp("analysis"))
  return gen, out, analysis.run(gen, TINY, out)


def test_writes_every_file(tiny_run):
  gen, out, result = tiny_run
  for name in ("metrics.json", "report.html"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  for rel in analysis.report_files(result):
    assert os.path.getsize(os.path.join(out, rel)) > 0, rel
  for site in TINY.sites:
    with np.load(os.path.join(out, site, "analysis.npz")) as data:
      c = gen.site_shape(site)[-1]
      k = result["sites"][site]["k"]
      assert data["eims"].shape == (c, 64, 64)
      assert data["eim_groups"].shape == (2, c, 64, 64)
      assert data["labels"].shape == (c,) and set(data["labels"]) <= set(range(k))
      assert data["module_maps"].shape == (k, 64, 64)
      assert data["null_maps"].shape == (3 * k, 64, 64)
  with open(os.path.join(out, "metrics.json")) as f:
    assert json.load(f)["best_site"] in TINY.sites


def test_report_references_only_existing_files(tiny_run):
  _, out, result = tiny_run
  with open(os.path.join(out, "report.html")) as f:
    page = f.read()
  refs = re.findall(r'src="([^"]+)"', page)
  assert sorted(refs) == sorted(analysis.report_files(result))
  for ref in refs:
    assert os.path.isfile(os.path.join(out, ref)), ref
  for site in TINY.sites:
    assert f"<td>{site}</td>" in page


def test_metrics_are_consistent(tiny_run):
  gen, out, result = tiny_run
  for site, m in result["sites"].items():
    assert m["k"] in TINY.k_values
    assert sum(m["module_sizes"]) == m["channels"] == gen.site_shape(site)[-1]
    for name in ("overlap", "in_support", "part_agreement"):
      v = m[name]
      assert 0.0 <= v["value"] <= 1.0 and 0.0 < v["p_value"] <= 1.0
      assert v["ci95"][0] <= v["ci95"][1]
    # Module maps really are the influence maps of the module masks.
    with np.load(os.path.join(out, site, "analysis.npz")) as data:
      masks = analysis.module_masks(data["labels"], m["k"])
      assert masks.sum() == m["channels"]
      assert float(data["module_maps"].min()) >= 0.0


def test_hybrid_panel_layout():
  gen = cf.init_generator("dcgan", seed=1, width=4, latent_dim=8)
  z1 = gen.sample_latents(__import__("jax").random.key(1), 3)
  z2 = gen.sample_latents(__import__("jax").random.key(2), 4)
  c = gen.site_shape("block4")[-1]
  panel = analysis.hybrid_panel(gen, "block4", np.ones(c), z1, z2, rows=2, cols=3)
  assert panel.shape == (3 * 67 - 3, 4 * 67 - 3, 3)
  # A full mask gives the donors: every cell of a column equals the donor on top.
  donor = panel[0:64, 67:131]
  np.testing.assert_allclose(panel[67:131, 67:131], donor, atol=1e-5)


@pytest.mark.parametrize("cfg,pattern", [
    (analysis.AnalysisConfig(sites=("nope",)), "site='nope'.*valid sites"),
    (analysis.AnalysisConfig(k=100), "k=100 is larger than the number of channels C=4"),
    (analysis.AnalysisConfig(n_pairs=0), "n_pairs must be a positive integer"),
    (analysis.AnalysisConfig(eval_pairs=0), "eval_pairs must be a positive integer"),
    (analysis.AnalysisConfig(n_pairs=8, block_pairs=8), "at least 2 × block_pairs"),
    (analysis.AnalysisConfig(method="pca"), "method must be 'nmf' or 'kmeans'"),
    (analysis.AnalysisConfig(k_values=(8, 9)), "none fits the C=4 channels"),
])
def test_bad_config_fails_before_work(tmp_path, cfg, pattern):
  gen = cf.init_generator("dcgan", seed=1, width=4, latent_dim=8)
  with pytest.raises(ValueError, match=pattern):
    analysis.run(gen, cfg, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
  assert not gen._jit_cache


def test_cli_bad_flag_message(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-m", "experiments.analyze", "--generator",
                         "random:dcgan:4", "--k", "999", "--out", str(tmp_path / "o")],
                        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode != 0
  assert "k=999 is larger than the number of channels" in proc.stderr
  assert not (tmp_path / "o").exists()
