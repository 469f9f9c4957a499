"""Applications built on the core: the engine never imports them; the main job uses
factors and quality for its factor-transfer and hybrid-realism sections.

factors      factor transfer: which module carries which image factor
memory       XLA's own memory account of the engine, beside `cfmod_jax.memory`'s estimate
quality      the feature network's Fréchet distance and hybrid realism
robustness   module stability under changes of the analysis settings
transfer     style transfer between images through modules
"""
