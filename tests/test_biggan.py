"""BigGAN-deep: parity with pytorch-pretrained-biggan (random small model, no
download), config shapes and sites, hybrids, the converter and bad input."""

import copy
import json
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from pytorch_pretrained_biggan import BigGAN, truncated_noise_sample
from pytorch_pretrained_biggan import BigGANConfig as TorchConfig
from pytorch_pretrained_biggan.convert_tf_to_pytorch import BigGAN128, BigGAN256, BigGAN512

import cfmod_jax as cf
from cfmod_jax.models import biggan as bg
from cfmod_jax.models import biggan_convert as bc

SLOW = "compiles BigGAN-deep and compares it with pytorch-pretrained-biggan"

jax.config.update("jax_default_matmul_precision", "highest")

PARITY_ATOL = 1e-4
# 32×32 output; 4 → 8 → 16 → 32; self-attention before block 3 (at 8×8, 64 channels).
SMALL = dict(
  output_dim=32,
  z_dim=16,
  class_embed_dim=16,
  channel_width=8,
  num_classes=10,
  layers=[(False, 16, 16), (True, 16, 8), (False, 8, 8), (True, 8, 4), (True, 4, 2), (False, 2, 1)],
  attention_layer_position=3,
  eps=1e-4,
  n_stats=11,
)
SMALL_CFG = bg.BigGANConfig(**{**SMALL, "layers": tuple(SMALL["layers"])})
Z = SMALL["z_dim"]


def _randomise(model: BigGAN, seed: int = 1) -> None:
  """Sets every parameter/buffer the port leaves uninitialised or trivial."""
  g = torch.Generator().manual_seed(seed)
  normalize = torch.nn.functional.normalize
  with torch.no_grad():
    for mod in model.modules():
      if hasattr(mod, "weight_orig"):  # spectral norm: u, v from a few power iterations
        w = mod.weight_orig.reshape(mod.weight_orig.shape[0], -1)
        u = normalize(torch.randn(w.shape[0], generator=g), dim=0)
        for _ in range(3):
          v = normalize(w.t() @ u, dim=0)
          u = normalize(w @ v, dim=0)
        mod.weight_u.copy_(u)
        mod.weight_v.copy_(v)
      if hasattr(mod, "running_means"):  # distinct statistics per truncation index
        mod.running_means.copy_(0.3 * torch.randn(mod.running_means.shape, generator=g))
        mod.running_vars.copy_(0.5 + torch.rand(mod.running_vars.shape, generator=g))
      if hasattr(mod, "gamma"):
        mod.gamma.fill_(0.7)  # 0 at init would switch the attention off
    bn = model.generator.bn  # torch.Tensor(n): uninitialised memory
    bn.weight.copy_(1 + 0.2 * torch.randn(bn.weight.shape, generator=g))
    bn.bias.copy_(0.1 * torch.randn(bn.bias.shape, generator=g))


@pytest.fixture(scope="module")
def torch_model():
  torch.manual_seed(0)
  model = BigGAN(TorchConfig(**SMALL))
  _randomise(model)
  return model.eval()


@pytest.fixture(scope="module")
def ckpt(torch_model, tmp_path_factory):
  """The torch state dict on disk and its conversion (via the command line)."""
  d = tmp_path_factory.mktemp("biggan")
  sd_path, out = str(d / "pytorch_model.bin"), str(d / "flax_ckpt")
  torch.save(torch_model.state_dict(), sd_path)
  with open(d / "config.json", "w") as f:
    json.dump(SMALL, f)
  subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.convert_biggan",
      f"--state_dict={sd_path}",
      f"--config={d / 'config.json'}",
      f"--out={out}",
    ],
    check=True,
    cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    env={**os.environ, "JAX_PLATFORMS": "cpu"},
  )
  return sd_path, out


@pytest.fixture(scope="module")
def small_biggan(ckpt):
  return bg.load_biggan(ckpt[1], truncation=0.4)


def _latents(n=4, truncation=0.4, seed=0):
  """Noise from the port's sampler, integer classes and one soft class vector."""
  z = truncated_noise_sample(n, Z, truncation, seed=seed)
  y = np.eye(SMALL["num_classes"], dtype=np.float32)[np.arange(n) * 3 % 10]
  y[1] = np.random.default_rng(seed).dirichlet(np.ones(SMALL["num_classes"]))
  return np.concatenate([z, y], axis=1).astype(np.float32)


