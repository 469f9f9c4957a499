"""cfmod_jax.torch_bridge.from_torch: PyTorch generators as Generators.

The reference for every intervention is computed in PyTorch with forward hooks,
independently of the bridge: a hook on the site module replaces its output by
``(1 − m) · a1 + m · a2`` (a2 captured from the donor's forward pass).
"""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from torch import nn

import cfmod_jax as cf
from cfmod_jax.torch_bridge import from_torch, load_torch_checkpoint, ops, register_op

TOL = 1e-5  # max |Δ| on images in [-1, 1] and on influence maps


# ---- models ---------------------------------------------------------------------------------
@torch.no_grad()
def _calibrate_bn(model, example, seed):
  """BatchNorm statistics of a random batch (so activations and images are O(1)), then
  perturbed, with random affine terms: running statistics that are not the batch's."""
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      m.momentum = None  # cumulative average: the batch's statistics
  model.train()
  model(*example)
  g = torch.Generator().manual_seed(seed)
  for m in model.modules():
    if isinstance(m, nn.BatchNorm2d):
      c = m.num_features
      m.running_mean.add_(0.2 * m.running_var.sqrt() * torch.randn(c, generator=g))
      m.running_var.mul_(0.7 + 0.6 * torch.rand(c, generator=g))
      m.weight.copy_(0.5 + torch.rand(c, generator=g))
      m.bias.copy_(0.2 * torch.randn(c, generator=g))
  return model.eval()


def dcgan(nz=100, ngf=8):
  """The PyTorch DCGAN tutorial's generator (64×64), narrow."""
  return nn.Sequential(
    nn.ConvTranspose2d(nz, ngf * 8, 4, 1, 0, bias=False),
    nn.BatchNorm2d(ngf * 8),
    nn.ReLU(True),
    nn.ConvTranspose2d(ngf * 8, ngf * 4, 4, 2, 1, bias=False),
    nn.BatchNorm2d(ngf * 4),
    nn.ReLU(True),
    nn.ConvTranspose2d(ngf * 4, ngf * 2, 4, 2, 1, bias=False),
    nn.BatchNorm2d(ngf * 2),
    nn.ReLU(True),
    nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1, bias=False),
    nn.BatchNorm2d(ngf),
    nn.ReLU(True),
    nn.ConvTranspose2d(ngf, 3, 4, 2, 1, bias=False),
    nn.Tanh(),
  )


class ResBlock(nn.Module):
  def __init__(self, cin, cout, mode):
    super().__init__()
    self.up = nn.Upsample(
      scale_factor=2, mode=mode, **({} if mode == "nearest" else {"align_corners": False})
    )
    self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
    self.act1 = nn.LeakyReLU(0.2)
    self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
    self.skip = nn.Conv2d(cin, cout, 1)
    self.act2 = nn.LeakyReLU(0.2)

  def forward(self, x):
    u = self.up(x)
    return self.act2(self.conv2(self.act1(self.conv1(u))) + self.skip(u))


