"""The main job's outputs survive kills, are never mixed between runs, and one run
at a time writes a folder (issue 13).

Every run is the tiny analysis of `tests/workers/main_job_worker.py` in a
subprocess (a persistent JAX compilation cache keeps the reruns short); a killed
run SIGKILLs itself in one phase, then the same command is rerun and its files
are compared byte for byte with an uninterrupted run's (timings aside).
"""

import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from cfmod_jax import analysis, fileio, writer

SLOW = "kills and reruns the main job in subprocesses"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "workers", "main_job_worker.py")


def _worker_module():
  spec = importlib.util.spec_from_file_location("main_job_worker", WORKER)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def jax_cache(tmp_path_factory):
  return str(tmp_path_factory.mktemp("jax_cache"))


def _run(out, jax_cache, kill=None, seed=None):
  env = dict(
    os.environ,
    JAX_COMPILATION_CACHE_DIR=jax_cache,
    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0",
    JAX_PLATFORMS="cpu",
  )
  env.pop("CFMOD_KILL_AT", None)
  if kill:
    env["CFMOD_KILL_AT"] = kill
  cmd = [sys.executable, WORKER, str(out)] + ([str(seed)] if seed is not None else [])
  return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, jax_cache):
  out = tmp_path_factory.mktemp("reference") / "out"
  proc = _run(out, jax_cache)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return out


def _files(folder):
  """Relative path → bytes of every output file (not the cache, not the lock)."""
  out = {}
  for base, dirs, names in os.walk(folder):
    dirs[:] = [d for d in dirs if d != "cache"]
    for name in names:
      if name != fileio.LOCK_FILE:
        path = os.path.join(base, name)
        with open(path, "rb") as f:
          out[os.path.relpath(path, folder)] = f.read()
  return out


def _strip_timings(obj):
  if isinstance(obj, dict):
    return {
      k: _strip_timings(v) for k, v in obj.items() if not k.startswith("seconds") and k != "written"
    }
  if isinstance(obj, list):
    return [_strip_timings(v) for v in obj]
  return obj


def _normalised(rel, data):
  if rel.endswith(".json"):
    return _strip_timings(json.loads(data))
  if rel.endswith(".html"):
    text = re.sub(r"Ran in \d+ s", "Ran in T s", data.decode())
    return re.sub(r"<td>\d+\.\d</td></tr>", "<td>T</td></tr>", text)  # the seconds column
  return data


def _assert_readable(folder):
  """Every output present can be read whole (no truncated file under a final name)."""
  for rel, data in _files(folder).items():
    name = os.path.basename(rel)
    if name.startswith("."):  # a killed writer's temporary file: never read
      continue
    path = os.path.join(folder, rel)
    if rel.endswith(".npz"):
      with np.load(path) as z:
        for key in z.files:
          z[key]
    elif rel.endswith(".json"):
      json.loads(data)
    elif rel.endswith(".png"):
      import matplotlib.image

      assert matplotlib.image.imread(path).size > 0
    elif rel.endswith(".html"):
      assert data.rstrip().endswith(b"</html>")


def _assert_same(out, reference):
  got, want = _files(out), _files(reference)
  assert sorted(got) == sorted(want)
  for rel in want:
    assert _normalised(rel, got[rel]) == _normalised(rel, want[rel]), rel


@pytest.mark.parametrize("phase", ["sweep", "clustering", "figures", "npz"])
def test_kill_then_rerun_gives_the_uninterrupted_outputs(phase, reference, jax_cache, tmp_path):
  out = tmp_path / "out"
  killed = _run(out, jax_cache, kill=phase)
  assert killed.returncode == -9, (phase, killed.stderr[-3000:])
  _assert_readable(out)
  site = out / "block4"
  if phase == "npz":  # killed while analysis.npz was written: no file under its name
    assert not (site / "analysis.npz").exists()
    assert any(n.startswith(".analysis.npz.") for n in os.listdir(site))
  if phase == "figures":
    assert any(n.endswith(".tmp.png") for n in os.listdir(site))
  # Files an earlier run may have left in the site folder: gone after the rerun.
  site.mkdir(exist_ok=True)
  (site / "hybrids_module5.png").write_bytes(b"stale")
  (site / "stability.png").write_bytes(b"stale")
  rerun = _run(out, jax_cache)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  _assert_readable(out)
  _assert_same(out, reference)


def test_different_run_is_refused_and_leaves_the_folder_unchanged(reference):
  worker = _worker_module()
  gen, cfg = worker.tiny()
  before = _files(reference)
  with pytest.raises(
    analysis.OutputFolderError, match=re.escape(str(reference)) + r".*different run.*seed 0 vs 4"
  ):
    analysis.run(gen, dataclasses.replace(cfg, seed=4), str(reference))
  assert _files(reference) == before


def test_folder_without_manifest_is_refused(tmp_path):
  (tmp_path / "metrics.json").write_text("{}")
  with pytest.raises(analysis.OutputFolderError, match="without a run manifest"):
    writer.claim_output_folder(str(tmp_path), {"config": {"seed": 0}}, "abc")
  assert not (tmp_path / fileio.MANIFEST_FILE).exists()
  empty = tmp_path / "empty"
  empty.mkdir()
  assert writer.claim_output_folder(str(empty), {"config": {"seed": 0}}, "abc") is False
  assert writer.claim_output_folder(str(empty), {"config": {"seed": 0}}, "abc") is True
  with pytest.raises(analysis.OutputFolderError, match="generator fingerprint"):
    writer.claim_output_folder(str(empty), {"config": {"seed": 0}}, "abd")


def test_second_concurrent_run_gets_the_lock_error(reference):
  worker = _worker_module()
  gen, cfg = worker.tiny()
  before = _files(reference)
  with fileio.RunLock(reference):
    with pytest.raises(fileio.OutputLockedError, match=re.escape(str(reference))):
      analysis.run(gen, cfg, str(reference))
  assert _files(reference) == before


def test_stale_files_are_removed_only_when_output_like(tmp_path):
  for name in ("eims.png", "hybrids_module3.png", ".eims.png.x1.tmp.png", "notes.txt"):
    (tmp_path / name).write_bytes(b"x")
  removed = writer.remove_stale_files(str(tmp_path), writer.site_files(2, False, False, False))
  assert removed == [".eims.png.x1.tmp.png", "hybrids_module3.png"]
  assert sorted(os.listdir(tmp_path)) == ["eims.png", "notes.txt"]


@pytest.mark.parametrize("compress", [True, False])
def test_atomic_savez_is_readable_and_reproducible(tmp_path, compress):
  arrays = dict(a=np.arange(6.0).reshape(2, 3), b=np.array([1, 2], np.int32))
  p1 = fileio.atomic_savez(str(tmp_path / "x.npz"), compress=compress, **arrays)
  with open(p1, "rb") as f:
    first = f.read()
  time.sleep(2.1)  # zip member dates have a 2 s resolution: a clock-stamped file would differ
  fileio.atomic_savez(p1, compress=compress, **arrays)
  with open(p1, "rb") as f:
    assert f.read() == first
  with np.load(p1) as z:
    assert sorted(z.files) == ["a", "b"]
    np.testing.assert_array_equal(z["a"], arrays["a"])
    assert z["b"].dtype == np.int32


def test_check_config_rejects_bad_seed_and_generator():
  gen, cfg = _worker_module().tiny()
  with pytest.raises(ValueError, match="seed"):
    analysis.check_config(gen, dataclasses.replace(cfg, seed=-1))
  with pytest.raises(ValueError, match="gen must be a cfmod_jax.Generator"):
    analysis.check_config("dcgan", cfg)
