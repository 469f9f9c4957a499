"""Tests for the TensorFlow-free CelebA pipeline (offline: mocked or tiny fake data),
its held-out sets, and the sample quality / export of a CelebA run."""

import functools
import importlib
import io
import json
import os

import numpy as np
import PIL.Image
import pytest
import tensorflow_datasets as tfds

from cfmod_jax.data import celeba

SLOW = "trains and exports a CelebA run on fake data"

N_TRAIN = 6
N_TEST = 8
BORDER = (255, 0, 255)  # colour outside the 140x140 centre crop
RIGHT = (0, 128, 255)  # colour of the crop's right half


def _left_colour(i):
  return (40 * i, 200 - 20 * i, 30 + 10 * i)


def _test_colour(i):
  """Left colour of test-split example i (distinct from every training colour)."""
  return (10 + 30 * i, 20, 240 - 30 * i)


def _fake_image(i, left=None):
  """218x178 image: border colour outside the crop, crop = [left colour | RIGHT]."""
  img = np.empty((218, 178, 3), np.uint8)
  img[:] = BORDER
  img[39:179, 19:89] = _left_colour(i) if left is None else left
  img[39:179, 89:159] = RIGHT
  return img


def _png(array):
  """Lossless PNG bytes (celeb_a's feature would JPEG-encode a raw array or PIL image)."""
  buf = io.BytesIO()
  PIL.Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


