"""A phone or NAS photo export as people have it, generated: month folders, a Dups folder, and beside the photos
videos, sidecars, OS files, a note, a symlink, a truncated and an empty JPEG, a non-ASCII name, hidden folders;
with ``formats=True`` HEIC, AVIF and DNG photos too, and a camera's RAW+JPEG and RAW+HEIC pairs."""

from __future__ import annotations

import io
import struct
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image

try:  # writing HEIC (pillow-heif, requirements.txt): registered as cbir's reader registers it
    import pillow_heif
except ImportError:  # make_photo_export(formats=True) and save(*.heic) then fail; the tests skip first
    pillow_heif = None
else:
    pillow_heif.register_heif_opener()

ORIENTATION = ExifTags.Base.Orientation

# what the export holds besides its photos, as (path inside the export, kind under which it is ignored)
IGNORED = {
    "Thumbs.db": "os_file",
    "desktop.ini": "os_file",
    "2024/01/.DS_Store": "os_file",
    "2024/01/._IMG_1000.HEIC": "os_file",  # an AppleDouble resource fork, not a photo
    "2024/02/notes.txt": "other",
    "2024/03/IMG_0003.AAE": "sidecar",
    "2024/04/IMG_0004.jpg.xmp": "sidecar",
    "2024/06/IMG_0100.MOV": "video",
    "Dups/clip.mp4": "video",
}
IGNORED_FOLDERS = {  # (folder inside the export, kind, files below it)
    "2024/.thumbnails": ("system_folder", 2),
    "2024/03/@eaDir": ("system_folder", 2),
    ".private": ("hidden_folder", 1),
}
EXCLUDED = {  # claims to be a photo and cannot be read: (path inside the export, start of the reason)
    "2024/05/IMG_0005_truncated.jpg": "cannot decode",
    "2024/07/IMG_0007_empty.jpg": "empty file (0 bytes)",
}
N_PHOTOS = 18  # 12 months, 2 more in June, a non-ASCII name, a symlink to a photo, 2 in Dups
# make_photo_export(formats=True) adds these photos, as (path inside the export, how write_photo writes it) ...
FORMAT_PHOTOS = {
    "2024/10/IMG_1010.HEIC": "HEIC",
    "2024/10/IMG_1011.heic": "HEIC",
    "2024/11/IMG_1110.avif": "AVIF",
    "2024/11/IMG_1111.AVIF": "AVIF",
    "2024/12/DSC_1210.DNG": "DNG",  # the sensor's mosaic alone: LibRaw's half-size demosaic
    "2024/12/DSC_1211.dng": "DNG with preview",  # a full-size JPEG preview, as most cameras' RAW files hold
    "2024/12/IMG_1212.JPG": "JPEG",  # a RAW+JPEG pair's JPEG: indexed
    "2024/12/IMG_1213.HEIC": "HEIC",  # a RAW+HEIC pair's HEIC: indexed
}
RAW_TWINS = {  # ... and their RAW files, beside the same shot's JPEG or HEIC: ignored (stems compared in any case)
    "2024/12/IMG_1212.DNG": "raw_with_jpeg",
    "2024/12/img_1213.dng": "raw_with_jpeg",
}


