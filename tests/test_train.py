"""Trainers: finite losses, a VAE that learns, bitwise checkpoints, exact
resumption, data parallelism, and config errors before compilation."""

import functools
import importlib
import math
import os
import shutil
import subprocess
import sys
import textwrap

import flax
import jax
import numpy as np
import pytest

from cfmod_jax import checkpoints, train
from cfmod_jax.train import data, loop, state_io
from cfmod_jax.train.rng import init_key

SLOW = "trains every model a few steps, with checkpoints and resumption"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_config(model: str, **fields):
  """The model's experiments/configs file, shrunk: width 4, batch 4, 64×64."""
  config = importlib.import_module(f"experiments.configs.{model}").get_config()
  config.batch_size = 4
  config.log_every = 1
  config.sample_every = 0
  config.num_samples = 4
  config.quality_samples = 16
  for net in ("generator", "discriminator", "featnet"):
    if net in config:
      config[net].width = 4
  for key, value in fields.items():
    config[key] = value
  return config


def leaves(state):
  return jax.tree_util.tree_leaves_with_path(jax.device_get(state))


def assert_states_equal(a, b):
  la, lb = leaves(a), leaves(b)
  assert [p for p, _ in la] == [p for p, _ in lb]
  for (path, x), (_, y) in zip(la, lb):
    assert np.array_equal(np.asarray(x), np.asarray(y)), jax.tree_util.keystr(path)


@pytest.mark.parametrize("model", ["dcgan", "began", "featnet"])
def test_trainer_runs_with_finite_losses(model, tmp_path):
  config = tiny_config(model, num_steps=3, checkpoint_every=3, sample_every=3)
  result = train.train_and_evaluate(config, str(tmp_path))
  assert result.step == 3 and result.resumed_from is None
  records = loop.read_metrics(str(tmp_path))
  assert [r["step"] for r in records] == [1, 2, 3]
  for r in records:
    assert all(math.isfinite(v) for v in r.values()), r
    assert r["steps_per_s"] > 0
  loss_keys = {
    "dcgan": ("d_loss", "g_loss"),
    "began": ("d_loss", "g_loss", "k"),
    "featnet": ("loss", "cross_entropy"),
  }[model]
  assert all(k in records[0] for k in loss_keys)
  assert os.path.isdir(tmp_path / "checkpoints" / "3")
  grid = tmp_path / "samples" / "step_000003.png"
  assert grid.exists() == (model != "featnet")


def test_vae_loss_goes_down(tmp_path):
  # The decoder starts with near-constant outputs (std ~0.006): the loss sits on
  # a plateau for ~80 steps before it falls, hence 150 (tiny, fast) steps.
  config = vae_config(num_steps=150, checkpoint_every=150)
  train.train_and_evaluate(config, str(tmp_path))
  losses = [r["loss"] for r in loop.read_metrics(str(tmp_path))]
  assert len(losses) == 150 and all(math.isfinite(x) for x in losses)
  assert np.mean(losses[-10:]) < 0.8 * np.mean(losses[:10])


def test_checkpoint_restore_is_bitwise(tmp_path):
  config = tiny_config("dcgan", num_steps=2, checkpoint_every=2)
  result = train.train_and_evaluate(config, str(tmp_path))
  trainer, restored_config, state, meta = state_io.load_run(str(tmp_path))
  assert trainer.name == "dcgan" and meta["step"] == 2 and int(state.step) == 2
  assert restored_config.to_dict() == config.to_dict()
  assert_states_equal(result.state, state)
  # The manifest covers every array of the state.
  n_arrays = len(jax.tree.leaves(flax.serialization.to_state_dict(state)))
  assert len(meta["manifest"]) == n_arrays


def test_rejected_resume_leaves_config_json_unchanged(tmp_path):
  """A config whose state cannot restore the run's checkpoint (another width) fails
  in the API too, and the run's config.json is the one it was trained with."""
  config = tiny_config("dcgan", num_steps=1, checkpoint_every=1)
  train.train_and_evaluate(config, str(tmp_path))
  path = tmp_path / "config.json"
  before = path.read_bytes()
  wider = tiny_config("dcgan", num_steps=2, checkpoint_every=1)
  wider.generator.width = 8
  with pytest.raises(Exception):  # noqa: B017 (any failure; the point is the file)
    train.train_and_evaluate(wider, str(tmp_path))
  assert path.read_bytes() == before


