"""The main job's report: ``report.html`` (verdicts, metrics with effect sizes, column
definitions, figures) from the result dict of `cfmod_jax.analysis.run` (the content of
``metrics.json``), the verdict of a site in words (`site_sentence`), and the Markdown
table of `experiments.summarize` (`markdown_table`).

Everything here reads the result dict only: no arrays, no statistics (those are in
`cfmod_jax.metrics`), no generator.
"""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Iterator

import numpy as np

from cfmod_jax import fileio
from cfmod_jax.metrics import DEFAULT_MIN_EFFECT, PARTITION_METRICS

__all__ = [
  "FACTOR_DEFINITION",
  "MARKDOWN_HEADER",
  "factor_section_html",
  "markdown_rows",
  "markdown_table",
  "report_files",
  "site_sentence",
  "write_report",
]

_NAMES = {
  "overlap": "overlap ↓",
  "in_support": "in-support share ↑",
  "part_agreement": "part agreement ↑",
}


def _ci_text(m: dict, signed: bool = False) -> str:
  f = "{:+.3f}" if signed else "{:.3f}"
  return (
    f"{f.format(m['value'])} <small>[{f.format(m['ci95'][0])}, {f.format(m['ci95'][1])}]</small>"
  )


def _yes(flag: bool | None) -> str:
  if flag is None:
    return "—"
  return '<b class="yes">yes</b>' if flag else '<b class="no">no</b>'


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


def _definitions(parts: bool, baseline: bool, min_effect: float) -> list[tuple[str, str]]:
  """(column header, one or two sentences) for every column of the report's tables."""
  beyond = (
    f"the whole 95% interval lies above {min_effect:g} on the metric's 0–1 scale "
    "(a smaller difference is not called beyond, however precisely measured)"
  )
  d = [
    (
      "site",
      "The layer whose output channels are swapped between two images (the "
      "intervention site of the paper).",
    ),
    ("C", "Number of channels at the site."),
    (
      "K",
      "Number of modules, chosen by the silhouette rule (the smallest K whose mean "
      "cosine silhouette over bootstrap resamples is within 0.05 of the best; "
      "clustering.choose_k) unless given"
      + ("; the untrained network is clustered with the same K." if baseline else "."),
    ),
    (
      "modules distinct beyond random channel groups",
      "Yes when, on both overlap and "
      "in-support share, the gain of the modules over random partitions of the "
      f"channels (same module sizes) is clear: {beyond}.",
    ),
  ]
  if baseline:
    d.append(
      (
        "… beyond an untrained network",
        "Yes when, in addition, on both metrics "
        "the trained model's gain over random partitions exceeds the untrained "
        "network's gain over its own random partitions, with the same rule. Only then "
        "do the numbers say the modules were learned: random convolutions already "
        "have local receptive fields, so an untrained network's channel groups also "
        "beat random ones.",
      )
    )
  if parts:
    d.append(
      (
        "follows the face parts",
        "The same test"
        + ("s" if baseline else "")
        + " for part agreement (agreement with the ground-truth face parts).",
      )
    )
  d += [
    ("in words", "The verdict of the site in one sentence."),
    (
      "metric",
      "Which statistic of the module influence maps the row reports; the "
      "arrow says which direction is more modular:",
    ),
    (
      "overlap ↓",
      "Mean cosine similarity between the influence maps of every two "
      "modules (1: they change the same pixels in the same proportions; 0: disjoint "
      "pixels). Lower means more distinct modules.",
    ),
    (
      "in-support share ↑",
      "Share of each module's influence (the sum of its map) "
      "inside its support, the top pixels of its template (the mean preprocessed EIM of "
      "its channels, thresholded at the clustering percentile); averaged over modules. "
      "Higher means the module acts where its channels' own maps say.",
    ),
  ]
  if parts:
    d.append(
      (
        "part agreement ↑",
        "Share of the modules' influence inside ground-truth "
        "face parts (background, hair, skin, eyes, mouth), modules matched one-to-one "
        "to parts; 1 when every module acts only inside a part of its own.",
      )
    )
  d += [
    (
      "trained [95% CI]",
      "The metric of the K modules, measured on fresh latent pairs "
      "that the clustering did not see; the interval is a percentile bootstrap over "
      "groups of pairs.",
    ),
    (
      "random-partition null",
      "Mean ± standard deviation of the metric over random "
      "channel partitions with the same module sizes, on the same pairs, and the "
      "z-score of the trained value. The null's spread is tiny, so |z| is large even for "
      "negligible differences: read the effect sizes (Δ) for how large a difference is.",
    ),
    (
      "Δ vs null [95% CI]",
      "Effect size: how much more modular than random partitions "
      "(null mean − value for overlap, value − null mean otherwise; positive = more "
      "modular); the bootstrap recomputes the null on every resample.",
    ),
  ]
  if baseline:
    d += [
      (
        "untrained [95% CI] (null)",
        "The same metric for the same architecture with "
        "random weights, on the same pairs, with the same K; in brackets its own "
        "random-partition null. All metrics are scale-free (an untrained network's "
        "influence maps are orders of magnitude smaller).",
      ),
      (
        "Δ vs untrained [95% CI]",
        "Effect size: the trained model's Δ vs null minus the "
        "untrained network's Δ vs null (positive: the trained modules beat random "
        "partitions by more). Paired bootstrap: every resample draws the same groups of "
        "pairs for both networks.",
      ),
      ("evidence", f"Yes when both Δ vs null and Δ vs untrained are clear: {beyond}."),
    ]
  else:
    d.append(("beyond null", f"Yes when Δ vs null is clear: {beyond}."))
  d += [
    ("module sizes (channels)", "Channels in each module, module 0 first."),
    (
      "stability (trained / untrained)" if baseline else "stability",
      "Mean ± s.d. of the matched cosine similarity of module templates between "
      "bootstrap resamples of the pairs and NMF restarts, at K (1: the same templates "
      "every time). It says the clustering is reproducible, not that the modules mean "
      "anything"
      + (
        ": compare with the untrained network's value (beyond untrained: "
        "the mean ± s.d. bands do not overlap)."
        if baseline
        else "."
      ),
    ),
    (
      "NMF vs k-means ARI (trained / untrained)" if baseline else "NMF vs k-means ARI",
      "Adjusted Rand index between the NMF modules and k-means clusters of the same EIMs "
      "(1: identical partitions; 0: chance agreement).",
    ),
    (
      "seconds",
      "Wall time of the site: EIMs, clustering, evaluation, bootstrap and "
      "figures" + (", for both networks." if baseline else "."),
    ),
  ]
  return d