class ResGen(nn.Module):
  """Linear → 4×4, two residual blocks (upsample + conv, skip addition, LeakyReLU), tanh."""

  def __init__(self, nz=16, ch=8):
    super().__init__()
    self.ch = ch
    self.fc = nn.Linear(nz, ch * 16)
    self.blocks = nn.Sequential(ResBlock(ch, ch, "nearest"), ResBlock(ch, ch // 2, "bilinear"))
    self.bn = nn.BatchNorm2d(ch // 2)
    self.to_rgb = nn.Conv2d(ch // 2, 3, 3, padding=1)

  def forward(self, z):
    x = self.fc(z).view(z.shape[0], self.ch, 4, 4)
    return torch.tanh(self.to_rgb(torch.relu(self.bn(self.blocks(x)))))


class CondGen(nn.Module):
  """A class embedding concatenated to the noise, and read again after the first block."""

  def __init__(self, nz=12, n_classes=5, emb=4, ngf=8):
    super().__init__()
    self.emb = nn.Embedding(n_classes, emb)
    self.head = nn.Sequential(
      nn.ConvTranspose2d(nz + emb, ngf * 2, 4, 1, 0), nn.BatchNorm2d(ngf * 2), nn.ReLU()
    )
    self.proj = nn.Linear(emb, ngf * 2)
    self.tail = nn.Sequential(
      nn.ConvTranspose2d(ngf * 2, ngf, 4, 2, 1),
      nn.BatchNorm2d(ngf),
      nn.ReLU(),
      nn.ConvTranspose2d(ngf, 3, 4, 2, 1),
      nn.Tanh(),
    )

  def forward(self, z, y):
    e = self.emb(y)
    x = self.head(torch.cat([z, e[:, :, None, None]], 1))
    return self.tail(x + self.proj(e)[:, :, None, None])


def _build(cls, seed, example):
  torch.manual_seed(seed)
  return _calibrate_bn(cls(), example, seed)


N_CLASSES = 5


def _labels(key, n):
  return (jax.random.randint(key, (n,), 0, N_CLASSES),)


@pytest.fixture(scope="module")
def models():
  """name → (torch model, Generator, sites)."""
  out = {}
  m = _build(dcgan, 0, (torch.randn(64, 100, 1, 1),))
  out["dcgan"] = (m, from_torch(m, (100, 1, 1), ["1", "4", "5", "9"]), ("1", "4", "5", "9"))
  m = _build(ResGen, 1, (torch.randn(64, 16),))
  sites = ("fc", "blocks.0.conv1", "blocks.1")
  out["resnet"] = (m, from_torch(m, (16,), list(sites)), sites)
  m = _build(CondGen, 2, (torch.randn(64, 12, 1, 1), torch.arange(64) % N_CLASSES))
  sites = ("head", "tail.2")
  gen = from_torch(
    m, (12, 1, 1), list(sites), conditions=[torch.tensor([0])], condition_sampler=_labels
  )
  out["conditional"] = (m, gen, sites)
  return out


# ---- the PyTorch reference ------------------------------------------------------------------
def _inputs(gen, latents):
  """The model's torch inputs from latents (via the generator's own split)."""
  return tuple(
    torch.from_numpy(np.array(a)).to(torch.int64 if a.dtype == jnp.int32 else torch.float32)
    for a in gen.split_latents(jnp.asarray(latents))
  )


def _capture(store, name):
  """A forward hook that keeps a copy of the module's first output and returns None
  (so the output itself goes on: an in-place ReLU after it must not change the copy)."""

  def hook(mod, inputs, output):
    if name not in store:
      store[name] = output.detach().clone()

  return hook


@torch.no_grad()
def torch_hybrids(model, path, masks, inputs1, inputs2):
  """``[M, N, H, W, 3]``: the model on inputs1 with the site's output mixed with inputs2's."""
  site = model.get_submodule(path)
  got = {}
  handle = site.register_forward_hook(_capture(got, "a2"))
  model(*inputs2)
  handle.remove()
  out = []
  for m in masks:
    m = torch.from_numpy(np.asarray(m, np.float32))

    def mix(mod, i, o, m=m):
      mb = m.reshape(1, -1, *([1] * (o.ndim - 2)))
      return (1 - mb) * o + mb * got["a2"]

    handle = site.register_forward_hook(mix)
    out.append(model(*inputs1).permute(0, 2, 3, 1).numpy())
    handle.remove()
  return np.stack(out)


@torch.no_grad()
def torch_influence_maps(model, path, masks, inputs1, inputs2):
  x1 = model(*inputs1).permute(0, 2, 3, 1).numpy()
  hyb = torch_hybrids(model, path, masks, inputs1, inputs2)
  return np.abs(hyb - x1[None]).mean(axis=(1, 4))


def _maxdiff(a, b):
  a, b = np.asarray(a), np.asarray(b)
  assert a.shape == b.shape, (a.shape, b.shape)
  return float(np.max(np.abs(a - b)))


def _masks(c, seed):
  """``[C, C]``: a binary mask, a soft one, a one-hot one, then random soft ones (C rows:
  the influence maps then share their compiled kernel with the C one-hot EIM masks)."""
  rng = np.random.default_rng(seed)
  rows = [rng.integers(0, 2, c), rng.uniform(0, 1, c), np.eye(c)[c // 2]]
  rows += list(rng.uniform(0, 1, (c - 3, c)))
  return np.stack(rows).astype(np.float32)


SITES = {
  "dcgan": ("4", "9"),
  "resnet": ("blocks.0.conv1", "blocks.1"),
  "conditional": ("head", "tail.2"),
}
CASES = [(kind, site) for kind, sites in SITES.items() for site in sites]


@pytest.mark.parametrize("kind,site", CASES, ids=[f"{k}-{s}" for k, s in CASES])
def test_interventions_equal_torch_hooks(models, kind, site):
  model, gen, _ = models[kind]
  path = gen.site_paths[site]
  key = jax.random.key(len(site))
  k1, k2 = jax.random.split(key)
  z1, z2 = gen.sample_latents(k1, 2), gen.sample_latents(k2, 2)  # the EIMs' pairs too
  t1, t2 = _inputs(gen, z1), _inputs(gen, z2)
  images = np.asarray(gen(z1))
  ref = model(*t1).detach().permute(0, 2, 3, 1).numpy()
  assert _maxdiff(images, ref) <= TOL
  assert np.abs(ref).max() <= 1.0 and ref.std() > 0.1  # images that use the range
  c = gen.site_shape(site)[-1]
  masks = _masks(c, len(site))
  want = torch_hybrids(model, path, masks[:3], t1, t2)
  assert np.max(np.abs(want - ref[None])) > 1e-2  # the masks change the images
  assert _maxdiff(cf.hybrids(gen, site, masks[:3], z1, z2, mask_chunk=3), want) <= TOL
  chunks = {"pair_chunk": 2, "mask_chunk": 4}
  want_im = torch_influence_maps(model, path, masks, t1, t2)
  assert _maxdiff(cf.influence_maps(gen, site, masks, z1, z2, **chunks), want_im) <= TOL
  want_eim = torch_influence_maps(model, path, np.eye(c), t1, t2)
  assert np.max(want_eim) > 1e-3
  eims = cf.elementary_influence_maps(gen, site, n_pairs=2, key=key, **chunks)
  assert _maxdiff(eims, want_eim) <= TOL


def test_site_layout_and_names(models):
  model, gen, _ = models["dcgan"]
  assert gen.sites == ("1", "4", "5", "9")  # forward order
  assert gen.site_shape("1") == (4, 4, 64) and gen.site_shape("9") == (32, 32, 8)
  assert gen.image_shape == (64, 64, 3)
  z = gen.sample_latents(jax.random.key(0), 2)
  got = {}
  h = model[5].register_forward_hook(_capture(got, "a"))
  model(*_inputs(gen, z))
  h.remove()
  # channels last: the torch module's NCHW output, transposed
  assert _maxdiff(gen.run_prefix("5", z), got["a"].permute(0, 2, 3, 1).numpy()) <= TOL
  # a linear layer's output stays [N, C]; its hybrids too equal the hooks'
  res_model, res, _ = models["resnet"]
  assert res.site_shape("fc") == (128,)
  z1, z2 = res.sample_latents(jax.random.key(1), 2), res.sample_latents(jax.random.key(2), 2)
  masks = _masks(128, 0)[:2]
  want = torch_hybrids(res_model, "fc", masks, _inputs(res, z1), _inputs(res, z2))
  assert _maxdiff(cf.hybrids(res, "fc", masks, z1, z2, mask_chunk=2), want) <= TOL
  # sites given as a mapping name → path
  named = from_torch(model, (100, 1, 1), {"late": "9", "early": "2"})
  assert named.sites == ("early", "late") and named.site_paths["late"] == "9"
  assert isinstance(named, cf.Generator)


def test_conditional_hybrids_keep_z1_conditioning(models):
  model, gen, _ = models["conditional"]
  z, _ = gen.split_latents(gen.sample_latents(jax.random.key(3), 4))
  y1, y2 = jnp.asarray([0, 1, 2, 3]), jnp.asarray([4, 4, 0, 1])
  z1, z2 = gen.make_latents(z, y1), gen.make_latents(z[::-1], y2)
  assert [np.asarray(a).tolist() for a in gen.split_latents(z1)[1:]] == [[0, 1, 2, 3]]
  # an all-zero mask leaves z1's image: the label read after the site is z1's
  c = gen.site_shape("head")[-1]
  x1 = np.asarray(gen(z1))
  assert _maxdiff(cf.hybrids(gen, "head", np.zeros(c, np.float32), z1, z2), x1) <= TOL
  # an all-one mask is not z2's image: the stages after the site still read y1
  full = np.asarray(cf.hybrids(gen, "head", np.ones(c, np.float32), z1, z2))
  assert np.max(np.abs(full - np.asarray(gen(z2)))) > 1e-2
  t1, t2 = _inputs(gen, z1), _inputs(gen, z2)
  assert _maxdiff(full, torch_hybrids(model, "head", np.ones((1, c)), t1, t2)[0]) <= TOL


def test_new_mask_values_do_not_retrace(models):
  _, gen, _ = models["dcgan"]
  z1, z2 = gen.sample_latents(jax.random.key(1), 2), gen.sample_latents(jax.random.key(2), 2)
  c = gen.site_shape("5")[-1]
  a = cf.hybrids(gen, "5", np.eye(c, dtype=np.float32)[:3], z1, z2, mask_chunk=3)
  traces = gen.trace_count
  assert traces > 0
  b = cf.hybrids(gen, "5", np.eye(c, dtype=np.float32)[3:6], z1, z2, mask_chunk=3)
  assert gen.trace_count == traces  # same mask shape, other values: no new trace
  assert np.max(np.abs(np.asarray(a) - np.asarray(b))) > 1e-3


def test_variables_are_arguments_not_constants(models):
  model, gen, _ = models["dcgan"]
  assert set(gen.variables) == {"params", "buffers", "constants"}
  assert gen.variables["buffers"]["1.running_var"].shape == (64,)
  np.testing.assert_array_equal(
    np.asarray(gen.variables["params"]["0.weight"]), model[0].weight.detach().numpy()
  )
  z = gen.sample_latents(jax.random.key(0), 2)
  traced = jax.make_jaxpr(gen.generate)(gen.variables, z)
  assert all(np.size(c) <= 16 for c in traced.consts)  # weights are inputs of the graph
  # other variables (e.g. an untrained twin) change the images
  twin = gen.with_variables(
    jax.tree.map(lambda a: a * 0.5 if a.dtype == jnp.float32 else a, gen.variables)
  )
  assert np.max(np.abs(np.asarray(twin(z)) - np.asarray(gen(z)))) > 1e-3


# ---- errors -----------------------------------------------------------------------------------
class Branchy(nn.Module):
  def __init__(self):
    super().__init__()
    self.fc = nn.Linear(4, 48)

  def forward(self, z):
    x = self.fc(z)
    if x.sum() > 0:  # data-dependent control flow
      x = -x
    return x.view(-1, 3, 4, 4)


class Tiny(nn.Module):
  def __init__(self, cumsum=False):
    super().__init__()
    self.cumsum = cumsum
    self.fc = nn.Linear(4, 48)
    self.unused = nn.Linear(4, 4)

  def forward(self, z):
    x = self.fc(z)
    return (torch.cumsum(x, 1) if self.cumsum else x).view(-1, 3, 4, 4)


def test_error_op_without_jax_implementation_then_register_it():
  model = Tiny(cumsum=True).eval()
  with pytest.raises(ValueError, match=r"aten\.cumsum\.default.*register_op"):
    from_torch(model, (4,), ["fc"])
  try:  # what the message says to do
    register_op("aten.cumsum.default", lambda x, dim, *, dtype=None: jnp.cumsum(x, dim))
    gen = from_torch(model, (4,), ["fc"])
    z = gen.sample_latents(jax.random.key(0), 2)
    with torch.no_grad():
      ref = model(*_inputs(gen, z)).permute(0, 2, 3, 1).numpy()
    assert _maxdiff(gen(z), ref) <= 1e-4  # sums of 48 values of order 1
  finally:
    ops.OPS.pop("aten.cumsum.default", None)


def test_import_cfmod_jax_does_not_import_torch():
  code = "import sys, cfmod_jax, cfmod_jax.torch_bridge; print('torch' in sys.modules)"
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  assert out.stdout.strip() == "False"


def test_error_unknown_site_lists_close_names():
  model = ResGen().eval()
  with pytest.raises(
    ValueError, match=r"'blocks\.0\.conv' is not.*did you mean .*'blocks\.0\.conv1'"
  ):
    from_torch(model, (16,), ["blocks.0.conv"])
  with pytest.raises(ValueError, match=r"not a submodule.*blocks\.1\.skip"):
    from_torch(model, (16,), ["decoder"])


def test_error_site_not_called():
  with pytest.raises(ValueError, match=r"'unused'.*not called"):
    from_torch(Tiny().eval(), (4,), ["unused"])


def test_error_training_mode():
  model = dcgan(ngf=2)
  with pytest.raises(ValueError, match=r"training mode.*model\.eval\(\)"):
    from_torch(model, (100, 1, 1), ["1"])
  assert model.training  # the user's model is not changed


def test_error_model_that_cannot_be_exported():
  with pytest.raises(ValueError, match=r"(?s)torch\.export could not export Branchy.*control flow"):
    from_torch(Branchy().eval(), (4,), ["fc"])


def test_error_bad_arguments():
  with pytest.raises(TypeError, match="torch.nn.Module"):
    from_torch(lambda z: z, (4,), ["fc"])
  with pytest.raises(ValueError, match="string"):
    from_torch(ResGen().eval(), (16,), "fc")
  with pytest.raises(ValueError, match="condition_sampler is required"):
    from_torch(CondGen().eval(), (12, 1, 1), ["head"], conditions=[torch.tensor([0])])


def test_checkpoint_weights_only_and_opt_in(tmp_path):
  src = _build(dcgan, 3, (torch.randn(8, 100, 1, 1),))
  torch.save(src.state_dict(), tmp_path / "sd.pt")
  dst = load_torch_checkpoint(str(tmp_path / "sd.pt"), dcgan())
  assert torch.equal(dst[1].running_var, src[1].running_var)
  torch.save(src, tmp_path / "full.pt")  # a pickled module: needs full unpickling
  with pytest.raises(ValueError, match=r"(?s)weights_only=True.*trust_pickle=True"):
    load_torch_checkpoint(str(tmp_path / "full.pt"), dcgan())
  dst = load_torch_checkpoint(str(tmp_path / "full.pt"), dcgan(), trust_pickle=True)
  assert torch.equal(dst[0].weight, src[0].weight)


class Buffers(nn.Module):
  """A non-persistent buffer, a constant made in forward, a reshape on the batch size."""

  def __init__(self):
    super().__init__()
    self.fc = nn.Linear(4, 48)
    self.register_buffer("scale", torch.linspace(0.5, 2.0, 3).view(3, 1, 1), persistent=False)

  def forward(self, z):
    shift = torch.tensor([0.1, -0.2, 0.3]).view(1, 3, 1, 1)
    return torch.tanh(self.fc(z).reshape(z.shape[0], 3, 4, 4) * self.scale + shift)


def test_buffers_constants_and_any_batch_size():
  model = Buffers().eval()
  gen = from_torch(model, (4,), ["fc"])
  assert list(gen.variables["buffers"]) == ["scale"] and len(gen.variables["constants"]) == 1
  for n in (1, 5):  # exported with a symbolic batch size
    z = gen.sample_latents(jax.random.key(n), n)
    with torch.no_grad():
      ref = model(*_inputs(gen, z)).permute(0, 2, 3, 1).numpy()
    assert _maxdiff(gen(z), ref) <= TOL
