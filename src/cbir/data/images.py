"""One image file: decoding it as RGB within the pixel limit, why it cannot be used, its checksum and name."""

from __future__ import annotations

import errno
import hashlib
import importlib.metadata
import io
import os
import struct
import warnings
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

try:  # libjpeg-turbo without Pillow's overhead: the same pixels, faster (benchmarks/decoders.py)
    import simplejpeg
except ImportError:  # decoded by Pillow alone
    simplejpeg = None

try:  # HEIC/HEIF (iPhones' photos) through libheif: its Pillow opener, registered once for every reader
    import pillow_heif
except ImportError:  # HEIC files are reported as needing it (MissingDecoderError)
    pillow_heif = None
else:
    pillow_heif.register_heif_opener()

# Pillow opens a JPEG carrying a Multi-Picture (MPF) segment (many phones' photos: HDR gain maps,
# depth maps) as format "MPO"; its first picture is the photo, decoded as any JPEG
JPEG_FORMATS = frozenset({"JPEG", "MPO"})
HEIF_EXTENSIONS = frozenset({".heic", ".heif", ".hif"})  # .hif: Fujifilm's and Canon's HEIF
RAW_EXTENSIONS = frozenset({".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".raf", ".rw2"})
IMAGE_EXTENSIONS = (
    frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".avif"})
    | HEIF_EXTENSIONS
    | RAW_EXTENSIONS
)
RAW_FORMAT = "RAW"  # the ``format`` of an image opened from a RAW camera file
# an embedded preview is used unless it is a mere thumbnail: smaller than this on its shorter side and
# than the half-size demosaic would be (many cameras embed a 160 x 120 thumbnail besides the preview)
RAW_PREVIEW_MIN_SIDE = 320
# LibRaw's ``sizes.flip`` (dcraw's code: bit 4 transpose, 2 flip vertically, 1 horizontally) as EXIF orientation
EXIF_ORIENTATION_OF_FLIP = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"hevm", b"hevs")

ImageSource = str | os.PathLike[str] | BinaryIO


class MissingDecoderError(OSError):
    """A file in a format whose decoder package is not installed (the message names the package)."""


def open_within_pixel_limit(source: ImageSource, formats: tuple[str, ...] | None = None) -> Image.Image:
    """``Image.open`` that refuses any image above Pillow's pixel limit (``Image.MAX_IMAGE_PIXELS``).

    Pillow itself only warns between the limit and twice the limit (and refuses above); a
    decompression bomb in that range would still be decoded, so it is refused here too.

    A RAW camera file (by extension, or by content for an open file) opens as its embedded preview,
    its orientation in its EXIF (not decoded yet), or as its half-size demosaic (decoded, upright); its
    ``format`` is ``"RAW"`` either way. ``formats``: Pillow's formats tried (all when None).
    """
    image, _, raw = _open_image(source, formats)
    if raw:
        image.format = RAW_FORMAT  # not to be sent anywhere as a JPEG file: the file is the RAW
    return image


def _open_image(source: ImageSource, formats: tuple[str, ...] | None = None) -> tuple[Image.Image, Any, bool]:
    """The opened image, where its encoded bytes are read (what :func:`decode_jpeg_fast` decodes), and
    whether it came from a RAW camera file (its preview, of format JPEG, or its demosaic)."""
    if is_raw(source):
        return (*_open_raw(source), True)
    if pillow_heif is None and is_heif(source):
        raise MissingDecoderError("HEIC/HEIF photos need the pillow-heif package (pip install -r requirements.txt)")
    return _open_pillow(source, formats), source, False


def _open_pillow(source: ImageSource, formats: tuple[str, ...] | None = None) -> Image.Image:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        image = Image.open(source, formats=formats)
    return _within_pixel_limit(image, image.width, image.height)