def _torch_images(model, latents, truncation):
  with torch.no_grad():
    out = model(torch.from_numpy(latents[:, :Z]), torch.from_numpy(latents[:, Z:]), truncation)
  return out.numpy().transpose(0, 2, 3, 1)


# ---- parity with PyTorch ---------------------------------------------------------------------


@pytest.mark.parametrize("truncation", [0.4, 0.37, 0.5, 0.93, 1.0, 0.02])
def test_parity_with_pytorch(torch_model, ckpt, truncation):
  gen = bg.load_biggan(ckpt[1], truncation=truncation)
  lat = _latents(truncation=truncation)
  ref = _torch_images(torch_model, lat, truncation)
  out = np.asarray(gen(lat))
  assert out.shape == ref.shape == (4, 32, 32, 3)
  assert np.abs(out - ref).max() <= PARITY_ATOL
  # Not a trivial match: images vary and tanh is not saturated.
  assert ref.std() > 0.1 and np.mean(np.abs(ref) > 0.99) < 0.05


def test_truncation_selects_batchnorm_statistics(small_biggan, ckpt):
  """Same latents, different truncation → different images (statistics differ)."""
  lat = _latents()
  other = bg.load_biggan(ckpt[1], truncation=0.7)
  assert np.abs(np.asarray(small_biggan(lat)) - np.asarray(other(lat))).max() > 1e-2


