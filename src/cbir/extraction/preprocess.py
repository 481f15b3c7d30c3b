"""What extraction does to a decoded image, as recorded in every feature file, and its transform."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torchvision.transforms import v2 as transforms

from cbir.extraction.registry import BackboneSpec

if TYPE_CHECKING:
    from cbir.extraction.layers import FeatureNetwork

# what this version of cbir does to a decoded image: a recorded description that differs cannot be followed
DECODE = "PIL, EXIF orientation applied, RGB (alpha composited on white)"
# extraction.decode: device (cbir.extraction.decode); queries of such a gallery are decoded by PIL
DEVICE_DECODE = (
    "decode_jpeg (TorchCodec, else torchvision) in batches on the extraction device (nvJPEG on CUDA), EXIF "
    "orientation applied, RGB; other formats by PIL"
)


DECODE_METHODS = {"pillow": DECODE, "device": DEVICE_DECODE}
INTERPOLATION = "bilinear, antialiased"
SCALE = "0..1"


def preprocessing_description(spec: BackboneSpec, network: FeatureNetwork, decode: str = "pillow") -> dict[str, Any]:
    """The preprocessing of a backbone, as recorded in every feature file (``decode``: extraction.decode)."""
    if decode not in DECODE_METHODS:
        raise ValueError(f"unknown decode method {decode!r}: one of {', '.join(DECODE_METHODS)}")
    return {
        "decode": DECODE_METHODS[decode],
        # Pillow decodes JPEGs of at least twice the input size at a reduced DCT scale (images.load_rgb_image)
        "jpeg_draft": decode == "pillow",
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
    expected = {"interpolation": INTERPOLATION, "scale": SCALE}
    differing = {key: description.get(key) for key, value in expected.items() if description.get(key) != value}
    if description.get("decode") not in DECODE_METHODS.values():
        differing["decode"] = description.get("decode")
        expected["decode"] = " or ".join(DECODE_METHODS.values())
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
