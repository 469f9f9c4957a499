"""Checkpoint loading: shipped generators, integrity and architecture errors."""

import gc
import json
import os
import shutil

import jax
import numpy as np
import pytest

from cfmod_jax import checkpoints
from cfmod_jax.models import init_generator
from tests.test_train import vae_config

MAX_BYTES = 5_000_000
# Minimum per-pixel std across samples (real faces: ~0.40). began-synthfaces
# varies its faces but shares one background colour (see its MODEL_CARD.md).
MIN_DIVERSITY = {"dcgan-synthfaces": 0.3, "vae-synthfaces": 0.15, "began-synthfaces": 0.05}


@pytest.mark.parametrize("name", checkpoints.SHIPPED_GENERATORS)
def test_shipped_generator_loads_and_generates(name):
  gen = checkpoints.load_generator(name)
  assert gen.name == name and gen.dataset == "synthfaces"
  folder = os.path.join(checkpoints.WEIGHTS_DIR, name)
  total = sum(
    os.path.getsize(os.path.join(folder, f))
    for f in os.listdir(folder)
    if f != "samples.png" and f != "MODEL_CARD.md"
  )
  assert total <= MAX_BYTES
  for f in ("MODEL_CARD.md", "samples.png"):
    assert os.path.isfile(os.path.join(folder, f))
  images = np.asarray(gen(gen.sample_latents(jax.random.key(0), 16)))
  assert images.shape == (16, 64, 64, 3) and images.dtype == np.float32
  assert np.all(np.isfinite(images)) and images.min() >= -1 and images.max() <= 1
  # Trained: images have the faces' contrast (untrained ones are flat grey) and
  # samples differ from each other (the old, collapsed BEGAN had 0.020).
  assert images.max() - images.min() > 1.0
  assert np.std(images, axis=0).mean() > MIN_DIVERSITY[name]
  meta = checkpoints.read_meta(folder)
  assert meta["quality"]["fd"] > meta["quality"]["floor"] > 0


def test_unknown_name_lists_valid_names():
  with pytest.raises(
    checkpoints.CheckpointError,
    match="valid names: dcgan-synthfaces, vae-synthfaces, began-synthfaces",
  ):
    checkpoints.load_generator("stylegan-ffhq")


@pytest.fixture
def dcgan_copy(tmp_path):
  path = tmp_path / "dcgan"
  shutil.copytree(os.path.join(checkpoints.WEIGHTS_DIR, "dcgan-synthfaces"), path)
  return path


def test_copy_loads_identically(dcgan_copy):
  a, b = checkpoints.load_generator(str(dcgan_copy)), checkpoints.load_generator("dcgan-synthfaces")
  for x, y in zip(jax.tree.leaves(a.variables), jax.tree.leaves(b.variables)):
    assert np.array_equal(x, y)


