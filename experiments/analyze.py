"""Main job: modules of every site of a generator — metrics, figures, HTML report.

python -m experiments.analyze --generator dcgan-synthfaces --out out/default
"""

import os

from absl import app, flags, logging

from cfmod_jax import analysis
from experiments import (
  _cli,  # first: one line on Ctrl-C while jax imports
  _distributed,
)
from experiments import _specs as specs

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "generator",
  "dcgan-synthfaces",
  "Shipped name (dcgan-synthfaces, vae-synthfaces, began-synthfaces), a "
  "checkpoint folder (exported, trainer workdir, BigGAN conversion), "
  "random:<arch>[:<width>] for a random initialisation, or your own "
  "factory returning a cfmod_jax.Generator: <module>:<factory> (imported "
  "by name) or <path/to/file.py>:<factory>.",
)
flags.DEFINE_string(
  "generator_args",
  "",
  "JSON object of keyword arguments for the --generator factory (or "
  "random:<arch>'s init_generator, a BigGAN folder's truncation/classes), "
  "e.g. '{\"width\": 16}'.",
)
flags.DEFINE_list("sites", [], "Sites to analyse (default: all).")
flags.DEFINE_integer("n_pairs", 128, "Latent pairs for the elementary influence maps.")
flags.DEFINE_integer("block_pairs", 16, "Pairs per resumable block / bootstrap group.")
flags.DEFINE_float(
  "eim_target_reliability",
  None,
  "Adaptive pairs (off by default): stop the EIM sweep of a site once the split-half "
  "reliability of its EIMs (cfmod_jax.sweep.eim_reliability) reaches this value in (0, 1), "
  "e.g. 0.95; --n_pairs is then the maximum. Pairs used and the reliability trace go to "
  "metrics.json.",
)
flags.DEFINE_string(
  "k", "auto", "Number of modules, or 'auto' (silhouette rule of clustering.choose_k)."
)
flags.DEFINE_list("k_values", ["2", "3", "4", "5", "6"], "Candidates for --k=auto.")
flags.DEFINE_enum("method", "nmf", ["nmf", "kmeans"], "Clustering of channels.")
flags.DEFINE_integer("eval_pairs", 64, "Fresh pairs for module maps and metrics.")
flags.DEFINE_integer("eval_groups", 8, "Groups of the fresh pairs (bootstrap intervals).")
flags.DEFINE_integer("n_null", 24, "Random partitions for the null.")
flags.DEFINE_enum(
  "parts", "auto", ["auto", "synthfaces", "none"], "Ground-truth parts to score modules against."
)
flags.DEFINE_integer("seed", 0, "Random seed.", lower_bound=0)
flags.DEFINE_bool(
  "untrained_baseline",
  True,
  "Also analyse the same architecture with random weights (same pairs, same K) "
  "and report effect sizes against it.",
)
flags.DEFINE_enum(
  "factor_transfer",
  "auto",
  ["auto", "synthfaces", "none"],
  "Counterfactual factor transfer (feature network on the synthetic faces' "
  "factors): 'auto' when the generator was trained on them.",
)
flags.DEFINE_integer("factor_pairs", 128, "Latent pairs for the factor transfer.")
flags.DEFINE_integer("factor_null", 8, "Random partitions for the factor-transfer null.")
flags.DEFINE_integer(
  "hybrid_fd_samples", 250, "Hybrids per module for the hybrid-realism FD (0: off)."
)
flags.DEFINE_enum(
  "precision",
  "float32",
  ["float32", "tf32", "bfloat16"],
  "Arithmetic of the EIM sweep: float32, tf32 (TF32 matmuls on GPUs; float32 on CPU) or "
  "bfloat16 (bf16 suffix, float32 sums; for accelerators, slower on CPU). Error against "
  "float32: docs/gpu_check.md. Module maps, metrics and figures stay float32.",
)
flags.DEFINE_string(
  "pair_chunk",
  "32",
  "Latent pairs per step of the EIM sweep, or 'auto' (from the device's memory: larger on "
  "GPUs/TPUs).",
)
flags.DEFINE_string(
  "mask_chunk", "16", "Channels per flat batch of hybrids, or 'auto' (from the device's memory)."
)
flags.DEFINE_string("out", "out/default", "Output folder.")
flags.DEFINE_string("cache_dir", "", "Cache of finished EIM blocks (default: <out>/cache).")


