"""The main job's report: ``report.html`` (verdicts, metrics with effect sizes, column
definitions, figures) from the result dict of `cfmod_jax.analysis.run` (the content of
``metrics.json``), the verdict of a site in words (`site_sentence`), and the Markdown
table of `experiments.summarize` (`markdown_table`).

The page is a Jinja2 template, ``templates/report.html.j2`` (autoescaped), with the
column definitions in ``templates/definitions.html.j2``; this module gives it the result
dict and the few values derived from it.

Everything here reads the result dict only: no arrays, no statistics (those are in
`cfmod_jax.metrics`), no generator.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable, Iterator

import jinja2
import numpy as np

from cfmod_jax import fileio
from cfmod_jax.metrics import DEFAULT_MIN_EFFECT, PARTITION_METRICS

__all__ = [
  "MARKDOWN_HEADER",
  "markdown_rows",
  "markdown_table",
  "render_report",
  "report_files",
  "site_sentence",
  "write_report",
]

_TEMPLATES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "templates")

_NAMES = {
  "overlap": "overlap ↓",
  "in_support": "in-support share ↑",
  "part_agreement": "part agreement ↑",
}


def site_sentence(m: dict, min_effect: float = DEFAULT_MIN_EFFECT) -> str:
  """The verdict of one site in plain words (from ``metrics.json``'s site entry)."""
  v = m["verdict"]
  baseline = v["modules_distinct_beyond_untrained"] is not None
  if not v["modules_distinct_beyond_null"]:
    text = (
      "The modules are not clearly more distinct than random groups of channels "
      "of the same sizes (a gain counts only when its whole 95% interval lies above "
      f"{min_effect:g})"
      + (
        ", so not beyond the untrained network either: no evidence of learned modularity."
        if baseline
        else "."
      )
    )
  elif not baseline:
    text = (
      "The modules are more distinct than random groups of channels, but the "
      "untrained baseline was not run, and an untrained network also beats random "
      "groups: this alone is no evidence of learned modularity."
    )
  elif v["modules_distinct_beyond_untrained"]:
    text = (
      "The modules are more distinct than random groups of channels, by more than "
      "the modules of an untrained network of the same architecture are: evidence "
      "of learned modularity."
    )
  else:
    text = (
      "The modules are more distinct than random groups of channels, but not by "
      "more than the modules of an untrained network of the same architecture: "
      "no evidence of learned modularity."
    )
  if "overlap" in m:
    o = m["overlap"]
    e = o["effect_vs_null"]
    text += (
      f" Overlap gain over random groups: {e['value']:+.3f} (95% CI {e['ci95'][0]:+.3f}"
      f" to {e['ci95'][1]:+.3f})"
    )
    if "untrained" in o:
      text += f" (untrained network: {o['untrained']['effect_vs_null']['value']:+.3f})"
    text += "."
  if "part_agreement" in v:
    p = v["part_agreement"]
    if not p["beyond_null"]:
      text += " Module maps do not clearly follow the face parts beyond chance."
    elif p["evidence"] is None:
      text += " Module maps follow the face parts beyond chance."
    elif p["evidence"]:
      text += (
        " Module maps follow the ground-truth face parts beyond chance and beyond "
        "the untrained network."
      )
    else:
      text += (
        " Module maps follow the face parts beyond chance, but not beyond the untrained network."
      )
  return text


def report_files(result: dict) -> list[str]:
  """Relative paths of every figure the report shows."""
  files = []
  for site, m in result["sites"].items():
    files += [f"{site}/eims.png", f"{site}/templates.png", f"{site}/module_maps.png"]
    if "untrained" in m["overlap"]:
      files.append(f"{site}/untrained_module_maps.png")
    if result["config"]["k"] is None:
      files.append(f"{site}/stability.png")
    files += [f"{site}/hybrids_module{j}.png" for j in range(m["k"])]
    if "factor_transfer" in m:
      files.append(f"{site}/factor_transfer.png")
  return files


def _fmt(value: float, spec: str = ".3f") -> str:
  return format(value, spec)


def _fmt_or_dash(value: float | None, spec: str = ".3f") -> str:
  """Like `_fmt`, but — for a missing or non-finite value (the factor tables)."""
  return "—" if value is None or not np.isfinite(value) else format(value, spec)


@functools.cache
def _environment() -> jinja2.Environment:
  env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_TEMPLATES),
    autoescape=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
  )
  env.filters["fmt"] = _fmt
  env.filters["fmt_or_dash"] = _fmt_or_dash
  return env


