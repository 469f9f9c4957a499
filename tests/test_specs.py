"""One string names any generator (experiments/_specs.py): random initialisations,
shipped names, checkpoint folders (exported, registered user architectures,
BigGAN conversions), and user factories given as ``module:factory`` or
``file.py:factory`` — and a user generator in a file outside the package runs
through ``python -m experiments.analyze`` to a full report."""

import importlib.util
import json
import os
import subprocess
import sys
import uuid

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfmod_jax as cf
from cfmod_jax import checkpoints, models
from cfmod_jax.data.synthfaces import uses_synthfaces_parts
from cfmod_jax.models import biggan as bg
from experiments import _specs as specs

SLOW = "loads every kind of generator spec; runs the analyze CLI on a user factory"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A user generator (a StagedGenerator in ~25 lines), written to a file outside the package.
USER_SOURCE = '''
import flax.linen as nn
import jax
import jax.numpy as jnp

import cfmod_jax as cf
from cfmod_jax.generator import VectorLatentGenerator


class Project(nn.Module):
  width: int

  @nn.compact
  def __call__(self, z, train=False):
    return nn.relu(nn.Dense(4 * 4 * self.width)(z).reshape(z.shape[0], 4, 4, self.width))


class Up(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x, train=False):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return nn.relu(nn.Conv(self.width, (3, 3))(x))


class ToRGB(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    return jnp.tanh(nn.Conv(3, (3, 3))(x))


class TinyGen(VectorLatentGenerator):
  latent_dim: int = 8
  width: int = 8
  site_names = ("block1", "block2")

  def setup(self):
    self.stages = [Project(self.width), Up(self.width), ToRGB()]


def make_generator(width=8, seed=0):
  module = TinyGen(width=width)
  variables = module.init(jax.random.key(seed), jnp.zeros((1, 8)))
  return cf.Generator(module, variables, name=f"tiny-w{width}")


def not_a_generator():
  return 42
'''


@pytest.fixture
def user_file(tmp_path):
  """(folder, module name, path) of the user generator's file."""
  name = f"user_gen_{uuid.uuid4().hex[:8]}"
  path = tmp_path / f"{name}.py"
  path.write_text(USER_SOURCE)
  return str(tmp_path), name, str(path)


# ---- spec forms --------------------------------------------------------------------------
def test_random_spec_and_args():
  gen = specs.generator_from_spec("random:dcgan:4", {"latent_dim": 8})
  ref = cf.init_generator("dcgan", width=4, latent_dim=8)
  assert gen.latent_shape == (8,) and gen.module == ref.module and gen.dataset is None
  jax.tree.map(np.testing.assert_array_equal, gen.variables, ref.variables)
  assert specs.parse_generator_args('{"width": 4, "latent_dim": 8}') == {
    "width": 4,
    "latent_dim": 8,
  }
  assert specs.parse_generator_args("") == {} and specs.parse_generator_args(None) == {}


def test_shipped_name_has_dataset():
  gen = specs.generator_from_spec("vae-synthfaces")
  assert gen.name == "vae-synthfaces" and gen.dataset == "synthfaces"
  assert uses_synthfaces_parts(gen)
  assert not uses_synthfaces_parts(cf.init_generator("dcgan", width=4, latent_dim=8))


def test_module_and_file_factories(user_file, monkeypatch):
  folder, name, path = user_file
  by_file = specs.generator_from_spec(f"{path}:make_generator", {"width": 4})
  assert type(by_file.module).__name__ == "TinyGen" and by_file.sites == ("block1", "block2")
  assert by_file.module.width == 4 and by_file.name == "tiny-w4"
  monkeypatch.syspath_prepend(folder)
  by_name = specs.generator_from_spec(f"{name}:make_generator", {"width": 4})
  z = by_name.sample_latents(jax.random.key(0), 2)
  np.testing.assert_array_equal(np.asarray(by_name(z)), np.asarray(by_file(z)))
  # The file-loaded module is importable by inspect (sources feed the fingerprint).
  assert "class TinyGen" in __import__("inspect").getsource(type(by_file.module))