def test_interrupted_run_resumes_to_the_same_state(tmp_path):
  full = tiny_config("dcgan", num_steps=10, checkpoint_every=3)
  reference = train.train_and_evaluate(full, str(tmp_path / "full"))

  part = str(tmp_path / "part")
  train.train_and_evaluate(tiny_config("dcgan", num_steps=8, checkpoint_every=3), part)
  # An interruption after step 8 but before its checkpoint: only 3 and 6 remain,
  # while metrics.jsonl holds lines up to step 8.
  shutil.rmtree(os.path.join(part, "checkpoints", "8"))
  assert [r["step"] for r in loop.read_metrics(part)][-1] == 8
  resumed = train.train_and_evaluate(full, part)
  assert resumed.resumed_from == 6 and resumed.step == 10
  assert_states_equal(reference.state, resumed.state)
  ref_log, log = loop.read_metrics(str(tmp_path / "full")), loop.read_metrics(part)
  assert [r["step"] for r in log] == list(range(1, 11))
  for a, b in zip(ref_log, log):
    assert a["d_loss"] == b["d_loss"] and a["g_loss"] == b["g_loss"]


_DATA_PARALLEL_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    assert len(jax.devices()) == 2, jax.devices()
    from cfmod_jax import train
    from tests.test_train import tiny_config
    config = tiny_config("dcgan", num_steps=3, checkpoint_every=3)
    one = train.train_and_evaluate(config, WORKDIR + "/one", devices=jax.devices()[:1])
    two = train.train_and_evaluate(config, WORKDIR + "/two")
    assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(two.state))
    assert len(two.state.g_params["stages_0"]["dense"]["kernel"].devices()) == 2
    a, b = jax.device_get(one.state), jax.device_get(two.state)
    worst = max(float(np.max(np.abs(x - y))) for x, y in zip(jax.tree.leaves(a),
                                                            jax.tree.leaves(b)))
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
      np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5)
    print("DATA_PARALLEL_OK", worst)
