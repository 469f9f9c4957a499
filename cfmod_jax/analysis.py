"""The main job: influence maps of every site of a generator, as files.

`run` computes the elementary influence maps (EIMs) of each requested site and
writes, per site, ``eims_<site>.npz`` (``eims [C, H, W] float32``) and
``eims_<site>.png`` (one tile per channel, each scaled to its own maximum), plus
``summary.json``. Progress (rate, ETA) is logged as sites finish.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Sequence

import jax
import numpy as np
from absl import logging

from cfmod_jax import viz
from cfmod_jax.generator import Generator
from cfmod_jax.interventions import elementary_influence_maps


@dataclasses.dataclass(frozen=True)
class EIMConfig:
  sites: Sequence[str] | None = None  # None: every site
  n_pairs: int = 128
  seed: int = 0
  pair_chunk: int = 32
  mask_chunk: int = 16


def check_config(gen: Generator, cfg: EIMConfig) -> list[str]:
  """Validates the config against the generator; returns the sites to run."""
  sites = list(cfg.sites) if cfg.sites else list(gen.sites)
  for s in sites:
    gen.site_index(s)
  if not isinstance(cfg.n_pairs, int) or cfg.n_pairs < 1:
    raise ValueError(f"n_pairs must be a positive integer, got {cfg.n_pairs!r}")
  return sites


def save_atomic_npz(path: str, **arrays) -> None:
  """Writes an NPZ so that an interrupted write never leaves a partial file."""
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, **arrays)
  os.replace(tmp, path)


def run(gen: Generator, cfg: EIMConfig, out_dir: str) -> dict:
  sites = check_config(gen, cfg)
  os.makedirs(out_dir, exist_ok=True)
  work = {s: gen.site_shape(s)[-1] * cfg.n_pairs for s in sites}  # hybrids per site
  total, done, t0 = sum(work.values()), 0, time.perf_counter()
  summary = {"generator": gen.name, "n_pairs": cfg.n_pairs, "seed": cfg.seed, "sites": {}}
  for i, site in enumerate(sites):
    ts = time.perf_counter()
    key = jax.random.fold_in(jax.random.key(cfg.seed), i)
    eims = np.asarray(elementary_influence_maps(
        gen, site, cfg.n_pairs, key, pair_chunk=cfg.pair_chunk, mask_chunk=cfg.mask_chunk))
    seconds = time.perf_counter() - ts
    save_atomic_npz(os.path.join(out_dir, f"eims_{site}.npz"), eims=eims)
    viz.save_map_grid(os.path.join(out_dir, f"eims_{site}.png"), eims)
    done += work[site]
    rate = done / (time.perf_counter() - t0)
    logging.info("site %s: %d channels × %d pairs in %.1f s (%.0f hybrids/s); %d/%d sites, "
                 "ETA %.0f s", site, eims.shape[0], cfg.n_pairs, seconds, work[site] / seconds,
                 i + 1, len(sites), (total - done) / rate)
    summary["sites"][site] = {"channels": int(eims.shape[0]), "seconds": seconds,
                              "hybrids_per_s": work[site] / seconds}
  with open(os.path.join(out_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  return summary