@pytest.mark.parametrize(
  "spec,args,match",
  [
    ("", None, r"generator must be a non-empty string"),
    ("no-such-model", None, r"generator='no-such-model' is neither.*random:<arch>"),
    ("random:", None, r"random:<arch>\[:<width>\]"),
    ("random:dcgan:wide", None, r"random:<arch>\[:<width>\]"),
    ("random:nope", None, r"arch='nope' is unknown; expected one of \['began', 'dcgan', 'vae'"),
    ("random:dcgan:4", {"width": 8}, r"must not give it again"),
    ("random:dcgan:0", None, r"width must be a positive integer for arch='dcgan', got 0"),
    (
      "random:dcgan:4",
      {"depth": 2},
      r"generator_args \{'depth': 2\} do not fit "
      r"random:dcgan:4: unknown argument\(s\) depth",
    ),
    ("no_such_module_xyz:make", None, r"cannot import 'no_such_module_xyz'"),
    ("json:no_such_factory", None, r"json has no attribute 'no_such_factory'"),
    ("json:__name__", None, r"not a callable"),
    ("bad module:make", None, r"neither a module name"),
    ("json:", None, r"<factory> after the last ':'"),
    ("/no/such/file.py:make", None, r"the file /no/such/file.py does not exist"),
    ("random:dcgan", "[1, 2]", r"generator_args must be a JSON object"),
    ("random:dcgan", "{bad json", r"generator_args must be a JSON object"),
    ("random:dcgan", {"not an identifier": 1}, r"generator_args keys"),
    ("dcgan-synthfaces", {"width": 4}, r"generator_args must be empty for a checkpoint"),
  ],
)
def test_bad_specs(spec, args, match):
  with pytest.raises(ValueError, match=match):
    specs.generator_from_spec(spec, args)


def test_bad_factories(user_file):
  _, _, path = user_file
  with pytest.raises(
    ValueError,
    match=r"not_a_generator\(\) returned a int, not a "
    r"cfmod_jax.Generator",
  ):
    specs.generator_from_spec(f"{path}:not_a_generator")
  with pytest.raises(
    ValueError,
    match=r"generator_args \{'depth': 3\} do not fit "
    r"make_generator\(\)",
  ):
    specs.generator_from_spec(f"{path}:make_generator", {"depth": 3})


# ---- registry -----------------------------------------------------------------------------
def _load_example():
  path = os.path.join(ROOT, "docs", "examples", "own_generator_cli.py")
  spec = importlib.util.spec_from_file_location("own_generator_cli", path)
  mod = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = mod
  spec.loader.exec_module(mod)
  return mod


def test_register_architecture_staged(user_file, tmp_path):
  _, _, path = user_file
  user = specs._import_file(path)  # pylint: disable=protected-access
  name = f"planted-{uuid.uuid4().hex[:6]}"
  with pytest.raises(
    ValueError,
    match=rf"arch='{name}' is unknown; expected one of "
    r"\['began', 'dcgan', 'vae'\].*register_architecture",
  ):
    cf.models.build_module(name)
  cf.register_architecture(name, user.TinyGen)
  try:
    assert name in models.architectures()
    with pytest.raises(
      ValueError,
      match=rf"name='{name}' is already registered.*"
      rf"registered so far: .*'{name}'",
    ):
      cf.register_architecture(name, user.TinyGen)
    with pytest.raises(ValueError, match=r"name='dcgan' is a shipped architecture"):
      cf.register_architecture("dcgan", user.TinyGen)
    with pytest.raises(ValueError, match=r"build_fn must be callable"):
      cf.register_architecture(name + "x", 3)
    with pytest.raises(ValueError, match=r"cannot build arch=.* with kwargs \{'depth': 2\}"):
      cf.models.build_module(name, depth=2)
    gen = cf.init_generator(name, seed=1, width=4)
    assert isinstance(gen.module, user.TinyGen) and gen.module.width == 4
    assert specs.generator_from_spec(f"random:{name}:4").module == gen.module
    # A checkpoint of the user architecture loads by its name, with its dataset.
    folder = checkpoints.save_variables(
      str(tmp_path / "ckpt"),
      gen.variables,
      kind="generator",
      arch=name,
      kwargs={"width": 4},
      extra={"dataset": "synthfaces"},
    )
    loaded = specs.generator_from_spec(folder)
    assert loaded.dataset == "synthfaces" and uses_synthfaces_parts(loaded)
    z = gen.sample_latents(jax.random.key(0), 2)
    np.testing.assert_array_equal(np.asarray(loaded(z)), np.asarray(gen(z)))
  finally:
    models.unregister_architecture(name)
  with pytest.raises(checkpoints.CheckpointError, match=rf"arch='{name}' is unknown"):
    cf.load_generator(folder)


