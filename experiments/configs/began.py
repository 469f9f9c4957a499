"""BEGAN on the synthetic faces (the shipped ``began-synthfaces``).

Shipped since 2026-12-01: this config's defaults (feature matching λ_fm = 0.1 on the
discriminator's encoder code, moving average of G 0.999, 16000 steps), exported at the
step of the lowest FD; the history below says why each setting is what it is.

Batch 16 as in Berthelot et al.; widths (n = 16 instead of 64–128) and steps
reduced for a 2-core CPU. Two departures from the paper's settings, both needed
here (spreads below: per-pixel standard deviation across 64 fixed latents,
0.40 for real faces; "corner": the same for the mean colour of the top-left 6×6
pixels, i.e. background colour, 0.40 for real faces; exploratory runs measured
them every 250 steps, with batch statistics where G had BatchNorm):

* **BatchNorm in the generator** (``generator.batch_norm``; the discriminator's
  autoencoder has none, as in the paper). Without it the generator collapsed onto
  one image within 250–750 steps in every setting tried: γ 0.5/0.7/1.0,
  λ_k 0.001/0.01/0.1, learning rates 5e-5…5e-4 (also a slower G than D),
  k_init 0.3 and 1.0, widths 8 and 16, 500 and 1000 steps of D-only warm-up,
  "vanishing residual" blocks, skip connections (spread 0.016–0.07). Early on the
  discriminator reconstructs a flat image best, and nothing in BEGAN's loss stops
  every z from moving to it; batch statistics keep the samples of a batch apart.
* **γ = 1** (the paper uses 0.3–0.7): with BatchNorm, γ = 0.7 still lost the
  diversity (spread 0.074 at step 250, 0.033 at step 1000) and γ = 0.9 was going
  the same way (0.083, 0.073 at steps 250, 500), while γ = 1 gained it (0.11,
  0.15, 0.31 at steps 250, 500, 1000). γ = 1 asks the fakes to be as hard to
  reconstruct as real faces.
λ_k = 0.01 (the paper's 0.001 moves k_t too slowly for a few thousand steps),
learning rate 2e-4, Adam β1 0.5.

The model shipped until 2026-12-01 (5000 steps, no feature matching, no moving
average): faces that vary in hair colour and style (spread 0.083,
FD 161.8 against 251.5 for the fully collapsed model this replaced), but **every
sample has the same background colour** (corner 0.006), a colour that drifts
during training: the background is still mode-collapsed. Not fixed by a learning
rate of 1e-4 or λ_k = 0.001 (2500-step runs: corner 0.007 for both), nor by adding
skip connections (``generator.skip=True``; this command with it: spread 0.030,
corner 0.008 after 5000 steps, although an exploratory 2250-step run had reached
corner 0.25). The same command with a
larger ``--config.num_steps`` resumes and trains on.

2026-12-01, not shipped: Mao et al.'s mode-seeking term (``mode_seeking``, see
`cfmod_jax.train.began`) with a moving average of G (``ema_decay`` 0.999), one core per
run. λ_ms = 0.05: FD 352, 258, 243 at steps 2000–4000 (shipped model: 161.8 at 5000);
the samples spread in brightness (step 4000: pixel spread 0.45, corner 0.45 — light or
dark backgrounds) but every face and background turned brown: the term raises the L1
distance between samples most cheaply through lightness, not hue. λ_ms = 0.01 showed the
same brown light/dark split at step 2000 (FD 849, 518 at steps 1000, 2000); 0.02 reached
FD 760 at step 1000; both were stopped early to give the CPU to the benchmark. λ_ms =
0.005 (both cores, ~5 steps/s): FD 860, 547, 323, 209, 176, 173, 164, 181, 204, 182 at
steps 1000–10000; the backgrounds now vary (step 6000: brown or light blue-grey, corner
spread 0.31 against 0.006 for the shipped model, pixel spread 0.32) but the hue range
stays narrow and the FD is no better than the shipped 161.8, so it was not shipped
either. ``mode_seeking`` stays off (0) here.

2026-12-01, shipped: **feature matching** (``feature_matching``, see
`cfmod_jax.train.began`): G also matches the batch mean and spread of each dimension
of D's encoder code on real faces. The code has to describe the background colour
for D to reconstruct real faces, so a generator whose samples share one background
pays for it. One core per run, ~2.5 steps/s, moving average 0.999 in all:

* λ_fm = 0.1 (this config): FD 726, 316, 186, 138, 112, 102, 97, 87, 84, 79, 77, 76,
  73, 68, **67.5**, 69.6 at steps 1000–16000; faces with varied hair colour (blue,
  blond, red, black), skin and eyes from step ~5000, but the backgrounds stay grey
  (light to dark, little hue).
* λ_fm = 1: the backgrounds took the data's saturated hues (green, magenta, purple)
  by step 2000, but the faces formed slowly: FD 395, 295 at steps 2000, 4000
  (stopped). λ_fm = 0.3: FD 388 at step 2000 (stopped).
* λ_fm raised from 0.1 to 1 at step 7000 of the λ_fm = 0.1 run: pink and green
  backgrounds appeared within 2000 steps but the faces lost detail, FD 104, 136 at
  steps 8000, 9000 (the λ_fm = 0.1 run: 87, 84); stopped.
* learning rate halved to 1e-4 at step 10000 of the λ_fm = 0.1 run: FD 77.8, 78.7,
  76.8 at steps 11000–13000 against 77.4, 75.7, 73.2 without; stopped.

The FD target of 50 is not met: the best, 67.5 at step 15000, is 2.4× below the
earlier 161.8. What remains is the background hue; λ_fm = 1 shows the loss can
produce it, so a schedule that raises λ_fm once the faces have formed, more slowly
than the step change tried, or a wider discriminator, is where I would look next.
"""

import ml_collections

from cfmod_jax.train.config import base_config


def get_config() -> ml_collections.ConfigDict:
  config = base_config("began")
  config.batch_size = 16
  config.num_steps = 16000
  config.checkpoint_every = 1000
  config.keep_checkpoints = 40
  config.sample_every = 1000
  config.generator = ml_collections.ConfigDict(
    {"latent_dim": 64, "width": 16, "batch_norm": True, "skip": False}
  )
  config.discriminator = ml_collections.ConfigDict({"latent_dim": 64, "width": 16})
  config.gamma = 1.0
  config.lambda_k = 0.01
  config.k_init = 0.0
  config.mode_seeking = 0.0
  config.feature_matching = 0.1
  config.ema_decay = 0.999
  config.optimizer = ml_collections.ConfigDict({"learning_rate": 2e-4, "b1": 0.5, "b2": 0.999})
  return config


__all__ = ["get_config"]
