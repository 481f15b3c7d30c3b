"""Manifests: the tables of a dataset's images, excluded and ignored files, made, checked, written and read back."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from cbir.data.ignore import IGNORED_COLUMNS
from cbir.data.images import display_path
from cbir.data.inspection import ImageFacts, inspect_file, inspect_images
from cbir.io import atomic_path

MANIFEST_COLUMNS = ["id", "path", "label", "class_name", "width", "height", "bytes", "sha256"]
EXCLUDED_COLUMNS = ["path", "class_name", "reason"]
DUPLICATE_COLUMNS = ["sha256", "id", "class_name", "copies", "across_classes"]
# the one class of a collection without labels (a folder dataset with labels: none)
UNLABELLED = "unlabelled"
# the excluded.csv row of a class folder in which no image could be used (the class is left out)
EMPTY_CLASS_REASON = "class folder holds no readable image: the class is left out"


class DatasetError(ValueError):
    """The dataset cannot be used; the message says what is wrong and where."""


def no_ignored_files() -> pd.DataFrame:
    return pd.DataFrame(columns=IGNORED_COLUMNS)


@dataclass
class Manifest:
    """A dataset's images; its ``excluded`` files (claiming to be images, unusable: counted against
    ``data.max_excluded_fraction``) and its ``ignored`` ones (no photos, per folder and kind:
    :mod:`cbir.data.ignore`)."""

    images: pd.DataFrame
    excluded: pd.DataFrame
    classes: list[str]
    labelled: bool = True  # False: a collection without labels (every image in the one class UNLABELLED)
    ignored: pd.DataFrame = field(default_factory=no_ignored_files)


def image_row(
    path: Path, image_id: str, label: int, class_name: str, facts: ImageFacts | None = None
) -> dict[str, Any]:
    """The manifest row of a readable image (size as displayed, after its EXIF orientation);
    ``facts``: its inspection, when done already."""
    if facts is None:
        inspected = inspect_file(path)
        if isinstance(inspected, str):
            raise ValueError(f"'{display_path(path)}' is no usable image: {inspected}")
        facts = inspected
    return {
        "id": image_id,
        "path": str(path),
        "label": label,
        "class_name": class_name,
        "width": facts.width,
        "height": facts.height,
        "bytes": facts.bytes,
        "sha256": facts.sha256,
    }


ImageEntry = tuple[Path, str, int, str]  # an image a source lists: path, manifest id, label, class name


def image_records(entries: Sequence[ImageEntry]) -> list[dict[str, Any] | str]:
    """The manifest row of each image, or the reason it cannot be used, in order; the files are
    inspected together (:func:`cbir.data.inspection.inspect_images`: in parallel, unchanged ones from its cache)."""
    present = [path.is_file() for path, *_ in entries]
    inspections = iter(inspect_images([path for (path, *_), exists in zip(entries, present, strict=True) if exists]))
    records: list[dict[str, Any] | str] = []
    for entry, exists in zip(entries, present, strict=True):
        outcome = next(inspections) if exists else "file is missing"
        records.append(outcome if isinstance(outcome, str) else image_row(*entry, outcome))
    return records


def image_record(path: Path, image_id: str, label: int, class_name: str) -> dict[str, Any] | str:
    """The manifest row of one image, or the reason it cannot be used (:func:`image_records` is faster for many)."""
    return image_records([(path, image_id, label, class_name)])[0]


def make_manifest(
    rows: list[dict[str, Any]], excluded: list[dict[str, Any]], classes: Sequence[str], extra: Sequence[str] = ()
) -> Manifest:
    return Manifest(
        images=pd.DataFrame(rows, columns=[*MANIFEST_COLUMNS, *extra]),
        excluded=pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS),
        classes=list(classes),
    )


def relabel(manifest: Manifest, mapping: Mapping[str, int], classes: Sequence[str]) -> Manifest:
    """Replace the folder-order labels by a fixed class order; ``mapping`` maps folder -> label."""
    images = manifest.images.copy()
    folders = images["class_name"]
    images["label"] = folders.map(mapping).astype(int)
    images["class_name"] = images["label"].map(lambda label: classes[label])
    excluded = manifest.excluded.copy()
    excluded["class_name"] = [
        classes[mapping[name]] if name in mapping else name for name in excluded["class_name"]
    ]  # fmt: skip
    return Manifest(images=images, excluded=excluded, classes=list(classes), ignored=manifest.ignored)


def check_class_counts(
    images: pd.DataFrame, classes: Sequence[str], expected: int | None, n_classes: int | None = None
) -> list[str]:
    """Warn (and return the messages) for each class whose image count differs from ``expected``."""
    counts = images["class_name"].value_counts()
    problems = []
    if n_classes is not None and len(classes) != n_classes:
        problems.append(f"{len(classes)} classes found, expected {n_classes}")
    if expected:
        for name in classes:
            have = int(counts.get(name, 0))
            if have != expected:
                problems.append(f"class '{name}' has {have} images, expected {expected}")
    for problem in problems:
        warnings.warn(problem, stacklevel=2)
    return problems


def excluded_file_count(excluded: pd.DataFrame) -> int:
    """Excluded files (rows of left-out class folders do not count). Ignored files are in no excluded table:
    what counts is what claims to be an image and cannot be used."""
    return int((excluded["reason"] != EMPTY_CLASS_REASON).sum()) if len(excluded) else 0


def common_reasons(excluded: pd.DataFrame, n: int = 3) -> str:
    """The ``n`` commonest reasons of the excluded files, each without its details, with their counts."""
    reasons = excluded.loc[excluded["reason"] != EMPTY_CLASS_REASON, "reason"]
    common = reasons.str.split(":").str[0].value_counts().head(n)
    return ", ".join(f"{reason} ({count})" for reason, count in common.items())


def check_excluded_fraction(n_images: int, excluded: pd.DataFrame, limit: float, excluded_csv: str | Path) -> float:
    """The excluded share of the files that claim to be images (``n_images`` used, and the excluded); above
    ``limit`` a :class:`DatasetError` naming where the list is."""
    n_excluded = excluded_file_count(excluded)
    total = n_images + n_excluded
    fraction = n_excluded / total if total else 0.0
    if fraction > limit:
        raise DatasetError(
            f"{n_excluded} of {total} files ({fraction:.1%}) were excluded, more than "
            f"data.max_excluded_fraction = {limit:g} allows; most common reasons: {common_reasons(excluded)}. "
            f"The files and reasons are listed in '{excluded_csv}'. Fix or remove them, "
            "leave them out with a data.ignore pattern, or raise data.max_excluded_fraction"
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
    if manifest.labelled:
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
    with atomic_path(target) as tmp:
        frame.to_csv(tmp, index=False)


def write_manifest(
    manifest: Manifest, images_csv: str | Path, excluded_csv: str | Path, ignored_csv: str | Path | None = None
) -> None:
    """The manifest's tables as CSV files (the ignored one where ``ignored_csv`` is given)."""
    tables = [(manifest.images, images_csv), (manifest.excluded, excluded_csv)]
    if ignored_csv is not None:
        tables.append((manifest.ignored, ignored_csv))
    for frame, target in tables:
        write_csv_table(frame, target)


