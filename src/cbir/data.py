"""Datasets: image folders become a manifest; manifests become stratified, seeded splits."""

from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
MANIFEST_COLUMNS = ["id", "path", "label", "class_name", "width", "height", "bytes", "sha256"]
EXCLUDED_COLUMNS = ["path", "class_name", "reason"]


class DatasetError(ValueError):
    """The dataset cannot be used; the message says what is wrong and where."""


def load_rgb_image(path: str | Path) -> Image.Image:
    """Open an image fully decoded as RGB, with its EXIF orientation applied."""
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # composite on white rather than letting convert() drop alpha onto black
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Manifest:
    images: pd.DataFrame
    excluded: pd.DataFrame
    classes: list[str]


def scan_image_folder(root: str | Path) -> Manifest:
    """Index ``root/<class>/<image>``: one row per readable image, one per excluded file.

    Labels are class indices in sorted class-name order. Hidden files are ignored; files that
    are not images or cannot be decoded are listed in ``excluded`` with the reason.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder '{root}' does not exist or is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"dataset folder '{root}' has no class sub-folders")
    rows, excluded = [], []
    for label, class_dir in enumerate(class_dirs):
        files = sorted(p for p in class_dir.rglob("*") if not p.name.startswith("."))
        for path in files:
            if path.is_dir():
                continue
            reason = _unreadable_reason(path)
            if reason:
                excluded.append({"path": str(path), "class_name": class_dir.name, "reason": reason})
                continue
            with Image.open(path) as image:
                width, height = ImageOps.exif_transpose(image).size
            rows.append(
                {
                    "id": path.relative_to(root).as_posix(),
                    "path": str(path),
                    "label": label,
                    "class_name": class_dir.name,
                    "width": width,
                    "height": height,
                    "bytes": path.stat().st_size,
                    "sha256": file_sha256(path),
                }
            )
        if not any(r["class_name"] == class_dir.name for r in rows):
            warnings.warn(f"class '{class_dir.name}' in '{root}' has no readable image", stacklevel=2)
    images = pd.DataFrame(rows, columns=MANIFEST_COLUMNS)
    return Manifest(
        images=images,
        excluded=pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS),
        classes=[d.name for d in class_dirs],
    )


def _unreadable_reason(path: Path) -> str | None:
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file extension ({path.suffix or 'none'})"
    try:
        load_rgb_image(path)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        return f"cannot decode: {type(error).__name__}: {error}"
    except Image.DecompressionBombError as error:
        return f"too many pixels: {error}"
    return None


def write_manifest(manifest: Manifest, images_csv: str | Path, excluded_csv: str | Path) -> None:
    from cbir.io import atomic_path

    for frame, target in ((manifest.images, images_csv), (manifest.excluded, excluded_csv)):
        with atomic_path(target) as tmp:
            frame.to_csv(tmp, index=False)


def read_manifest(path: str | Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype={"id": str, "path": str, "class_name": str, "sha256": str})
    missing = set(MANIFEST_COLUMNS) - set(frame.columns)
    if missing:
        raise DatasetError(f"manifest '{path}' lacks column(s): {', '.join(sorted(missing))}")
    return frame


def write_sklearn_digits(out_dir: str | Path, image_size: int) -> int:
    """Write scikit-learn's bundled 8x8 digits as ``out_dir/<digit>/<index>.png``, upscaled.

    Returns the number of images written. The 0..16 intensities become 0..255 grey levels.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    out_dir = Path(out_dir)
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        class_dir = out_dir / str(target)
        class_dir.mkdir(parents=True, exist_ok=True)
        grey = np.clip(pixels * (255.0 / 16.0), 0, 255).astype(np.uint8)
        image = Image.fromarray(grey, mode="L").resize((image_size, image_size), Image.BICUBIC)
        image.save(class_dir / f"{index:04d}.png")
    return len(digits.images)


def make_split(labels: np.ndarray, train_fraction: float, seed: int) -> np.ndarray:
    """Stratified, seeded train/test assignment: True where the image is in the training set.

    Each class is shuffled with its own generator seeded by (seed, label), so adding a class
    does not reshuffle the others. Every class keeps at least one training image, and at least
    one test image when it has two or more.
    """
    labels = np.asarray(labels)
    is_train = np.zeros(len(labels), dtype=bool)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng = np.random.default_rng([seed, int(label)])
        order = rng.permutation(members)
        n_train = round(train_fraction * len(members))
        n_train = min(max(n_train, 1), max(len(members) - 1, 1))
        is_train[order[:n_train]] = True
    return is_train


def split_table(manifest: pd.DataFrame, train_fraction: float, seed: int) -> pd.DataFrame:
    """The split file: image id, label and subset ('train' or 'test'), in manifest order."""
    is_train = make_split(manifest["label"].to_numpy(), train_fraction, seed)
    return pd.DataFrame(
        {
            "id": manifest["id"],
            "label": manifest["label"],
            "subset": np.where(is_train, "train", "test"),
        }
    )


def split_ids(split_csv: str | Path, subset: str) -> list[str]:
    """Image ids of one subset ('train' or 'test') of a split file, in file order."""
    table = pd.read_csv(split_csv, dtype={"id": str, "subset": str})
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test', not '{subset}'")
    return table.loc[table["subset"] == subset, "id"].tolist()


def class_names(manifest: pd.DataFrame) -> list[str]:
    """Class names indexed by label."""
    pairs = manifest[["label", "class_name"]].drop_duplicates().sort_values("label")
    names = [""] * (int(pairs["label"].max()) + 1 if len(pairs) else 0)
    for label, name in pairs.itertuples(index=False):
        names[int(label)] = str(name)
    return names
