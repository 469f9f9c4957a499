"""Main job: influence maps of every hidden site of a generator.

  python -m experiments.analyze --out out/default
"""

from absl import app, flags, logging

from cfmod_jax import analysis
from cfmod_jax.models import init_generator

FLAGS = flags.FLAGS
flags.DEFINE_string("arch", "dcgan", "Architecture of a randomly initialised generator.")
flags.DEFINE_integer("width", 64, "Width of the generator.")
flags.DEFINE_list("sites", [], "Sites to analyse (default: all).")
flags.DEFINE_integer("n_pairs", 128, "Latent pairs per influence map.")
flags.DEFINE_integer("seed", 0, "Random seed.")
flags.DEFINE_string("out", "out/default", "Output folder.")


def main(argv):
  del argv
  gen = init_generator(FLAGS.arch, seed=FLAGS.seed, width=FLAGS.width)
  cfg = analysis.EIMConfig(sites=FLAGS.sites or None, n_pairs=FLAGS.n_pairs, seed=FLAGS.seed)
  analysis.run(gen, cfg, FLAGS.out)
  logging.info("wrote %s", FLAGS.out)


if __name__ == "__main__":
  app.run(main)