""")


def test_data_parallel_matches_one_device(tmp_path):
  env = dict(
    os.environ,
    XLA_FLAGS="--xla_force_host_platform_device_count=2",
    JAX_PLATFORMS="cpu",
    PYTHONPATH=ROOT,
  )
  script = f"WORKDIR = {str(tmp_path)!r}\n" + _DATA_PARALLEL_SCRIPT
  proc = subprocess.run(
    [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "DATA_PARALLEL_OK" in proc.stdout


@pytest.fixture
def no_compile(monkeypatch):
  """Fails the test if anything reaches the compiled train functions."""

  def fail(*args, **kwargs):
    raise AssertionError("compiled before the config was validated")

  monkeypatch.setattr(loop, "compiled_functions", fail)


@pytest.mark.parametrize(
  "model,field,value,match",
  [
    ("dcgan", "num_steps", -5, "num_steps must be an integer >= 1"),
    ("dcgan", "batch_size", 0, "batch_size must be an integer >= 1"),
    ("dcgan", "checkpoint_every", 0, "checkpoint_every"),
    ("dcgan", "model", "stylegan", "valid models: began, dcgan, featnet, vae"),
    ("vae", "beta", -1.0, "beta must be a number"),
    ("vae", "likelihood", "poisson", "likelihood='poisson' is unknown"),
    ("began", "gamma", 1.5, "gamma must be a number in"),
    ("dcgan", "ema_decay", 1.0, r"ema_decay must be a number in \[0.0, 1.0\)"),
    ("dcgan", "r1_gamma", -1.0, "r1_gamma must be a number in"),
    ("dcgan", "r1_batch", 0, "r1_batch must be an integer >= 1"),
    ("began", "mode_seeking", -0.1, "mode_seeking must be a number in"),
    ("began", "ema_decay", 1.0, r"ema_decay must be a number in \[0.0, 1.0\)"),
    ("began", "feature_matching", -1.0, "feature_matching must be a number in"),
  ],
)
def test_bad_config_raises_before_compiling(model, field, value, match, tmp_path, no_compile):
  config = tiny_config(model)
  config[field] = value
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


def test_nested_bad_field_and_device_multiple(tmp_path, no_compile):
  config = tiny_config("dcgan")
  config.optimizer.learning_rate = float("nan")
  with pytest.raises(ValueError, match="optimizer.learning_rate"):
    train.train_and_evaluate(config, str(tmp_path))
  config = tiny_config("dcgan")
  config.generator.width = 0
  with pytest.raises(ValueError, match="generator.width"):
    train.validate_config(config)
  config = tiny_config("dcgan")
  config.batch_size = 3
  with pytest.raises(ValueError, match="multiple of the number of devices"):
    train.train_and_evaluate(config, str(tmp_path), devices=[jax.devices()[0]] * 2)


def test_cli_reports_bad_config(tmp_path):
  proc = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.train",
      "--config",
      "experiments/configs/vae.py",
      "--workdir",
      str(tmp_path),
      "--config.num_steps=-3",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu"),
  )
  assert proc.returncode != 0
  assert "config.num_steps must be an integer >= 1, got -3" in proc.stderr
  assert not os.path.exists(tmp_path / "checkpoints")


def vae_config(**fields):
  """The VAE config of test_vae_loss_goes_down (one compilation for all)."""
  config = tiny_config("vae", **fields)
  config.batch_size = 8
  config.optimizer.learning_rate = 3e-3
  return config


def test_generator_loads_from_trainer_checkpoint(tmp_path):
  config = vae_config(num_steps=2, checkpoint_every=1)
  result = train.train_and_evaluate(config, str(tmp_path))
  gen = checkpoints.load_generator(str(tmp_path))
  expected = jax.device_get(train.get_trainer("vae").export_variables(result.state))
  assert_states_equal(expected, gen.variables)
  assert gen.name.endswith("@2")
  z = gen.sample_latents(jax.random.key(0), 3)
  np.testing.assert_allclose(
    np.asarray(gen(z)),
    np.asarray(train.get_trainer("vae").sample(config, result.state, z)),
    atol=1e-6,
  )
  # A step folder loads that step.
  assert checkpoints.load_generator(str(tmp_path / "checkpoints" / "1")).name.endswith("@1")


@pytest.mark.parametrize("batch_norm", [True, False])
def test_began_generator_batch_norm_exports_running_statistics(batch_norm, tmp_path):
  """The shipped BEGAN config has BatchNorm and skip connections in G (trained on
  batch statistics, exported with running averages); the paper's plain G (no
  skips here) exports params only."""
  config = tiny_config("began", num_steps=2, checkpoint_every=2)
  config.generator.batch_norm = batch_norm
  config.generator.skip = batch_norm
  result = train.train_and_evaluate(config, str(tmp_path))
  gen = checkpoints.load_generator(str(tmp_path))
  assert ("batch_stats" in gen.variables) == batch_norm
  assert gen.module.batch_norm == batch_norm and gen.module.skip == batch_norm
  conv1 = gen.variables["params"]["stages_2"]["conv1"]["kernel"]
  assert conv1.shape[2] == (8 if batch_norm else 4)  # input: block + upsampled h0
  if batch_norm:
    means = [
      v
      for k, v in jax.tree_util.tree_leaves_with_path(gen.variables["batch_stats"])
      if jax.tree_util.keystr(k).endswith("['mean']")
    ]
    assert means and all(float(np.abs(m).max()) > 0 for m in means)  # updated from 0
  z = gen.sample_latents(jax.random.key(0), 3)
  np.testing.assert_allclose(
    np.asarray(gen(z)),
    np.asarray(train.get_trainer("began").sample(config, result.state, z)),
    atol=1e-6,
  )
  # Inference mode: a sample does not depend on the rest of its batch.
  np.testing.assert_allclose(np.asarray(gen(z))[:1], np.asarray(gen(z[:1])), atol=1e-5)


def test_trains_on_mocked_celeba_and_resumes_identically(tmp_path):
  """CelebA through tfds (mocked, offline): batches are functions of (data_seed,
  step), so an interrupted run ends where an uninterrupted one does."""
  import tensorflow_datasets as tfds

  from cfmod_jax.data import celeba

  data_dir = tmp_path / "tfds"
  data_dir.mkdir()
  common_fields = dict(dataset="celeba", data_dir=str(data_dir), checkpoint_every=2)
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    source = celeba.load_source(str(data_dir))
    first = celeba.celeba_batch(source, 0, 4, seed=0)
    assert first.shape == (4, 64, 64, 3) and first.dtype == np.float32
    np.testing.assert_array_equal(celeba.celeba_batch(source, 0, 4, seed=0), first)
    # Step 3 is the first batch of epoch 1 (12 // 4 = 3 batches per epoch).
    stream = celeba.celeba_batches(str(data_dir), batch_size=4, seed=0)
    for _ in range(3):
      next(stream)
    np.testing.assert_array_equal(next(stream), celeba.celeba_batch(source, 3, 4, seed=0))
    # The trainers' batches come from CelebA, not from the synthetic faces.
    cfg = tiny_config("dcgan", **common_fields)
    np.testing.assert_array_equal(
      data.training_images(cfg, 3)["images"], celeba.celeba_batch(source, 3, 4, seed=0)
    )
    reference = train.train_and_evaluate(
      tiny_config("dcgan", num_steps=4, **common_fields), str(tmp_path / "full")
    )
    part = str(tmp_path / "part")
    train.train_and_evaluate(tiny_config("dcgan", num_steps=2, **common_fields), part)
    resumed = train.train_and_evaluate(tiny_config("dcgan", num_steps=4, **common_fields), part)
  assert resumed.resumed_from == 2 and resumed.step == 4
  assert_states_equal(reference.state, resumed.state)


def test_celeba_config_errors(tmp_path, no_compile):
  with pytest.raises(ValueError, match="needs config.data_dir"):
    train.train_and_evaluate(tiny_config("dcgan", dataset="celeba"), str(tmp_path / "a"))
  with pytest.raises(FileNotFoundError, match="data_dir="):
    train.train_and_evaluate(
      tiny_config("dcgan", dataset="celeba", data_dir=str(tmp_path / "missing")),
      str(tmp_path / "b"),
    )
  with pytest.raises(ValueError, match="config.dataset must be one of"):
    train.train_and_evaluate(tiny_config("dcgan", dataset="mnist"), str(tmp_path / "c"))


@pytest.mark.parametrize(
  "field, value", [("seed", -1), ("data_seed", True), ("seed", 2**63), ("data_seed", 1.5)]
)
def test_seeds_are_checked_before_compiling(field, value, no_compile):
  import ml_collections

  fields = tiny_config("dcgan").to_dict()
  fields[field] = value
  with pytest.raises(ValueError, match=rf"config\.{field} must be a non-negative integer"):
    train.validate_config(ml_collections.ConfigDict(fields))
  fields[field] = 2**63 - 1  # the largest seed jax.random.key accepts
  train.validate_config(ml_collections.ConfigDict(fields))


def test_dcgan_exports_the_moving_average_of_g(tmp_path):
  """ema_decay = d: the exported G is d·ema + (1 − d)·new after every step,
  recomputed here from the states of a 1-step and a 2-step run; d = 0 exports
  the last step's G bitwise."""
  trainer = train.get_trainer("dcgan")
  states = {}
  for steps in (1, 2):
    config = tiny_config("dcgan", num_steps=steps, checkpoint_every=steps, ema_decay=0.9)
    states[steps] = train.train_and_evaluate(config, str(tmp_path / f"d{steps}")).state
  s1, s2 = jax.device_get(states[1]), jax.device_get(states[2])
  init = jax.device_get(
    jax.jit(functools.partial(trainer.create_state, config))(init_key(config.seed))
  )
  for ema_prev, g, ema in (
    (init.ema_params, s1.g_params, s1.ema_params),
    (s1.ema_params, s2.g_params, s2.ema_params),
  ):
    expected = jax.tree.map(lambda o, n: 0.9 * o + 0.1 * n, ema_prev, g)
    for x, y in zip(jax.tree.leaves(expected), jax.tree.leaves(ema)):
      np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
  # the average differs from the last step's weights, and is what gets exported
  assert not np.allclose(jax.tree.leaves(s2.ema_params)[0], jax.tree.leaves(s2.g_params)[0])
  exported = trainer.export_variables(s2)
  assert_states_equal(exported, {"params": s2.ema_params, "batch_stats": s2.ema_batch_stats})
  config = tiny_config("dcgan", num_steps=2, checkpoint_every=2, ema_decay=0.0)
  s0 = train.train_and_evaluate(config, str(tmp_path / "d0")).state
  assert_states_equal(
    trainer.export_variables(s0), {"params": s0.g_params, "batch_stats": s0.g_batch_stats}
  )


