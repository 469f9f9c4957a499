"""A PyTorch generator in the main job: default sites and latent shape, PyTorch's
own re-initialisation as the untrained baseline, state dicts behind
``--generator file.py:factory@state.pt``, and ``experiments.analyze`` end to end on a
factory that returns an ``nn.Module``."""

import copy
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import torch
from torch import nn

from cfmod_jax import baselines
from cfmod_jax.interventions import elementary_influence_map_sums as eim_sums
from cfmod_jax.torch_bridge import default_sites, from_torch, infer_latent_shape
from experiments import _specs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "docs", "examples", "torch_dcgan.py")


def _example(ngf=4, seed=0):
  return _specs._import_file(EXAMPLE).make_generator(ngf=ngf, seed=seed)


@torch.no_grad()
def _trained_looking(model, seed=1):
  """Weights and BatchNorm statistics that are not PyTorch's initial ones: weights
  moved by 30 % of their spread, statistics of a random batch, then perturbed."""
  g = torch.Generator().manual_seed(seed)
  for p in model.parameters():  # BatchNorm's weights are ones: move them by 0.3
    spread = float(p.std()) if p.ndim > 1 else 1.0
    p.add_(0.3 * spread * torch.randn(p.shape, generator=g))
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      m.momentum = None  # cumulative average: the batch's statistics
  model.train()
  model(torch.randn(16, *infer_latent_shape(model), generator=g))
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      m.running_mean.add_(0.1 * m.running_var.sqrt() * torch.randn(m.num_features, generator=g))
      m.running_var.mul_(0.8 + 0.4 * torch.rand(m.num_features, generator=g))
  return model.eval()


def test_default_sites_and_latent_shape():
  model = _example()
  assert default_sites(model) == ["main.2", "main.5", "main.8", "main.11"]
  assert infer_latent_shape(model) == (100, 1, 1)
  gen = from_torch(model.eval())
  assert gen.sites == ("main.2", "main.5", "main.8", "main.11")
  assert gen.latent_shape == (100, 1, 1) and gen.site_shape("main.8") == (16, 16, 8)
  assert infer_latent_shape(nn.Sequential(nn.Linear(12, 8), nn.ReLU())) == (12,)
  with pytest.raises(ValueError, match="latent_shape cannot be read .* Embedding"):
    infer_latent_shape(nn.Sequential(nn.Embedding(10, 4)))
  with pytest.raises(ValueError, match="no activation modules .* pass sites"):
    from_torch(nn.Sequential(nn.Linear(4, 3 * 8 * 8), nn.Unflatten(1, (3, 8, 8))).eval())


def test_init_variables_is_pytorchs_reinitialisation():
  model = _trained_looking(_example())
  before = copy.deepcopy(model.state_dict())
  gen = from_torch(model)
  key = jax.random.key(7)
  rng_state = torch.random.get_rng_state()
  fresh = gen.init_variables(key)
  assert torch.equal(torch.random.get_rng_state(), rng_state)  # global state restored
  for k, v in model.state_dict().items():  # the imported model is untouched
    assert torch.equal(v, before[k]), k
  # The reference: PyTorch's reset_parameters on a copy, under the documented seed.
  ref = copy.deepcopy(model)
  torch.manual_seed(int(jax.random.randint(key, (), 0, 2**31 - 1)))
  for m in ref.modules():
    if hasattr(m, "reset_parameters"):
      m.reset_parameters()
  state = ref.state_dict()
  for coll in ("params", "buffers"):
    for name, value in fresh[coll].items():
      np.testing.assert_array_equal(np.asarray(value), state[name].numpy(), err_msg=name)
  assert set(fresh["params"]) == {n for n, _ in model.named_parameters()}
  np.testing.assert_array_equal(fresh["buffers"]["main.1.running_var"], 1.0)
  np.testing.assert_array_equal(fresh["buffers"]["main.1.running_mean"], 0.0)
  assert not np.allclose(fresh["params"]["main.0.weight"], gen.variables["params"]["main.0.weight"])
  other = gen.init_variables(jax.random.key(8))
  assert not np.array_equal(other["params"]["main.0.weight"], fresh["params"]["main.0.weight"])
  # The main job's untrained baseline: same sites, sampler and latents, fresh weights.
  untrained = baselines.untrained_like(gen)
  assert untrained.name == f"{gen.name}-untrained" and untrained.sites == gen.sites
  z = gen.sample_latents(jax.random.key(0), 3)
  np.testing.assert_array_equal(untrained.sample_latents(jax.random.key(0), 3), z)
  assert not np.allclose(np.asarray(untrained(z)), np.asarray(gen(z)))


