"""Markdown table of the main job's metrics for one or more output folders.

  python -m experiments.summarize out/dcgan out/vae out/began > docs/results.md
"""

import json
import os
import sys


def rows(folder):
  with open(os.path.join(folder, "metrics.json")) as f:
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
  print("| model | site | K | stability | overlap ↓ (null) | part agreement [95% CI] | "
        "chance (random partitions) | z (p) |")
  print("|---|---|---|---|---|---|---|---|")
  for folder in argv[1:]:
    for row in rows(folder):
      print(row)


if __name__ == "__main__":
  main(sys.argv)
