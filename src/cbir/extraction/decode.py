"""JPEGs decoded in batches on the extraction device (``extraction.decode: device``).

On CUDA, ``decode_jpeg(..., device="cuda")`` decodes a whole batch with nvJPEG, for when CPU
decoding workers cannot keep the GPU busy; the workers then only read the files. The images are
resized on the same device. The decoder is TorchCodec's (PyPI ``torchcodec``), or torchvision's,
deprecated since torchvision 0.29, where TorchCodec is not installed: on the CPU both give
libjpeg-turbo's pixels, Pillow's. Other formats, CMYK JPEGs and any JPEG the device decoder
refuses are decoded by Pillow, as ``decode: pillow`` decodes them. Large JPEGs are decoded in
full (no draft scale), so features differ slightly from a Pillow-decoded gallery's.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.io import ImageReadMode
from torchvision.io import decode_jpeg as torchvision_decode_jpeg
from torchvision.transforms.v2 import functional as F

from cbir.data.images import JPEG_FORMATS, load_rgb_image, open_within_pixel_limit

log = logging.getLogger(__name__)


@functools.cache
def torchcodec_decoder() -> Callable[..., Any] | None:
    """TorchCodec's ``decode_jpeg``, the maintained home of PyTorch's image decoders (torchvision's are
    deprecated since 0.29); None where it is not installed or cannot load here (torchvision's then)."""
    try:  # imported on first use: extraction with decode: pillow never loads it
        from torchcodec.decoders import decode_jpeg
    except Exception as error:  # not installed, or a build for another torch or CUDA: its library fails to load
        log.info("TorchCodec cannot be used (%s): torchvision's decode_jpeg decodes", error)
        return None
    return decode_jpeg


def decode_jpegs(data: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """JPEG files' bytes (1-D uint8 tensors on the CPU) decoded on ``device`` in one call: RGB uint8
    (3, H, W), EXIF orientation applied. Raises RuntimeError or ValueError when one cannot be decoded."""
    if (decode_jpeg := torchcodec_decoder()) is not None:
        return list(decode_jpeg(data, mode="RGB", device=device))  # applies the EXIF orientation
    with warnings.catch_warnings():  # its deprecation in favour of TorchCodec, said once in the docs
        warnings.simplefilter("ignore", DeprecationWarning)
        return list(torchvision_decode_jpeg(data, mode=ImageReadMode.RGB, device=device, apply_exif_orientation=True))


@dataclass(frozen=True)
class EncodedImage:
    """A JPEG file's bytes (``is_jpeg``), or an image Pillow decoded, as RGB uint8 pixels (3, H, W)."""

    path: str
    data: torch.Tensor
    is_jpeg: bool


class EncodedFiles(Dataset):
    """The files as the device decoder takes them: JPEG bytes, anything else decoded by Pillow."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> EncodedImage:
        path = self.paths[index]
        try:
            with open_within_pixel_limit(path) as image:  # the pixel limit holds for the device decoder too
                is_jpeg = image.format in JPEG_FORMATS and image.mode in ("RGB", "L")
            if is_jpeg:
                return EncodedImage(path, torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8), True)
            return EncodedImage(path, F.pil_to_tensor(load_rgb_image(path)), False)
        except Exception as error:
            raise RuntimeError(f"cannot read image '{path}': {error}") from error


def _decode_one(item: EncodedImage, device: torch.device) -> torch.Tensor:
    try:
        return decode_jpegs([item.data], device)[0]
    except (RuntimeError, ValueError) as refused:  # nvJPEG lacks some JPEG variants: Pillow's turn
        log.warning("'%s' decoded by Pillow: the %s decoder refused it (%s)", item.path, device, refused)
        try:
            return F.pil_to_tensor(load_rgb_image(item.path))
        except Exception as error:
            raise RuntimeError(f"cannot read image '{item.path}': {error}") from error


def decode_batch(items: Sequence[EncodedImage], device: torch.device) -> list[torch.Tensor]:
    """Every image as RGB uint8 pixels (3, H, W) on ``device``; the JPEGs decoded there in one call."""
    images = [item.data for item in items]
    jpegs = [i for i, item in enumerate(items) if item.is_jpeg]
    if jpegs:
        try:
            decoded = decode_jpegs([items[i].data for i in jpegs], device)
        except (RuntimeError, ValueError):  # one file spoils the batch: each alone, to name it or give it to Pillow
            decoded = [_decode_one(items[i], device) for i in jpegs]
        for i, image in zip(jpegs, decoded, strict=True):
            images[i] = image
    return [image.to(device) for image in images]


def preprocess_batch(
    images: Sequence[torch.Tensor], size: Sequence[int], mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
    """The network's input batch: each image resized (bilinear, antialiased) on its device, scaled, normalised."""
    resized = torch.stack([F.resize(image, [int(s) for s in size], antialias=True) for image in images])
    return F.normalize(F.to_dtype(resized, torch.float32, scale=True), list(mean), list(std))


def device_decoded_batches(
    paths: Sequence[str],
    preprocessing: dict,
    device: torch.device,
    *,
    batch_size: int,
    num_workers: int,
) -> Iterator[torch.Tensor]:
    """Input batches of ``paths``: files read by the DataLoader's workers, decoded and resized on ``device``."""
    loader = DataLoader(EncodedFiles(paths), batch_size=batch_size, num_workers=num_workers, collate_fn=list)
    for items in loader:
        images = decode_batch(items, device)
        yield preprocess_batch(images, preprocessing["resize"], preprocessing["mean"], preprocessing["std"])