def read_manifest(path: str | Path, start: int = 0, stop: int | None = None) -> pd.DataFrame:
    """A manifest written by :func:`write_manifest` (rows ``[start, stop)`` only, the others not
    parsed); ids that lead outside the dataset are refused, and so is a file that is no CSV
    (:class:`DatasetError` naming it)."""
    try:
        frame = pd.read_csv(
            path,
            dtype={"id": str, "path": str, "class_name": str, "sha256": str},
            skiprows=range(1, start + 1) if start else None,
            nrows=None if stop is None else stop - start,
        )
    except (ValueError, OverflowError) as error:  # pandas' ParserError and EmptyDataError, UnicodeDecodeError
        raise DatasetError(
            f"manifest '{path}' cannot be read as a CSV table ({type(error).__name__}: {error}); "
            "rerun the workflow's manifest step to write it again"
        ) from error
    missing = set(MANIFEST_COLUMNS) - set(frame.columns)
    if missing:
        raise DatasetError(f"manifest '{path}' lacks column(s): {', '.join(sorted(missing))}")
    check_ids(frame["id"], path)
    return frame


def check_ids(ids: pd.Series, manifest: str | Path) -> None:
    """Refuse ids that are absolute or contain '..' (a tampered or hand-edited manifest)."""
    for row, image_id in enumerate(ids):
        # an empty cell is missing, not '' (pandas keeps it missing through astype(str) as well)
        problem = "the id is empty" if pd.isna(image_id) else id_problem(str(image_id))
        if problem:
            raise DatasetError(f"manifest '{manifest}' row {row + 1}: {problem}; ids must stay inside the dataset")


def class_names(manifest: pd.DataFrame) -> list[str]:
    """Class names indexed by label."""
    pairs = manifest[["label", "class_name"]].drop_duplicates().sort_values("label")
    names = [""] * (int(pairs["label"].max()) + 1 if len(pairs) else 0)
    for label, name in pairs.itertuples(index=False):
        names[int(label)] = str(name)
    return names
