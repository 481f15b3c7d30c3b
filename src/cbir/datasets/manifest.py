"""Manifest pieces the dataset sources share: image rows, relabelling, class-count checks."""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from cbir.data import EXCLUDED_COLUMNS, MANIFEST_COLUMNS, Manifest, image_row, unreadable_reason


def natural_key(name: str) -> list[Any]:
    """Sort key putting '2' before '10'."""
    return [(0, int(part)) if part.isdigit() else (1, part.lower()) for part in re.split(r"(\d+)", name)]


def image_record(path: Path, image_id: str, label: int, class_name: str) -> dict[str, Any] | str:
    """The manifest row of one image, or the reason it cannot be used."""
    if not path.is_file():
        return "file is missing"
    reason = unreadable_reason(path)
    if reason:
        return reason
    return image_row(path, image_id, label, class_name)


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
    return Manifest(images=images, excluded=excluded, classes=list(classes))


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
