"""What limits cfmod_jax at each benchmark site (docs/benchmark/limits.md).

  python -m studies.site_limits --benchmark docs/benchmark/benchmark.json --out docs/benchmark

Times every piece of the minimal EIM algorithm alone at the shape the sweep runs
it (each generator layer, the linear split's deltas, the image pass) and predicts
each site's time from those rates; with --benchmark, the table puts cfmod_jax's
measured median of that run beside the prediction. ~1 minute on a 2-core CPU. See
`benchmarks.limits`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from absl import flags, logging

from experiments import _cli  # isort: skip  (first: one line on Ctrl-C while jax imports)

FLAGS = flags.FLAGS

if __name__ == "__main__":
  flags.DEFINE_string(
    "benchmark", "", "benchmark.json of experiments.benchmark (cfmod_jax's measured times)."
  )
  flags.DEFINE_string("out", "docs/benchmark", "Folder for limits.json and limits.md.")
  flags.DEFINE_integer("width", 64, "DCGAN width of the benchmark.", lower_bound=1)
  flags.DEFINE_integer("n_pairs", 64, "Latent pairs per EIM.", lower_bound=1)


def main(argv: Sequence[str]) -> None:
  del argv
  from benchmarks import limits
  from cfmod_jax.fileio import atomic_write_json, atomic_write_text

  measured, source = None, ""
  if FLAGS.benchmark:
    path = _cli.check_input_file("benchmark")
    with _cli.blame("benchmark"):
      with open(path, encoding="utf-8") as f:
        records = json.load(f)["records"]
      measured = {
        r["site"]: r["seconds"]
        for r in records
        if r["contender"] == "cfmod_jax" and r["n_pairs"] == FLAGS.n_pairs
      }
    source = f"cfmod_jax's median in {path}"
  _cli.check_output_dir("out")
  result = limits.measure(FLAGS.width, FLAGS.n_pairs, measured)
  os.makedirs(FLAGS.out, exist_ok=True)
  atomic_write_json(os.path.join(FLAGS.out, "limits.json"), result)
  text = limits.markdown(result, source)
  atomic_write_text(os.path.join(FLAGS.out, "limits.md"), text)
  logging.info("wrote %s/limits.md", FLAGS.out)
  print(text)


__all__ = ["main"]

if __name__ == "__main__":
  _cli.run(main)
