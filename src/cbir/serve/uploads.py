"""Uploaded images: their content type and size checked, then decoded as the gallery's images were."""

from __future__ import annotations

import base64
import io
from dataclasses import dataclass

from fastapi import UploadFile
from PIL import Image, UnidentifiedImageError

from cbir.data.images import (
    MissingDecoderError,
    displayed_size,
    is_raw,
    load_rgb_image_sized,
    open_within_pixel_limit,
)

Image.init()  # every Pillow plugin registered: UPLOAD_FORMATS keeps those this installation opens
# Pillow's formats an upload may be in (HEIF: pillow-heif's, where installed); RAW camera files are told by
# their content and read by rawpy, as the gallery's are (cbir.data.images)
UPLOAD_FORMATS = tuple(
    name for name in ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "AVIF", "HEIF") if name in Image.OPEN
)
QUERY_PREVIEW_PIXELS = 320  # the longer side of the query as the page shows it


class UploadError(Exception):
    """An image that cannot be searched: the HTTP status and a message for the user."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


@dataclass(frozen=True)
class DecodedUpload:
    """An upload decoded as the gallery's images were, and its size as displayed (in full, turned by EXIF)."""

    image: Image.Image
    width: int
    height: int


def decode_image(data: bytes, max_pixels: int, draft_to: int | None = None) -> DecodedUpload:
    """Decode image bytes to RGB (EXIF orientation applied), refusing non-images and oversized images.

    ``draft_to``: the gallery's draft side (:attr:`cbir.extraction.network.PreparedNetwork.draft_to`): a large
    JPEG is decoded at the reduced DCT scale its images were (a RAW's JPEG preview too).
    """
    if not data:
        raise UploadError(400, "the upload is empty")
    if is_raw(io.BytesIO(data)):  # LibRaw reads the whole file to open it: probe and decode in one pass
        image, (width, height) = _decode(data, draft_to)
        check_pixels(width, height, max_pixels)  # the sensor's size was held to Pillow's limit before decoding
        return DecodedUpload(image, width, height)
    try:
        with open_within_pixel_limit(io.BytesIO(data), formats=UPLOAD_FORMATS) as probe:
            # the limit first, from the header alone: reading the orientation may load a truncated body
            check_pixels(*probe.size, max_pixels)
            width, height = displayed_size(probe)
    except Image.DecompressionBombError as error:
        raise UploadError(413, f"the image has too many pixels (decompression bomb?): {error}") from error
    except UnidentifiedImageError as error:
        raise UploadError(
            422, f"the upload is not an image in a format this server reads ({', '.join(UPLOAD_FORMATS)}, RAW)"
        ) from error
    except MissingDecoderError as error:
        raise UploadError(422, f"the image cannot be read on this server: {error}") from error
    except (OSError, SyntaxError, ValueError) as error:
        raise UploadError(422, f"the image cannot be read: {type(error).__name__}: {error}") from error
    return DecodedUpload(_decode(data, draft_to)[0], width, height)


def _decode(data: bytes, draft_to: int | None) -> tuple[Image.Image, tuple[int, int]]:
    try:
        return load_rgb_image_sized(io.BytesIO(data), draft_to)
    except Image.DecompressionBombError as error:
        raise UploadError(413, f"the image has too many pixels (decompression bomb?): {error}") from error
    except MissingDecoderError as error:
        raise UploadError(422, f"the image cannot be read on this server: {error}") from error
    except Exception as error:  # a truncated or corrupt file fails only when decoded
        raise UploadError(422, f"the image cannot be decoded: {type(error).__name__}: {error}") from error


def preview_data_url(image: Image.Image, side: int = QUERY_PREVIEW_PIXELS) -> str:
    """A small JPEG of the decoded upload as a ``data:`` URL: the page shows the query as the server read it,
    so a HEIC or RAW query shows in any browser (and with the orientation the search used)."""
    preview = image.copy()
    preview.thumbnail((side, side))
    buffer = io.BytesIO()
    preview.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def check_pixels(width: int, height: int, max_pixels: int) -> None:
    if width * height > max_pixels:
        raise UploadError(
            413, f"the image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} pixels"
        )


def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    """The bytes of an uploaded file that declares an image content type and is within ``max_bytes``."""
    content_type = (upload.content_type or "application/octet-stream").split(";")[0].strip().lower()
    if not (content_type.startswith("image/") or content_type == "application/octet-stream"):
        raise UploadError(415, f"the upload's content type is '{content_type}'; send an image (image/*)")
    data = upload.file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadError(413, f"the upload is larger than the limit of {describe_size(max_bytes)}")
    return data


def describe_size(n_bytes: int) -> str:
    """``512 KB``, ``10 MB``: a byte limit as the messages name it."""
    return f"{n_bytes / 1024 / 1024:.3g} MB" if n_bytes >= 1024 * 1024 else f"{n_bytes / 1024:.3g} KB"
