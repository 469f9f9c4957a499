"""Benchmark: EIMs of every DCGAN-64 site, cfmod_jax vs PyTorch hooks vs naive JAX.

  python -m experiments.benchmark --out docs/benchmark
  python -m experiments.benchmark --quick --out /tmp/bench   # tiny, for tests

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
flags.DEFINE_list("contenders", list(bench_config.CONTENDERS), "Contenders to run.")
flags.DEFINE_integer(
  "pair_chunk", 64, "Pairs per forward pass (torch and naive JAX).", lower_bound=1
)
flags.DEFINE_integer("seed", 0, "Seed of the weights and the latent pairs.", lower_bound=0)
flags.DEFINE_string("out", "docs/benchmark", "Output folder.")
flags.DEFINE_bool("memory_check", True, "Compare cfmod_jax's peak memory at two N.")
flags.DEFINE_string("memory_site", "block4", "Site of the memory check.")
flags.DEFINE_list("memory_n_pairs", ["256", "2048"], "The two N of the memory check.")
flags.DEFINE_integer(
  "torch_threads",
  0,
  "torch.set_num_threads for the torch contender (0: torch's default, the number of cores).",
  lower_bound=0,
)
flags.DEFINE_bool(
  "quick",
  False,
  "Tiny configuration for tests: width 4, N 4, sites "
  "block1,block4 unless --sites is given (overrides n_pairs, width, pair_chunk, "
  "memory_n_pairs, torch_threads and the matmul size).",
)


def config_from_flags() -> bench_config.BenchConfig:
  """The `BenchConfig` of the flags (``--quick`` applied)."""
  cfg = bench_config.BenchConfig(
    n_pairs=FLAGS.n_pairs,
    sites=tuple(FLAGS.sites),
    width=FLAGS.width,
    contenders=tuple(FLAGS.contenders),
    seed=FLAGS.seed,
    pair_chunk=FLAGS.pair_chunk,
    memory_check=FLAGS.memory_check,
    memory_site=FLAGS.memory_site,
    memory_n_pairs=_memory_n_pairs(),
    torch_threads=FLAGS.torch_threads,
  )
  if FLAGS.quick:  # block1 and block4 unless --sites is given
    cfg = bench_config.quick_config(
      cfg, sites=FLAGS.sites if FLAGS["sites"].present else bench_config.QUICK_SITES
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
      ("sites", "contenders", "memory_site", "n_pairs"),
      aliases={"site": "sites", "contender": "contenders"},
    ) from None
  _cli.check_output_dir("out")
  results = harness.run_benchmark(cfg, log=logging.info)
  paths = report.write_outputs(results, FLAGS.out)
  logging.info("wrote %s", ", ".join(paths.values()))
  print(report.markdown_table(results))


if __name__ == "__main__":
  _cli.run(main)