def _jpeg(path: Path, seed: int, size: int = 32, fmt: str = "JPEG") -> Path:
    rng = np.random.default_rng(seed)
    colour = rng.integers(0, 256, size=3)
    pixels = np.clip(colour[None, None, :] + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def make_photo_export(root: Path, formats: bool = False) -> Path:
    """The export of the issue, at ``root``: :data:`N_PHOTOS` photos, :data:`IGNORED` files,
    :data:`IGNORED_FOLDERS` and the :data:`EXCLUDED` files; with ``formats``, the :data:`FORMAT_PHOTOS`
    (each of its own content) and the :data:`RAW_TWINS` as well."""
    for month in range(1, 13):
        _jpeg(root / "2024" / f"{month:02d}" / f"IMG_{month:04d}.jpg", seed=month)
    _jpeg(root / "2024" / "06" / "IMG_0101.png", seed=101, fmt="PNG")
    _jpeg(root / "2024" / "06" / "IMG_0102.PNG", seed=102, fmt="PNG")  # an upper-case extension
    _jpeg(root / "2024" / "08" / "Café_été_写真.jpg", seed=8_0)
    (root / "2024" / "09" / "link_to_january.jpg").symlink_to(Path("..") / "01" / "IMG_0001.jpg")
    _jpeg(root / "Dups" / "IMG_0001 copy.jpg", seed=1)
    _jpeg(root / "Dups" / "IMG_0002 copy.JPG", seed=2)
    for relative in IGNORED:
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\0\0\0\1Bud1" if path.name == ".DS_Store" else b"not a photo")
    for name in ("IMG_0001.jpg", "IMG_0002.jpg"):
        _jpeg(root / "2024" / ".thumbnails" / name, seed=200, size=8)
    for name in ("SYNOPHOTO_THUMB_S.jpg", "SYNOPHOTO_THUMB_M.jpg"):
        _jpeg(root / "2024" / "03" / "@eaDir" / "IMG_0003.jpg" / name, seed=300, size=8)
    _jpeg(root / ".private" / "IMG_9000.jpg", seed=9000)
    data = io.BytesIO()
    Image.fromarray(np.full((64, 64, 3), 128, dtype=np.uint8)).save(data, format="JPEG")
    (root / "2024" / "05" / "IMG_0005_truncated.jpg").write_bytes(data.getvalue()[: len(data.getvalue()) // 2])
    (root / "2024" / "07" / "IMG_0007_empty.jpg").write_bytes(b"")
    if formats:
        for seed, (relative, kind) in enumerate(FORMAT_PHOTOS.items(), start=1000):
            write_photo(root / relative, kind, seed)
        for relative, pair in zip(RAW_TWINS, ("2024/12/IMG_1212.JPG", "2024/12/IMG_1213.HEIC"), strict=True):
            write_photo(root / relative, "DNG with preview", 1000 + list(FORMAT_PHOTOS).index(pair))
    return root


def write_photo(path: Path, kind: str, seed: int, size: tuple[int, int] = (96, 64)) -> Path:
    """A :func:`photo` of its own content (``seed``) written at ``path`` as ``kind``: JPEG, PNG, HEIC, AVIF, DNG
    (the sensor's mosaic alone) or "DNG with preview" (the mosaic and a JPEG preview of the same picture)."""
    image = photo(size, seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind.startswith("DNG"):
        return write_dng(path, image, preview=jpeg_bytes(image) if kind == "DNG with preview" else None)
    fmt = {"JPEG": "JPEG", "PNG": "PNG", "HEIC": "HEIF", "AVIF": "AVIF"}[kind]
    image.save(path, format=fmt, **({"quality": 90} if fmt != "PNG" else {}))
    return path


# --- single photos in each format, a small DNG that LibRaw reads ----------------------------


def photo(size: tuple[int, int], seed: int = 0) -> Image.Image:
    """Smooth colour fields plus a little noise: what a photo looks like to a codec."""
    rng = np.random.default_rng(seed)
    base = Image.fromarray(rng.integers(0, 255, size=(6, 8, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
    noise = rng.normal(0, 4, size=(size[1], size[0], 3))
    return Image.fromarray(np.clip(np.asarray(base, dtype=float) + noise, 0, 255).astype(np.uint8))


def save(image: Image.Image, path: Path, orientation: int = 1, **options) -> Path:
    """``image`` written in the format of ``path``'s extension (HEIC by pillow-heif, AVIF by Pillow)."""
    fmt = {".heic": "HEIF", ".avif": "AVIF", ".jpg": "JPEG", ".png": "PNG"}[path.suffix.lower()]
    if orientation != 1:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        options["exif"] = exif.tobytes()
    image.save(path, format=fmt, **({"quality": 90} if fmt != "PNG" else {}), **options)
    return path


def _directory(tags: list[tuple[int, int, object]], offset: int) -> bytes:
    """A little-endian TIFF directory written at ``offset``, its longer values after it."""
    formats = {1: "B", 2: "B", 3: "H", 4: "I", 5: "I", 10: "i"}
    end = offset + 2 + 12 * len(tags) + 4
    entries, values = b"", b""
    for tag, kind, value in sorted(tags, key=lambda entry: entry[0]):
        items = list(value.encode() + b"\0") if isinstance(value, str) else list(value)
        raw = struct.pack(f"<{len(items)}{formats[kind]}", *items)
        count = len(items) // 2 if kind in (5, 10) else len(items)  # (SIGNED) RATIONAL: pairs
        if len(raw) <= 4:
            entries += struct.pack("<HHI", tag, kind, count) + raw.ljust(4, b"\0")
        else:
            entries += struct.pack("<HHII", tag, kind, count, end + len(values))
            values += raw + b"\0" * (len(raw) % 2)
    return struct.pack("<H", len(tags)) + entries + struct.pack("<I", 0) + values


def write_dng(path: Path, image: Image.Image, orientation: int = 1, preview: bytes | None = None) -> Path:
    """``image`` as a DNG: the sensor's mosaic in the first directory, or with ``preview`` (JPEG bytes) there
    and the mosaic in a sub-directory, as cameras' DNGs hold them; ``orientation``: DNG's (EXIF's) tag."""
    linear = (np.asarray(image, dtype=np.float64) / 255) ** 2.2 * 4095
    mosaic = np.empty(linear.shape[:2], np.uint16)
    for (y, x), channel in {(0, 0): 0, (0, 1): 1, (1, 0): 1, (1, 1): 2}.items():  # R G / G B
        mosaic[y::2, x::2] = np.rint(linear[y::2, x::2, channel])
    pixels = mosaic.astype("<u2").tobytes()
    xyz_to_srgb = [3.2406, -1.5372, -0.4986, -0.9689, 1.8758, 0.0415, 0.0557, -0.2040, 1.0570]
    camera = [(274, 3, [orientation]), (50706, 1, [1, 4, 0, 0]), (50708, 2, "cbir test camera"),
              (271, 2, "cbir"), (272, 2, "test camera"), (50778, 3, [21]), (50728, 5, [1, 1, 1, 1, 1, 1]),
              (50721, 10, [v for m in xyz_to_srgb for v in (round(m * 10000), 10000)])]  # fmt: skip

    def mosaic_tags(at: int) -> list[tuple[int, int, object]]:
        return [(254, 4, [0]), (256, 4, [image.width]), (257, 4, [image.height]), (258, 3, [16]), (259, 3, [1]),
                (262, 3, [32803]), (273, 4, [at]), (277, 3, [1]), (278, 4, [image.height]), (279, 4, [len(pixels)]),
                (33421, 3, [2, 2]), (33422, 1, [0, 1, 1, 2]), (50717, 4, [4095])]  # fmt: skip

    if preview is None:
        at_pixels = 8 + len(_directory([*camera, *mosaic_tags(0)], 8))
        data = _directory([*camera, *mosaic_tags(at_pixels)], 8) + pixels
    else:
        with Image.open(io.BytesIO(preview)) as shown:
            width, height = shown.size

        def preview_tags(at_sub: int, at_preview: int) -> list[tuple[int, int, object]]:
            return [(254, 4, [1]), (256, 4, [width]), (257, 4, [height]), (258, 3, [8, 8, 8]), (259, 3, [7]),
                    (262, 3, [6]), (273, 4, [at_preview]), (277, 3, [3]), (279, 4, [len(preview)]),
                    (330, 4, [at_sub])]  # fmt: skip

        at_sub = 8 + len(_directory(camera + preview_tags(0, 0), 8))
        at_preview = at_sub + len(_directory(mosaic_tags(0), at_sub))
        first = _directory(camera + preview_tags(at_sub, at_preview), 8)
        data = first + _directory(mosaic_tags(at_preview + len(preview)), at_sub) + preview + pixels
    path.write_bytes(b"II*\0" + struct.pack("<I", 8) + data)
    return path


def jpeg_bytes(image: Image.Image, orientation: int = 1) -> bytes:
    """``image`` as JPEG bytes (quality 90) carrying an EXIF ``orientation`` other than 1."""
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation != 1:
        exif[ORIENTATION] = orientation
    image.save(buffer, format="JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()
