"""CelebA (tfds ``celeb_a``) as numpy batches, without TensorFlow.

Reading goes through ``tfds.data_source`` (random access to ``array_record``
files; records are parsed with numpy and images decoded with PIL/OpenCV), so
TensorFlow is not needed.  Nothing is ever downloaded at run time
(``download=False``).

Preprocessing (DCGAN style): the 218x178 aligned image is centre-cropped to
``crop_size`` x ``crop_size`` (default 140: rows 39..178, columns 19..158, i.e.
offsets ``(218 - 140) // 2`` and ``(178 - 140) // 2``), resized to
``image_size`` x ``image_size`` (default 64) with ``jax.image.resize``
(bilinear, antialiased), and scaled from [0, 255] to [-1, 1]: float32 NHWC.

Training reads split 'train' (`celeba_batch`, `celeba_batches`); the sample-quality
number of an exported CelebA generator compares it with two disjoint held-out
sets of the 'test' split (`heldout_images`), preprocessed the same way.

Preparing the data (once).  The random-access reader needs the dataset written
in the ``array_record`` format, whereas tfds writes ``celeb_a`` as TFRecord by
default.  The ``tfds build`` command-line tool imports TensorFlow, so use the
Python API (it needs ``importlib_resources`` installed, but not TensorFlow)::

    import tensorflow_datasets as tfds
    builder = tfds.builder("celeb_a", data_dir=DATA_DIR, file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=MANUAL_DIR))

``download_and_prepare`` fetches the five CelebA files from Google Drive; if
that fails (quota), download them by hand (``img_align_celeba.zip``,
``list_eval_partition.txt``, ``list_attr_celeba.txt``,
``list_landmarks_align_celeba.txt``, ``identity_CelebA.txt``) into
``MANUAL_DIR``, which tfds then uses instead (checksums are verified).  With
TensorFlow installed, ``tfds build celeb_a --data_dir=DATA_DIR
--file_format=array_record --manual_dir=MANUAL_DIR`` is equivalent.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow_datasets as tfds

from cfmod_jax._validate import check_positive_int

CROP_SIZE = 140
IMAGE_SIZE = 64
DATASET = "celeb_a"
TRAIN_SPLIT = "train"  # what the trainers read (`cfmod_jax.train.data.training_images`)
HELDOUT_SPLIT = "test"  # held-out real images of the sample-quality number (`heldout_images`)


def _prepare_hint(name: str, data_dir: str) -> str:
  return (
    f"Prepare it once in the array_record format, e.g. in Python:\n"
    f"  tfds.builder({name!r}, data_dir={data_dir!r}, file_format='array_record')"
    f".download_and_prepare()\n"
    f"(or, with TensorFlow installed: tfds build {name} --data_dir={data_dir} "
    f"--file_format=array_record [--manual_dir=DIR_WITH_MANUALLY_DOWNLOADED_FILES]). "
    f"See cfmod_jax/data/celeba.py for details."
  )


def load_source(data_dir: str, split: str = "train", name: str = DATASET) -> Sequence[dict]:
  """Random-access source of prepared ``name`` examples (dicts; 'image' is uint8 HWC).

  Raises ValueError for an unknown dataset name or a dataset prepared in a
  non-random-access format, FileNotFoundError if ``data_dir`` does not exist
  or holds no prepared dataset.  Never downloads.
  """
  try:
    tfds.builder_cls(name)
  except tfds.core.registered.DatasetNotFoundError:
    raise ValueError(f"Unknown tfds dataset name {name!r} (expected e.g. {DATASET!r}).") from None
  data_dir = os.fspath(data_dir)
  if not os.path.isdir(data_dir):
    raise FileNotFoundError(
      f"data_dir={data_dir!r} does not exist; it must contain the prepared "
      f"{name!r} dataset. " + _prepare_hint(name, data_dir)
    )
  try:
    return tfds.data_source(name, split=split, data_dir=data_dir, download=False)
  except Exception as err:  # diagnose below; re-raise anything else unchanged
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
      raise FileNotFoundError(
        f"Dataset {name!r} is not prepared in data_dir={data_dir!r} "
        f"(looked for {builder.data_dir}). " + _prepare_hint(name, data_dir)
      ) from err
    fmt = builder.info.file_format
    if fmt is None or fmt.value not in ("array_record", "parquet"):
      raise ValueError(
        f"Dataset {name!r} in data_dir={data_dir!r} is stored as {fmt}, which has "
        f"no random access without TensorFlow. Rebuild it into another data_dir. "
        + _prepare_hint(name, data_dir)
      ) from err
    raise


@functools.partial(jax.jit, static_argnames=("crop_size", "image_size"))
def _crop_resize(images: jax.Array, crop_size: int, image_size: int) -> jax.Array:
  _, h, w, c = images.shape
  top, left = (h - crop_size) // 2, (w - crop_size) // 2
  x = images[:, top : top + crop_size, left : left + crop_size].astype(jnp.float32)
  x = jax.image.resize(x, (x.shape[0], image_size, image_size, c), "linear", antialias=True)
  return jnp.clip(x / 127.5 - 1.0, -1.0, 1.0)


def preprocess(
  images: np.ndarray, crop_size: int = CROP_SIZE, image_size: int = IMAGE_SIZE
) -> np.ndarray:
  """uint8 [B, H, W, 3] -> float32 [B, image_size, image_size, 3] in [-1, 1].

  Centre crop ``crop_size`` (offsets ``(H - crop) // 2``, ``(W - crop) // 2``),
  antialiased bilinear resize, scale to [-1, 1].
  """
  images = np.asarray(images)
  if images.ndim != 4 or min(images.shape[1:3]) < crop_size:
    raise ValueError(f"expected [B, H, W, C] images at least {crop_size} px, got {images.shape}")
  return np.asarray(_crop_resize(images, crop_size=crop_size, image_size=image_size))


def celeba_batches(
  data_dir: str,
  split: str = "train",
  batch_size: int = 64,
  seed: int = 0,
  *,
  shuffle: bool = True,
  num_epochs: int | None = None,
  drop_remainder: bool = True,
  crop_size: int = CROP_SIZE,
  image_size: int = IMAGE_SIZE,
  name: str = DATASET,
) -> Iterator[np.ndarray]:
  """Yields float32 [batch_size, image_size, image_size, 3] batches in [-1, 1].

  Each epoch visits every example once, in the order of a permutation drawn
  from ``(seed, epoch)`` (or in storage order if not ``shuffle``).  Runs
  forever if ``num_epochs`` is None.  With ``drop_remainder=False`` the last
  batch of an epoch may be smaller.
  """
  source = load_source(data_dir, split, name)
  n = len(source)
  if n == 0 or (drop_remainder and n < batch_size):
    raise ValueError(f"split {split!r} of {name!r} has {n} examples < batch_size={batch_size}")
  epoch = 0
  while num_epochs is None or epoch < num_epochs:
    order = _epoch_order(seed, epoch, n) if shuffle else np.arange(n)
    stop = n - n % batch_size if drop_remainder else n
    for start in range(0, stop, batch_size):
      yield _gather(source, order[start : start + batch_size], crop_size, image_size)
    epoch += 1


@functools.lru_cache(maxsize=4)
def _epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  return np.random.default_rng((seed, epoch)).permutation(n)


def _gather(source, idx, crop_size, image_size) -> np.ndarray:
  images = np.stack([_image(source[int(i)]) for i in idx])
  return preprocess(images, crop_size, image_size)


def celeba_batch(
  source: Sequence[dict],
  step: int,
  batch_size: int,
  seed: int = 0,
  *,
  crop_size: int = CROP_SIZE,
  image_size: int = IMAGE_SIZE,
) -> np.ndarray:
  """Batch ``step`` of an endless shuffled stream, as a pure function of
  ``(seed, step)`` — the same batches as `celeba_batches` with
  ``drop_remainder=True`` — so a resumed training run sees exactly the data of an
  uninterrupted one. ``source`` comes from `load_source`."""
  n = len(source)
  per_epoch = n // batch_size
  if per_epoch == 0:
    raise ValueError(f"the dataset has {n} examples < batch_size={batch_size}")
  epoch, j = divmod(int(step), per_epoch)
  idx = _epoch_order(seed, epoch, n)[j * batch_size : (j + 1) * batch_size]
  return _gather(source, idx, crop_size, image_size)


def heldout_images(
  data_dir: str,
  n: int,
  which: int = 0,
  *,
  split: str = HELDOUT_SPLIT,
  batch_size: int = 250,
  crop_size: int = CROP_SIZE,
  image_size: int = IMAGE_SIZE,
  name: str = DATASET,
) -> np.ndarray:
  """Held-out real set ``which`` (0 or 1) of ``n`` images for `cfmod_jax.lab.quality`:
  float32 [n, image_size, image_size, 3] in [-1, 1], preprocessed like the
  training batches.

  The two sets are disjoint: set 0 is examples ``0 .. n-1`` of ``split`` in
  storage order, set 1 examples ``n .. 2n-1`` (deterministic for a prepared
  dataset; set 0 of a smaller ``n`` is a prefix of set 0 of a larger one).
  ``split`` defaults to 'test', which training (split 'train') never reads.
  Images are decoded ``batch_size`` at a time. Raises ValueError unless the
  split holds ``2 * n`` examples, so ``n`` must be at most half of them.
  """
  if which not in (0, 1):
    raise ValueError(f"which must be 0 or 1 (one of two disjoint held-out sets), got {which!r}")
  check_positive_int(n, "n")
  check_positive_int(batch_size, "batch_size")
  source = load_source(data_dir, split, name)
  size = len(source)
  if 2 * n > size:
    raise ValueError(
      f"n={n} held-out images per set: split {split!r} of {name!r} in "
      f"data_dir={data_dir!r} has {size} examples, and two disjoint sets of n need "
      f"{2 * n}; n (the export's quality_samples) must be <= {size // 2}, half of them"
    )
  start, stop = which * n, (which + 1) * n
  return np.concatenate(
    [
      _gather(source, range(i, min(i + batch_size, stop)), crop_size, image_size)
      for i in range(start, stop, batch_size)
    ]
  )


def _image(example: Any) -> np.ndarray:
  return np.asarray(example["image"], np.uint8)


__all__ = [
  "CROP_SIZE",
  "DATASET",
  "HELDOUT_SPLIT",
  "IMAGE_SIZE",
  "TRAIN_SPLIT",
  "celeba_batch",
  "celeba_batches",
  "heldout_images",
  "load_source",
  "preprocess",
]
