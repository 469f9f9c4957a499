"""Benchmark of elementary influence maps: cfmod_jax vs hook-based PyTorch vs naive JAX.

An application of cfmod_jax, not part of the installed package (run from the
repository root: ``python -m experiments.benchmark``). Modules:

* `config` — contenders, sites, record fields, `BenchConfig`;
* `workload` — the shared DCGAN-64 and latent pairs, saved and loaded with
  `cfmod_jax.checkpoints` (its exported format);
* `flops` — the useful-FLOP accounting;
* `worker` — one measurement in a fresh process (``python -m benchmarks.worker``);
* `harness` — runs every measurement (`run_benchmark`);
* `report` — writes ``benchmark.json``, ``.md`` and ``.png``;
* `torch_dcgan` — the PyTorch port of DCGAN-64 with weights converted from Flax
  and the forward-hook EIM loop; `naive` — the one-jit-call-per-channel JAX loop.

PyTorch (``pip install -e '.[torch]'``) is imported only by `torch_dcgan` (and
the worker's matmul peak), never by cfmod_jax. See ``docs/benchmark/``.
"""

__all__: list[str] = []  # import the submodules (torch_dcgan needs torch)
