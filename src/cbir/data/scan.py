"""Image folders scanned into manifests: class folders listed, each file inspected or excluded with its reason.

Also what the configuration checks count before any job runs (the image files per class folder,
without opening them), and an image folder that a source's preparing rule exported, read back.
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cbir.data.images import IMAGE_EXTENSIONS, display_path, is_utf8_name, link_problem
from cbir.data.inspection import inspect_images
from cbir.data.manifest import (
    EMPTY_CLASS_REASON,
    EXCLUDED_COLUMNS,
    MANIFEST_COLUMNS,
    UNLABELLED,
    DatasetError,
    Manifest,
    image_row,
    relabel,
)


def scan_image_folder(root: str | Path) -> Manifest:
    """Index ``root/<class>/<image>``: one row per readable image, one per excluded file.

    Labels are class indices in sorted class-name order, counting only classes with at least one
    readable image: a class folder without any is left out (a warning, and a row in
    ``excluded``). Hidden files and folders are ignored; files that are not images, cannot be
    decoded, have a name that is not UTF-8, or are broken or looping symbolic links are listed
    in ``excluded`` with the reason. Symbolic links to folders are followed, except back into
    a folder being scanned. Every class folder is listed first; the files are then inspected
    together (:func:`cbir.data.inspection.inspect_images`: in parallel, unchanged ones from its cache).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder '{root}' does not exist or is not a folder")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DatasetError(f"dataset folder '{root}' has no class sub-folders")
    listings = [_list_class(root, class_dir) for class_dir in class_dirs]
    candidates = [path for listing in listings for path, row_id in listing.files if is_utf8_name(row_id)]
    inspections = iter(inspect_images(candidates))
    rows: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    classes: list[str] = []
    for listing in listings:
        class_name = listing.class_name
        excluded.extend(listing.problems)
        found = []
        for path, row_id in listing.files:
            outcome = next(inspections) if is_utf8_name(row_id) else "file or folder name is not valid UTF-8: rename it"
            if isinstance(outcome, str):
                excluded.append({"path": display_path(path), "class_name": class_name, "reason": outcome})
            else:
                found.append(image_row(path, row_id, len(classes), class_name, outcome))
        if not found:
            warnings.warn(f"class '{class_name}' in '{root}' has no readable image: left out", stacklevel=2)
            excluded.append(
                {"path": display_path(listing.folder), "class_name": class_name, "reason": EMPTY_CLASS_REASON}
            )
            continue
        rows.extend(found)
        classes.append(class_name)
    return Manifest(
        images=pd.DataFrame(rows, columns=MANIFEST_COLUMNS),
        excluded=pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS),
        classes=classes,
    )


def scan_unlabelled_folder(root: str | Path) -> Manifest:
    """Index every image below ``root``, in any sub-folder, as one collection without labels: label 0,
    class :data:`UNLABELLED`. Hidden files and folders are ignored and unusable files excluded with
    their reason, as :func:`scan_image_folder` does."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder '{root}' does not exist or is not a folder")
    excluded: list[dict[str, Any]] = []
    files = [(path, path.relative_to(root).as_posix()) for path in _class_files(root, excluded, UNLABELLED)]
    inspections = iter(inspect_images([path for path, row_id in files if is_utf8_name(row_id)]))
    rows: list[dict[str, Any]] = []
    for path, row_id in files:
        outcome = next(inspections) if is_utf8_name(row_id) else "file or folder name is not valid UTF-8: rename it"
        if isinstance(outcome, str):
            excluded.append({"path": display_path(path), "class_name": UNLABELLED, "reason": outcome})
        else:
            rows.append(image_row(path, row_id, 0, UNLABELLED, outcome))
    return Manifest(
        images=pd.DataFrame(rows, columns=MANIFEST_COLUMNS),
        excluded=pd.DataFrame(excluded, columns=EXCLUDED_COLUMNS),
        classes=[UNLABELLED] if rows else [],
        labelled=False,
    )


@dataclass
class _ClassListing:
    """One class folder's files (path, manifest id), and the excluded rows of what could not be listed."""

    folder: Path
    class_name: str
    files: list[tuple[Path, str]]
    problems: list[dict[str, Any]]


def _list_class(root: Path, class_dir: Path) -> _ClassListing:
    class_name = display_path(class_dir.name)
    problems: list[dict[str, Any]] = []
    files = [(path, path.relative_to(root).as_posix()) for path in _class_files(class_dir, problems, class_name)]
    return _ClassListing(class_dir, class_name, files, problems)


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
            problem = link_problem(path)
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


def count_image_files(root: str | Path) -> int:
    """Files with an image extension anywhere below ``root``, without opening them (a collection without labels)."""
    return sum(path.suffix.lower() in IMAGE_EXTENSIONS for path in _class_files(Path(root), [], ""))


def natural_key(name: str) -> list[Any]:
    """Sort key putting '2' before '10'."""
    return [(0, int(part)) if part.isdigit() else (1, part.lower()) for part in re.split(r"(\d+)", name)]


def read_exported_folder(images_dir: str | Path, report_file: str, title: str) -> tuple[Manifest, dict[str, Any]]:
    """An image folder written by a source's preparing rule (CIFAR-10, Fashion-MNIST), with its export report:
    scanned, and labelled in the report's class order; a folder that is no class of ``title`` is refused."""
    images_dir = Path(images_dir)
    report = json.loads((images_dir / report_file).read_text())
    names = list(report["classes"])
    manifest = scan_image_folder(images_dir)
    unknown = sorted(set(manifest.classes) - set(names))
    if unknown:
        raise DatasetError(f"'{images_dir}' has folders that are not {title} classes: {', '.join(unknown)}")
    return relabel(manifest, {name: names.index(name) for name in manifest.classes}, names), report
