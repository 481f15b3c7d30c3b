"""Datasets: image folders become a manifest; manifests become stratified, seeded splits."""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
MANIFEST_COLUMNS = ["id", "path", "label", "class_name", "width", "height", "bytes", "sha256"]
EXCLUDED_COLUMNS = ["path", "class_name", "reason"]
DUPLICATE_COLUMNS = ["sha256", "id", "class_name", "copies", "across_classes"]
# the excluded.csv row of a class folder in which no image could be used (the class is left out)
EMPTY_CLASS_REASON = "class folder holds no readable image: the class is left out"


class DatasetError(ValueError):
    """The dataset cannot be used; the message says what is wrong and where."""


def _open_within_pixel_limit(path: str | Path) -> Image.Image:
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


def load_rgb_image(path: str | Path) -> Image.Image:
    """Open an image fully decoded as RGB, with its EXIF orientation applied.

    Transparency is composited on white; 16-bit grey images are scaled to 8 bits; CMYK, grey
    and palette images are converted. Images above Pillow's pixel limit are refused
    (:class:`PIL.Image.DecompressionBombError`).
    """
    with _open_within_pixel_limit(path) as image:
        image.load()
        image = _high_bit_depth_to_8bit(ImageOps.exif_transpose(image))
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            # composite on white rather than letting convert() drop alpha onto black
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")


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


@dataclass
class Manifest:
    images: pd.DataFrame
    excluded: pd.DataFrame
    classes: list[str]


def scan_image_folder(root: str | Path) -> Manifest:
    """Index ``root/<class>/<image>``: one row per readable image, one per excluded file.

    Labels are class indices in sorted class-name order, counting only classes with at least one
    readable image: a class folder without any is left out (a warning, and a row in
    ``excluded``). Hidden files and folders are ignored; files that are not images, cannot be
    decoded, have a name that is not UTF-8, or are broken or looping symbolic links are listed
    in ``excluded`` with the reason. Symbolic links to folders are followed, except back into
    a folder being scanned.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder '{root}' does not exist or is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"dataset folder '{root}' has no class sub-folders")
    rows: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    classes: list[str] = []
    for class_dir in class_dirs:
        class_name = display_path(class_dir.name)
        found = []
        for path in _class_files(class_dir, excluded, class_name):
            row_id = path.relative_to(root).as_posix()
            reason = None if is_utf8_name(row_id) else "file or folder name is not valid UTF-8: rename it"
            reason = reason or unreadable_reason(path)
            if reason:
                excluded.append({"path": display_path(path), "class_name": class_name, "reason": reason})
            else:
                found.append(image_row(path, row_id, len(classes), class_name))
        if not found:
            warnings.warn(f"class '{class_name}' in '{root}' has no readable image: left out", stacklevel=2)
            excluded.append({"path": display_path(class_dir), "class_name": class_name, "reason": EMPTY_CLASS_REASON})
            continue
        rows.extend(found)
        classes.append(class_name)
    return Manifest(
        images=pd.DataFrame(rows, columns=MANIFEST_COLUMNS),
        excluded=pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS),
        classes=classes,
    )


def image_row(path: Path, image_id: str, label: int, class_name: str) -> dict[str, Any]:
    """The manifest row of a readable image (size as displayed, after its EXIF orientation)."""
    with _open_within_pixel_limit(path) as image:
        width, height = ImageOps.exif_transpose(image).size
    return {
        "id": image_id,
        "path": str(path),
        "label": label,
        "class_name": class_name,
        "width": width,
        "height": height,
        "bytes": path.stat().st_size,
        "sha256": file_sha256(path),
    }


def _link_problem(path: Path) -> str | None:
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


def _class_files(class_dir: Path, excluded: list[dict[str, Any]], class_name: str) -> list[Path]:
    """Every non-hidden file below ``class_dir`` (sorted), following links to folders without looping."""
    files: list[Path] = []
    pending = [(class_dir, frozenset({class_dir.resolve()}))]
    while pending:
        folder, chain = pending.pop()
        try:
            entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
        except OSError as error:
            excluded.append({"path": display_path(folder), "class_name": class_name, "reason": f"cannot list: {error}"})
            continue
        for path in entries:
            problem = _link_problem(path)
            if problem is None and path.is_dir():
                real = path.resolve()
                if any(folder == real or folder.is_relative_to(real) for folder in chain):
                    problem = f"symbolic link loop (back to '{display_path(real)}')"
                else:
                    pending.append((path, chain | {real}))
                    continue
            if problem:
                excluded.append({"path": display_path(path), "class_name": class_name, "reason": problem})
            else:
                files.append(path)
    return sorted(files)


def unreadable_reason(path: Path) -> str | None:
    """Why a file cannot be used as an image (None when it can): extension, decoding, pixel limit."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image file extension ({path.suffix or 'none'})"
    problem = _link_problem(path)
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


