"""Markdown table of the main job's metrics for one or more output folders.

  python -m experiments.summarize out/dcgan out/vae out/began > docs/results.md

Each argument is an output folder of ``experiments.analyze`` (with its
metrics.json) or a metrics JSON file itself.
"""

import json
import os

from absl import app

from experiments import _cli  # first: one line on Ctrl-C while jax imports


def metrics_path(folder_or_file: str) -> str:
  return (
    folder_or_file
    if os.path.isfile(folder_or_file)
    else os.path.join(folder_or_file, "metrics.json")
  )


def rows(folder_or_file: str) -> list[str]:
  """The table rows of one output folder or metrics file (one per site)."""
  return list(_rows(metrics_path(folder_or_file)))


def _effect(e) -> str:
  """``+0.102 [0.086, 0.122]`` for an effect dict, or – when absent."""
  if not e or e.get("value") is None:
    return "–"
  lo, hi = e.get("ci95", [float("nan")] * 2)
  return f"{e['value']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _gain(m, sign: float = 1.0) -> str:
  """Value − null mean (the direction in which the metric is good)."""
  if not m:
    return "–"
  return (
    _effect(m.get("effect_vs_null"))
    if "effect_vs_null" in m
    else (f"{sign * (m['value'] - m['null_mean']):+.3f}")
  )


def _rows(path):
  with open(path, encoding="utf-8") as f:
    r = json.load(f)
  for site, m in r["sites"].items():
    best = " **(best)**" if r.get("best_site") == site else ""
    ov, pa, ft = m["overlap"], m.get("part_agreement"), m.get("factor_transfer")
    beyond = ("yes" if m.get("beyond_untrained") else "no") if "beyond_untrained" in m else "–"
    ft_cells = (
      f"{ft['exclusivity']:.3f} | {_effect(ft.get('effect_vs_null'))} | "
      f"{_effect(ft.get('effect_vs_untrained'))}"
      if ft
      else "– | – | –"
    )
    yield (
      f"| {r['generator']} | {site}{best} | {m['k']} | {m['stability'][0]:.3f} | "
      f"{ov['value']:.3f} | {_gain(ov)} | {_effect(ov.get('effect_vs_untrained'))} | "
      f"{_gain(pa)} | {_effect((pa or {}).get('effect_vs_untrained'))} | {ft_cells} | "
      f"{beyond} |"
    )


HEADER = (
  "| model | site | K | stability | overlap ↓ | overlap gain vs null [95% CI] | "
  "gain vs untrained [95% CI] | part agreement − chance [95% CI] | "
  "vs untrained [95% CI] | factor exclusivity | − null [95% CI] | "
  "vs untrained [95% CI] | modules beyond untrained |"
)


def main(argv):
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
  print(HEADER)
  print("|" + "---|" * (HEADER.count("|") - 1))
  for row in tables:
    print(row)


if __name__ == "__main__":
  _cli.run(main, positional=True)
