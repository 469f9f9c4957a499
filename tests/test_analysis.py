"""The main job on a tiny config: every file is written, the report shows only
files that exist and defines its columns, module maps are the influence maps of the
module masks, the untrained baseline is paired with the model, and bad settings fail
early."""

import dataclasses
import html
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from _helpers import tiny_analysis_config

import cfmod_jax as cf
from cfmod_jax import analysis, baselines, clustering, interventions, metrics, report, viz
from cfmod_jax.data import synthfaces

SLOW = "runs the main job end to end (two sites, K chosen, untrained baseline)"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = tiny_analysis_config(
  sites=("block3", "block4"),
  k=None,
  k_values=(2, 3),
  eval_pairs=6,
  n_null=3,
  n_ci=20,
  parts="synthfaces",
)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  gen = cf.init_generator("dcgan", seed=1, width=4, latent_dim=8)
  out = str(tmp_path_factory.mktemp("analysis"))
  return gen, out, analysis.run(gen, TINY, out)


def test_writes_every_file(tiny_run):
  gen, out, result = tiny_run
  for name in ("metrics.json", "report.html"):
    assert os.path.getsize(os.path.join(out, name)) > 0
  for rel in report.report_files(result):
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
      assert data["untrained_module_maps"].shape == (k, 64, 64)
      assert data["untrained_labels"].shape == (c,)
  with open(os.path.join(out, "metrics.json")) as f:
    assert json.load(f)["best_site"] in TINY.sites


def test_report_references_only_existing_files(tiny_run):
  _, out, result = tiny_run
  with open(os.path.join(out, "report.html")) as f:
    page = f.read()
  refs = re.findall(r'src="([^"]+)"', page)
  assert sorted(refs) == sorted(report.report_files(result))
  for ref in refs:
    assert os.path.isfile(os.path.join(out, ref)), ref
  for site in TINY.sites:
    assert f"<td>{site}</td>" in page


def test_metrics_are_consistent(tiny_run):
  gen, out, result = tiny_run
  untrained = baselines.untrained_like(gen)
  for site, m in result["sites"].items():
    assert m["k"] in TINY.k_values
    assert sum(m["module_sizes"]) == m["channels"] == gen.site_shape(site)[-1]
    for name in ("overlap", "in_support", "part_agreement"):
      v = m[name]
      assert 0.0 <= v["value"] <= 1.0 and 0.0 < v["p_value"] <= 1.0
      assert v["ci95"][0] <= v["ci95"][1]
      # Effect sizes: signed gain over the null, and that gain minus the untrained one.
      sign = -1.0 if name == "overlap" else 1.0
      assert v["effect_vs_null"]["value"] == pytest.approx(sign * (v["value"] - v["null_mean"]))
      u = v["untrained"]
      assert u["effect_vs_null"]["value"] == pytest.approx(sign * (u["value"] - u["null_mean"]))
      assert v["effect_vs_untrained"]["value"] == pytest.approx(
        v["effect_vs_null"]["value"] - u["effect_vs_null"]["value"]
      )
      assert v["evidence"] == (v["beyond_null"] and v["beyond_untrained"])
      assert v["beyond_untrained"] == (v["effect_vs_untrained"]["ci95"][0] > TINY.min_effect)
    assert m["beyond_untrained"] == (m["overlap"]["evidence"] and m["in_support"]["evidence"])
    # Module maps are the influence maps of the module masks on the evaluation pairs,
    # computed independently here (masks built by hand, one call, default chunks), for
    # both networks; the null maps are those of the documented null partitions
    # (numpy default_rng(seed + 1) permutations of the labels).
    k = m["k"]
    with np.load(os.path.join(out, site, "analysis.npz")) as data:
      z1, z2 = data["eval_z1"], data["eval_z2"]
      assert len(z1) == TINY.eval_pairs
      labels = data["labels"]
      assert m["module_sizes"] == [int(np.sum(labels == j)) for j in range(k)]
      for g, lab, maps, null_maps in (
        (gen, labels, data["module_maps"], data["null_maps"]),
        (
          untrained,
          data["untrained_labels"],
          data["untrained_module_maps"],
          data["untrained_null_maps"],
        ),
      ):
        masks = np.zeros((k, len(lab)), np.float32)
        masks[lab, np.arange(len(lab))] = 1.0
        rng = np.random.default_rng(TINY.seed + 1)
        for _ in range(TINY.n_null):
          perm = rng.permutation(lab)
          null = np.zeros((k, len(lab)), np.float32)
          null[perm, np.arange(len(lab))] = 1.0
          masks = np.concatenate([masks, null])
        ref = np.asarray(cf.influence_maps(g, site, masks, z1, z2))
        assert float(ref.max()) > 0
        tol = dict(rtol=1e-4, atol=1e-6 * float(ref.max()))
        np.testing.assert_allclose(maps, ref[:k], **tol)
        np.testing.assert_allclose(null_maps, ref[k:], **tol)
      # The trained model's observed metrics and null means from the saved arrays, by
      # the single-partition functions of `metrics` (supports: the mean preprocessed EIM
      # of each module's channels).
      mm, nm = data["module_maps"], data["null_maps"].reshape(TINY.n_null, k, 64, 64)
      assert m["overlap"]["value"] == pytest.approx(metrics.module_overlap(mm))
      assert m["overlap"]["null_mean"] == pytest.approx(
        np.mean([metrics.module_overlap(x) for x in nm])
      )
      flat = clustering.preprocess_eims(data["eims"], percentile=TINY.percentile)
      templates = np.stack([flat[labels == j].mean(0).reshape(64, 64) for j in range(k)])
      assert m["in_support"]["value"] == pytest.approx(
        metrics.in_support_share(mm, templates, percentile=TINY.percentile)[1]
      )
      parts = synthfaces.part_prior()
      assert m["part_agreement"]["value"] == pytest.approx(metrics.part_agreement(mm, parts))


