"""One image file: decoding it as RGB within the pixel limit, why it cannot be used, its checksum and name."""

from __future__ import annotations

import errno
import hashlib
import os
import warnings
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:  # libjpeg-turbo without Pillow's overhead: the same pixels, faster (benchmarks/decoders.py)
    import simplejpeg
except ImportError:  # decoded by Pillow alone
    simplejpeg = None

# Pillow opens a JPEG carrying a Multi-Picture (MPF) segment (many phones' photos: HDR gain maps,
# depth maps) as format "MPO"; its first picture is the photo, decoded as any JPEG
JPEG_FORMATS = frozenset({"JPEG", "MPO"})
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)


def open_within_pixel_limit(path: str | Path) -> Image.Image:
    """``Image.open`` that refuses any image above Pillow's pixel limit (``Image.MAX_IMAGE_PIXELS``).

    Pillow itself only warns between the limit and twice the limit (and refuses above); a
    decompression bomb in that range would still be decoded, so it is refused here too.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(path)
    limit = Image.MAX_IMAGE_PIXELS
    if limit and image.width * image.height > limit:
        image.close()
        raise Image.DecompressionBombError(
            f"image of {image.width}x{image.height} = {image.width * image.height} pixels exceeds the limit of "
            f"{limit} pixels (PIL.Image.MAX_IMAGE_PIXELS), could be a decompression bomb"
        )
    return image


def _high_bit_depth_to_8bit(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grey images scaled to 8 bits (``convert`` would clip every value above 255).

    ``I;16*`` images are scaled from 0..65535; ``I`` and ``F`` images are taken as 16-bit when
    their maximum is above 255 and as 8-bit otherwise.
    """
    if not (image.mode.startswith("I;16") or image.mode in ("I", "F")):
        return image
    values = np.asarray(image, dtype=np.float64)
    if image.mode.startswith("I;16") or (values.size and values.max() > 255):
        values = values / 257.0
    return Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), mode="L")


def load_rgb_image(path: str | Path | BinaryIO, draft_to: int | None = None) -> Image.Image:
    """Open an image (a path or an open binary file) decoded as RGB, with its EXIF orientation applied.

    Transparency is composited on white; 16-bit grey images are scaled to 8 bits; CMYK, grey
    and palette images are converted. Images above Pillow's pixel limit are refused
    (:class:`PIL.Image.DecompressionBombError`).

    ``draft_to``: a JPEG whose sides are both at least twice this is decoded at a reduced scale
    (libjpeg's DCT scaling, 1/2 to 1/8) that keeps both sides at least twice it, several times
    faster than decoding every pixel of a large photo that is then shrunk anyway.
    """
    with open_within_pixel_limit(path) as image:
        scale = jpeg_draft_scale(image, draft_to)
        decoded = decode_jpeg_fast(path, image, scale)
        if decoded is None:
            if scale > 1:
                image.draft("RGB", (2 * draft_to, 2 * draft_to))
            image.load()
            decoded = image
        image = _high_bit_depth_to_8bit(ImageOps.exif_transpose(decoded))
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # composite on white rather than letting convert() drop alpha onto black
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")


def jpeg_draft_scale(image: Image.Image, draft_to: int | None) -> int:
    """The DCT scale denominator (1, 2, 4 or 8) a JPEG is decoded at for ``draft_to`` (1: in full):
    the largest keeping both sides at least twice ``draft_to``, as Pillow's ``draft`` picks it."""
    if not draft_to or image.format not in JPEG_FORMATS or len(image.tile) != 1 or min(image.size) < 2 * draft_to:
        return 1
    room = min(image.width // (2 * draft_to), image.height // (2 * draft_to))
    return next(scale for scale in (8, 4, 2, 1) if room >= scale)


def decode_jpeg_fast(path: str | Path | BinaryIO, image: Image.Image, scale: int = 1) -> Image.Image | None:
    """A colour or grey JPEG decoded by simplejpeg at 1/``scale``, with the opened ``image``'s metadata
    (EXIF orientation); None where Pillow decodes it: simplejpeg not installed, another format or
    colour space (CMYK), or data that libjpeg-turbo reports damaged (Pillow then says why).

    Both use libjpeg-turbo with the same settings (accurate integer DCT, fancy upsampling), so the
    pixels are Pillow's (``tests/test_images.py`` holds them equal) at 1.1–2.2× the speed.
    """
    if simplejpeg is None or image.format not in JPEG_FORMATS or image.mode not in ("RGB", "L"):
        return None
    width, height = -(-image.width // scale), -(-image.height // scale)
    try:
        pixels = simplejpeg.decode_jpeg(
            _file_bytes(path),
            colorspace="RGB" if image.mode == "RGB" else "GRAY",
            min_width=width,
            min_height=height,
            min_factor=scale,
        )
    except ValueError:
        return None
    if pixels.shape[:2] != (height, width):  # another scale than Pillow's: decode as Pillow does
        return None
    decoded = Image.fromarray(pixels[..., 0] if image.mode == "L" else pixels, mode=image.mode)
    decoded.info.update(image.info)  # EXIF and XMP: the orientation exif_transpose applies
    return decoded


def _file_bytes(source: str | Path | BinaryIO) -> bytes:
    """The whole content of a file, by path or from an open file object (left where it was)."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source).read_bytes()
    position = source.tell()
    source.seek(0)
    try:
        return source.read()
    finally:
        source.seek(position)


def link_problem(path: Path) -> str | None:
    """Why a symbolic link cannot be followed (None when it can, or is no link)."""
    if not path.is_symlink():
        return None
    try:
        path.resolve(strict=True)
    except RuntimeError:  # Python < 3.13 reports a loop this way
        return "symbolic link loop"
    except OSError as error:
        if error.errno == errno.ELOOP:
            return "symbolic link loop"
        return f"broken symbolic link (to '{display_path(os.readlink(path))}')"
    return None


def unreadable_reason(path: Path) -> str | None:
    """Why a file cannot be used as an image (None when it can): extension, decoding, pixel limit."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file extension ({path.suffix or 'none'})"
    problem = link_problem(path)
    if problem:
        return problem
    try:
        if path.stat().st_size == 0:
            return "empty file (0 bytes)"
        load_rgb_image(path)
    except Image.DecompressionBombError as error:
        return f"too many pixels: {error}"
    except UnidentifiedImageError as error:
        return f"cannot decode: not an image Pillow can read ({error})"
    except Exception as error:  # Pillow raises many types for a damaged file; none may stop the scan
        return f"cannot decode: {type(error).__name__}: {error}"
    return None


def display_path(path: str | os.PathLike[str]) -> str:
    """``path`` as text that can always be written to a UTF-8 file (undecodable bytes as \\xNN)."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def is_utf8_name(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name whose bytes are not UTF-8 (held as surrogates)
        return False
    return True


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
