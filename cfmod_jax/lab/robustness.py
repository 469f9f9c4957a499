"""Robustness of image classifiers to counterfactual contextual changes.

The paper's application (Besserve et al. 2020, §4): feed a classifier hybrids in
which one module of a site is taken from another sample — a change of *context*
when the module does not control the object — and measure how often it still
predicts the original class.

For a classifier ``f: [N, H, W, 3] in [-1, 1] → logits [N, n_classes]``, a site and a
channel mask ``m`` (a module, or all channels of the site as a control), and pairs
``(z1, z2)``:

    c1 = argmax f(G(z1))                        the original class
    keep_rate(m)        = mean over pairs of [argmax f(hybrid_m(z1, z2)) = c1]
    confidence_shift(m) = mean over pairs of softmax f(hybrid_m)[c1] − softmax f(G(z1))[c1]
    donor_rate(m)       = mean over pairs of [argmax f(hybrid_m) = argmax f(G(z2))]
    image_change(m)     = mean over pairs, pixels, colours of |hybrid_m − G(z1)|

``chance_keep_rate`` (mean of ``[c1 = argmax f(G(z2))]``) is what ``keep_rate`` tends to
when the hybrid is just G(z2) (the full mask of an unconditional generator).

Everything per pair is computed in one compiled call per (site, classifier) by
`interventions.hybrid_map_reduce` (per pair): pairs sharded over every device, a
scan over chunks of pairs (the prefix, G(z1), G(z2) and their predictions run once
per chunk) and, inside, a map over chunks of masks whose hybrids go through the
suffix and the classifier as one flat batch.

`module_robustness` runs it per module (EIMs → modules → robustness per site and
module, with the full-site control and, given part maps, each module's share of
influence per image part); `write_json` and `lab.plots.plot_robustness` write its results.
The hair-colour study on the synthetic faces (its tables and panels) is
``experiments/robustness.py`` (see docs/robustness.md).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from cfmod_jax import metrics
from cfmod_jax._validate import check_positive_int
from cfmod_jax.generator import Generator
from cfmod_jax.interventions import (
  check_masks,
  check_pairs,
  hybrid_map_reduce,
  influence_maps,
  masks_from_labels,
)
from cfmod_jax.lab.classifiers import ClassifierLike, as_classifier, check_classifier
from cfmod_jax.modules import find_modules

if TYPE_CHECKING:
  pass

DEFAULT_PAIR_CHUNK = 32
DEFAULT_MASK_CHUNK = 4


# ---- the compiled kernel ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PairPredictions:
  """Per-pair classifier outputs for M masks at one site and N pairs.

  Attributes:
    original_class: int32 [N], argmax f(G(z1)).
    donor_class: int32 [N], argmax f(G(z2)).
    original_confidence: float32 [N], softmax f(G(z1))[original_class].
    hybrid_class: int32 [M, N], argmax f(hybrid).
    hybrid_confidence: float32 [M, N], softmax f(hybrid)[original_class].
    hybrid_change: float32 [M, N], mean over pixels and colours of |hybrid − G(z1)|.
  """

  original_class: np.ndarray
  donor_class: np.ndarray
  original_confidence: np.ndarray
  hybrid_class: np.ndarray
  hybrid_confidence: np.ndarray
  hybrid_change: np.ndarray


def _robustness_fns(gen: Generator, apply, site: str):
  """``(pair_fn, hybrid_fn)`` of `interventions.hybrid_map_reduce` (per pair,
  ``params`` = the classifier's): classes and confidences of G(z1), G(z2) and
  every hybrid, and the hybrid's mean |hybrid − G(z1)|."""

  def classify(params, images):
    logits = apply(params, images)
    return jnp.argmax(logits, axis=-1).astype(jnp.int32), jax.nn.softmax(logits, axis=-1)

  def pair_fn(chunk):
    x1 = gen.suffix(chunk.variables, chunk.a1, chunk.z1, site)
    c1, p1 = classify(chunk.params, x1)
    c2, _ = classify(chunk.params, gen.suffix(chunk.variables, chunk.a2, chunk.z2, site))
    conf1 = jnp.take_along_axis(p1, c1[:, None], axis=-1)[:, 0]
    return (x1, c1), (c1, c2, conf1)

  def hybrid_fn(chunk, ctx, y):  # y [mc, pc, H, W, 3]
    x1, c1 = ctx
    mc, pc = y.shape[:2]
    c, p = classify(chunk.params, y.reshape(mc * pc, *y.shape[2:]))
    conf = jnp.take_along_axis(p, jnp.tile(c1, mc)[:, None], axis=-1)[:, 0]
    change = jnp.abs(y - x1[None]).mean(axis=tuple(range(2, y.ndim)))
    return c.reshape(mc, pc), conf.reshape(mc, pc), change

  return pair_fn, hybrid_fn


def pair_predictions(
  gen: Generator,
  classifier: ClassifierLike,
  site: str,
  masks: ArrayLike,
  z1: ArrayLike,
  z2: ArrayLike,
  *,
  pair_chunk: int = DEFAULT_PAIR_CHUNK,
  mask_chunk: int = DEFAULT_MASK_CHUNK,
) -> PairPredictions:
  """The classifier's predictions on originals, donors and hybrids, per pair.

  Args:
    gen: a `Generator`.
    classifier: a `Classifier` or a function ``images -> logits [N, n_classes]``.
    site: one of ``gen.sites``.
    masks: ``[M, C]`` (or ``[C]``) in [0, 1]; 1 takes the channel from z2.
    z1, z2: ``[N, *latent_shape]`` originals and donors.
    pair_chunk, mask_chunk: pairs / masks evaluated together (memory vs speed).
  Returns:
    `PairPredictions` (host numpy arrays); masks axis of length M (1 for a 1-D mask).
  """
  clf = as_classifier(classifier)
  gen.site_index(site)
  masks, _ = check_masks(gen, site, masks)
  z1, z2 = check_pairs(gen, z1, z2)
  pair_chunk = check_positive_int(pair_chunk, "pair_chunk")
  mask_chunk = check_positive_int(mask_chunk, "mask_chunk")
  check_classifier(clf, gen.image_shape)
  pair_fn, hybrid_fn = _robustness_fns(gen, clf.apply, site)
  (ch, ph, dh), (c1, c2, conf1), _ = hybrid_map_reduce(
    gen,
    site,
    masks,
    z1,
    z2,
    hybrid_fn,
    pair_fn=pair_fn,
    params=clf.params,
    per_pair=True,
    cache_key=("robustness", clf.apply),
    pair_chunk=pair_chunk,
    mask_chunk=mask_chunk,
  )
  return PairPredictions(c1, c2, conf1, ch, ph, dh)


# ---- summaries ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Effect:
  """How one intervention (a mask at a site) changes the classifier's predictions.

  ``*_se`` are standard errors over pairs (binomial for rates). ``image_change`` is
  the mean |hybrid − G(z1)| over pairs, pixels and colours (images in [-1, 1]): how
  much the swap changes the image at all, to read beside the keep rate.
  """

  site: str
  name: str
  n_channels: int
  n_pairs: int
  keep_rate: float
  keep_rate_se: float
  confidence_shift: float
  confidence_shift_se: float
  donor_rate: float
  image_change: float


def effects(
  preds: PairPredictions, site: str, names: Sequence[str], n_channels: Sequence[int]
) -> list[Effect]:
  """One `Effect` per mask from per-pair predictions."""
  if len(names) != preds.hybrid_class.shape[0] or len(n_channels) != len(names):
    raise ValueError(
      f"need one name and channel count per mask "
      f"({preds.hybrid_class.shape[0]}), got {len(names)} and "
      f"{len(n_channels)}"
    )
  n = preds.original_class.shape[0]
  out = []
  for i, name in enumerate(names):
    kept = (preds.hybrid_class[i] == preds.original_class).astype(np.float64)
    shift = preds.hybrid_confidence[i].astype(np.float64) - preds.original_confidence
    donor = (preds.hybrid_class[i] == preds.donor_class).mean()
    keep = kept.mean()
    out.append(
      Effect(
        site=site,
        name=str(name),
        n_channels=int(n_channels[i]),
        n_pairs=n,
        keep_rate=float(keep),
        keep_rate_se=float(np.sqrt(keep * (1 - keep) / n)),
        confidence_shift=float(shift.mean()),
        confidence_shift_se=float(shift.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0,
        donor_rate=float(donor),
        image_change=float(preds.hybrid_change[i].mean()),
      )
    )
  return out


def mask_robustness(
  gen: Generator,
  classifier: ClassifierLike,
  site: str,
  masks: ArrayLike,
  z1: ArrayLike,
  z2: ArrayLike,
  *,
  names: Sequence[str] | None = None,
  pair_chunk: int = DEFAULT_PAIR_CHUNK,
  mask_chunk: int = DEFAULT_MASK_CHUNK,
) -> list[Effect]:
  """Keep rate, confidence shift and donor rate of each mask ``[M, C]`` at ``site``
  over the pairs ``(z1, z2)``; names default to ``mask0, mask1, …``."""
  masks = np.asarray(masks, np.float32) if not isinstance(masks, jax.Array) else masks
  masks2d = masks[None] if np.ndim(masks) == 1 else masks
  names = list(names) if names is not None else [f"mask{i}" for i in range(len(masks2d))]
  preds = pair_predictions(
    gen, classifier, site, masks2d, z1, z2, pair_chunk=pair_chunk, mask_chunk=mask_chunk
  )
  sizes = np.asarray(masks2d).sum(axis=1).round().astype(int)
  return effects(preds, site, names, sizes)


# ---- the experiment ----------------------------------------------------------------------
@dataclasses.dataclass
class SiteResult:
  """Modules of one site and the classifier's robustness to swapping each.

  Attributes:
    site: the site.
    labels: int [C], module of each channel.
    effects: one `Effect` per module (``module0`` …) and the control ``all``
      (every channel of the site).
    part_shares: with part maps, ``{module name: {part: share of the module's
      influence map inside the part}}`` (rows sum to 1 over parts).
    part_area: with part maps, ``{part: share of the image area}``.
    module_labels: with part maps, ``{module name: the part with the largest
      share / area ratio}``.
    part_modules: with part maps, ``{part: the module whose influence map has the
      largest share inside the part}`` (e.g. the hair module of a face generator).
  """

  site: str
  labels: np.ndarray
  effects: list[Effect]
  part_shares: dict[str, dict[str, float]] | None = None
  part_area: dict[str, float] | None = None
  module_labels: dict[str, str] | None = None
  part_modules: dict[str, str] | None = None


@dataclasses.dataclass
class RobustnessResult:
  """Output of `module_robustness`; `to_dict` gives its JSON form."""

  generator: str
  classifier: str
  n_classes: int
  n_pairs: int
  eim_pairs: int
  k: int
  method: str
  seed: int
  chance_keep_rate: float
  original_confidence: float
  original_class_counts: list[int]
  sites: dict[str, SiteResult]

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    for s in d["sites"].values():
      s["labels"] = np.asarray(s["labels"]).tolist()
      s["module_sizes"] = np.bincount(np.asarray(s["labels"]), minlength=self.k).tolist()
    return d


def _check_sites(gen: Generator, sites):
  sites = list(sites) if sites else list(gen.sites)
  if not sites:
    raise ValueError("sites is empty")
  for s in sites:
    gen.site_index(s)
  return sites


def module_robustness(
  gen: Generator,
  classifier: ClassifierLike,
  *,
  sites: Sequence[str] | None = None,
  k: int = 3,
  n_pairs: int = 256,
  eim_pairs: int = 64,
  method: str = "nmf",
  seed: int = 0,
  part_maps: np.ndarray | None = None,
  part_names: Sequence[str] | None = None,
  labels: dict[str, np.ndarray] | None = None,
  pair_chunk: int = DEFAULT_PAIR_CHUNK,
  mask_chunk: int = DEFAULT_MASK_CHUNK,
) -> RobustnessResult:
  """Robustness of a classifier to swapping each module of each site.

  Per site: EIMs over ``eim_pairs`` pairs → ``k`` modules (`modules.find_modules`
  with ``method``; or the given ``labels[site]``) → keep rate, confidence shift and
  donor rate of each module mask and of the full mask (``all``) over the same
  ``n_pairs`` evaluation pairs (drawn independently of the EIM pairs). With
  ``part_maps [P, H, W]`` (e.g. `synthfaces.part_prior()`) and ``part_names``, each
  module's influence map (on the first ≤ 64 evaluation pairs) is scored by its share
  inside every part, and each part's module (largest share) is identified.

  Returns:
    a `RobustnessResult`.
  """
  clf = as_classifier(classifier)
  sites = _check_sites(gen, sites)
  n_pairs = check_positive_int(n_pairs, "n_pairs")
  eim_pairs = check_positive_int(eim_pairs, "eim_pairs")
  k = check_positive_int(k, "k")
  if n_pairs < 2:
    raise ValueError("n_pairs must be ≥ 2")
  for s in sites:
    c = gen.site_shape(s)[-1]
    if labels is None and k > c:
      raise ValueError(f"k={k} exceeds the {c} channels of site {s!r}")
  if part_maps is not None:
    if part_names is None or len(part_names) != len(part_maps):
      raise ValueError("part_names must name each of the part maps")
  n_classes = check_classifier(clf, gen.image_shape)
  key = jax.random.key(seed)
  k1, k2, k_eim = jax.random.split(key, 3)
  z1, z2 = gen.sample_latents(k1, n_pairs), gen.sample_latents(k2, n_pairs)
  results, base = {}, None
  for i, site in enumerate(sites):
    c = gen.site_shape(site)[-1]
    if labels is not None and site in labels:
      lab = np.asarray(labels[site])
      if lab.shape != (c,):
        raise ValueError(f"labels[{site!r}] must have shape [{c}], got {lab.shape}")
      site_k = max(k, int(lab.max()) + 1)
    else:
      lab = find_modules(
        gen,
        site,
        n_pairs=eim_pairs,
        block_pairs=eim_pairs,
        key=jax.random.fold_in(k_eim, i),
        k=k,
        method=method,
        n_boot=0,
        seed=seed,
        pair_chunk=pair_chunk,
      ).labels
      site_k = k
    masks = np.concatenate([masks_from_labels(lab, site_k), np.ones((1, c), np.float32)])
    names = [f"module{j}" for j in range(site_k)] + ["all"]
    preds = pair_predictions(
      gen, clf, site, masks, z1, z2, pair_chunk=pair_chunk, mask_chunk=mask_chunk
    )
    base = preds
    res = SiteResult(site, lab, effects(preds, site, names, masks.sum(1).astype(int)))
    if part_maps is not None:
      m = min(n_pairs, 64)
      maps = np.asarray(
        influence_maps(gen, site, masks[:site_k], z1[:m], z2[:m], pair_chunk=pair_chunk)
      )
      shares = metrics.part_shares(maps, part_maps)
      area = metrics.part_shares(np.ones((1, *maps.shape[1:])), part_maps)[0]
      ratio = shares / np.where(area > 0, area, 1.0)
      res.part_shares = {
        names[j]: {p: float(shares[j, q]) for q, p in enumerate(part_names)} for j in range(site_k)
      }
      res.part_area = {p: float(area[q]) for q, p in enumerate(part_names)}
      res.module_labels = {names[j]: part_names[int(np.argmax(ratio[j]))] for j in range(site_k)}
      res.part_modules = {p: names[int(np.argmax(shares[:, q]))] for q, p in enumerate(part_names)}
    results[site] = res
  return RobustnessResult(
    generator=gen.name,
    classifier=clf.name,
    n_classes=n_classes,
    n_pairs=n_pairs,
    eim_pairs=eim_pairs,
    k=k,
    method=method,
    seed=seed,
    chance_keep_rate=float((base.original_class == base.donor_class).mean()),
    original_confidence=float(base.original_confidence.mean()),
    original_class_counts=np.bincount(base.original_class, minlength=n_classes).tolist(),
    sites=results,
  )


# ---- outputs -----------------------------------------------------------------------------
def write_json(result: RobustnessResult, path: str) -> str:
  """Writes ``result.to_dict()`` as JSON."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    json.dump(result.to_dict(), f, indent=2)
  return path


__all__ = [
  "Effect",
  "PairPredictions",
  "RobustnessResult",
  "SiteResult",
  "effects",
  "mask_robustness",
  "module_robustness",
  "pair_predictions",
  "write_json",
]