FACTOR_DEFINITION = (
  "Factor transfer: for a module, the hybrid takes the module's channels from a donor "
  "image z2; the feature network reads every ground-truth factor of the synthetic faces "
  "off G(z1), G(z2) and the hybrid, and the hybrid follows the donor on a factor when "
  "its predicted class equals the donor's (categorical factors) or its prediction is "
  "closer to the donor's than to the original's (continuous factors); pairs where G(z1) "
  "and G(z2) agree are left out. Exclusivity is the mean over factors of (best module's "
  "share − the other modules' mean share) / the whole-site swap's share: 1 when each "
  "factor moves with one module only, 0 when factors are spread evenly."
)


def factor_section_html(result: dict) -> str:
  """The report's factor-transfer and hybrid-realism tables ('' without them)."""
  sites = {s: m["factor_transfer"] for s, m in result["sites"].items() if "factor_transfer" in m}
  if not sites:
    return ""
  esc = html.escape
  f3 = lambda v, signed=False: (
    "—" if v is None or not np.isfinite(v) else (f"{v:+.3f}" if signed else f"{v:.3f}")
  )
  ci = lambda v, lohi, signed=False: (
    f"{f3(v, signed)} <small>[{f3(lohi[0], signed)}, {f3(lohi[1], signed)}]</small>"
  )
  base = any("untrained" in ft for ft in sites.values())
  head = ["site", "factors", "exclusivity [95% CI]", "null mean ± s.d.", "Δ vs null [95% CI]"]
  head += (
    [
      "untrained exclusivity (null)",
      "untrained Δ vs null [95% CI]",
      "Δ vs untrained [95% CI]",
      "evidence",
    ]
    if base
    else ["beyond null"]
  )
  rows = []
  for site, ft in sites.items():
    for label, s in (("all", ft), ("categorical", ft["categorical"])):
      cells = [
        esc(site),
        f"{label} ({len(s['factors'])})",
        ci(s["exclusivity"], s["exclusivity_ci"]),
        f"{f3(s['exclusivity_null_mean'])} ± {f3(s['exclusivity_null_sd'])}",
        ci(s["effect_vs_null"]["value"], s["effect_vs_null"]["ci95"], True),
      ]
      if "untrained" in ft:
        u = ft["untrained"] if label == "all" else ft["untrained"]["categorical"]
        cells += [
          f"{f3(u['exclusivity'])} <small>({f3(u['exclusivity_null_mean'])})</small>",
          ci(s["untrained_effect_vs_null"]["value"], s["untrained_effect_vs_null"]["ci95"], True),
          ci(s["effect_vs_untrained"]["value"], s["effect_vs_untrained"]["ci95"], True),
          _yes(s["evidence"]),
        ]
      elif base:
        cells += ["—"] * 4
      else:
        cells.append(_yes(s["beyond_null"]))
      rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
  th = "<tr>" + "".join(f"<th>{esc(c)}</th>" for c in head) + "</tr>"
  ft0 = next(iter(sites.values()))
  text = (
    f"<h2>Factor transfer</h2><p>{esc(FACTOR_DEFINITION)} Measured on "
    f"{ft0['pairs']} latent pairs in {ft0['groups']} groups (95% percentile bootstrap "
    f"over groups); the null is {ft0['n_null']} random channel partitions with the "
    "module sizes; Δ is the exclusivity minus the null's mean (the interval "
    "resamples pairs, not partitions: with few partitions compare Δ with the null's "
    "s.d. too)"
    + (
      "; Δ vs untrained subtracts the untrained network's Δ (its own modules, same "
      "pairs; paired bootstrap)"
      if base
      else ""
    )
    + ". Categorical factors only: "
    "their 'follows' is not diluted by the prediction noise of continuous "
    f"ones.</p><table>{th}{''.join(rows)}</table>"
  )
  hr = {s: ft["hybrid_realism"] for s, ft in sites.items() if "hybrid_realism" in ft}
  if hr:
    kmax = max(len(h["fd"]) for h in hr.values())
    hhead = (
      ["site", "n"]
      + [f"module {j}" for j in range(kmax)]
      + ["whole site (= G(z2))", "plain samples G(z1)", "real vs real floor"]
    )
    hrows = []
    for site, h in hr.items():
      fds = [f"{v:.1f}" for v in h["fd"]] + [""] * (kmax - len(h["fd"]))
      cells = [
        esc(site),
        h["n"],
        *fds,
        f"{h['whole_site_fd']:.1f}",
        f"{h['plain_fd']:.1f}",
        f"{h['floor']:.1f}",
      ]
      hrows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    text += (
      "<h2>Hybrid realism</h2><p>Fréchet distance (feature-network features) of "
      "each module's hybrids to held-out real faces, beside the plain samples of "
      "the same latents and two disjoint real sets (the floor), all at n images "
      "(FD is biased upwards at small n: compare within a row). Hybrids of a "
      "module that acts alone stay about as realistic as plain samples.</p><table>"
      + "<tr>"
      + "".join(f"<th>{esc(c)}</th>" for c in hhead)
      + "</tr>"
      + "".join(hrows)
      + "</table>"
    )
  return text


