"""Tests for the procedural synthetic faces dataset."""

import itertools

import numpy as np
import pytest

from cfmod_jax.data import synthfaces as sf

N = 600


@pytest.fixture(scope="module")
def batch():
  return sf.generate(N, seed=5)


def _shift_or(mask, k, outside=False):
  """Dilation of bool [N, H, W] by a (2k+1)^2 square; beyond the border is ``outside``."""
  n, h, w = mask.shape
  padded = np.pad(mask, ((0, 0), (k, k), (k, k)), constant_values=outside)
  out = np.zeros_like(mask)
  for dy, dx in itertools.product(range(2 * k + 1), repeat=2):
    out |= padded[:, dy : dy + h, dx : dx + w]
  return out


def _erode(mask, k):
  """Erosion by a (2k+1)^2 square; pixels near the image border are never kept."""
  return ~_shift_or(~mask, k, outside=True)


def test_shapes_dtypes_range(batch):
  assert batch.images.shape == (N, 64, 64, 3) and batch.images.dtype == np.float32
  assert batch.parts.shape == (N, 64, 64) and batch.parts.dtype == np.int8
  assert batch.images.min() >= -1.0 and batch.images.max() <= 1.0
  assert set(np.unique(batch.parts)) == set(range(len(sf.PART_NAMES)))
  assert sf.PART_NAMES == ("background", "hair", "skin", "eyes", "mouth")
  for name, spec in sf.FACTOR_SPECS.items():
    v = batch.factors[name]
    assert v.shape[0] == N
    if spec[0] == "uniform":
      assert v.min() >= spec[1] and v.max() <= spec[2], name
    else:
      assert set(np.unique(v)) == set(range(spec[1])), name
  # Every face has all five parts, and both eyes are visible (area >= ~2 eyes).
  counts = sf.part_masks(batch.parts).sum(axis=(2, 3))  # [P, N]
  assert (counts > 0).all()
  assert counts[sf.EYES].min() >= 2 * np.pi * (1.8 * 0.9) ** 2 * 1.2 * 0.6


def test_deterministic_and_seed_dependent(batch):
  again = sf.generate(N, seed=5)
  assert again.images.tobytes() == batch.images.tobytes()
  assert again.parts.tobytes() == batch.parts.tobytes()
  other = sf.generate(N, seed=6)
  assert np.abs(other.images - batch.images).mean() > 0.1
  # A smaller n gives the prefix (per-factor random streams).
  prefix = sf.generate(10, seed=5)
  np.testing.assert_array_equal(prefix.images, batch.images[:10])
  # Chunked rendering: a prefix renders identically on its own.
  images, parts = sf.render({k: v[:10] for k, v in batch.factors.items()})
  np.testing.assert_array_equal(images, batch.images[:10])
  np.testing.assert_array_equal(parts, batch.parts[:10])


def test_iterate_batches_deterministic_per_step():
  it = sf.iterate_batches(8, seed=3)
  b0, b1 = next(it), next(it)
  assert b0.shape == (8, 64, 64, 3) and b0.dtype == np.float32
  assert not np.array_equal(b0, b1)
  resumed = next(sf.iterate_batches(8, seed=3, start_step=1))
  np.testing.assert_array_equal(resumed, b1)
  full = next(sf.iterate_batches(8, seed=3, images_only=False))
  np.testing.assert_array_equal(full.images, b0)
  assert full.parts.shape == (8, 64, 64)


def test_pixel_colours_match_part_map(batch):
  img = (batch.images + 1) / 2
  colors = sf.part_colors(batch.factors)
  bg = sf.background(batch.factors)
  # Independent re-statement of the background formula on a few samples.
  t = (np.arange(64) - 31.5) / 31.5
  for i in range(5):
    f = batch.factors
    ramp = np.broadcast_to(t[:, None] if f["bg_gradient_dir"][i] == 0 else t, (64, 64))
    expect = f["bg_color"][i] + f["bg_gradient"][i] * ramp[..., None]
    np.testing.assert_allclose(bg[i], expect, atol=1e-6)
  for part in range(len(sf.PART_NAMES)):
    # Interior: the pixel and its 8 neighbours carry the same label.
    interior = _erode(batch.parts == part, 1)
    assert interior.sum() > 100 * (part != sf.MOUTH) + 10, sf.PART_NAMES[part]
    expected = (
      bg if part == sf.BACKGROUND else np.broadcast_to(colors[part][:, None, None, :], img.shape)
    )
    np.testing.assert_allclose(
      img[interior], expected[interior], atol=1e-5, err_msg=sf.PART_NAMES[part]
    )
  # Only anti-aliased edge pixels deviate from their own part's colour.
  own = np.where((batch.parts == 0)[..., None], bg, 0.0)
  for part in range(1, 5):
    own = np.where((batch.parts == part)[..., None], colors[part][:, None, None], own)
  exact = np.abs(img - own).max(-1) < 1e-5
  assert exact.mean() > 0.93
  assert (~exact).mean() > 0.01  # soft (anti-aliased) edges exist


