"""Benchmark of elementary influence maps: cfmod_jax vs hook-based PyTorch vs naive JAX.

`harness` runs the measurements (each in a fresh subprocess) and writes the
outputs; `torch_dcgan` is the PyTorch port of DCGAN-64 with weights converted
from Flax and the forward-hook EIM loop; `naive` is the one-jit-call-per-channel
JAX loop. PyTorch is an optional extra (``pip install -e '.[torch]'``): it is
imported only by `cfmod_jax.bench.torch_dcgan`, never by the core package.
See ``experiments/benchmark.py`` and ``docs/benchmark/``.
"""