def test_truncated_checkpoint_is_reported(dcgan_copy):
  data = dcgan_copy / checkpoints.DATA_FILE
  blob = data.read_bytes()
  data.write_bytes(blob[: len(blob) // 2])
  with pytest.raises(checkpoints.CheckpointError, match="truncated"):
    checkpoints.load_generator(str(dcgan_copy))


def test_corrupted_checkpoint_is_reported(dcgan_copy):
  data = dcgan_copy / checkpoints.DATA_FILE
  blob = bytearray(data.read_bytes())
  blob[len(blob) // 2] ^= 0xFF
  data.write_bytes(bytes(blob))
  with pytest.raises(checkpoints.CheckpointError, match="corrupted: its sha256 differs"):
    checkpoints.load_generator(str(dcgan_copy))


def test_corrupted_array_is_named_even_with_a_consistent_file_hash(dcgan_copy):
  # Someone "fixes" the file hash: the per-array manifest still catches the array.
  data = dcgan_copy / checkpoints.DATA_FILE
  blob = bytearray(data.read_bytes())
  blob[-10] ^= 0x01  # inside the last array's bytes
  data.write_bytes(bytes(blob))
  meta = json.loads((dcgan_copy / checkpoints.META_FILE).read_text())
  import hashlib

  meta["file_sha256"] = hashlib.sha256(bytes(blob)).hexdigest()
  (dcgan_copy / checkpoints.META_FILE).write_text(json.dumps(meta))
  with pytest.raises(checkpoints.CheckpointError, match=r"sha256 manifest: .*\(sha256 differs\)"):
    checkpoints.load_generator(str(dcgan_copy))


def test_missing_or_broken_json_is_reported(dcgan_copy):
  meta_path = dcgan_copy / checkpoints.META_FILE
  meta_path.write_text(meta_path.read_text()[:50])
  with pytest.raises(checkpoints.CheckpointError, match="unreadable"):
    checkpoints.load_generator(str(dcgan_copy))
  meta_path.unlink()
  with pytest.raises(checkpoints.CheckpointError, match="no checkpoint.json"):
    checkpoints.load_generator(str(dcgan_copy))


def test_architecture_mismatch_names_the_parameters(dcgan_copy):
  meta_path = dcgan_copy / checkpoints.META_FILE
  meta = json.loads(meta_path.read_text())
  meta["kwargs"]["width"] = meta["kwargs"]["width"] * 2
  meta_path.write_text(json.dumps(meta))
  with pytest.raises(checkpoints.ArchitectureMismatchError) as err:
    checkpoints.load_generator(str(dcgan_copy))
  msg = str(err.value)
  assert "wrong shape" in msg and "params/stages_0/dense/kernel" in msg
  assert "params/stages_1/bn/bias (stored (128,), expected (256,))" in msg
  assert "(21 in all)" in msg  # every array but the RGB bias changes shape


def test_missing_and_unexpected_parameters_are_named(tmp_path):
  gen = init_generator("vae", seed=0, width=4, latent_dim=8)
  variables = jax.device_get(gen.variables)
  params = dict(variables["params"])
  params["extra_layer"] = {"kernel": np.zeros((2, 2), np.float32)}
  del params["stages_4"]
  checkpoints.save_variables(
    str(tmp_path),
    {"params": params},
    kind="generator",
    arch="vae",
    kwargs={"width": 4, "latent_dim": 8},
  )
  with pytest.raises(
    checkpoints.ArchitectureMismatchError,
    match=r"missing: params/stages_4/conv/bias, params/stages_4/conv/kernel; "
    r"unexpected: params/extra_layer/kernel",
  ):
    checkpoints.load_generator(str(tmp_path))


def test_featnet_folder_is_not_a_generator():
  with pytest.raises(checkpoints.CheckpointError, match="not a generator"):
    checkpoints.load_generator(os.path.join(checkpoints.WEIGHTS_DIR, "featnet-synthfaces"))


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_save_load_roundtrip(tmp_path, dtype):
  gen = init_generator("dcgan", seed=1, width=4, latent_dim=8)
  checkpoints.save_variables(
    str(tmp_path),
    gen.variables,
    kind="generator",
    arch="dcgan",
    kwargs={"width": 4, "latent_dim": 8},
    storage_dtype=dtype,
  )
  loaded = checkpoints.load_generator(str(tmp_path))
  for x, y in zip(jax.tree.leaves(gen.variables), jax.tree.leaves(loaded.variables)):
    assert y.dtype == np.float32
    if dtype == "float32":
      assert np.array_equal(x, y)
    else:
      np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-4)
      assert not np.array_equal(x, y) or np.all(x == 0) or np.all(x == 1)


# orbax's reader threads also report the broken file as unraisable exceptions.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_corrupted_trainer_checkpoint_is_reported(tmp_path):
  from cfmod_jax import train
  from cfmod_jax.train.export import export_run

  train.train_and_evaluate(vae_config(num_steps=1, checkpoint_every=1), str(tmp_path))
  gen = checkpoints.load_generator(str(tmp_path))  # intact: loads, trained on synthfaces
  assert gen.dataset == "synthfaces"
  # Its export records the dataset in checkpoint.json, and the loaded copy has it.
  out = str(tmp_path.parent / f"{tmp_path.name}-export")
  export_run(str(tmp_path), out, quality_samples=8)
  assert checkpoints.read_meta(out)["dataset"] == "synthfaces"
  assert checkpoints.load_generator(out).dataset == "synthfaces"
  state_dir = tmp_path / "checkpoints" / "1" / "state"
  data_files = [
    os.path.join(r, f)
    for r, _, fs in os.walk(state_dir)
    for f in fs
    if os.sep + "d" + os.sep in os.path.join(r, f)
  ]
  assert data_files
  biggest = max(data_files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)
  with pytest.raises(checkpoints.CheckpointError, match="truncated or corrupted") as err:
    checkpoints.load_generator(str(tmp_path))
  assert str(tmp_path / "checkpoints" / "1") in str(err.value)
  assert len(str(err.value)) < 1000
  del err
  gc.collect()  # let orbax's failed reads be reported inside this test


# ---- reliability: reads stay inside the folder; clear errors for broken manifests -------------
def _set_meta(folder, **fields):
  meta_path = folder / checkpoints.META_FILE
  meta = json.loads(meta_path.read_text())
  for k, v in fields.items():
    if v is None:
      del meta[k]
    else:
      meta[k] = v
  meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink"])
def test_manifest_file_outside_the_folder_is_refused(dcgan_copy, tmp_path, how, monkeypatch):
  # A byte-identical copy of the data outside the folder: following the path
  # would load successfully, so only the containment check can stop it.
  outside = tmp_path / "elsewhere"
  outside.mkdir()
  shutil.copy(dcgan_copy / checkpoints.DATA_FILE, outside / "secret.msgpack")
  name = {
    "dotdot": "../elsewhere/secret.msgpack",
    "absolute": str(outside / "secret.msgpack"),
    "symlink": "link.msgpack",
  }[how]
  if how == "symlink":
    os.symlink(outside / "secret.msgpack", dcgan_copy / "link.msgpack")
  _set_meta(dcgan_copy, file=name)
  opened = []
  real_open = open

  def spy(file, *args, **kwargs):
    opened.append(os.path.realpath(file) if isinstance(file, (str, os.PathLike)) else file)
    return real_open(file, *args, **kwargs)

  monkeypatch.setattr("builtins.open", spy)
  with pytest.raises(checkpoints.CheckpointError, match="'file' field"):
    checkpoints.load_generator(str(dcgan_copy))
  assert str(os.path.realpath(outside / "secret.msgpack")) not in opened


def test_manifest_without_file_fields_is_reported(dcgan_copy):
  for field in ("file_bytes", "file_sha256", "manifest"):
    shutil.copy(
      os.path.join(checkpoints.WEIGHTS_DIR, "dcgan-synthfaces", checkpoints.META_FILE),
      dcgan_copy / checkpoints.META_FILE,
    )
    _set_meta(dcgan_copy, **{field: None})
    with pytest.raises(checkpoints.CheckpointError, match=f"lacks the field\\(s\\) {field}"):
      checkpoints.load_generator(str(dcgan_copy))


def test_checkpoint_path_that_is_a_file_is_reported(dcgan_copy):
  path = str(dcgan_copy / checkpoints.META_FILE)
  with pytest.raises(checkpoints.CheckpointError, match="is a file; a checkpoint is a folder"):
    checkpoints.load_generator(path)
  with pytest.raises(checkpoints.CheckpointError, match="name_or_path must be"):
    checkpoints.load_generator(3)


def test_save_variables_writes_atomically(tmp_path, monkeypatch):
  """A save that dies while writing leaves the previous checkpoint loadable."""
  gen = init_generator("dcgan", seed=1, width=4, latent_dim=8)
  kw = dict(kind="generator", arch="dcgan", kwargs={"width": 4, "latent_dim": 8})
  checkpoints.save_variables(str(tmp_path), gen.variables, **kw)
  before = {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)}
  real_replace = os.replace

  def dying_replace(src, dst):
    raise KeyboardInterrupt("killed")

  monkeypatch.setattr(os, "replace", dying_replace)
  other = init_generator("dcgan", seed=2, width=4, latent_dim=8)
  with pytest.raises(KeyboardInterrupt):
    checkpoints.save_variables(str(tmp_path), other.variables, **kw)
  monkeypatch.setattr(os, "replace", real_replace)
  # Same files, same bytes: no half-written file and no leftover temporary file.
  assert {f: (tmp_path / f).read_bytes() for f in os.listdir(tmp_path)} == before
  loaded = checkpoints.load_generator(str(tmp_path))
  for x, y in zip(jax.tree.leaves(gen.variables), jax.tree.leaves(loaded.variables)):
    assert np.array_equal(x, y)


# ---- dataset metadata ----------------------------------------------------------------------------
def test_dataset_metadata_of_exported_folders(tmp_path):
  """``dataset`` in checkpoint.json (a training config's ``dataset`` is not read);
  none → None."""
  gen = init_generator("dcgan", seed=0, width=4, latent_dim=8)
  assert gen.dataset is None
  cases = [
    ({"dataset": "celeba"}, None, "celeba"),
    (None, {"model": "dcgan", "dataset": "celeba"}, None),
    ({"dataset": "my-photos"}, {"model": "dcgan"}, "my-photos"),
    (None, None, None),
  ]
  for i, (extra, config, want) in enumerate(cases):
    folder = checkpoints.save_variables(
      str(tmp_path / str(i)),
      gen.variables,
      kind="generator",
      arch="dcgan",
      kwargs={"width": 4, "latent_dim": 8},
      config=config,
      extra=extra,
    )
    assert checkpoints.load_generator(folder).dataset == want, (extra, config)
  for name in (*checkpoints.SHIPPED_GENERATORS, checkpoints.SHIPPED_FEATNET):
    assert (
      checkpoints.read_meta(os.path.join(checkpoints.WEIGHTS_DIR, name))["dataset"] == "synthfaces"
    )
  with pytest.raises(ValueError, match="dataset must be a non-empty string or None"):
    type(gen)(gen.module, gen.variables, dataset="")


def _cfmod_imports(path):
  """cfmod_jax modules imported by a file (module- and function-level)."""
  import ast

  names = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module)
      names |= {f"{node.module}.{a.name}" for a in node.names}
  return {n for n in names if n.startswith("cfmod_jax")}


def test_checkpoint_io_layers():
  """`exported` (the format) imports no model, generator or trainer; the trainers
  (all of `cfmod_jax.train` but its export) import neither `checkpoints` nor
  `quality`, so `checkpoints` can read trainer runs without an import cycle."""
  pkg = os.path.dirname(checkpoints.__file__)
  assert _cfmod_imports(os.path.join(pkg, "exported.py")) <= {
    "cfmod_jax.fileio",
    "cfmod_jax.fileio.atomic_write_bytes",
    "cfmod_jax.fileio.atomic_write_text",
  }
  for name in sorted(os.listdir(os.path.join(pkg, "train"))):
    if name.endswith(".py") and name != "export.py":
      imported = _cfmod_imports(os.path.join(pkg, "train", name))
      assert not {
        n
        for n in imported
        if n.split(".")[:2] in (["cfmod_jax", "checkpoints"], ["cfmod_jax", "quality"])
      }, name
      assert not {n for n in imported if n.startswith("cfmod_jax.train.export")}, name
  assert (
    "from cfmod_jax import checkpoints"
    not in open(os.path.join(pkg, "train", "__init__.py")).read()
  )