def _changed_value(name, values, rng):
  spec = sf.FACTOR_SPECS[name]
  if spec[0] == "categorical":
    return (values + rng.integers(1, spec[1], values.shape)) % spec[1]
  lo, hi = spec[1], spec[2]
  # Move by at least a quarter of the range, staying inside it.
  delta = rng.uniform(0.25, 0.5, values.shape) * (hi - lo)
  up = values + delta <= hi
  return np.where(up, values + delta, values - delta).astype(np.float32)


COLOUR_FACTORS = [
  "bg_color",
  "bg_gradient_dir",
  "bg_gradient",
  "skin_tone",
  "hair_color",
  "eye_color",
]
SHAPE_FACTORS = ["hair_style", "hairline", "eye_size", "eye_spacing", "mouth_shape", "mouth_width"]


@pytest.mark.parametrize("name", COLOUR_FACTORS + SHAPE_FACTORS)
def test_factor_changes_only_its_region(batch, name):
  n = 200
  base = {k: v[:n] for k, v in batch.factors.items()}
  rng = np.random.default_rng(0)
  changed = dict(base, **{name: _changed_value(name, base[name], rng)})
  img0, parts0 = batch.images[:n], batch.parts[:n]
  img1, parts1 = sf.render(changed)
  (part,) = sf.FACTOR_PARTS[name]
  region = (parts0 == part) | (parts1 == part)
  if name in COLOUR_FACTORS:
    np.testing.assert_array_equal(parts0, parts1)
  else:
    assert (parts0 != parts1).any(axis=(1, 2)).mean() > 0.9  # shapes did change
    assert not ((parts0 != parts1) & ~region).any()
  delta = np.abs(img1 - img0).max(-1)
  diff = delta > 1e-6
  # Pixels change only in the factor's part region plus a 1-px anti-aliased rim;
  # at most a faint (<= 2.5% of the range) leak reaches 2 px, where soft edges
  # of three parts meet (background under the hair cap's edge at the hairline).
  assert not (diff & ~_shift_or(region, 2)).any()
  assert (delta * ~_shift_or(region, 1)).max() <= 0.05
  # ... and they do change there, in (almost) every sample.
  assert diff.any(axis=(1, 2)).mean() > 0.95
  if name in COLOUR_FACTORS and part != sf.BACKGROUND:
    assert diff[_erode(region, 1)].all()


def test_part_geometry_matches_factors(batch):
  f, eyes = batch.factors, batch.parts == sf.EYES
  s = f["face_scale"]
  r = f["eye_size"] * s
  area = eyes.sum(axis=(1, 2))
  ratio = area / (2 * np.pi * r * 1.2 * r)  # two ellipses, radii r and 1.2 r
  assert abs(ratio.mean() - 1) < 0.05 and np.abs(ratio - 1).max() < 0.35
  # Eye centres: 2 * spacing apart, centred on the face; face centre = 31.5 + face_x.
  x = np.arange(64.0)
  centre = 31.5 + f["face_x"]
  left = eyes & (x < centre[:, None, None])
  right = eyes & (x >= centre[:, None, None])
  cx_left = (left * x).sum(axis=(1, 2)) / left.sum(axis=(1, 2))
  cx_right = (right * x).sum(axis=(1, 2)) / right.sum(axis=(1, 2))
  np.testing.assert_allclose(cx_right - cx_left, 2 * f["eye_spacing"] * s, atol=0.5)
  np.testing.assert_allclose((cx_left + cx_right) / 2, centre, atol=0.3)
  # Smiles/frowns span 2 * (width + stroke half-thickness) columns; smiles have
  # their ends higher than their middle (row anti-correlated with |dx|), frowns lower.
  mouth = batch.parts == sf.MOUTH
  shape = f["mouth_shape"]
  arc = shape != 2
  cols = mouth.any(axis=1).sum(axis=1)
  np.testing.assert_allclose(cols[arc], (2 * (f["mouth_width"] + 1) * s)[arc], atol=1.6)
  y = np.arange(64.0)[:, None]
  adx = np.abs(x - centre[:, None, None])
  m = mouth.sum(axis=(1, 2))
  mean_y, mean_adx = (mouth * y).sum(axis=(1, 2)) / m, (mouth * adx).sum(axis=(1, 2)) / m
  cov = (mouth * (y - mean_y[:, None, None]) * (adx - mean_adx[:, None, None])).sum(axis=(1, 2))
  assert (cov[shape == 0] < 0).all() and (cov[shape == 1] > 0).all()


