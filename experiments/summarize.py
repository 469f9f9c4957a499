"""Markdown table of the main job's metrics for one or more output folders.

  python -m experiments.summarize out/dcgan out/vae out/began > docs/results.md

Each argument is an output folder of ``experiments.analyze`` (with its
metrics.json) or a metrics JSON file itself. The table is `cfmod_jax.report`'s
(`report.markdown_rows`, `report.markdown_table`).
"""

import json
import os

from absl import app

from cfmod_jax import report
from experiments import _cli  # first: one line on Ctrl-C while jax imports


def metrics_path(folder_or_file: str) -> str:
  """The metrics JSON of an output folder (or the file itself)."""
  return (
    folder_or_file
    if os.path.isfile(folder_or_file)
    else os.path.join(folder_or_file, "metrics.json")
  )


def rows(folder_or_file: str) -> list[str]:
  """The table rows of one output folder or metrics file (one per site)."""
  with open(metrics_path(folder_or_file), encoding="utf-8") as f:
    return list(report.markdown_rows(json.load(f)))


def main(argv: list[str]) -> None:
  folders = argv[1:]
  if not folders:
    raise app.UsageError(
      "give one or more output folders of experiments.analyze (each with a metrics.json)"
    )
  for folder in folders:
    if not os.path.isfile(metrics_path(folder)):
      raise app.UsageError(
        f"{folder}: no metrics.json (not an output folder of "
        "experiments.analyze, or the run has not finished)"
      )
  tables = []
  for folder in folders:
    try:
      tables.extend(rows(folder))
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
      raise app.UsageError(
        f"{metrics_path(folder)} is not a readable metrics file of "
        f"experiments.analyze ({type(e).__name__}: {e})"
      ) from None
  print(report.markdown_table(tables))


if __name__ == "__main__":
  _cli.run(main, positional=True)
