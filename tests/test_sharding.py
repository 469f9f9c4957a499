"""The same maps on 1 device, on several forced CPU devices, and on 2 processes."""

import os
import socket
import subprocess
import sys

import numpy as np
import pytest

SLOW = "runs the maps on forced CPU devices and on 2 processes"

WORKER = os.path.join(os.path.dirname(__file__), "workers", "sharded_maps.py")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _env(devices: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def _run(tmp_path, devices: int) -> dict:
  out = tmp_path / f"d{devices}.npz"
  subprocess.run([sys.executable, WORKER, str(out)], env=_env(devices), check=True, timeout=600)
  return dict(np.load(out))


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
  return _run(tmp_path_factory.mktemp("one"), 1)


@pytest.mark.parametrize("devices", [8, 3])
def test_forced_devices_match_one_device(tmp_path, one_device, devices):
  got = _run(tmp_path, devices)
  assert int(got["devices"]) == devices and int(one_device["devices"]) == 1
  np.testing.assert_allclose(got["maps"], one_device["maps"], rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(got["eims"], one_device["eims"], rtol=1e-5, atol=1e-8)
  assert float(one_device["maps"].max()) > 0


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_match_one_device(tmp_path, one_device):
  out = tmp_path / "mh.npz"
  addr = f"127.0.0.1:{_free_port()}"
  procs = [
    subprocess.Popen(
      [sys.executable, WORKER, str(out), addr, "2", str(i)],
      env=_env(2),
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
    )
    for i in range(2)
  ]
  logs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
  assert all(p.returncode == 0 for p in procs), logs
  got = dict(np.load(out))
  assert int(got["processes"]) == 2 and int(got["devices"]) == 4
  np.testing.assert_allclose(got["maps"], one_device["maps"], rtol=1e-5, atol=1e-8)
  np.testing.assert_allclose(got["eims"], one_device["eims"], rtol=1e-5, atol=1e-8)


def test_main_job_on_two_processes_matches_one(tmp_path):
  """Host 0 gathers and clusters; the result equals a single-process run."""
  args = [
    "-m",
    "experiments.analyze",
    "--generator",
    "random:dcgan:4",
    "--config.sites",
    "block4",
    "--config.n_pairs",
    "8",
    "--config.block_pairs",
    "4",
    "--config.eval_pairs",
    "4",
    "--config.eval_groups",
    "2",
    "--config.n_null",
    "2",
    "--config.k",
    "2",
  ]
  env = _env(1)
  subprocess.run(
    [sys.executable, *args, "--out", str(tmp_path / "one")],
    cwd=ROOT,
    env=env,
    check=True,
    timeout=600,
    capture_output=True,
  )
  addr = f"127.0.0.1:{_free_port()}"
  procs = [
    subprocess.Popen(
      [
        sys.executable,
        *args,
        "--out",
        str(tmp_path / "two"),
        "--coordinator",
        addr,
        "--num_processes",
        "2",
        "--process_id",
        str(i),
      ],
      cwd=ROOT,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT,
    )
    for i in range(2)
  ]
  logs = [p.communicate(timeout=600)[0].decode(errors="replace") for p in procs]
  assert all(p.returncode == 0 for p in procs), logs
  one = np.load(tmp_path / "one" / "block4" / "analysis.npz")
  two = np.load(tmp_path / "two" / "block4" / "analysis.npz")
  np.testing.assert_allclose(two["eims"], one["eims"], rtol=1e-5, atol=1e-9)
  np.testing.assert_array_equal(two["labels"], one["labels"])
  np.testing.assert_allclose(two["module_maps"], one["module_maps"], rtol=1e-5, atol=1e-9)
  assert (tmp_path / "two" / "report.html").exists()
