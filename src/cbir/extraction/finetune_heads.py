"""The classification heads fine-tuning trains on top of the pooled features, and their loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cbir.extraction.finetune_settings import FinetuneSettings


class LinearHead(nn.Module):
    """A linear classifier (loss ``ce``)."""

    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, classes)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self.linear(features)


class MarginHead(nn.Module):
    """A cosine classifier (normalised features and class weights) with a margin on the true class.

    CosFace (Wang et al., 2018) subtracts ``margin`` from the true class's cosine; ArcFace (Deng et al.,
    2019) adds it to the angle. The logits are ``scale`` times the cosines; without labels (prediction)
    no margin is applied.
    """

    def __init__(self, dim: int, classes: int, kind: str, margin: float, scale: float) -> None:
        super().__init__()
        if kind not in ("cosface", "arcface"):
            raise ValueError(f"unknown margin head {kind!r}")
        self.kind, self.margin, self.scale = kind, margin, scale
        self.weight = nn.Parameter(torch.empty(classes, dim))
        nn.init.xavier_uniform_(self.weight)

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cosine = F.linear(F.normalize(features), F.normalize(self.weight))
        if labels is None:
            return self.scale * cosine
        target = cosine.gather(1, labels[:, None])
        if self.kind == "cosface":
            adjusted = target - self.margin
        else:
            sine = (1 - target.square()).clamp(min=1e-7).sqrt()  # clamped: the gradient of sqrt at 0 is infinite
            adjusted = target * math.cos(self.margin) - sine * math.sin(self.margin)
            # past pi - margin, cos(angle + margin) would rise again: there the penalty is CosFace's (insightface)
            beyond = target <= math.cos(math.pi - self.margin)
            adjusted = torch.where(beyond, target - math.sin(math.pi - self.margin) * self.margin, adjusted)
        return self.scale * cosine.scatter(1, labels[:, None], adjusted)


def make_head(settings: FinetuneSettings, dim: int, classes: int) -> nn.Module:
    if settings.loss == "ce":
        return LinearHead(dim, classes)
    return MarginHead(dim, classes, settings.loss, settings.margin, settings.scale)


def head_loss(settings: FinetuneSettings, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    smoothing = settings.label_smoothing if settings.loss == "ce" else 0.0
    return F.cross_entropy(logits.float(), labels, label_smoothing=smoothing)
