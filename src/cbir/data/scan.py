"""Image folders scanned into manifests: class folders listed, each file inspected, excluded or ignored by kind.

Also what the configuration checks count before any job runs (the image files per class folder,
without opening them), and an image folder that a source's preparing rule exported, read back.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from cbir.data.ignore import (
    OUTSIDE_CLASSES,
    Ignored,
    IgnoreRules,
    count_files,
    current_rules,
    ignored_table,
    list_folder,
)
from cbir.data.images import display_path, is_utf8_name, link_problem
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


def scan_image_folder(root: str | Path, ignore: Sequence[str] | None = None) -> Manifest:
    """Index ``root/<class>/<image>``: one row per readable image, one per excluded file, one per ignored kind.

    Labels are class indices in sorted class-name order, counting only classes with at least one
    readable image: a class folder without any is left out (a warning, and a row in
    ``excluded``). What is no photo is ignored by kind (:mod:`cbir.data.ignore`: videos, sidecars,
    OS files, hidden and thumbnail folders, other files without an image extension, the
    ``ignore`` patterns; default those of the :func:`cbir.data.ignore.ignoring` block; files
    beside the class folders), listed in ``ignored``; files with an image extension that cannot
    be decoded, have a name that is not UTF-8, or are broken or looping symbolic links are listed
    in ``excluded`` with the reason. Symbolic links to folders are followed, except back into
    a folder being scanned. Every class folder is listed first; the files are then inspected
    together (:func:`cbir.data.inspection.inspect_images`: in parallel, unchanged ones from its cache).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder '{root}' does not exist or is not a folder")
    rules = current_rules(ignore)
    class_dirs, ignored = _top_level(root, rules)
    if not class_dirs:
        raise DatasetError(f"dataset folder '{root}' has no class sub-folders")
    listings = [_list_class(root, class_dir, rules) for class_dir in class_dirs]
    candidates = [path for listing in listings for path, row_id in listing.files if is_utf8_name(row_id)]
    inspections = iter(inspect_images(candidates))
    rows: list[dict[str, Any]] = []
    excluded: list[dict[str, Any]] = []
    classes: list[str] = []
    for listing in listings:
        class_name = listing.class_name
        excluded.extend(listing.problems)
        ignored.extend(listing.ignored)
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
        ignored=ignored_table(ignored, root),
    )


def scan_unlabelled_folder(root: str | Path, ignore: Sequence[str] | None = None) -> Manifest:
    """Index every image below ``root``, in any sub-folder, as one collection without labels: label 0,
    class :data:`UNLABELLED`. What is no photo is ignored by kind and unusable files excluded with
    their reason, as :func:`scan_image_folder` does."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"dataset folder '{root}' does not exist or is not a folder")
    listing = list_folder(root, root, current_rules(ignore))
    excluded = [_problem_row(path, reason, UNLABELLED) for path, reason in listing.problems]
    files = [(path, path.relative_to(root).as_posix()) for path in listing.files]
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
        ignored=ignored_table(listing.ignored, root),
    )


def _top_level(root: Path, rules: IgnoreRules) -> tuple[list[Path], list[Ignored]]:
    """The class folders of a labelled dataset (sorted), and what at its top is ignored: ignored folders, and
    every file (an image there is in no class)."""
    class_dirs: list[Path] = []
    ignored: list[Ignored] = []
    for path in sorted(root.iterdir()):
        name = path.name
        if link_problem(path) is None and path.is_dir():
            kind = rules.folder_kind(name)
            if kind:
                ignored.append(Ignored(path, kind, count_files(path), folder=True))
            else:
                class_dirs.append(path)
        else:
            ignored.append(Ignored(path, rules.file_kind(name) or OUTSIDE_CLASSES))
    return class_dirs, ignored


@dataclass
class _ClassListing:
    """One class folder's files (path, manifest id), what is ignored, and the excluded rows of what could not be
    listed or followed."""

    folder: Path
    class_name: str
    files: list[tuple[Path, str]]
    problems: list[dict[str, Any]]
    ignored: list[Ignored]


def _list_class(root: Path, class_dir: Path, rules: IgnoreRules) -> _ClassListing:
    class_name = display_path(class_dir.name)
    listing = list_folder(class_dir, root, rules)
    files = [(path, path.relative_to(root).as_posix()) for path in listing.files]
    problems = [_problem_row(path, reason, class_name) for path, reason in listing.problems]
    return _ClassListing(class_dir, class_name, files, problems, listing.ignored)


def _problem_row(path: Path, reason: str, class_name: str) -> dict[str, Any]:
    return {"path": display_path(path), "class_name": class_name, "reason": reason}


def count_class_files(root: str | Path, ignore: Sequence[str] | None = None) -> list[int]:
    """Files to inspect (an image extension, not ignored) per class folder of ``root``, without opening them.

    An upper bound of the images per class the manifest will hold (some may not decode), cheap
    enough to check the configuration with before any job runs.
    """
    root, rules = Path(root), current_rules(ignore)
    return [len(list_folder(class_dir, root, rules).files) for class_dir in _top_level(root, rules)[0]]


def count_image_files(root: str | Path, ignore: Sequence[str] | None = None) -> int:
    """Files to inspect anywhere below ``root``, without opening them (a collection without labels)."""
    return len(list_folder(root, root, current_rules(ignore)).files)


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
