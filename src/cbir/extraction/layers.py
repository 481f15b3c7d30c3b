"""The torch modules of a feature network: a backbone's trunk followed by its pooling."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from cbir.extraction.pooling import DEFAULT_GEM_P, POOLINGS


class GeM(nn.Module):
    """Generalised-mean pooling over the spatial grid (Radenovic et al.), with a fixed power ``p``.

    ``(mean x^p)^(1/p)`` over each channel's map, activations clamped at ``eps`` (GeM is defined for
    non-negative values): p = 1 is average pooling, and a large p tends to max pooling. Computed
    relative to each map's maximum, so that a large p cannot overflow.
    """

    def __init__(self, p: float = DEFAULT_GEM_P, eps: float = 1e-6) -> None:
        super().__init__()
        if not p > 0:
            raise ValueError(f"the GeM power p must be above 0, not {p}")
        self.p, self.eps = float(p), eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(min=self.eps)
        scale = x.amax(dim=(-2, -1), keepdim=True)
        pooled = (x / scale).pow(self.p).mean(dim=(-2, -1)).pow(1.0 / self.p)
        return pooled * scale[..., 0, 0]


class FeatureNetwork(nn.Module):
    """Convolutional trunk followed by the configured pooling, giving (batch, dim) features."""

    def __init__(
        self,
        trunk: nn.Module,
        pooling: str,
        layer: str,
        mean: Sequence[float],
        std: Sequence[float],
        gem_p: float = DEFAULT_GEM_P,
    ):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling '{pooling}' is not one of {', '.join(POOLINGS)}")
        self.trunk = trunk
        self.pooling = pooling
        self.layer = layer
        self.mean, self.std = tuple(mean), tuple(std)
        self.gem = GeM(gem_p)

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


class VisionTransformerGrid(nn.Module):
    """A torchvision VisionTransformer's encoder output as a feature map.

    The patch tokens after the encoder's final LayerNorm, laid out on their grid: (batch, hidden,
    size / patch, size / patch), 768 x 14 x 14 for ViT-B/16 at 224 px. The class token passes
    through the encoder (the patch tokens attend to it) but is not part of the map, so ``avg`` is
    the mean patch token, ``gem`` its generalised mean (negative values clamped, as GeM does
    everywhere) and ``none`` the whole grid. The classification head is not used.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        model = self.model
        tokens = model._process_input(images)  # (batch, patches, hidden); checks the image size
        batch = tokens.shape[0]
        tokens = torch.cat([model.class_token.expand(batch, -1, -1), tokens], dim=1)
        patches = model.encoder(tokens)[:, 1:]
        rows, cols = images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size
        return patches.transpose(1, 2).reshape(batch, -1, rows, cols)
