"""The feature network of a backbone spec: built, weights loaded, pooled, in eval mode."""

from __future__ import annotations

import torch

from cbir.extraction.layers import FeatureNetwork
from cbir.extraction.registry import BackboneSpec, get_backbone


def build_backbone(spec: BackboneSpec, seed: int = 0) -> FeatureNetwork:
    """The feature network for a backbone spec, in eval mode on the CPU."""
    entry = get_backbone(spec.arch)
    if problem := entry.image_size_problem(spec.image_size):
        raise ValueError(problem)
    torch.manual_seed(seed)  # only matters for random weights
    model = entry.build()
    entry.load_weights(model, spec.weights)
    return FeatureNetwork(entry.trunk(model), spec.pooling, entry.layer, entry.mean, entry.std, gem_p=spec.gem_p).eval()


def feature_dim(network: FeatureNetwork, image_size: int) -> int:
    with torch.inference_mode():
        return int(network(torch.zeros(1, 3, image_size, image_size)).shape[1])