def main(argv: list[str]) -> None:
  del argv
  _distributed.initialize_from_flags()
  k = None if FLAGS.k == "auto" else _int("k", FLAGS.k)
  cfg = analysis.AnalysisConfig(
    sites=tuple(FLAGS.sites) or None,
    n_pairs=FLAGS.n_pairs,
    block_pairs=FLAGS.block_pairs,
    k=k,
    k_values=tuple(_int("k_values", v) for v in FLAGS.k_values),
    method=FLAGS.method,
    eval_pairs=FLAGS.eval_pairs,
    eval_groups=FLAGS.eval_groups,
    n_null=FLAGS.n_null,
    parts=FLAGS.parts,
    seed=FLAGS.seed,
    untrained_baseline=FLAGS.untrained_baseline,
    factor_transfer=FLAGS.factor_transfer,
    factor_pairs=FLAGS.factor_pairs,
    factor_null=FLAGS.factor_null,
    hybrid_fd_samples=FLAGS.hybrid_fd_samples,
    eim_target_reliability=FLAGS.eim_target_reliability,
    precision=FLAGS.precision,
    pair_chunk=_chunk("pair_chunk"),
    mask_chunk=_chunk("mask_chunk"),
  )
  with _cli.blame("generator_args"):
    generator_args = specs.parse_generator_args(FLAGS.generator_args)
  try:
    gen = specs.generator_from_spec(FLAGS.generator, generator_args)
  except (ValueError, TypeError, OSError) as exc:  # names --generator_args if it is to blame
    message = _cli.one_line(exc)
    raise (
      _cli.flag_error("generator_args", exc)
      if message.startswith("generator_args")
      else _cli.flag_error("generator", exc)
    ) from None
  try:
    analysis.check_config(gen, cfg)
  except ValueError as exc:  # the message names the config field, which is the flag's name
    raise _cli.name_flag(
      exc, _CONFIG_FLAGS, aliases={"site": "sites", "k": "k" if k is not None else "k_values"}
    ) from None
  _cli.check_output_dir("out")
  cache_dir = FLAGS.cache_dir or os.path.join(FLAGS.out, "cache")
  if FLAGS.cache_dir:
    _cli.check_output_dir("cache_dir")
  _cli.set_interrupt_message(
    f"interrupted; finished blocks are kept in {cache_dir}, rerun the same command to resume"
  )
  result = analysis.run(gen, cfg, FLAGS.out, FLAGS.cache_dir or None)
  logging.info("wrote %s/report.html (%.0f s)", FLAGS.out, result["seconds"])


_CONFIG_FLAGS = (
  "sites",
  "n_pairs",
  "block_pairs",
  "eim_target_reliability",
  "k_values",
  "method",
  "eval_pairs",
  "eval_groups",
  "n_null",
  "parts",
  "seed",
  "factor_transfer",
  "factor_pairs",
  "factor_null",
  "hybrid_fd_samples",
  "precision",
  "pair_chunk",
  "mask_chunk",
)


def _int(name: str, value: str) -> int:
  try:
    return int(value)
  except ValueError:
    raise app.UsageError(f"--{name} must be an integer, got {value!r}") from None


def _chunk(name: str) -> int | None:
  """--pair_chunk / --mask_chunk: a positive integer, or 'auto' (None)."""
  value = getattr(FLAGS, name).strip()
  if value == "auto":
    return None
  try:
    n = int(value)
  except ValueError:
    n = 0
  if n < 1:
    raise app.UsageError(
      f"--{name} must be a positive integer or 'auto', got {getattr(FLAGS, name)!r}"
    )
  return n


if __name__ == "__main__":
  _cli.run(main)