def _within_pixel_limit(image: Any, width: int, height: int, what: str = "image") -> Any:
    """``image``, or closed and refused when ``width`` x ``height`` is above Pillow's pixel limit."""
    limit = Image.MAX_IMAGE_PIXELS
    if limit and width * height > limit:
        image.close()
        raise Image.DecompressionBombError(
            f"{what} of {width}x{height} = {width * height} pixels exceeds the limit of "
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


def load_rgb_image(path: ImageSource, draft_to: int | None = None) -> Image.Image:
    """Open an image (a path or an open binary file) decoded as RGB, with its EXIF orientation applied.

    Transparency is composited on white; 16-bit grey images are scaled to 8 bits; CMYK, grey
    and palette images are converted. Images above Pillow's pixel limit are refused
    (:class:`PIL.Image.DecompressionBombError`). HEIC/HEIF through pillow-heif (libheif turns the
    picture as its container says, and leaves the EXIF orientation at 1), AVIF through Pillow, RAW
    camera files through rawpy (:func:`open_within_pixel_limit`: the preview is decoded as a JPEG).

    ``draft_to``: a JPEG whose sides are both at least twice this is decoded at a reduced scale
    (libjpeg's DCT scaling, 1/2 to 1/8) that keeps both sides at least twice it, several times
    faster than decoding every pixel of a large photo that is then shrunk anyway.
    """
    return load_rgb_image_sized(path, draft_to)[0]


def load_rgb_image_sized(path: ImageSource, draft_to: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """:func:`load_rgb_image` and the image's full size as displayed, from one opening (a RAW is read once)."""
    image, encoded, _ = _open_image(path)
    with image:
        size = displayed_size(image)
        scale = jpeg_draft_scale(image, draft_to)
        decoded = decode_jpeg_fast(encoded, image, scale)
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
            return Image.alpha_composite(background, rgba).convert("RGB"), size
        return image.convert("RGB"), size


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


def is_raw(source: ImageSource) -> bool:
    """Whether ``source`` is a RAW camera file: by extension for a path (any case), by content for an open file."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source).suffix.lower() in RAW_EXTENSIONS
    return raw_signature(_file_head(source, 1 << 16))  # a camera's first TIFF directory is in its first bytes


def is_heif(source: ImageSource) -> bool:
    """Whether ``source`` is a HEIC/HEIF file: by extension for a path (any case), by its brand for an open file."""
    if isinstance(source, (str, os.PathLike)):
        return Path(source).suffix.lower() in HEIF_EXTENSIONS
    head = _file_head(source, 12)
    return head[4:8] == b"ftyp" and head[8:12] in _HEIF_BRANDS


def raw_signature(data: bytes) -> bool:
    """Whether ``data`` starts as a RAW camera file: Fujifilm, Olympus, Panasonic and Canon CR3 by their
    magic; TIFF-based RAWs (DNG, CR2, NEF, ARW) by DNG's version tag, CR2's marker, or a first directory
    holding a reduced-resolution image or CFA data (an ordinary TIFF holds its picture there)."""
    if data.startswith((b"FUJIFILMCCD-RAW", b"IIRO", b"IIRS", b"MMOR", b"IIU\0")) or data[4:12] == b"ftypcrx ":
        return True
    tags = _first_tiff_directory(data)
    return bool(tags) and (
        data[8:10] == b"CR" or 50706 in tags or tags.get(254) == 1 or tags.get(262) in (32803, 34892)
    )


def _first_tiff_directory(data: bytes) -> dict[int, int | None]:
    """The tags of a TIFF's first directory with their SHORT or LONG value (None for other types); {} if none."""
    order = {b"II": "<", b"MM": ">"}.get(data[:2])
    if order is None:
        return {}
    try:
        magic, offset = struct.unpack_from(order + "HI", data, 2)
        if magic != 42:
            return {}
        (count,) = struct.unpack_from(order + "H", data, offset)
        tags: dict[int, int | None] = {}
        for i in range(min(count, 1024)):
            tag, kind, _, value = struct.unpack_from(order + "HHI4s", data, offset + 2 + 12 * i)
            tags[tag] = struct.unpack_from(order + ("H" if kind == 3 else "I"), value)[0] if kind in (3, 4) else None
        return tags
    except struct.error:  # cut short
        return {}


def _rawpy() -> Any:
    try:
        import rawpy  # imported on first use: LibRaw's 0.1 s of start-up only RAW files need
    except ImportError as error:
        message = "RAW camera files need the rawpy package (pip install -r requirements.txt)"
        raise MissingDecoderError(message) from error
    return rawpy


def _open_raw(source: ImageSource) -> tuple[Image.Image, Any]:
    """A RAW camera file as :func:`_open_image` gives it: its embedded preview (a JPEG read from the
    returned bytes, not decoded yet, or a bitmap) carrying the RAW's orientation as EXIF, unless there
    is only a thumbnail; else LibRaw's half-size demosaic with the camera's white balance, upright."""
    rawpy = _rawpy()
    file = str(source) if isinstance(source, (str, os.PathLike)) else io.BytesIO(_file_bytes(source))
    try:
        opened = rawpy.imread(file)
    except rawpy.LibRawError as error:
        raise OSError(f"not a RAW file LibRaw can read ({_libraw_message(error)})") from error
    with opened as raw:
        sizes = raw.sizes
        _within_pixel_limit(raw, max(sizes.width, sizes.raw_width), max(sizes.height, sizes.raw_height), "RAW image")
        preview, encoded = _raw_preview(raw, rawpy)
        if preview is not None and min(preview.size) >= min(RAW_PREVIEW_MIN_SIDE, min(sizes.width, sizes.height) // 2):
            exif = preview.getexif()  # the RAW's orientation, over any the preview carries (LibRaw writes it)
            exif[ExifTags.Base.Orientation] = EXIF_ORIENTATION_OF_FLIP.get(sizes.flip, 1)
            preview.info["exif"] = exif.tobytes()
        else:
            if preview is not None:
                preview.close()
            try:  # LibRaw applies the orientation itself
                pixels = raw.postprocess(half_size=True, use_camera_wb=True, output_bps=8)
            except rawpy.LibRawError as error:
                raise OSError(f"LibRaw cannot decode this RAW file ({_libraw_message(error)})") from error
            preview, encoded = Image.fromarray(pixels), None
    return preview, encoded


def _raw_preview(raw: Any, rawpy: Any) -> tuple[Image.Image | None, Any]:
    """The embedded preview LibRaw picks (the largest) and its JPEG bytes (None for a bitmap); None if there is none."""
    try:
        thumb = raw.extract_thumb()
    except rawpy.LibRawError:  # no preview, or one in a format LibRaw does not extract
        return None, None
    if thumb.format == rawpy.ThumbFormat.BITMAP:
        return Image.fromarray(np.ascontiguousarray(thumb.data)), None
    encoded = io.BytesIO(thumb.data)
    try:
        image = _open_pillow(encoded, ("JPEG", "MPO"))
    except (OSError, SyntaxError, ValueError):  # a damaged preview: the demosaic decides
        return None, None
    return image, encoded


def _libraw_message(error: Exception) -> str:
    """LibRaw's message as text (rawpy gives it as bytes)."""
    message = error.args[0] if error.args else type(error).__name__
    return message.decode("utf-8", "replace") if isinstance(message, bytes) else str(message)


def decoders_stamp() -> str:
    """The format packages' versions ("missing" where not installed): with Pillow's, what decides which files
    this reader decodes (for caches of what a file was found to be, :func:`cbir.data.inspection.records_stamp`)."""
    versions = []
    for package in ("pillow-heif", "rawpy"):
        try:
            versions.append(f"{package} {importlib.metadata.version(package)}")
        except importlib.metadata.PackageNotFoundError:
            versions.append(f"{package} missing")
    return "; ".join(versions)


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """An opened image's width and height as displayed, turned by its EXIF orientation (not decoded)."""
    turned = image.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
    return (image.height, image.width) if turned else image.size


def _file_head(source: BinaryIO, size: int) -> bytes:
    """The first ``size`` bytes of an open file (left where it was)."""
    position = source.tell()
    source.seek(0)
    try:
        return source.read(size)
    finally:
        source.seek(position)


def _file_bytes(source: ImageSource) -> bytes:
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
    except MissingDecoderError as error:
        return f"cannot decode: {error}"
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
