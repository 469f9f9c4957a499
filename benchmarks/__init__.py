"""Benchmark of elementary influence maps: cfmod_jax vs PyTorch (hooks, and the same
algorithms as cfmod_jax: batched masks, linear split, eager and torch.compile'd) and,
opt-in, naive JAX.

An application of cfmod_jax, not part of the installed package (run from the
repository root: ``python -m experiments.benchmark``). Modules:

* `config` — contenders, sites, record fields, `BenchConfig`;
* `workload` — the shared DCGAN-64 and latent pairs, saved and loaded with
  `cfmod_jax.checkpoints` (its exported format);
* `flops` — the work accounting: plain-algorithm and minimal FLOPs, memory traffic;
* `worker` — the long-lived process of one (contender, site) (``python -m
  benchmarks.worker --serve``) and one-shot measurements (``--task``);
* `harness` — runs every measurement, interleaved (`run_benchmark`), and derives the
  floors and targets;
* `report` — writes ``benchmark.json``, ``.md`` and ``.png``;
* `torch_dcgan` — the PyTorch port of DCGAN-64 with weights converted from Flax
  and the forward-hook EIM loop (``torch_hooks``); `torch_fast` — BatchNorm folded,
  the batched-mask and linear-split algorithms (``torch_batched``, ``torch_linear``
  and their ``_compiled`` versions); `naive` — the one-jit-call-per-channel JAX loop.

PyTorch (``pip install -e '.[torch]'``) is imported only by `torch_dcgan`,
`torch_fast` (and the worker's matmul peak), never by cfmod_jax. See ``docs/benchmark/``.
"""

__all__: list[str] = []  # import the submodules (torch_dcgan needs torch)
