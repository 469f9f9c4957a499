"""Markdown table of the main job's metrics for one or more output folders.

  python -m experiments.summarize out/dcgan out/vae out/began > docs/results.md

Each argument is an output folder of ``experiments.analyze`` (with its
metrics.json) or a metrics JSON file itself.
"""

from experiments import _cli  # first: one line on Ctrl-C while jax imports

import json
import os

from absl import app



def metrics_path(folder_or_file: str) -> str:
  return (folder_or_file if os.path.isfile(folder_or_file)
          else os.path.join(folder_or_file, "metrics.json"))


def rows(folder_or_file: str) -> list[str]:
  """The table rows of one output folder or metrics file (one per site)."""
  return list(_rows(metrics_path(folder_or_file)))


def _rows(path):
  with open(path, encoding="utf-8") as f:
    r = json.load(f)
  for site, m in r["sites"].items():
    pa = m.get("part_agreement")
    agree = (f"{pa['value']:.3f} [{pa['ci95'][0]:.3f}, {pa['ci95'][1]:.3f}] | "
             f"{pa['null_mean']:.3f} ± {pa['null_std']:.3f} | {pa['z']:+.1f} ({pa['p_value']:.2g})"
             if pa else "– | – | –")
    best = " **(best)**" if r.get("best_site") == site else ""
    ov = m["overlap"]
    yield (f"| {r['generator']} | {site}{best} | {m['k']} | {m['stability'][0]:.3f} | "
           f"{ov['value']:.3f} (null {ov['null_mean']:.3f}) | {agree} |")


def main(argv):
  folders = argv[1:]
  if not folders:
    raise app.UsageError("give one or more output folders of experiments.analyze "
                         "(each with a metrics.json)")
  for folder in folders:
    if not os.path.isfile(metrics_path(folder)):
      raise app.UsageError(f"{folder}: no metrics.json (not an output folder of "
                           "experiments.analyze, or the run has not finished)")
  tables = []
  for folder in folders:
    try:
      tables.extend(rows(folder))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
      raise app.UsageError(f"{metrics_path(folder)} is not a readable metrics file of "
                           f"experiments.analyze ({type(e).__name__}: {e})") from None
  print("| model | site | K | stability | overlap ↓ (null) | part agreement [95% CI] | "
        "chance (random partitions) | z (p) |")
  print("|---|---|---|---|---|---|---|---|")
  for row in tables:
    print(row)


if __name__ == "__main__":
  _cli.run(main, positional=True)