def test_report_defines_every_column_and_gives_verdicts(tiny_run):
  _, out, result = tiny_run
  with open(os.path.join(out, "report.html")) as f:
    page = f.read()
  headers = {html.unescape(h) for h in re.findall(r"<th[^>]*>([^<]+)</th>", page)}
  terms = {html.unescape(t) for t in re.findall(r"<dt>([^<]+)</dt>", page)}
  assert {"Δ vs untrained [95% CI]", "untrained [95% CI] (null)", "evidence"} <= headers
  assert headers <= terms, headers - terms
  for _site, m in result["sites"].items():
    assert html.escape(report.site_sentence(m, TINY.min_effect)) in page
  assert "NMF templates" in page and "k-means centroids" not in page


def test_markdown_table(tiny_run):
  """experiments.summarize's table: one row per site, as many cells as the header."""
  gen, _, result = tiny_run
  rows = list(report.markdown_rows(result))
  assert len(rows) == len(TINY.sites)
  lines = report.markdown_table(rows).split("\n")
  assert lines[0] == report.MARKDOWN_HEADER and set(lines[1]) == {"|", "-"}
  n = report.MARKDOWN_HEADER.count("|")
  assert lines[1].count("|") == n and lines[2:] == rows
  for row, (site, m) in zip(rows, result["sites"].items()):
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert len(cells) == n - 1
    assert cells[0] == gen.name and cells[1].startswith(site) and cells[2] == str(m["k"])
    assert cells[4] == f"{m['overlap']['value']:.3f}"
    e = m["overlap"]["effect_vs_null"]
    assert cells[5] == f"{e['value']:+.3f} [{e['ci95'][0]:+.3f}, {e['ci95'][1]:+.3f}]"
    assert ("(best)" in cells[1]) == (site == result["best_site"])


def test_partition_statistics_match_metrics():
  rng = np.random.default_rng(0)
  maps = rng.gamma(1.0, size=(5, 3, 12, 10))
  maps[1, 2] = 0.0  # an all-zero module map
  templates = rng.gamma(1.0, size=(5, 3, 12, 10))
  parts = rng.uniform(size=(4, 12, 10))
  got = metrics.partition_statistics(maps, metrics.support_masks(templates, 70.0), parts)
  for i in range(5):
    assert got["overlap"][i] == pytest.approx(metrics.module_overlap(maps[i]))
    assert got["in_support"][i] == pytest.approx(
      metrics.in_support_share(maps[i], templates[i], percentile=70.0)[1]
    )
    assert got["part_agreement"][i] == pytest.approx(metrics.part_agreement(maps[i], parts))


def test_untrained_like_keeps_the_architecture():
  gen = cf.init_generator("dcgan", seed=1, width=4, latent_dim=8)
  base = baselines.untrained_like(gen)
  again = baselines.untrained_like(gen)
  leaves = jax.tree_util.tree_leaves_with_path
  assert jax.tree_util.tree_structure(base.variables) == jax.tree_util.tree_structure(gen.variables)
  for (p, a), (_, b), (_, c) in zip(
    leaves(gen.variables), leaves(base.variables), leaves(again.variables)
  ):
    assert a.shape == b.shape and a.dtype == b.dtype, jax.tree_util.keystr(p)
    np.testing.assert_array_equal(b, c)  # deterministic
  kernels = [
    (a, b)
    for (p, a), (_, b) in zip(leaves(gen.variables), leaves(base.variables))
    if "kernel" in jax.tree_util.keystr(p)
  ]
  assert kernels and all(not np.allclose(a, b) for a, b in kernels)  # other weights
  stats = base.variables["batch_stats"]
  for p, leaf in leaves(stats):
    expected = 0.0 if "mean" in jax.tree_util.keystr(p) else 1.0
    np.testing.assert_array_equal(leaf, expected)  # BatchNorm statistics at init
  assert base.sites == gen.sites and base.name == "dcgan-random-untrained"
  key = jax.random.key(3)
  np.testing.assert_array_equal(base.sample_latents(key, 4), gen.sample_latents(key, 4))
  z = gen.sample_latents(key, 2)
  assert not np.allclose(base(z), gen(z))
  with pytest.raises(ValueError, match="seed must be an integer"):
    baselines.untrained_like(gen, seed=1.5)