def test_factory_with_a_state_dict(tmp_path):
  trained = _trained_looking(_example(seed=3))
  path = str(tmp_path / "netG.pt")
  torch.save(trained.state_dict(), path)
  gen = _specs.generator_from_spec(f"{EXAMPLE}:make_generator@{path}", {"ngf": 4})
  assert gen.name == "netG" and gen.sites == ("main.2", "main.5", "main.8", "main.11")
  for name, value in trained.state_dict().items():
    coll = "params" if name in dict(trained.named_parameters()) else "buffers"
    if name.endswith("num_batches_tracked"):
      continue
    np.testing.assert_array_equal(np.asarray(gen.variables[coll][name]), value.numpy())
  # A pickled module needs full unpickling: refused, naming the generator.
  pickled = str(tmp_path / "module.pt")
  torch.save(trained, pickled)
  with pytest.raises(ValueError, match="make_generator@.*weights_only=True"):
    _specs.generator_from_spec(f"{EXAMPLE}:make_generator@{pickled}", {"ngf": 4})
  with pytest.raises(ValueError, match="does not exist"):
    _specs.generator_from_spec(f"{EXAMPLE}:make_generator@{tmp_path}/missing.pt", {"ngf": 4})
  with pytest.raises(ValueError, match="loads a state dict into a PyTorch nn.Module"):
    flax_factory = os.path.join(ROOT, "docs", "examples", "own_generator_cli.py")
    _specs.generator_from_spec(f"{flax_factory}:make_generator@{path}", {"width": 4})


def test_analyze_cli_on_a_torch_factory(tmp_path):
  out = str(tmp_path / "out")
  args = ["--generator", f"{EXAMPLE}:make_generator", "--generator_args", '{"ngf": 4}']
  args += ["--config.sites=main.8", "--config.n_pairs=8", "--config.block_pairs=4"]
  args += ["--config.k=2", "--config.eval_pairs=8", "--config.eval_groups=2"]
  args += ["--config.n_null=4", "--config.n_ci=20", "--config.factor_transfer=none"]
  args += ["--config.hybrid_fd_samples=0", "--out", out]
  proc = subprocess.run(
    [sys.executable, "-m", "experiments.analyze", *args],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=600,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(os.path.join(out, "metrics.json"), encoding="utf-8") as f:
    metrics = json.load(f)
  assert metrics["generator"] == "make_generator" and list(metrics["sites"]) == ["main.8"]
  site = metrics["sites"]["main.8"]
  assert site["channels"] == 8 and site["k"] == 2 and sum(site["module_sizes"]) == 8
  assert metrics["untrained_baseline"] and "untrained_module_sizes" in site
  with np.load(os.path.join(out, "main.8", "analysis.npz")) as data:
    assert data["eims"].shape == (8, 64, 64) and np.isfinite(data["eims"]).all()
    assert data["untrained_labels"].shape == (8,)
    assert not np.allclose(data["module_maps"], data["untrained_module_maps"])
  with open(os.path.join(out, "report.html"), encoding="utf-8") as f:
    assert "main.8" in f.read()


def test_linear_split_of_an_imported_dcgan_equals_the_mask_path():
  """The site's only consumer is a transposed convolution: the fast EIM path (each
  channel's contribution to that convolution alone) gives the one-hot-mask EIMs."""
  gen = from_torch(_trained_looking(_example(ngf=4, seed=5), seed=6))
  assert all(gen.has_linear_split(s) for s in gen.sites)
  z1 = gen.sample_latents(jax.random.key(1), 6)
  z2 = gen.sample_latents(jax.random.key(2), 6)
  for site in ("main.5", "main.11"):
    fast, _ = eim_sums(gen, site, z1, z2, method="linear", pair_chunk=4, mask_chunk=4)
    slow, _ = eim_sums(gen, site, z1, z2, method="masks", pair_chunk=4)
    assert float(np.abs(slow).max()) > 1e-3  # non-trivial maps
    np.testing.assert_allclose(fast, slow, atol=1e-5, rtol=1e-4)
  # Another strided transposed convolution (kernel 3, output padding 1) takes the
  # tap-by-tap per-channel path: the same EIMs as the masks.
  odd = nn.Sequential(
    nn.ConvTranspose2d(4, 6, 4, 1, 0), nn.ReLU(), nn.ConvTranspose2d(6, 3, 3, 2, 1, 1), nn.Tanh()
  ).eval()
  gen = from_torch(odd, (4, 1, 1), sites=["1"])
  assert gen.has_linear_split("1") and gen.image_shape == (8, 8, 3)
  z1, z2 = gen.sample_latents(jax.random.key(3), 5), gen.sample_latents(jax.random.key(4), 5)
  fast, _ = eim_sums(gen, "1", z1, z2, method="linear", pair_chunk=2, mask_chunk=4)
  slow, _ = eim_sums(gen, "1", z1, z2, method="masks", pair_chunk=2, mask_chunk=4)
  assert float(np.abs(slow).max()) > 1e-3
  np.testing.assert_allclose(fast, slow, atol=1e-5, rtol=1e-4)
  # A site read twice (a skip connection) or by a non-linear op has no linear split.
  skip = _Skip().eval()
  split = from_torch(skip, (4, 4, 4), sites=["body.0", "body.1"])
  assert not split.has_linear_split("body.0")  # read by the skip addition too
  assert not split.has_linear_split("body.1")  # read by a ReLU


class _Skip(nn.Module):
  def __init__(self):
    super().__init__()
    self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1))
    self.out = nn.Conv2d(4, 3, 1)

  def forward(self, z):
    a = self.body[0](z)
    b = torch.relu(self.body[1](a))
    return torch.tanh(self.out(a + b))