def test_sites_match_pytorch_block_outputs(torch_model, small_biggan):
  """Site ``block{i}`` is the output of the port's i-th GenBlock; ``gen_z`` of gen_z."""
  captured = {}
  gen_t = torch_model.generator
  hooks = [
    gen_t.gen_z.register_forward_hook(
      lambda m, i, o: captured.__setitem__("gen_z", o.reshape(-1, 4, 4, o.shape[1] // 16))
    )
  ]
  blocks = [m for m in gen_t.layers if hasattr(m, "bn_0")]
  for i, block in enumerate(blocks):
    hooks.append(
      block.register_forward_hook(
        lambda m, inp, o, i=i: captured.__setitem__(f"block{i}", o.permute(0, 2, 3, 1))
      )
    )
  lat = _latents()
  _torch_images(torch_model, lat, 0.4)
  for h in hooks:
    h.remove()
  assert small_biggan.sites == ("gen_z",) + tuple(f"block{i}" for i in range(6))
  for site in small_biggan.sites:
    np.testing.assert_allclose(
      small_biggan.run_prefix(site, lat), captured[site].numpy(), atol=PARITY_ATOL
    )


def test_power_iteration_matches_pytorch_train_mode(torch_model, ckpt):
  """``power_iterations=1`` reproduces the port's first forward in train mode."""
  model = copy.deepcopy(torch_model).train()
  state = {k: v.numpy().copy() for k, v in torch_model.state_dict().items()}
  variables = bc.convert_state_dict(state, SMALL_CFG, power_iterations=1)
  gen = bg.biggan_generator(variables, SMALL_CFG, 0.6)
  lat = _latents(truncation=0.6, seed=3)
  ref = _torch_images(model, lat, 0.6)
  assert np.abs(np.asarray(gen(lat)) - ref).max() <= PARITY_ATOL


def test_hybrids(torch_model, small_biggan):
  """Empty mask → G(z1); full mask at a middle site → z2's activations continued
  under z1's conditioning (checked against PyTorch with the block output swapped);
  full mask at the last site → G(z2) (the output stage is unconditional)."""
  gen = small_biggan
  lat = _latents(n=6)
  z1, z2 = lat[:3], lat[3:]
  site = "block2"
  c = gen.site_shape(site)[-1]
  out = np.asarray(cf.hybrids(gen, site, np.stack([np.zeros(c), np.ones(c)]), z1, z2))
  np.testing.assert_allclose(out[0], gen(z1), atol=1e-5)

  block = [m for m in torch_model.generator.layers if hasattr(m, "bn_0")][2]
  donor = {}
  hook = block.register_forward_hook(lambda m, i, o: donor.__setitem__("h", o))
  _torch_images(torch_model, z2, 0.4)
  hook.remove()
  hook = block.register_forward_hook(lambda m, i, o: donor["h"])
  ref = _torch_images(torch_model, z1, 0.4)
  hook.remove()
  assert np.abs(out[1] - ref).max() <= PARITY_ATOL
  assert np.abs(out[1] - np.asarray(gen(z2))).max() > 1e-2  # z1's conditioning matters

  last = gen.sites[-1]
  c = gen.site_shape(last)[-1]
  full = cf.hybrids(gen, last, np.ones(c), z1, z2)
  np.testing.assert_allclose(full, gen(z2), atol=1e-5)


# ---- configs, shapes, sites ------------------------------------------------------------------


@pytest.mark.parametrize(
  "name,torch_cfg,n_sites",
  [
    ("biggan-deep-128", BigGAN128, 11),
    ("biggan-deep-256", BigGAN256, 13),
    ("biggan-deep-512", BigGAN512, 15),
  ],
)
def test_pretrained_configs(name, torch_cfg, n_sites):
  cfg = bg.CONFIGS[name]
  assert bg.BigGANConfig.from_dict(torch_cfg.to_dict()) == cfg
  # Our expected state dict is the port's (shapes only, no memory: meta device).
  with torch.device("meta"):
    model = BigGAN(torch_cfg)
  assert {
    k: tuple(v.shape) for k, v in model.state_dict().items()
  } == bc.expected_state_dict_shapes(name)

  module = bg.BigGANDeep(cfg)
  latent = jax.ShapeDtypeStruct((1, 1128), jnp.float32)
  variables = jax.eval_shape(module.init, jax.random.key(0), latent)
  gen = bg.biggan_generator(variables, name)
  r = cfg.output_dim
  assert gen.latent_shape == (1128,)
  assert len(gen.sites) == n_sites
  assert gen.sites == ("gen_z",) + tuple(f"block{i}" for i in range(n_sites - 1))
  assert gen.image_shape == (r, r, 3)
  assert gen.site_shape("gen_z") == gen.site_shape("block0") == (4, 4, 2048)
  assert gen.site_shape("block7") == (64, 64, 512 if r > 128 else 256)  # before attention
  assert gen.site_shape(gen.sites[-1]) == (r, r, 128)
  assert cfg.resolutions[cfg.attention_layer_position] == 64


def test_latent_sampling(small_biggan):
  gen = bg.biggan_generator(small_biggan.variables, SMALL_CFG, truncation=0.5)
  lat = np.asarray(gen.sample_latents(jax.random.key(0), 500))
  z, y = lat[:, :Z], lat[:, Z:]
  assert lat.shape == (500, Z + 10)
  assert np.abs(z).max() <= 1.0 and 0.2 < z.std() < 0.5  # truncnorm(-2, 2)·0.5: std ≈ 0.44
  assert set(np.unique(y)) == {0.0, 1.0} and np.all(y.sum(1) == 1)
  assert len(set(y.argmax(1))) == 10

  only = bg.biggan_generator(gen.variables, SMALL_CFG, 0.5, classes=[2, 7])
  ys = np.asarray(only.sample_latents(jax.random.key(1), 50))[:, Z:]
  assert set(ys.argmax(1)) == {2, 7}

  lat = bg.sample_latents_for_classes(jax.random.key(2), [3, 3, 9], 0.3, config=SMALL_CFG)
  assert lat.shape == (3, Z + 10) and np.abs(lat[:, :Z]).max() <= 0.6
  np.testing.assert_array_equal(np.asarray(lat[:, Z:]).argmax(1), [3, 3, 9])
  soft = np.full((2, 10), 0.1, np.float32)
  np.testing.assert_allclose(
    bg.sample_latents_for_classes(jax.random.key(2), soft, 0.3, config=SMALL_CFG)[:, Z:], soft
  )


# ---- converter and bad input -----------------------------------------------------------------


def test_checkpoint_round_trip(ckpt, small_biggan):
  state = {k: v.numpy() for k, v in torch.load(ckpt[0], weights_only=True).items()}
  direct = bc.convert_state_dict(state, SMALL_CFG)
  for a, b in zip(jax.tree.leaves(direct), jax.tree.leaves(small_biggan.variables)):
    np.testing.assert_array_equal(a, b)
  assert jax.tree.structure(direct) == jax.tree.structure(
    jax.tree.map(np.asarray, small_biggan.variables)
  )


def test_converted_folder_is_a_cfmod_checkpoint(ckpt, small_biggan, tmp_path):
  """The converter writes cfmod_jax's exported format (config in checkpoint.json)."""
  from cfmod_jax import checkpoints

  meta = checkpoints.read_meta(ckpt[1])
  assert meta["arch"] == bg.ARCH and meta["kind"] == "generator"
  assert bg.BigGANConfig.from_dict(meta["kwargs"]["config"]) == SMALL_CFG
  assert meta["dataset"] == "imagenet" and bg.is_biggan_folder(ckpt[1])
  # The sha256 manifest catches a damaged copy.
  bad = tmp_path / "bad"
  bad.mkdir()
  for name in os.listdir(ckpt[1]):
    shutil.copy(os.path.join(ckpt[1], name), bad / name)
  data = bytearray((bad / checkpoints.DATA_FILE).read_bytes())
  data[-3] ^= 0xFF
  (bad / checkpoints.DATA_FILE).write_bytes(bytes(data))
  with pytest.raises(checkpoints.CheckpointError, match="sha256"):
    bg.load_biggan(str(bad))
  assert not bg.is_biggan_folder(str(tmp_path))
  with pytest.raises(checkpoints.CheckpointError, match="is not a BigGAN folder"):
    bg.load_biggan(str(tmp_path))
  with pytest.raises(checkpoints.CheckpointError, match="no such folder"):
    bg.load_biggan(str(tmp_path / "nowhere"))


def test_converter_errors(ckpt):
  state = {k: v.numpy() for k, v in torch.load(ckpt[0], weights_only=True).items()}
  missing = dict(state)
  del missing["generator.layers.4.conv_1.weight_v"]
  with pytest.raises(ValueError, match=r"missing keys: generator\.layers\.4\.conv_1\.weight_v"):
    bc.convert_state_dict(missing, SMALL_CFG)
  bad = dict(state)
  bad["generator.layers.3.snconv1x1_g.weight_orig"] = np.zeros((3, 64, 1, 1), np.float32)
  with pytest.raises(
    ValueError,
    match=r"mis-shaped.*generator\.layers\.3\.snconv1x1_g"
    r"\.weight_orig: expected \(32, 64, 1, 1\)",
  ):
    bc.convert_state_dict(bad, SMALL_CFG)
  with pytest.raises(ValueError, match="unexpected keys: generator.layers.7"):
    bc.convert_state_dict({**state, "generator.layers.7.gamma": np.zeros(1)}, SMALL_CFG)
  with pytest.raises(ValueError, match="missing keys"):  # wrong config for the weights
    bc.convert_state_dict(state, "biggan-deep-128")


@pytest.mark.parametrize("truncation", [0.0, -0.1, 1.5, float("nan"), "high"])
def test_bad_truncation(small_biggan, truncation):
  variables = small_biggan.variables
  with pytest.raises(ValueError, match=r"truncation must .*\(0, 1\]"):
    bg.biggan_generator(variables, SMALL_CFG, truncation)
  with pytest.raises(ValueError, match=r"truncation must .*\(0, 1\]"):
    bg.sample_latents_for_classes(jax.random.key(0), [1], truncation, config=SMALL_CFG)
  with pytest.raises(ValueError, match=r"truncation must .*\(0, 1\]"):
    bg.BigGANDeep(SMALL_CFG, truncation).apply(variables, jnp.zeros((1, Z + 10)))


def test_bad_classes(small_biggan):
  variables = small_biggan.variables
  for classes in ([3, 10], [-1], np.array([[0.5] * 9]), np.array([[-1.0] + [0.0] * 9])):
    with pytest.raises(ValueError, match="class"):
      bg.sample_latents_for_classes(jax.random.key(0), classes, 0.4, config=SMALL_CFG)
  with pytest.raises(ValueError, match=r"class indices must lie in \[0, 10\), got \[12\]"):
    bg.biggan_generator(variables, SMALL_CFG, 0.4, classes=[1, 12])
  with pytest.raises(ValueError, match="config"):
    bg.get_config("biggan-deep-1024")
  with pytest.raises(ValueError, match="invalid BigGAN config"):
    bg.BigGANConfig(**{**SMALL, "output_dim": 64})
