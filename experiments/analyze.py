"""Main job: modules of every site of a generator — metrics, figures, HTML report.

  python -m experiments.analyze --generator dcgan-synthfaces --out out/default
  python -m experiments.analyze --out out/quick --config.sites=block3 --config.n_pairs=32

The analysis settings are ``--config.<field>``, the fields of
`cfmod_jax.analysis.AnalysisConfig` with its defaults (experiments/configs/analyze.py);
the flags below say what to analyse and where to write.
"""

import os

from absl import app, flags, logging

from cfmod_jax import analysis
from experiments import (
  _cli,  # first: one line on Ctrl-C while jax imports
  _distributed,
)
from experiments import _specs as specs
from experiments.configs import analyze as analyze_config

FLAGS = flags.FLAGS
_cli.define_config_file(
  "config",
  os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "analyze.py"),
  "Analysis settings: experiments/configs/analyze.py (cfmod_jax.analysis.AnalysisConfig), "
  "each overridable as --config.<field>=<value>.",
)
flags.DEFINE_string("generator", "dcgan-synthfaces", specs.GENERATOR_HELP)
flags.DEFINE_string("generator_args", "", specs.GENERATOR_ARGS_HELP)
flags.DEFINE_string("out", "out/default", "Output folder.")
flags.DEFINE_string("cache_dir", "", "Cache of finished EIM blocks (default: <out>/cache).")


def main(argv: list[str]) -> None:
  del argv
  _distributed.initialize_from_flags()
  try:
    cfg = analyze_config.analysis_config(FLAGS.config)
  except ValueError as exc:  # names --config.<field> and the form it expects
    raise app.UsageError(str(exc)) from None
  gen = specs.generator_from_flags("generator", "generator_args")
  try:
    analysis.check_config(gen, cfg)
  except ValueError as exc:  # the message names the config field
    k = "k" if cfg.k is not None else "k_values"
    raise _cli.name_config_field(exc, FLAGS.config, {"site": "sites", "k": k}) from None
  _cli.check_output_dir("out")
  cache_dir = FLAGS.cache_dir or os.path.join(FLAGS.out, "cache")
  if FLAGS.cache_dir:
    _cli.check_output_dir("cache_dir")
  _cli.set_interrupt_message(
    f"interrupted; finished blocks are kept in {cache_dir}, rerun the same command to resume"
  )
  result = analysis.run(gen, cfg, FLAGS.out, FLAGS.cache_dir or None)
  logging.info("wrote %s/report.html (%.0f s)", FLAGS.out, result["seconds"])


if __name__ == "__main__":
  _cli.run(main)
