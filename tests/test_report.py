"""report.html from a hand-made result dict (no analysis run): a verdict sentence per site,
a definition for every column, one figure per file of `report.report_files`, escaping."""

import html
import re

import pytest

from cfmod_jax import report


def _metric(value, gain, untrained_gain=None):
  e = {
    "value": value,
    "ci95": [value - 0.01, value + 0.01],
    "null_mean": value - gain,
    "null_std": 0.002,
    "z": gain / 0.002,
    "effect_vs_null": {"value": gain, "ci95": [gain - 0.01, gain + 0.01]},
    "beyond_null": gain > 0.02,
  }
  if untrained_gain is not None:
    d = gain - untrained_gain
    e["untrained"] = {
      "value": 0.5,
      "ci95": [0.49, 0.51],
      "null_mean": 0.5 - untrained_gain,
      "effect_vs_null": {"value": untrained_gain, "ci95": [0.0, 0.1]},
    }
    e["effect_vs_untrained"] = {"value": d, "ci95": [d - 0.01, d + 0.01]}
    e["evidence"] = gain > 0.02 and d > 0.02
  return e


def _site(k, gain, untrained_gain, baseline):
  u = untrained_gain if baseline else None
  m = {
    "channels": 8,
    "k": k,
    "module_sizes": list(range(1, k + 1)),
    "stability": [0.9, 0.05],
    "nmf_vs_kmeans_ari": 0.5,
    "overlap": _metric(0.3, gain, u),
    "in_support": _metric(0.6, gain, u),
    "seconds": {"total": 1.5},
    "verdict": {
      "modules_distinct_beyond_null": gain > 0.02,
      "modules_distinct_beyond_untrained": (gain - untrained_gain > 0.02) if baseline else None,
      "stability": {"beyond_untrained": True},
    },
  }
  if baseline:
    m["stability_untrained"] = [0.7, 0.1]
    m["untrained_nmf_vs_kmeans_ari"] = 0.2
  return m


def _result(generator, baseline, k):
  sites = {
    "block3": _site(k or 2, gain=0.2, untrained_gain=0.05, baseline=baseline),
    "block4": _site(k or 3, gain=0.001, untrained_gain=0.0, baseline=baseline),
  }
  result = {
    "generator": generator,
    "config": {
      "n_pairs": 32,
      "eval_pairs": 16,
      "eval_groups": 4,
      "n_ci": 100,
      "n_null": 6,
      "k": k,
      "method": "nmf",
      "min_effect": 0.02,
    },
    "sites": sites,
    "devices": 1,
    "platform": "cpu",
    "seconds": 12.0,
  }
  if baseline:
    result["untrained_baseline"] = {"generator": generator + "-untrained"}
  return result


@pytest.mark.parametrize("baseline,k", [(True, None), (False, 2)])
def test_report_from_a_hand_made_result(tmp_path, baseline, k):
  result = _result("dcgan <w4> & 'friends'", baseline, k)
  with open(report.write_report(result, str(tmp_path)), encoding="utf-8") as f:
    page = f.read()
  text = html.unescape(page)
  # The generator's name is escaped wherever it appears, never raw HTML.
  assert "<w4>" not in page and "dcgan &lt;w4&gt; &amp; " in page
  assert f"<title>cfmod_jax report: {result['generator']}</title>" in text
  # One verdict sentence per site, in its table row and over its figures; they differ.
  sentences = {s: report.site_sentence(m, 0.02) for s, m in result["sites"].items()}
  assert len(set(sentences.values())) == 2
  for site, sentence in sentences.items():
    assert f"<td>{sentence}</td>" in text and f"<h3>{site}: {sentence}</h3>" in text
  learned = ": evidence of learned modularity." if baseline else "no evidence of learned"
  assert learned in sentences["block3"] and "not clearly more distinct" in sentences["block4"]
  assert ("untrained baseline was not run" in text) == (not baseline)
  # Every column header is defined (as its tooltip and in the list), metrics included.
  headers = re.findall(r"<th title=\"([^\"]*)\">([^<]+)</th>", page)
  terms = dict(re.findall(r"<dt>([^<]+)</dt><dd>([^<]+)</dd>", page))
  assert {"metric", "overlap ↓", "in-support share ↑"} <= {html.unescape(t) for t in terms}
  assert "part agreement ↑" not in text
  undefined = {html.unescape(h) for tip, h in headers if not tip}
  for tip, header in headers:
    assert not tip or terms[header] == tip, header
  # (without a baseline that column holds only — and has no definition, as before the template)
  assert undefined == (set() if baseline else {"… beyond an untrained network"})
  assert ("Δ vs untrained [95% CI]" in terms) == baseline
  # One figure per file of report_files, in that set exactly.
  refs = re.findall(r'<img src="([^"]+)"', page)
  assert len(refs) == len(set(refs)) and set(refs) == set(report.report_files(result))
  assert ("block3/stability.png" in refs) == (k is None)
  assert ("block4/hybrids_module2.png" in refs) == (k is None)  # K = 3 there when chosen