def excluded_file_count(excluded: pd.DataFrame) -> int:
    """Excluded files (rows of left-out class folders do not count)."""
    return int((excluded["reason"] != EMPTY_CLASS_REASON).sum()) if len(excluded) else 0


def check_excluded_fraction(n_images: int, excluded: pd.DataFrame, limit: float, excluded_csv: str | Path) -> float:
    """The excluded share of the files; above ``limit`` a :class:`DatasetError` naming where the list is."""
    n_excluded = excluded_file_count(excluded)
    total = n_images + n_excluded
    fraction = n_excluded / total if total else 0.0
    if fraction > limit:
        reasons = excluded.loc[excluded["reason"] != EMPTY_CLASS_REASON, "reason"]
        common = reasons.str.split(":").str[0].value_counts().head(3)
        summary = ", ".join(f"{reason} ({count})" for reason, count in common.items())
        raise DatasetError(
            f"{n_excluded} of {total} files ({fraction:.1%}) were excluded, more than "
            f"data.max_excluded_fraction = {limit:g} allows; most common reasons: {summary}. "
            f"The files and reasons are listed in '{excluded_csv}'. Fix or remove them, "
            "or raise data.max_excluded_fraction"
        )
    return fraction


def accept_manifest(
    manifest: Manifest, root: str | Path, *, max_excluded_fraction: float, rejected_csv: str | Path
) -> float:
    """Check a freshly built manifest before it is written; returns the excluded share of the files.

    Refused, with a :class:`DatasetError`: ids or paths outside the dataset folder ``root``;
    more excluded files than ``max_excluded_fraction`` (the excluded table is then written to
    ``rejected_csv``, which the message names, since the job's own outputs are removed); fewer
    than two classes.
    """
    check_manifest_paths(manifest.images, root)
    try:
        fraction = check_excluded_fraction(len(manifest.images), manifest.excluded, max_excluded_fraction, rejected_csv)
    except DatasetError:
        write_csv_table(manifest.excluded, rejected_csv)
        raise
    check_usable(manifest.images, root)
    return fraction


def find_duplicates(images: pd.DataFrame) -> pd.DataFrame:
    """Images whose content (sha256) occurs more than once, with whether the copies span classes."""
    groups = images.groupby("sha256")
    copies = groups["id"].transform("size")
    n_classes = groups["label"].transform("nunique")
    duplicated = images.loc[copies > 1, ["sha256", "id", "class_name"]].assign(
        copies=copies[copies > 1], across_classes=n_classes[copies > 1] > 1
    )
    return duplicated.sort_values(["sha256", "id"]).reset_index(drop=True)[DUPLICATE_COLUMNS]


def check_usable(images: pd.DataFrame, where: str | Path) -> None:
    """A dataset needs at least two classes: classification and class-based retrieval are meaningless otherwise."""
    present = sorted(images["class_name"].astype(str).unique())
    if len(present) < 2:
        raise DatasetError(
            f"the dataset at '{where}' has {len(images)} usable image(s) in {len(present)} class(es) "
            f"({', '.join(present) or 'none'}): the classifier and the per-class retrieval need at least "
            "two classes with images"
        )