def one_step(trainer, base, state, batch, key, **fields):
  """One jitted train step from ``state`` with ``base`` plus ``fields`` (validated)."""
  import ml_collections

  config = ml_collections.ConfigDict(base.to_dict())
  for name, value in fields.items():
    config[name] = value
  trainer.validate(config)
  return jax.jit(functools.partial(trainer.train_step, config))(state, batch, key)


def test_dcgan_r1_penalty(tmp_path):
  """r1_gamma = γ adds γ/2 · mean over the first r1_batch real images of
  ‖∇ₓ Σ D(x)‖² to D's loss (D in training mode on that sub-batch): the reported
  ``r1`` equals that mean computed here from D's Jacobian, d_loss grows by exactly
  γ/2 · r1, the forward metrics are unchanged, and γ = 0 is bitwise the trainer
  without the fields."""

  trainer = train.get_trainer("dcgan")
  base = tiny_config("dcgan")
  del base["r1_gamma"], base["r1_batch"]
  batch = {k: jax.numpy.asarray(v) for k, v in data.training_images(base, 0).items()}
  key = jax.random.key(3)
  state = jax.jit(functools.partial(trainer.create_state, base))(init_key(base.seed))

  def step(**fields):
    return one_step(trainer, base, state, batch, key, **fields)

  s0, m0 = step()
  sz, mz = step(r1_gamma=0.0, r1_batch=2)
  assert_states_equal(s0, sz)
  assert float(mz["r1"]) == 0.0
  gamma = 3.0
  s1, m1 = step(r1_gamma=gamma, r1_batch=2)

  from cfmod_jax.train import dcgan

  disc = dcgan.discriminator(base)
  real = batch["images"][:2]

  def logits(x):  # [2]: per-image logits of the sub-batch (batch statistics of the two)
    out, _ = disc.apply(
      {"params": state.d_params, "batch_stats": state.d_batch_stats},
      x,
      train=True,
      mutable=["batch_stats"],
    )
    return out.reshape(-1)

  jac = jax.jacrev(logits)(real)  # [2, 2, 64, 64, 3]: d logit_i / d x_j
  grad = np.asarray(jac).sum(axis=0)  # gradient of Σ_i logit_i w.r.t. each image
  expected = np.mean(np.sum(grad.reshape(2, -1).astype(np.float64) ** 2, axis=1))
  assert expected > 0
  np.testing.assert_allclose(float(m1["r1"]), expected, rtol=1e-4)
  np.testing.assert_allclose(
    float(m1["d_loss"]) - float(m0["d_loss"]), 0.5 * gamma * expected, rtol=1e-4, atol=1e-6
  )
  for name in ("d_real", "d_fake"):
    assert float(m1[name]) == float(m0[name])
  # the penalty changes D's update (and so G's, through the updated D)
  assert not np.allclose(
    jax.tree.leaves(s1.d_params)[0], jax.tree.leaves(s0.d_params)[0], rtol=0, atol=1e-9
  )


