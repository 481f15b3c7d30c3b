"""The torch modules of a feature network: a backbone's trunk followed by its pooling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cbir.backbones import POOLINGS


class GeM(nn.Module):
    """Generalised-mean pooling over the spatial grid (Radenovic et al.), fixed p."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p, self.eps = p, eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)


class FeatureNetwork(nn.Module):
    """Convolutional trunk followed by the configured pooling, giving (batch, dim) features."""

    def __init__(self, trunk: nn.Module, pooling: str, layer: str, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling '{pooling}' is not one of {', '.join(POOLINGS)}")
        self.trunk = trunk
        self.pooling = pooling
        self.layer = layer
        self.mean, self.std = tuple(mean), tuple(std)
        self.gem = GeM()

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        maps = self.trunk(images)
        if self.pooling == "avg":
            return maps.mean(dim=(-2, -1))
        if self.pooling == "gem":
            return self.gem(maps.float())
        return maps.flatten(start_dim=1)


class EfficientNetTrunk(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(images)