def write_report(result: dict, out_dir: str) -> str:
  """One HTML page: verdicts, metrics with effect sizes, definitions, figures."""
  parts = "best_site" in result
  baseline = "untrained_baseline" in result
  names = [n for n in PARTITION_METRICS if n != "part_agreement" or parts]
  td = lambda cells: "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"
  min_eff = result["config"].get("min_effect", 0.0)
  defs = _definitions(parts, baseline, min_eff)
  tips = dict(defs)
  th = lambda cells: (
    "<tr>"
    + "".join(f'<th title="{html.escape(tips.get(c, ""))}">{html.escape(c)}</th>' for c in cells)
    + "</tr>"
  )
  # Verdicts.
  vrows = []
  for site, m in result["sites"].items():
    v = m["verdict"]
    cells = [
      site,
      m["k"],
      _yes(v["modules_distinct_beyond_null"]),
      _yes(v["modules_distinct_beyond_untrained"]),
    ]
    if parts:
      cells.append(
        _yes(v["part_agreement"]["evidence"] if baseline else v["part_agreement"]["beyond_null"])
      )
    vrows.append(td(cells + [html.escape(site_sentence(m, min_eff))]))
  vhead = (
    ["site", "K", "modules distinct beyond random channel groups", "… beyond an untrained network"]
    + (["follows the face parts"] if parts else [])
    + ["in words"]
  )
  # Metrics with effect sizes.
  mrows = []
  for site, m in result["sites"].items():
    for name in names:
      e = m[name]
      cells = [
        site,
        _NAMES[name],
        _ci_text(e),
        f"{e['null_mean']:.3f} ± {e['null_std']:.3f} <small>(z = {e['z']:+.1f})</small>",
        _ci_text(e["effect_vs_null"], signed=True),
      ]
      if baseline:
        u = e["untrained"]
        cells += [
          f"{_ci_text(u)} <small>({u['null_mean']:.3f})</small>",
          _ci_text(e["effect_vs_untrained"], signed=True),
          _yes(e["evidence"]),
        ]
      else:
        cells += [_yes(e["beyond_null"])]
      mrows.append(td(cells))
  mhead = ["site", "metric", "trained [95% CI]", "random-partition null", "Δ vs null [95% CI]"]
  mhead += (
    ["untrained [95% CI] (null)", "Δ vs untrained [95% CI]", "evidence"]
    if baseline
    else ["beyond null"]
  )
  # Clustering.
  crows = []
  for site, m in result["sites"].items():
    stab = f"{m['stability'][0]:.3f} ± {m['stability'][1]:.3f}"
    ari = f"{m['nmf_vs_kmeans_ari']:.2f}"
    if baseline:
      stab += (
        f" / {m['stability_untrained'][0]:.3f} ± {m['stability_untrained'][1]:.3f}"
        f" <small>(beyond untrained: "
        f"{'yes' if m['verdict']['stability']['beyond_untrained'] else 'no'})</small>"
      )
      ari += f" / {m['untrained_nmf_vs_kmeans_ari']:.2f}"
    crows.append(
      td(
        [
          site,
          m["channels"],
          m["k"],
          ", ".join(map(str, m["module_sizes"])),
          stab,
          ari,
          f"{m['seconds']['total']:.1f}",
        ]
      )
    )
  chead = [
    "site",
    "C",
    "K",
    "module sizes (channels)",
    "stability (trained / untrained)" if baseline else "stability",
    "NMF vs k-means ARI" + (" (trained / untrained)" if baseline else ""),
    "seconds",
  ]
  dl = "".join(f"<dt>{html.escape(t)}</dt><dd>{html.escape(d)}</dd>" for t, d in defs)
  # Figures.
  img = lambda p, cap: (
    f'<figure><img src="{html.escape(p)}" alt="{html.escape(cap)}">'
    f"<figcaption>{html.escape(cap)}</figcaption></figure>"
  )
  method = result["config"]["method"]
  templates_cap = (
    "k-means centroids of the preprocessed EIMs (one per module; k-means, not NMF)"
    if method == "kmeans"
    else "NMF templates: the K rows of H, the typical preprocessed EIM of each module"
  )
  sections = []
  for site, m in result["sites"].items():
    figs = [
      img(
        f"{site}/module_maps.png",
        "Module influence maps on fresh pairs: mean |change of each pixel| when "
        "the module's channels are taken from the donor; one colour scale.",
      ),
      img(f"{site}/templates.png", templates_cap + "; each scaled to its maximum."),
    ]
    if "untrained" in m["overlap"]:
      figs.append(
        img(
          f"{site}/untrained_module_maps.png",
          "The untrained network's module maps (same K, same pairs), each "
          "scaled to its own maximum: its images barely change, so only "
          "shapes compare.",
        )
      )
    if result["config"]["k"] is None:
      figs.append(
        img(
          f"{site}/stability.png",
          "Template stability against K (mean ± s.d.); the dashed line is the K used.",
        )
      )
    figs.append(
      img(
        f"{site}/eims.png",
        "Elementary influence maps of every channel, ordered by module; the "
        "coloured strip under each tile is its module (legend), each tile "
        "scaled to its own maximum.",
      )
    )
    figs += [
      img(
        f"{site}/hybrids_module{j}.png",
        f"Hybrids of module {j} ({m['module_sizes'][j]} channels): originals z1 "
        "down the left, donors z2 across the top; each cell is z1 with module "
        f"{j}'s channels taken from the donor.",
      )
      for j in range(m["k"])
    ]
    if "factor_transfer" in m:
      figs.insert(
        1,
        img(
          f"{site}/factor_transfer.png",
          "Factor transfer: per module (and the whole-site swap), the share "
          "of pairs whose hybrid takes the donor's value of each factor, read "
          "by the feature network; grey: no pair where the two images differ "
          "on the factor.",
        ),
      )
    sections.append(
      f"<h3>{html.escape(site)}: {html.escape(site_sentence(m, min_eff))}</h3>" + "".join(figs)
    )
  best = (
    f"<p>Best site by ground-truth part agreement over chance: <b>{result['best_site']}</b>.</p>"
    if parts
    else ""
  )
  cfg = result["config"]
  pairs_text = f"{cfg['n_pairs']} latent pairs"
  if cfg.get("eim_target_reliability") is not None:
    used = ", ".join(
      f"{html.escape(site)} {m['eim_sweep']['pairs_used']}"
      for site, m in result["sites"].items()
      if "eim_sweep" in m
    )
    pairs_text = (
      f"up to {cfg['n_pairs']} latent pairs (adaptive: a site's sweep stopped once the "
      f"split-half reliability of its EIMs reached {cfg['eim_target_reliability']}; "
      f"pairs used: {used})"
    )
  if cfg.get("precision", "float32") != "float32":
    pairs_text += (
      f", computed in {html.escape(str(cfg['precision']))} (module maps and metrics in float32)"
    )
  base_text = (
    f"The untrained baseline is {html.escape(result['untrained_baseline']['generator'])}: "
    "the same architecture with freshly initialised weights, analysed with the same "
    "latent pairs, the same K and the same settings."
    if baseline
    else "<b>The untrained baseline was not run</b> (untrained_baseline=False): verdicts rest "
    "on the random-partition null only, which an untrained network also passes."
  )
  page = f"""<!doctype html><html><head><meta charset="utf-8">
<title>cfmod_jax report: {html.escape(result['generator'])}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1400px}}
table{{border-collapse:collapse;margin-bottom:1em}}
td,th{{border:1px solid #ccc;padding:4px 8px;vertical-align:top}}th{{background:#f3f3f3}}
.yes{{color:#1a7f37}}.no{{color:#b42318}}dt{{font-weight:bold;margin-top:.4em}}
figure{{display:inline-block;margin:8px;vertical-align:top;max-width:660px}}
img{{max-width:640px}}figcaption{{font-size:90%}}
</style></head><body>
<h1>Modularity of {html.escape(result['generator'])}</h1>
<p>Modules are groups of channels at a site found by clustering their elementary influence
maps (EIMs: which pixels change when one channel is taken from another image), over
{pairs_text}. Metrics are measured on {cfg['eval_pairs']} fresh pairs in
{cfg['eval_groups']} groups; intervals are percentile bootstrap 95% over these groups
({cfg['n_ci']} resamples); the null is {cfg['n_null']} random channel partitions with the
same module sizes. {base_text} Ran in {result['seconds']:.0f} s on {result['devices']}
{html.escape(result['platform'])} device(s).</p>{best}
<h2>Verdict per site</h2>
<table>{th(vhead)}{''.join(vrows)}</table>
<h2>Metrics and effect sizes</h2>
<table>{th(mhead)}{''.join(mrows)}</table>
<h2>Clustering</h2>
<table>{th(chead)}{''.join(crows)}</table>
{factor_section_html(result)}
<h2>What the columns mean</h2><dl>{dl}</dl>
<h2>Figures</h2>
{''.join(sections)}
<p><small>Arrays: &lt;site&gt;/analysis.npz; numbers and verdicts: metrics.json.</small></p>
</body></html>"""
  return fileio.atomic_write_text(os.path.join(out_dir, "report.html"), page)


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