def began_fake(base, state, z):
  """``g_params ↦ G(z)`` in training mode with ``state``'s BatchNorm statistics."""
  from cfmod_jax.train import began

  gen = began.generator(base)

  def fake_of(g_params):
    out, _ = gen.apply(
      {"params": g_params, "batch_stats": state.g_batch_stats},
      z,
      train=True,
      mutable=["batch_stats"],
    )
    return out

  return fake_of


def assert_term_moves_g_only(base, state, s0, s1, g_loss, atol):
  """``s1``'s G is one Adam step from ``state`` on ``jax.grad(g_loss)``; the extra term
  moved G (``s1``'s G differs from ``s0``'s, the step without it) and not D."""
  import optax

  from cfmod_jax.train.config import adam

  grads = jax.grad(g_loss)(state.g_params)
  upd, _ = adam(base).update(grads, state.g_opt_state, state.g_params)
  expected_g = optax.apply_updates(state.g_params, upd)
  for a, b in zip(jax.tree.leaves(s1.g_params), jax.tree.leaves(expected_g)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=atol)
  assert not np.allclose(
    jax.tree.leaves(s1.g_params)[0], jax.tree.leaves(s0.g_params)[0], rtol=0, atol=1e-9
  )
  for a, b in zip(jax.tree.leaves(s1.d_params), jax.tree.leaves(s0.d_params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-8)


def test_began_mode_seeking_and_moving_average():
  """mode_seeking = λ adds λ / (r + 1e-5) to G's loss, r = Mao et al.'s ratio of
  image to latent L1 distances over the batch's (first half, second half) pairs:
  the reported ratio equals a per-pair loop over G(z); G's update equals Adam on
  the gradient of L(G(z)) + λ / (r + 1e-5) computed here; D's update is unchanged.
  ema_decay = d exports d · init + (1 − d) · new; λ = 0, d = 0 is bitwise the
  trainer without the fields."""
  import jax.numpy as jnp

  from cfmod_jax.train import began

  trainer = train.get_trainer("began")
  base = tiny_config("began")
  for name in ("mode_seeking", "ema_decay", "feature_matching"):
    if name in base:
      del base[name]
  batch = {k: jnp.asarray(v) for k, v in data.training_images(base, 0).items()}
  key = jax.random.key(5)
  state = jax.jit(functools.partial(trainer.create_state, base))(init_key(base.seed))

  def step(**fields):
    return one_step(trainer, base, state, batch, key, **fields)

  s0, m0 = step()
  assert_states_equal(s0, step(mode_seeking=0.0, ema_decay=0.0)[0])
  for a, b in zip(
    jax.tree.leaves(trainer.export_variables(s0)["params"]), jax.tree.leaves(s0.g_params)
  ):
    assert np.array_equal(np.asarray(a), np.asarray(b))

  # the ratio, from a loop over pairs
  n, latent = base.batch_size, base.generator.latent_dim
  z = jax.random.normal(key, (n, latent), jnp.float32)
  fake_of = began_fake(base, state, z)

  def loop_ratio(images):
    h = n // 2
    terms = [
      jnp.mean(jnp.abs(images[i] - images[h + i])) / jnp.mean(jnp.abs(z[i] - z[h + i]))
      for i in range(h)
    ]
    return sum(terms) / h

  expected_ratio = float(loop_ratio(fake_of(state.g_params)))
  assert expected_ratio > 0
  np.testing.assert_allclose(float(m0["ms_ratio"]), expected_ratio, rtol=1e-5)

  lam = 0.05
  s1, m1 = step(mode_seeking=lam, ema_decay=0.5)
  disc = began.discriminator(base)

  def g_loss(g_params):
    fake = fake_of(g_params)
    return began.reconstruction_loss(disc, state.d_params, fake) + lam / (loop_ratio(fake) + 1e-5)

  assert_term_moves_g_only(base, state, s0, s1, g_loss, atol=1e-7)
  for name in ("g_loss", "loss_real", "ms_ratio"):
    assert float(m1[name]) == pytest.approx(float(m0[name]), rel=1e-6)
  # the moving average with decay 0.5, and that is what is exported
  exported = trainer.export_variables(s1)
  for name in ("params", "batch_stats"):
    for a, old, new in zip(
      jax.tree.leaves(exported[name]),
      jax.tree.leaves(getattr(state, f"g_{name}")),
      jax.tree.leaves(getattr(s1, f"g_{name}")),
    ):
      np.testing.assert_allclose(
        np.asarray(a), 0.5 * np.asarray(old) + 0.5 * np.asarray(new), rtol=1e-6, atol=1e-8
      )


def test_quality_curve_resumes_and_best_step_is_exported(tmp_path, monkeypatch):
  """Every checkpoint's FD lands in quality_curve.json (each as `load_generator`
  sees it); a second call measures nothing; export_run(step='best') exports the
  step of the lowest FD and puts the curve in the model card."""
  from cfmod_jax.lab import quality
  from cfmod_jax.train import export

  config = tiny_config("dcgan", num_steps=3, checkpoint_every=1, keep_checkpoints=5)
  train.train_and_evaluate(config, str(tmp_path))
  curve = export.quality_curve(str(tmp_path), n=16)
  assert [e["step"] for e in curve] == [1, 2, 3]
  net = quality.load_featnet()
  step2 = checkpoints.load_generator(str(tmp_path / "checkpoints" / "2"))
  assert curve[1]["fd"] == pytest.approx(quality.sample_quality(step2, net, n=16).fd, rel=1e-6)

  def fail(*args, **kwargs):
    raise AssertionError("measured again")

  monkeypatch.setattr(quality, "sample_quality", fail)
  assert export.quality_curve(str(tmp_path), n=16) == curve
  monkeypatch.undo()
  best = min(curve, key=lambda e: e["fd"])["step"]
  assert export.best_step(str(tmp_path)) == best
  meta = export.export_run(str(tmp_path), str(tmp_path / "out"), step="best", quality_samples=16)
  assert meta["step"] == best and meta["quality_curve"] == curve
  card = (tmp_path / "out" / "MODEL_CARD.md").read_text()
  assert "## Quality during training" in card and f"**{curve[best - 1]['fd']:.1f}**" in card
  assert (tmp_path / "out" / "quality_curve.png").stat().st_size > 1000
  with pytest.raises(ValueError, match="step must be None, 'best' or a checkpoint step"):
    export.export_run(str(tmp_path), str(tmp_path / "x"), step=-1)
  with pytest.raises(ValueError, match=r"steps \[7\] have no checkpoint"):
    export.quality_curve(str(tmp_path), n=16, steps=[7])


def test_began_feature_matching():
  """feature_matching = λ adds λ · [mean_j (μ_j^real − μ_j^fake)² + mean_j (σ_j^real −
  σ_j^fake)²] / mean_j var_j^real over D's encoder codes to G's loss: the reported term
  equals the same formula written with jnp.var / jnp.std on codes from the encoder
  applied on its own (its sub-tree of D's parameters); G's update equals Adam on the gradient of L(G(z)) + λ ·
  that term computed here; D's update and the other metrics are unchanged; λ = 0 is
  bitwise the trainer without the field."""
  import jax.numpy as jnp

  from cfmod_jax.models.began import BEGANEncoder
  from cfmod_jax.train import began

  trainer = train.get_trainer("began")
  base = tiny_config("began")
  if "feature_matching" in base:
    del base["feature_matching"]
  batch = {k: jnp.asarray(v) for k, v in data.training_images(base, 0).items()}
  key = jax.random.key(7)
  state = jax.jit(functools.partial(trainer.create_state, base))(init_key(base.seed))

  def step(**fields):
    return one_step(trainer, base, state, batch, key, **fields)

  assert_states_equal(step()[0], step(feature_matching=0.0)[0])
  # from a state with Adam history, so that G's update depends on the gradient's
  # size and not only on its sign (Adam's first step is ~lr · sign(g))
  state = step()[0]
  s0, m0 = step()
  assert "feature_matching" not in m0

  z = jax.random.normal(key, (base.batch_size, base.generator.latent_dim), jnp.float32)
  disc = began.discriminator(base)
  encoder = BEGANEncoder(base.discriminator.latent_dim, base.discriminator.width)
  enc_vars = {"params": state.d_params["encoder"]}
  fake_of = began_fake(base, state, z)

  def reference_term(real_codes, fake_codes):  # jnp.var / jnp.std, not the trainer's moments
    mean_sq = jnp.mean((jnp.mean(real_codes, 0) - jnp.mean(fake_codes, 0)) ** 2)
    std_sq = jnp.mean((jnp.std(real_codes, 0) - jnp.std(fake_codes, 0)) ** 2)
    return (mean_sq + std_sq) / jnp.mean(jnp.var(real_codes, 0))

  real_codes = encoder.apply(enc_vars, batch["images"])
  lam = 0.5
  s1, m1 = step(feature_matching=lam)
  expected = float(reference_term(real_codes, encoder.apply(enc_vars, fake_of(state.g_params))))
  assert expected > 0
  np.testing.assert_allclose(float(m1["feature_matching"]), expected, rtol=1e-4)

  def g_loss(g_params):
    fake = fake_of(g_params)
    return began.reconstruction_loss(disc, state.d_params, fake) + lam * reference_term(
      real_codes, encoder.apply(enc_vars, fake)
    )

  assert_term_moves_g_only(base, state, s0, s1, g_loss, atol=1e-6)
  for name in ("d_loss", "g_loss", "loss_real", "k"):
    assert float(m1[name]) == pytest.approx(float(m0[name]), rel=1e-6)
