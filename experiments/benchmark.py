"""Benchmark: EIMs of every DCGAN-64 site, cfmod_jax vs the PyTorch contenders.

  python -m experiments.benchmark --out docs/benchmark
  python -m experiments.benchmark --quick --out /tmp/bench   # tiny, for tests

Defaults: N = 64 pairs, width 64, all four sites, cfmod_jax and every PyTorch
contender (hooks, batched, linear split, and both torch.compile'd; naive JAX with
``--contenders=...,naive_jax``), 3 interleaved repeats, the memory check on
(``--nomemory_check`` skips it). ``--notorch_compile`` drops the compiled contenders.
Writes ``benchmark.json``, ``benchmark.md`` and ``benchmark.png`` to ``--out``; see
`benchmarks.harness` for what is measured and how. Needs the ``torch`` extra.
"""

from absl import app, flags, logging

from experiments import _cli  # isort: skip  (first: one line on Ctrl-C while jax imports)
from benchmarks import config as bench_config
from benchmarks import harness, report

__all__ = ["config_from_flags", "main"]

FLAGS = flags.FLAGS
flags.DEFINE_integer("n_pairs", 64, "Latent pairs per EIM.", lower_bound=1)
flags.DEFINE_list("sites", list(bench_config.SITES), "Sites to benchmark.")
flags.DEFINE_integer("width", 64, "DCGAN width (64: the paper's DCGAN-64).", lower_bound=1)
flags.DEFINE_list(
  "contenders",
  list(bench_config.DEFAULT_CONTENDERS),
  f"Contenders to run, of: {', '.join(bench_config.CONTENDERS)}.",
)
flags.DEFINE_bool(
  "torch_compile", True, "Keep the torch.compile'd contenders (if listed in --contenders)."
)
flags.DEFINE_integer(
  "pair_chunk", 64, "Pairs per chunk of the torch and naive JAX contenders.", lower_bound=1
)
flags.DEFINE_integer(
  "channel_chunk", 16, "Channels per batch of torch_batched / torch_linear.", lower_bound=1
)
flags.DEFINE_integer("repeats", 3, "Interleaved timed runs per (contender, site).", lower_bound=1)
flags.DEFINE_integer("seed", 0, "Seed of the weights and the latent pairs.", lower_bound=0)
flags.DEFINE_string("out", "docs/benchmark", "Output folder.")
flags.DEFINE_bool("memory_check", True, "Compare cfmod_jax's peak memory at two N.")
flags.DEFINE_string("memory_site", "block4", "Site of the memory check.")
flags.DEFINE_list("memory_n_pairs", ["256", "2048"], "The two N of the memory check.")
flags.DEFINE_integer(
  "torch_threads",
  0,
  "torch.set_num_threads for the torch contenders (0: torch's default, the number of cores).",
  lower_bound=0,
)
flags.DEFINE_bool(
  "quick",
  False,
  "Tiny configuration for tests: width 4, N 4, sites block1,block4 unless --sites "
  "is given, every contender but the compiled ones unless --contenders is given "
  "(overrides n_pairs, width, pair_chunk, channel_chunk, memory_n_pairs, torch_threads, "
  "the matmul and bandwidth sizes).",
)


def config_from_flags() -> bench_config.BenchConfig:
  """The `BenchConfig` of the flags (``--quick`` applied)."""
  contenders = tuple(FLAGS.contenders)
  if not FLAGS.torch_compile:
    contenders = tuple(c for c in contenders if c not in bench_config.COMPILED_CONTENDERS)
  cfg = bench_config.BenchConfig(
    n_pairs=FLAGS.n_pairs,
    sites=tuple(FLAGS.sites),
    width=FLAGS.width,
    contenders=contenders,
    seed=FLAGS.seed,
    pair_chunk=FLAGS.pair_chunk,
    channel_chunk=FLAGS.channel_chunk,
    repeats=FLAGS.repeats,
    memory_check=FLAGS.memory_check,
    memory_site=FLAGS.memory_site,
    memory_n_pairs=_memory_n_pairs(),
    torch_threads=FLAGS.torch_threads,
  )
  if FLAGS.quick:  # block1 and block4 unless --sites is given
    cfg = bench_config.quick_config(
      cfg,
      sites=FLAGS.sites if FLAGS["sites"].present else bench_config.QUICK_SITES,
      contenders=contenders if FLAGS["contenders"].present else bench_config.QUICK_CONTENDERS,
    )
  return cfg


def _memory_n_pairs() -> tuple[int, ...]:
  try:
    values = tuple(int(n) for n in FLAGS.memory_n_pairs)
  except ValueError:
    values = ()
  if len(values) != 2 or min(values) < 1:
    raise app.UsageError(
      f"--memory_n_pairs={','.join(FLAGS.memory_n_pairs)}: expected two "
      "positive integers, e.g. 256,2048"
    )
  return values


def main(argv: list[str]) -> None:
  del argv
  cfg = config_from_flags()
  try:
    bench_config.check_config(cfg)
  except ValueError as exc:
    raise _cli.name_flag(
      exc,
      ("sites", "contenders", "memory_site", "n_pairs", "repeats", "channel_chunk"),
      aliases={"site": "sites", "contender": "contenders"},
    ) from None
  _cli.check_output_dir("out")
  results = harness.run_benchmark(cfg, log=logging.info)
  paths = report.write_outputs(results, FLAGS.out)
  logging.info("wrote %s", ", ".join(paths.values()))
  print(report.markdown_table(results))


if __name__ == "__main__":
  _cli.run(main)
