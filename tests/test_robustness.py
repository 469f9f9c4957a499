"""Robustness of classifiers to module swaps: exact invariance for a classifier
that cannot see the swapped region, agreement with a plain-loop reference, the
experiment's outputs, and bad input."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import cfmod_jax as cf
from cfmod_jax.data import synthfaces
from cfmod_jax.lab import classifiers, plots, quality
from cfmod_jax.lab import robustness as rb

N_CLASSES = 3


# ---- a tiny generator whose channels paint disjoint image regions -------------------------
class _Project(nn.Module):
  @nn.compact
  def __call__(self, z, train=False):
    return nn.Dense(4)(z).reshape(z.shape[0], 1, 1, 4)


class _PerChannel(nn.Module):
  """A per-channel affine map and tanh: channel c at the next site depends on
  channel c here only (so channels stay separate)."""

  @nn.compact
  def __call__(self, h, train=False):
    scale = self.param("scale", nn.initializers.normal(1.0), (4,))
    bias = self.param("bias", nn.initializers.normal(0.5), (4,))
    return jnp.tanh(h * (1.0 + scale) + bias)


class _Paint(nn.Module):
  """Channel c fills one quadrant-like block of the 8×8 image: channels 0, 1 the
  left half (top, bottom), channels 2, 3 the right half."""

  @nn.compact
  def __call__(self, h, train=False):
    colour = self.param("colour", nn.initializers.normal(1.0), (4, 3))
    n = h.shape[0]
    blocks = jnp.tanh(h[:, 0, 0, :, None] * colour)  # [N, 4, 3]
    tile = lambda c: jnp.broadcast_to(blocks[:, c, None, None, :], (n, 4, 4, 3))
    left = jnp.concatenate([tile(0), tile(1)], axis=1)
    right = jnp.concatenate([tile(2), tile(3)], axis=1)
    return jnp.concatenate([left, right], axis=2)  # [N, 8, 8, 3]


class HalvesGenerator(cf.StagedGenerator):
  site_names = ("proj", "feat")
  latent_shape = (5,)

  def setup(self):
    self.stages = [_Project(), _PerChannel(), _Paint()]


LEFT = np.array([1, 1, 0, 0], np.float32)
RIGHT = 1 - LEFT


@pytest.fixture(scope="module")
def halves():
  module = HalvesGenerator()
  return cf.Generator(module, module.init(jax.random.key(0), jnp.zeros((1, 5))), name="halves")


def _half_classifier(side: str, seed: int = 1) -> classifiers.Classifier:
  """A linear classifier of the pixels of one half of the 8×8 image."""
  w = jax.random.normal(jax.random.key(seed), (4 * 8 * 3, N_CLASSES)) * 2.0
  sl = slice(0, 4) if side == "left" else slice(4, 8)
  apply = lambda p, x: x[:, :, sl, :].reshape(x.shape[0], -1) @ p
  return classifiers.Classifier(apply, w, f"{side}-half")


@pytest.fixture(scope="module")
def pairs(halves):
  k1, k2 = jax.random.split(jax.random.key(3))
  return halves.sample_latents(k1, 40), halves.sample_latents(k2, 40)


def _reference(gen, clf, site, mask, z1, z2):
  """Plain loop over pairs: one image at a time, softmax in numpy."""

  def probs(img):
    logits = np.asarray(clf.apply(clf.params, jnp.asarray(img)[None]), np.float64)[0]
    e = np.exp(logits - logits.max())
    return e / e.sum()

  kept, shifts, changes = [], [], []
  for n in range(z1.shape[0]):
    a1 = np.asarray(gen.run_prefix(site, z1[n : n + 1]))
    a2 = np.asarray(gen.run_prefix(site, z2[n : n + 1]))
    p_orig = probs(np.asarray(gen(z1[n : n + 1]))[0])
    hyb = np.asarray(gen.run_suffix(site, a1 * (1 - mask) + a2 * mask, z1[n : n + 1]))[0]
    p_hyb = probs(hyb)
    c1 = int(np.argmax(p_orig))
    kept.append(int(np.argmax(p_hyb)) == c1)
    shifts.append(p_hyb[c1] - p_orig[c1])
    changes.append(np.abs(hyb - np.asarray(gen(z1[n : n + 1]))[0]).mean())
  return float(np.mean(kept)), float(np.mean(shifts)), float(np.mean(changes))


@pytest.mark.parametrize("site", ["proj", "feat"])
def test_blind_classifier_is_exactly_robust(halves, pairs, site):
  z1, z2 = pairs
  left_reader = _half_classifier("left")
  effects = rb.mask_robustness(
    halves,
    left_reader,
    site,
    np.stack([RIGHT, LEFT]),
    z1,
    z2,
    names=["right", "left"],
    pair_chunk=16,
    mask_chunk=1,
  )
  right, left = effects
  assert right.name == "right" and right.n_channels == 2 and right.n_pairs == 40
  assert right.keep_rate == 1.0
  assert right.confidence_shift == 0.0 and right.confidence_shift_se == 0.0
  assert right.image_change > 0.01  # the swap does change the image (its right half)
  # Swapping what it reads changes its predictions.
  assert left.keep_rate < 0.9 and left.confidence_shift < 0


def test_matches_plain_loop_reference(halves, pairs):
  z1, z2 = pairs
  masks = np.stack([RIGHT, LEFT, np.array([0, 1, 1, 0], np.float32), np.ones(4)])
  for clf in (_half_classifier("left"), _half_classifier("right", seed=2)):
    for site in ("proj", "feat"):
      # 40 pairs in chunks of 16: the last chunk is padded; masks in chunks of 3.
      effects = rb.mask_robustness(halves, clf, site, masks, z1, z2, pair_chunk=16, mask_chunk=3)
      for mask, eff in zip(masks, effects):
        keep, shift, change = _reference(halves, clf, site, mask, z1, z2)
        assert eff.keep_rate == pytest.approx(keep, abs=1e-12)
        assert eff.confidence_shift == pytest.approx(shift, abs=1e-5)
        assert eff.image_change == pytest.approx(change, abs=1e-5)


def test_full_mask_is_the_donor(halves, pairs):
  """For an unconditional generator the full mask gives G(z2): the keep rate equals
  the share of pairs whose two samples get the same class, the donor rate is 1."""
  z1, z2 = pairs
  clf = _half_classifier("right", seed=2)
  preds = rb.pair_predictions(halves, clf, "feat", np.ones(4), z1, z2)
  assert preds.hybrid_class.shape == (1, 40) and preds.original_class.shape == (40,)
  (eff,) = rb.effects(preds, "feat", ["all"], [4])
  assert eff.keep_rate == pytest.approx(np.mean(preds.original_class == preds.donor_class))
  assert eff.donor_rate == 1.0
  assert 0 < eff.keep_rate < 1  # both outcomes occur, so the test says something


def test_plain_function_classifier(halves, pairs):
  z1, z2 = pairs
  clf = _half_classifier("left")
  fn = lambda x: clf.apply(clf.params, x)
  (a,) = rb.mask_robustness(halves, fn, "feat", LEFT, z1, z2)
  (b,) = rb.mask_robustness(halves, clf, "feat", LEFT, z1, z2)
  assert a.keep_rate == b.keep_rate
  assert a.confidence_shift == pytest.approx(b.confidence_shift, abs=1e-6)


def test_module_robustness_on_faces(small_dcgan, tmp_path):
  """The whole experiment on a small random DCGAN with the shipped hair classifier."""
  clf = classifiers.factor_classifier(quality.load_featnet(), "hair_color")
  parts = synthfaces.part_prior(n=256)
  res = rb.module_robustness(
    small_dcgan,
    clf,
    sites=["block4"],
    k=2,
    n_pairs=12,
    eim_pairs=4,
    part_maps=parts,
    part_names=synthfaces.PART_NAMES,
    pair_chunk=8,
  )
  assert res.n_classes == len(synthfaces.HAIR_PALETTE) and res.n_pairs == 12
  assert list(res.sites) == ["block4"]
  assert sum(res.original_class_counts) == 12 and 0 <= res.chance_keep_rate <= 1
  for site, s in res.sites.items():
    assert [e.name for e in s.effects] == ["module0", "module1", "all"]
    assert s.labels.shape == (small_dcgan.site_shape(site)[-1],)
    assert s.effects[-1].n_channels == s.labels.size
    assert s.effects[-1].keep_rate == pytest.approx(res.chance_keep_rate)
    assert (s.part_modules or {}).get("hair") in ("module0", "module1")
    for shares in s.part_shares.values():
      assert sum(shares.values()) == pytest.approx(1.0, abs=1e-6)
  from experiments.robustness import markdown_table
  from experiments.robustness import rows as table_rows

  rows = table_rows(res)
  assert len(rows) == 3 and sum(r.get("is_hair_module", False) for r in rows) == 1
  path = rb.write_json(res, str(tmp_path / "r.json"))
  d = json.loads(open(path).read())
  assert (
    d["sites"]["block4"]["module_sizes"]
    == np.bincount(res.sites["block4"].labels, minlength=2).tolist()
  )
  assert d["sites"]["block4"]["effects"][0]["keep_rate"] == res.sites["block4"].effects[0].keep_rate
  png = plots.plot_robustness(res, str(tmp_path / "r.png"))
  assert os.path.getsize(png) > 1000
  assert markdown_table(res).count("\n") == 2 + 3 - 1


def test_module_robustness_every_site(halves):
  """Default sites (all), modules from EIMs, the same evaluation pairs at each site."""
  res = rb.module_robustness(
    halves, _half_classifier("left"), k=2, n_pairs=16, eim_pairs=8, pair_chunk=8
  )
  assert list(res.sites) == ["proj", "feat"] and res.n_classes == N_CLASSES
  alls = [s.effects[-1] for s in res.sites.values()]
  assert alls[0].keep_rate == alls[1].keep_rate == pytest.approx(res.chance_keep_rate)
  for s in res.sites.values():
    assert s.part_shares is None and (s.part_modules or {}).get("hair") is None
    assert s.labels.shape == (4,) and set(s.labels) <= {0, 1}


def test_bad_input(halves, pairs):
  z1, z2 = pairs
  vector = classifiers.Classifier(lambda p, x: x.reshape(x.shape[0], -1).sum(1), None, "vector")
  with pytest.raises(ValueError, match=r"must return logits \[N, n_classes\].*returned \(2,\)"):
    rb.mask_robustness(halves, vector, "feat", LEFT, z1, z2)
  one_class = classifiers.Classifier(lambda p, x: x[:, :1, 0, 0], None, "one")
  with pytest.raises(ValueError, match=r"n_classes ≥ 2.*returned \(2, 1\)"):
    rb.mask_robustness(halves, one_class, "feat", LEFT, z1, z2)
  wrong_batch = classifiers.Classifier(lambda p, x: jnp.zeros((1, 3)), None, "batch")
  with pytest.raises(ValueError, match=r"returned \(1, 3\)"):
    rb.mask_robustness(halves, wrong_batch, "feat", LEFT, z1, z2)
  ints = classifiers.Classifier(lambda p, x: jnp.zeros((x.shape[0], 3), jnp.int32), None, "ints")
  with pytest.raises(ValueError, match=r"float logits"):
    rb.mask_robustness(halves, ints, "feat", LEFT, z1, z2)
  featnet = classifiers.factor_classifier(quality.load_featnet())  # 64×64 input, images are 8×8
  with pytest.raises(ValueError, match=r"failed on images of shape \[N, 8, 8, 3\]"):
    rb.mask_robustness(halves, featnet, "feat", LEFT, z1, z2)
  with pytest.raises(ValueError, match=r"not a categorical factor.*hair_color"):
    classifiers.factor_classifier(quality.load_featnet(), "skin_tone")
  with pytest.raises(TypeError, match=r"function images -> logits"):
    rb.mask_robustness(halves, 3, "feat", LEFT, z1, z2)
  clf = _half_classifier("left")
  with pytest.raises(ValueError, match=r"masks must have shape"):
    rb.mask_robustness(halves, clf, "feat", np.ones(3), z1, z2)
  with pytest.raises(ValueError, match=r"site='nope'"):
    rb.module_robustness(halves, clf, sites=["nope"])
  with pytest.raises(ValueError, match=r"k=5 exceeds the 4 channels"):
    rb.module_robustness(halves, clf, k=5)
  with pytest.raises(ValueError, match=r"same number of latent codes"):
    rb.mask_robustness(halves, clf, "feat", LEFT, z1, z2[:3])