def render_report(result: dict) -> str:
  """The text of ``report.html`` for ``result`` (the content of ``metrics.json``)."""
  parts = "best_site" in result
  min_effect = result["config"].get("min_effect", 0.0)
  factor_sites = {
    site: m["factor_transfer"] for site, m in result["sites"].items() if "factor_transfer" in m
  }
  return (
    _environment()
    .get_template("report.html.j2")
    .render(
      r=result,
      cfg=result["config"],
      parts=parts,
      baseline="untrained_baseline" in result,
      min_effect=min_effect,
      metrics=[(n, _NAMES[n]) for n in PARTITION_METRICS if n != "part_agreement" or parts],
      sentences={site: site_sentence(m, min_effect) for site, m in result["sites"].items()},
      factor_sites=factor_sites,
      hybrid_realism={
        site: ft["hybrid_realism"] for site, ft in factor_sites.items() if "hybrid_realism" in ft
      },
    )
  )


def write_report(result: dict, out_dir: str) -> str:
  """Writes ``<out_dir>/report.html`` (verdicts, metrics with effect sizes, definitions,
  figures; `render_report`) and returns its path."""
  return fileio.atomic_write_text(os.path.join(out_dir, "report.html"), render_report(result))


# ---- Markdown summary (experiments.summarize) ---------------------------------------------
MARKDOWN_HEADER = (
  "| model | site | K | stability | overlap ↓ | overlap gain vs null [95% CI] | "
  "gain vs untrained [95% CI] | part agreement − chance [95% CI] | "
  "vs untrained [95% CI] | factor exclusivity | − null [95% CI] | "
  "vs untrained [95% CI] | modules beyond untrained |"
)


def _md_effect(e: dict | None) -> str:
  """``+0.102 [0.086, 0.122]`` for an effect dict, or – when absent."""
  if not e or e.get("value") is None:
    return "–"
  lo, hi = e.get("ci95", [float("nan")] * 2)
  return f"{e['value']:+.3f} [{lo:+.3f}, {hi:+.3f}]"


def _md_gain(m: dict | None, sign: float = 1.0) -> str:
  """Value − null mean (the direction in which the metric is good)."""
  if not m:
    return "–"
  return (
    _md_effect(m.get("effect_vs_null"))
    if "effect_vs_null" in m
    else (f"{sign * (m['value'] - m['null_mean']):+.3f}")
  )


def markdown_rows(result: dict) -> Iterator[str]:
  """The rows of `MARKDOWN_HEADER`'s table for one result (``metrics.json``), one per
  site."""
  r = result
  for site, m in r["sites"].items():
    best = " **(best)**" if r.get("best_site") == site else ""
    ov, pa, ft = m["overlap"], m.get("part_agreement"), m.get("factor_transfer")
    beyond = ("yes" if m.get("beyond_untrained") else "no") if "beyond_untrained" in m else "–"
    ft_cells = (
      f"{ft['exclusivity']:.3f} | {_md_effect(ft.get('effect_vs_null'))} | "
      f"{_md_effect(ft.get('effect_vs_untrained'))}"
      if ft
      else "– | – | –"
    )
    yield (
      f"| {r['generator']} | {site}{best} | {m['k']} | {m['stability'][0]:.3f} | "
      f"{ov['value']:.3f} | {_md_gain(ov)} | {_md_effect(ov.get('effect_vs_untrained'))} | "
      f"{_md_gain(pa)} | {_md_effect((pa or {}).get('effect_vs_untrained'))} | {ft_cells} | "
      f"{beyond} |"
    )


def markdown_table(rows: Iterable[str]) -> str:
  """The Markdown table: `MARKDOWN_HEADER`, its separator line, then ``rows``
  (`markdown_rows` of one or more results), one per line."""
  lines = [MARKDOWN_HEADER, "|" + "---|" * (MARKDOWN_HEADER.count("|") - 1), *rows]
  return "\n".join(lines)