def test_register_wrapped_architecture_example(tmp_path):
  ex = _load_example()
  ex.register()
  try:
    gen = ex.make_generator(latent_dim=8, width=4)
    folder = ex.save(gen, str(tmp_path / "own"), dataset="celeba")
    loaded = cf.load_generator(folder)
    assert isinstance(loaded, cf.wrap.LinenGenerator) and loaded.sites == gen.sites
    assert loaded.dataset == "celeba" and not uses_synthfaces_parts(loaded)
    z = gen.sample_latents(jax.random.key(0), 2)
    np.testing.assert_array_equal(np.asarray(loaded(z)), np.asarray(gen(z)))
  finally:
    models.unregister_architecture(ex.ARCH)


# ---- BigGAN folders ------------------------------------------------------------------------
def test_biggan_folder_through_spec(tmp_path):
  cfg = bg.BigGANConfig(
    output_dim=32,
    z_dim=16,
    class_embed_dim=16,
    channel_width=4,
    num_classes=10,
    layers=((False, 16, 16), (True, 16, 8), (True, 8, 4), (True, 4, 2), (False, 2, 1)),
    attention_layer_position=3,
    eps=1e-4,
    n_stats=11,
  )
  # Random arrays of the right shapes (no compile of BigGAN's init: this test is about files).
  shapes = jax.eval_shape(
    bg.BigGANDeep(cfg).init,
    jax.random.key(0),
    jax.ShapeDtypeStruct((1, cfg.latent_dim), jnp.float32),
  )
  rng = np.random.default_rng(0)
  variables = jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes)
  folder = str(tmp_path / "biggan")
  bg.save_biggan(folder, variables, cfg)  # what experiments.convert_biggan writes
  assert checkpoints.is_biggan_folder(folder)
  gen = specs.generator_from_spec(folder, {"truncation": 0.5, "classes": [1, 2]})
  ref = bg.load_biggan(folder, 0.5, classes=[1, 2])
  assert gen.dataset == "imagenet" and gen.name == "biggan" and gen.sites == ref.sites
  # Same module, variables and latent sampler as BigGAN's own loader: the same images.
  assert gen.module == ref.module == bg.BigGANDeep(cfg, 0.5)
  jax.tree.map(np.testing.assert_array_equal, gen.variables, ref.variables)
  key = jax.random.key(0)
  np.testing.assert_array_equal(gen.sample_latents(key, 4), ref.sample_latents(key, 4))
  assert set(np.argmax(np.asarray(gen.sample_latents(key, 64))[:, 16:], 1)) <= {1, 2}
  default = cf.load_generator(folder)  # the same path as every other model
  assert default.module == bg.BigGANDeep(cfg, 0.4) and default.dataset == "imagenet"
  with pytest.raises(ValueError, match=r"generator_args .* do not fit a BigGAN folder"):
    specs.generator_from_spec(folder, {"width": 3})


# ---- the main job on a user generator from a file outside the package ----------------------
def _env(*paths):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join([*paths, ROOT, env.get("PYTHONPATH", "")])
  return env


def test_analyze_cli_runs_a_user_factory(user_file, tmp_path):
  folder, name, _ = user_file
  out = tmp_path / "out"
  cmd = [
    sys.executable,
    "-m",
    "experiments.analyze",
    f"--generator={name}:make_generator",
    '--generator_args={"width": 4}',
    "--config.sites=block1",
    "--config.n_pairs=8",
    "--config.block_pairs=4",
    "--config.k=2",
    "--config.eval_pairs=8",
    "--config.eval_groups=2",
    "--config.n_null=4",
    f"--out={out}",
  ]
  proc = subprocess.run(
    cmd, cwd=ROOT, env=_env(folder), capture_output=True, text=True, timeout=600
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  for f in ("report.html", "metrics.json", os.path.join("block1", "analysis.npz")):
    assert (out / f).is_file(), f
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["generator"] == "tiny-w4" and list(metrics["sites"]) == ["block1"]
  assert metrics["untrained_baseline"]["generator"] == "tiny-w4-untrained"
  # A bad factory is one line naming the flag, before any work.
  bad = subprocess.run(
    cmd[:3] + [f"--generator={name}:nope", f"--out={tmp_path / 'bad'}"],
    cwd=ROOT,
    env=_env(folder),
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert bad.returncode != 0
  last = bad.stderr.strip().splitlines()[-1]
  assert f"--generator={name}:nope" in last and "has no attribute 'nope'" in last, bad.stderr
  assert "Traceback" not in bad.stderr