def _flax_variables_of(model, width):
  """The tutorial generator's weights in our Flax DCGAN's layout (written from the two
  layers' definitions: the 1×1 → 4×4 transposed convolution is a dense layer onto
  (i, j, channel), the later ones take the kernel flipped in space as
  [kh, kw, C_in, C_out]; the RGB layer's bias is 0, the tutorial's has none)."""
  state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  w0 = state["main.0.weight"]  # [100, 8w, 4, 4]
  params = {"stages_0": {"dense": {"kernel": w0.transpose(0, 2, 3, 1).reshape(100, -1)}}}
  stats = {}
  for s, (conv, bn) in enumerate([(0, 1), (3, 4), (6, 7), (9, 10), (12, None)]):
    stage = params.setdefault(f"stages_{s}", {})
    if s:
      kernel = state[f"main.{conv}.weight"][:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
      stage["conv"] = {"kernel": np.ascontiguousarray(kernel)}
    if bn is None:
      stage["conv"]["bias"] = np.zeros(3, np.float32)
      continue
    stage["bn"] = {"scale": state[f"main.{bn}.weight"], "bias": state[f"main.{bn}.bias"]}
    stats[f"stages_{s}"] = {
      "bn": {"mean": state[f"main.{bn}.running_mean"], "var": state[f"main.{bn}.running_var"]}
    }
  del width
  return {"params": params, "batch_stats": stats}


def test_imported_tutorial_dcgan_equals_our_flax_dcgan():
  import cfmod_jax as cf

  width = 4
  model = _trained_looking(_example(ngf=width, seed=9), seed=10)
  imported = from_torch(model)
  module = cf.init_generator("dcgan", width=width, latent_dim=100).module
  ours = cf.Generator(module, jax.tree.map(jax.numpy.asarray, _flax_variables_of(model, width)))
  z1 = imported.sample_latents(jax.random.key(3), 5)
  z2 = imported.sample_latents(jax.random.key(4), 5)
  flat1, flat2 = z1.reshape(5, 100), z2.reshape(5, 100)
  np.testing.assert_allclose(ours(flat1), imported(z1), atol=1e-5)
  rng = np.random.default_rng(0)
  for site, path in zip(ours.sites, imported.sites):
    c = ours.site_shape(site)[-1]
    masks = (rng.random((3, c)) < 0.5).astype(np.float32)
    a = cf.hybrids(ours, site, masks, flat1, flat2)
    b = cf.hybrids(imported, path, masks, z1, z2)
    assert float(np.abs(np.asarray(a) - np.asarray(b)).max()) <= 1e-5, site
    ea, _ = eim_sums(ours, site, flat1, flat2)
    eb, _ = eim_sums(imported, path, z1, z2)
    np.testing.assert_allclose(ea, eb, atol=1e-5 * 5 * 3, err_msg=site)