def test_baseline_equal_to_the_model_gives_zero_difference(tmp_path):
  """Paired bootstrap: against itself every resample's difference is exactly 0, so the
  model is never 'beyond' its own copy (an unpaired bootstrap would give an interval)."""
  gen = cf.init_generator("dcgan", seed=2, width=4, latent_dim=8)
  cfg = dataclasses.replace(TINY, sites=("block4",), k=2, parts="none")
  result = analysis.run(gen, cfg, str(tmp_path), baseline=gen)
  m = result["sites"]["block4"]
  for name in ("overlap", "in_support"):
    assert m[name]["effect_vs_untrained"] == {"value": 0.0, "ci95": [0.0, 0.0]}
    assert m[name]["untrained"]["value"] == m[name]["value"]
    assert m[name]["beyond_untrained"] is False
  assert m["beyond_untrained"] is False
  assert "no evidence of learned modularity" in report.site_sentence(
    m
  ) or "not clearly more distinct" in report.site_sentence(m)


@pytest.mark.parametrize(
  "overlap,in_support,expected",
  [
    ((True, True), (True, True), "evidence of learned modularity"),
    ((True, False), (True, True), "no evidence of learned modularity"),
    ((True, True), (False, False), "not clearly more distinct"),
  ],
)
def test_site_sentence(overlap, in_support, expected):
  v = {
    n: {"beyond_null": b[0], "beyond_untrained": b[1], "evidence": b[0] and b[1]}
    for n, b in (("overlap", overlap), ("in_support", in_support))
  }
  v["modules_distinct_beyond_null"] = overlap[0] and in_support[0]
  v["modules_distinct_beyond_untrained"] = v["overlap"]["evidence"] and v["in_support"]["evidence"]
  text = report.site_sentence({"verdict": v})
  assert expected in text
  if expected == "evidence of learned modularity":
    assert "no evidence" not in text


def test_hybrid_panel_layout():
  gen = cf.init_generator("dcgan", seed=1, width=4, latent_dim=8)
  z1 = gen.sample_latents(__import__("jax").random.key(1), 3)
  z2 = gen.sample_latents(__import__("jax").random.key(2), 4)
  c = gen.site_shape("block4")[-1]
  cells = interventions.hybrid_grid(gen, "block4", np.ones(c), z1[:2], z2[:3])
  panel = viz.grid_panel(gen(z1[:2]), gen(z2[:3]), cells)  # as the main job draws it
  assert panel.shape == (3 * 67 - 3, 4 * 67 - 3, 3)
  # A full mask gives the donors: every cell of a column equals the donor on top.
  donor = panel[0:64, 67:131]
  np.testing.assert_allclose(panel[67:131, 67:131], donor, atol=1e-5)


@pytest.fixture(scope="module")
def _bad_config_weights():
  return cf.init_generator("dcgan", seed=1, width=4, latent_dim=8)


@pytest.mark.parametrize(
  "cfg,pattern",
  [
    (analysis.AnalysisConfig(sites=("nope",)), "site='nope'.*valid sites"),
    (analysis.AnalysisConfig(k=100), "k=100 is larger than the number of channels C=4"),
    (analysis.AnalysisConfig(n_pairs=0), "n_pairs must be a positive integer"),
    (analysis.AnalysisConfig(eval_pairs=0), "eval_pairs must be a positive integer"),
    (analysis.AnalysisConfig(n_pairs=8, block_pairs=8), "at least 2 × block_pairs"),
    (analysis.AnalysisConfig(method="pca"), "method must be 'nmf' or 'kmeans'"),
    (analysis.AnalysisConfig(k_values=(8, 9)), "none fits the C=4 channels"),
  ],
)
def test_bad_config_fails_before_work(tmp_path, cfg, pattern, _bad_config_weights):
  # A new Generator (empty compilation cache) around weights initialised once.
  gen = cf.Generator(_bad_config_weights.module, _bad_config_weights.variables)
  with pytest.raises(ValueError, match=pattern):
    analysis.run(gen, cfg, str(tmp_path / "out"))
  assert not (tmp_path / "out").exists()
  assert not gen._jit_cache


def test_cli_bad_flag_message(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.analyze",
      "--generator",
      "random:dcgan:4",
      "--config.k",
      "999",
      "--out",
      str(tmp_path / "o"),
    ],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert proc.returncode != 0
  assert "k=999 is larger than the number of channels" in proc.stderr
  assert not (tmp_path / "o").exists()
