"""The poolings of a feature network, torch-free so that the config checks can name them."""

from __future__ import annotations

POOLINGS = ("none", "avg", "gem")
DEFAULT_GEM_P = 3.0  # GeM's power where the config sets no gem_p (Radenovic et al.'s initial value)
