"""Convert a pytorch-pretrained-biggan state dict to cfmod_jax variables.

  python -m experiments.convert_biggan --state_dict path/to/pytorch_model.bin \
      --config biggan-deep-256 --out path/to/flax_ckpt

``--config`` is a name (biggan-deep-128/256/512) or the port's config.json. The
output folder is in cfmod_jax's exported format (variables.msgpack +
checkpoint.json, which holds the config); load it with
``cfmod_jax.models.biggan.load_biggan(path, truncation)``. Needs torch.
"""

import json

from absl import flags, logging

from cfmod_jax.models import biggan, biggan_convert
from experiments import _cli  # first: one line on Ctrl-C while jax imports

__all__ = ["main"]

FLAGS = flags.FLAGS
flags.DEFINE_string(
  "state_dict", None, "PyTorch state dict (.bin/.pt) of pytorch-pretrained-biggan."
)
flags.DEFINE_string(
  "config",
  "biggan-deep-256",
  f"One of {sorted(biggan.CONFIGS)} or a path to the port's config.json.",
)
flags.DEFINE_string(
  "out", None, "Output folder (variables.msgpack + checkpoint.json, cfmod_jax.checkpoints)."
)
flags.DEFINE_integer(
  "power_iterations",
  0,
  "Spectral-norm power iterations before folding (0 = PyTorch eval mode).",
  lower_bound=0,
)
flags.mark_flags_as_required(["state_dict", "out"])


def main(argv: list[str]) -> None:
  del argv
  _cli.check_input_file("state_dict")
  config = FLAGS.config
  with _cli.blame("config", (ValueError, TypeError, OSError, KeyError)):
    if config.endswith(".json"):
      with open(config, encoding="utf-8") as f:
        config = biggan.BigGANConfig.from_dict(json.load(f))
    elif config not in biggan.CONFIGS:
      raise ValueError(f"expected one of {sorted(biggan.CONFIGS)} or a config.json")
  _cli.check_output_dir("out")
  with _cli.blame("state_dict", (ValueError, KeyError)):
    biggan_convert.convert_file(
      FLAGS.state_dict, config, FLAGS.out, power_iterations=FLAGS.power_iterations
    )
  logging.info("wrote %s", FLAGS.out)


if __name__ == "__main__":
  _cli.run(main)