@pytest.fixture(scope="module")
def fake_data_dir(tmp_path_factory):
  """A real (tiny) celeb_a prepared in array_record format, written without TF."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))

  class FakeCelebA(tfds.builder_cls("celeb_a"), skip_registration=True):
    name = "celeb_a"

    def _split_generators(self, dl_manager):
      sizes = {"train": N_TRAIN, "validation": 2, "test": N_TEST}
      return {split: self._gen(n, split) for split, n in sizes.items()}

    def _gen(self, n, split):
      feats = self.info.features
      for i in range(n):
        left = _test_colour(i) if split == "test" else None
        yield (
          str(i),
          {
            "image": _png(_fake_image(i, left)),  # encoded bytes: stored as is, no TF
            "landmarks": {k: 0 for k in feats["landmarks"].keys()},
            "attributes": {k: False for k in feats["attributes"].keys()},
            "identity": {"Identity_No": i},
          },
        )

  FakeCelebA(data_dir=data_dir, file_format="array_record").download_and_prepare()
  return data_dir


def test_preprocess_maps_range_and_shape():
  images = np.zeros((3, 218, 178, 3), np.uint8)
  images[1] = 255
  images[2, :, :, 0] = 51  # 51 / 127.5 - 1 = -0.6
  out = celeba.preprocess(images)
  assert out.shape == (3, 64, 64, 3) and out.dtype == np.float32
  np.testing.assert_allclose(out[0], -1.0, atol=1e-6)
  np.testing.assert_allclose(out[1], 1.0, atol=1e-6)
  np.testing.assert_allclose(out[2, ..., 0], -0.6, atol=1e-5)
  assert celeba.preprocess(images, crop_size=100, image_size=32).shape == (3, 32, 32, 3)
  with pytest.raises(ValueError):
    celeba.preprocess(images[:, :100])


def test_real_array_record_pipeline(fake_data_dir):
  it = celeba.celeba_batches(fake_data_dir, "train", batch_size=2, seed=1, num_epochs=1)
  batches = list(it)
  assert len(batches) == N_TRAIN // 2
  seen = []
  for b in batches:
    assert b.shape == (2, 64, 64, 3) and b.dtype == np.float32
    assert b.min() >= -1.0 and b.max() <= 1.0
    # Exactly the centre crop: no border colour anywhere (an off-by-one crop
    # would put it on the outermost rows/columns), left half / right half kept.
    right = np.array(RIGHT) / 127.5 - 1
    np.testing.assert_allclose(b[:, :, 34:], np.broadcast_to(right, (2, 64, 30, 3)), atol=1e-5)
    for img in b:
      left = img[:, :30].reshape(-1, 3)
      np.testing.assert_allclose(left, np.broadcast_to(left[0], left.shape), atol=1e-5)
      seen.append(tuple(np.round((left[0] + 1) * 127.5).astype(int)))
  # One epoch visits every example once.
  assert sorted(seen) == sorted(_left_colour(i) for i in range(N_TRAIN))
  # Deterministic by seed; epochs are reshuffled; shuffle=False keeps storage order.
  again = list(celeba.celeba_batches(fake_data_dir, "train", 2, seed=1, num_epochs=1))
  np.testing.assert_array_equal(np.concatenate(again), np.concatenate(batches))
  two = list(celeba.celeba_batches(fake_data_dir, "train", 6, seed=1, num_epochs=2))
  assert len(two) == 2 and not np.array_equal(two[0], two[1])
  ordered = np.concatenate(
    list(celeba.celeba_batches(fake_data_dir, "train", 2, shuffle=False, num_epochs=1))
  )
  source = celeba.load_source(fake_data_dir, "train")
  np.testing.assert_allclose(
    ordered, celeba.preprocess(np.stack([source[i]["image"] for i in range(N_TRAIN)]))
  )
  # Remainder handling and infinite iteration.
  rem = list(celeba.celeba_batches(fake_data_dir, "train", 4, num_epochs=1, drop_remainder=False))
  assert [len(b) for b in rem] == [4, 2]
  inf = celeba.celeba_batches(fake_data_dir, "validation", 2)
  assert all(next(inf).shape == (2, 64, 64, 3) for _ in range(3))
  with pytest.raises(ValueError, match="batch_size"):
    next(celeba.celeba_batches(fake_data_dir, "validation", batch_size=3))


def test_mocked_tfds_data_source(tmp_path):
  with tfds.testing.mock_data(num_examples=10, policy=tfds.testing.MockPolicy.USE_CODE):
    batches = celeba.celeba_batches(str(tmp_path), "train", batch_size=4, seed=0)
    first, second = next(batches), next(batches)
  for b in (first, second):
    assert b.shape == (4, 64, 64, 3) and b.dtype == np.float32
    assert b.min() >= -1.0 and b.max() <= 1.0
    assert b.std() > 0.1  # random mock images, not a constant
  assert not np.array_equal(first, second)


def test_missing_data_dir_is_a_clear_error(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match="array_record") as err:
    celeba.load_source(missing)
  assert missing in str(err.value) and "data_dir" in str(err.value)

  empty = str(tmp_path)
  with pytest.raises(FileNotFoundError, match="not prepared") as err:
    next(celeba.celeba_batches(empty, "train", 4))
  msg = str(err.value)
  assert empty in msg and "download_and_prepare" in msg and "tfds build celeb_a" in msg


def test_unknown_dataset_name(tmp_path):
  with pytest.raises(ValueError, match="Unknown tfds dataset name 'celeb_b'"):
    celeba.load_source(str(tmp_path), name="celeb_b")


def test_tfrecord_prepared_dataset_is_a_clear_error(fake_data_dir, tmp_path):
  # Same metadata, but declaring the TFRecord format (tfds' default for celeb_a).
  src = os.path.join(fake_data_dir, "celeb_a", "2.1.0")
  dst = tmp_path / "celeb_a" / "2.1.0"
  dst.mkdir(parents=True)
  for fname in ("dataset_info.json", "features.json"):
    with open(os.path.join(src, fname)) as f:
      content = json.load(f)
    if fname == "dataset_info.json":
      content["fileFormat"] = "tfrecord"
    (dst / fname).write_text(json.dumps(content))
  with pytest.raises(ValueError, match="array_record") as err:
    celeba.load_source(str(tmp_path))
  assert "tfrecord" in str(err.value).lower() and str(tmp_path) in str(err.value)


def test_heldout_images_are_two_disjoint_preprocessed_test_sets(fake_data_dir):
  source = celeba.load_source(fake_data_dir, "test")
  expected = celeba.preprocess(np.stack([source[i]["image"] for i in range(N_TEST)]))
  set0 = celeba.heldout_images(fake_data_dir, 3, 0)
  set1 = celeba.heldout_images(fake_data_dir, 3, 1, batch_size=2)  # decoded in 2 batches
  assert set0.shape == (3, 64, 64, 3) and set0.dtype == np.float32
  # First n and next n examples of the 'test' split, preprocessed like training batches.
  np.testing.assert_allclose(set0, expected[:3], atol=1e-6)
  np.testing.assert_allclose(set1, expected[3:6], atol=1e-6)
  colours = [
    tuple(np.round((img[0, 0] + 1) * 127.5).astype(int)) for img in np.concatenate([set0, set1])
  ]
  assert len(set(colours)) == 6  # disjoint
  assert set(colours) <= {_test_colour(i) for i in range(N_TEST)}  # never a training image
  np.testing.assert_array_equal(celeba.heldout_images(fake_data_dir, 3, 0), set0)
  # Set 0 of a smaller n is a prefix of set 0 of a larger one.
  np.testing.assert_allclose(celeba.heldout_images(fake_data_dir, 2, 0), set0[:2], atol=1e-6)
  with pytest.raises(ValueError, match=r"n=5 .* has 8 examples.* must be <= 4, half"):
    celeba.heldout_images(fake_data_dir, 5, 0)
  with pytest.raises(ValueError, match="which must be 0 or 1"):
    celeba.heldout_images(fake_data_dir, 2, 2)


@pytest.fixture(scope="module")
def featnet():
  from cfmod_jax.lab import quality

  return quality.load_featnet()


def test_sample_quality_with_explicit_real_sets(fake_data_dir, featnet):
  import jax

  from cfmod_jax.lab import quality
  from cfmod_jax.models import init_generator

  gen = init_generator("dcgan", seed=0, width=4)
  n = 4
  real = functools.partial(celeba.heldout_images, fake_data_dir)
  q = quality.sample_quality(gen, featnet, n=n, real_images=real)
  gen_images = np.asarray(gen(gen.sample_latents(jax.random.key(0), n)))
  set0, set1 = real(n, 0), real(n, 1)
  feats0 = featnet.features(set0)
  assert q.n == n
  assert q.fd == pytest.approx(
    quality.frechet_distance(featnet.features(gen_images), feats0), rel=1e-6
  )
  assert q.floor == pytest.approx(
    quality.frechet_distance(feats0, featnet.features(set1)), rel=1e-6, abs=1e-9
  )
  assert q.fd >= 0 and q.floor >= 0
  assert quality.real_floor(featnet, n, real) == q.floor
  # A pair of arrays (the first n of each are used) gives the same numbers.
  pair = quality.sample_quality(
    gen, featnet, n=n, real_images=(np.concatenate([set0, set0[:1]]), set1)
  )
  assert pair.fd == pytest.approx(q.fd, rel=1e-9) and pair.floor == pytest.approx(
    q.floor, rel=1e-9, abs=1e-12
  )
  # More images than the source holds: a ValueError naming the argument.
  with pytest.raises(ValueError, match=r"real_images\[1\] has 3 images, fewer than n=4"):
    quality.sample_quality(gen, featnet, n=n, real_images=(set0, set1[:3]))
  with pytest.raises(
    ValueError,
    match=r"n=5 .* has 8 examples.* n \(the export's "
    r"quality_samples\) must be <= 4, half",
  ):
    quality.sample_quality(gen, featnet, n=5, real_images=real)
  with pytest.raises(ValueError, match=r"real_images\(4, 0\) must be \[N, 64, 64, 3\]"):
    quality.sample_quality(gen, featnet, n=n, real_images=lambda k, which: set0[:, :32])
  with pytest.raises(ValueError, match="real_images must be None"):
    quality.sample_quality(gen, featnet, n=n, real_images=(set0, set1, set1))
  with pytest.raises(ValueError, match="same array twice"):
    quality.sample_quality(gen, featnet, n=n, real_images=(set0, set0))


def _tiny_celeba_config(data_dir, **fields):
  """experiments/configs/dcgan.py shrunk (width 4, batch 4) to train on the fake CelebA."""
  config = importlib.import_module("experiments.configs.dcgan").get_config()
  config.update(
    dict(
      dataset="celeba",
      data_dir=data_dir,
      batch_size=4,
      num_steps=2,
      checkpoint_every=2,
      log_every=1,
      sample_every=0,
      num_samples=4,
      quality_samples=4,
    )
  )
  config.generator.width = 4
  config.discriminator.width = 4
  config.update(fields)
  return config


def test_export_of_a_celeba_run(fake_data_dir, tmp_path):
  import jax

  import cfmod_jax
  from cfmod_jax import train
  from cfmod_jax.train.export import export_run

  workdir, out = str(tmp_path / "run"), str(tmp_path / "dcgan-celeba")
  train.train_and_evaluate(_tiny_celeba_config(fake_data_dir), workdir)
  # Too few held-out examples, or the training split: clear errors, nothing written.
  with pytest.raises(ValueError, match=r"has 8 examples.*quality_samples must be <= 4, half"):
    export_run(workdir, str(tmp_path / "bad"), quality_samples=5)
  with pytest.raises(ValueError, match="heldout_split='train' is the split the trainers read"):
    export_run(workdir, str(tmp_path / "bad"), heldout_split="train")
  assert not os.path.exists(tmp_path / "bad")

  meta = export_run(workdir, out)
  with open(os.path.join(out, "checkpoint.json")) as f:
    saved = json.load(f)
  q = saved["quality"]
  assert q == meta["quality"]
  assert q["fd"] >= 0 and q["floor"] >= 0 and q["n"] == 4
  assert q["featnet"] == "featnet-synthfaces" and q["diversity_real"] > 0
  assert q["real_set"]["dataset"] == "celeb_a" and q["real_set"]["split"] == "test"
  with open(os.path.join(out, "MODEL_CARD.md")) as f:
    card = f.read()
  training_data = card.split("## Use")[0]
  assert "celeb_a" in training_data and fake_data_dir in training_data
  assert "synthetic faces" not in training_data
  assert "split 'test'" in card and "not with published FIDs" in card
  assert os.path.exists(os.path.join(out, "samples.png"))
  gen = cfmod_jax.load_generator(out)
  images = np.asarray(gen(gen.sample_latents(jax.random.key(0), 2)))
  assert images.shape == (2, 64, 64, 3) and np.isfinite(images).all()