def id_problem(image_id: str) -> str | None:
    """Why a manifest id is not a plain relative path inside the dataset (None when it is)."""
    pure = PurePosixPath(image_id)
    if not image_id or pure.is_absolute() or image_id.startswith("\\"):
        return f"id '{image_id}' is not a relative path"
    if ".." in pure.parts:
        return f"id '{image_id}' contains '..'"
    return None


def check_manifest_paths(images: pd.DataFrame, root: str | Path, manifest: str | Path = "manifest") -> None:
    """Refuse a manifest whose ids or paths lead outside the dataset folder ``root``."""
    root_text = os.path.normpath(os.path.abspath(root))
    problems = []
    for row, (image_id, path) in enumerate(zip(images["id"].astype(str), images["path"].astype(str), strict=True)):
        problem = id_problem(image_id)
        normalised = os.path.normpath(os.path.abspath(path))
        if problem is None and os.path.commonpath([root_text, normalised]) != root_text:
            problem = f"path '{path}' is outside the dataset folder '{root}'"
        if problem:
            problems.append(f"row {row + 1}: {problem}")
    if problems:
        raise DatasetError(
            f"{manifest} lists {len(problems)} image(s) outside the dataset folder, refused: "
            + "; ".join(problems[:5])
            + (" ..." if len(problems) > 5 else "")
        )


def write_csv_table(frame: pd.DataFrame, target: str | Path) -> None:
    """A table as CSV, atomically."""
    from cbir.io import atomic_path

    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)


def write_manifest(manifest: Manifest, images_csv: str | Path, excluded_csv: str | Path) -> None:
    for frame, target in ((manifest.images, images_csv), (manifest.excluded, excluded_csv)):
        write_csv_table(frame, target)


def read_manifest(path: str | Path, start: int = 0, stop: int | None = None) -> pd.DataFrame:
    """A manifest written by :func:`write_manifest` (rows ``[start, stop)`` only, the others not
    parsed); ids that lead outside the dataset are refused."""
    frame = pd.read_csv(
        path,
        dtype={"id": str, "path": str, "class_name": str, "sha256": str},
        skiprows=range(1, start + 1) if start else None,
        nrows=None if stop is None else stop - start,
    )
    missing = set(MANIFEST_COLUMNS) - set(frame.columns)
    if missing:
        raise DatasetError(f"manifest '{path}' lacks column(s): {', '.join(sorted(missing))}")
    check_ids(frame["id"], path)
    return frame


def check_ids(ids: pd.Series, manifest: str | Path) -> None:
    """Refuse ids that are absolute or contain '..' (a tampered or hand-edited manifest)."""
    for row, image_id in enumerate(ids.astype(str)):
        problem = id_problem(image_id)
        if problem:
            raise DatasetError(f"manifest '{manifest}' row {row + 1}: {problem}; ids must stay inside the dataset")


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
        is_train[order[: train_count(len(members), train_fraction)]] = True
    return is_train


def train_count(n_images: int, train_fraction: float) -> int:
    """Training images of a class of ``n_images`` (see :func:`make_split`); never falls as the class grows."""
    return min(max(round(train_fraction * n_images), 1), max(n_images - 1, 1))


def count_class_files(root: str | Path) -> list[int]:
    """Files with an image extension per class folder of ``root``, without opening them.

    An upper bound of the images per class the manifest will hold (some may not decode), cheap
    enough to check the configuration with before any job runs.
    """
    counts = []
    for class_dir in sorted(p for p in Path(root).iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = _class_files(class_dir, [], class_dir.name)
        counts.append(sum(path.suffix.lower() in IMAGE_EXTENSIONS for path in files))
    return counts


def split_table(manifest: pd.DataFrame, train_fraction: float, seed: int) -> pd.DataFrame:
    """The split file: image id, label and subset ('train' or 'test'), in manifest order.

    A split without any test image (every class has a single image) is a :class:`DatasetError`.
    """
    is_train = make_split(manifest["label"].to_numpy(), train_fraction, seed)
    if is_train.all():
        raise DatasetError(
            f"a {train_fraction:.0%} training split of {len(is_train)} image(s) leaves no test image: "
            "a class needs at least two images to have one in each subset"
        )
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