def test_geometry_factors_move_the_face(batch):
  base = {k: v[:50] for k, v in batch.factors.items()}
  shifted = dict(base, face_x=base["face_x"] + 2.0)
  _, parts = sf.render(shifted)
  # A 2-px shift of everything: part maps equal the base ones shifted by 2 columns.
  agree = parts[:, :, 10:60] == batch.parts[:50, :, 8:58]
  assert agree.mean() > 0.999


def test_factors_sampled_independently():
  f = sf.sample_factors(20000, seed=11)
  cols = {}
  for name, v in f.items():
    if v.ndim == 2:
      cols.update({f"{name}{j}": v[:, j] for j in range(v.shape[1])})
    else:
      cols[name] = v
  names = list(cols)
  corr = np.corrcoef(np.stack([cols[k].astype(np.float64) for k in names]))
  off = corr - np.eye(len(names))
  assert np.abs(off).max() < 0.04, names[np.argmax(np.abs(off).max(0))]
  # Categorical factors: joint frequencies factorise.
  cats = [k for k, s in sf.FACTOR_SPECS.items() if s[0] == "categorical"]
  for a, b in itertools.combinations(cats, 2):
    ka, kb = sf.FACTOR_SPECS[a][1], sf.FACTOR_SPECS[b][1]
    joint = np.zeros((ka, kb))
    np.add.at(joint, (f[a], f[b]), 1.0 / len(f[a]))
    indep = joint.sum(1, keepdims=True) * joint.sum(0, keepdims=True)
    assert np.abs(joint - indep).max() < 0.012, (a, b)


def test_part_masks_and_prior(batch):
  masks = sf.part_masks(batch.parts[:7])
  assert masks.shape == (5, 7, 64, 64) and masks.dtype == bool
  np.testing.assert_array_equal(masks.sum(0), 1)
  np.testing.assert_array_equal(np.argmax(masks, 0), batch.parts[:7])
  prior = sf.part_prior(n=2000, seed=0)
  assert prior.shape == (5, 64, 64) and prior.dtype == np.float32
  np.testing.assert_allclose(prior.sum(0), 1.0, atol=1e-5)
  # Layout: corners are background, the face centre is skin, eyes sit above
  # the mouth, hair is on top of the head.
  assert prior[sf.BACKGROUND, 0, 0] > 0.99 and prior[sf.BACKGROUND, 0, 63] > 0.99
  assert prior[sf.SKIN, 36, 32] > 0.9
  eye_row = np.argmax(prior[sf.EYES].sum(1))
  mouth_row = np.argmax(prior[sf.MOUTH].sum(1))
  hair_row = np.argmax(prior[sf.HAIR].sum(1))
  assert hair_row < eye_row < mouth_row
  # The same prior estimated from a different seed agrees (it is a mean).
  other = sf.part_prior(n=2000, seed=1)
  assert np.abs(other - prior).max() < 0.1


def test_sample_grid(tmp_path):
  import matplotlib.image

  path = tmp_path / "grid.png"
  sf.save_sample_grid(str(path), n=16, seed=0, ncols=4)
  grid = matplotlib.image.imread(str(path))
  assert grid.shape[:2] == (4 * 66 - 2, 4 * 66 - 2)
  first = np.clip((sf.generate(1, seed=0).images[0] + 1) / 2, 0, 1)
  np.testing.assert_allclose(grid[:64, :64, :3], first, atol=1 / 255 + 1e-6)


def test_face_regions_merge_parts():
  regions, names = sf.face_regions(n=256)
  prior = sf.part_prior(n=256)
  assert names == ("background", "hair", "face") and regions.shape == (3, 64, 64)
  np.testing.assert_array_equal(regions[0], prior[sf.BACKGROUND])
  np.testing.assert_array_equal(regions[1], prior[sf.HAIR])
  np.testing.assert_array_equal(regions[2], prior[sf.SKIN] + prior[sf.EYES] + prior[sf.MOUTH])
  np.testing.assert_allclose(regions.sum(0), 1.0, atol=1e-5)
