"""datasets.csv: per dataset, the images and classes used, the files excluded and the duplicated content."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from cbir.data.manifest import EMPTY_CLASS_REASON, excluded_file_count, read_manifest, write_csv_table

DATASET_COLUMNS = [
    "dataset", "images", "classes", "smallest_class", "excluded", "excluded_fraction", "empty_classes",
    "duplicates", "duplicates_across_classes", "image_size",
]  # fmt: skip


def image_size_summary(images: pd.DataFrame) -> str:
    """The images' sizes, width x height: the one size, or the two commonest with their shares."""
    if images.empty or not {"width", "height"} <= set(images.columns):
        return ""
    sizes = (images["width"].astype(str) + "x" + images["height"].astype(str)).value_counts()
    if len(sizes) == 1:
        return str(sizes.index[0])
    parts = [f"{size} ({count / len(images):.0%})" for size, count in sizes.head(2).items()]
    if len(sizes) > 2:
        parts.append(f"{len(sizes) - 2} other sizes")
    return ", ".join(parts)


def dataset_counts(name: str, manifest_csv: str | Path, excluded_csv: str | Path, duplicates_csv: str | Path) -> dict:
    """One row of datasets.csv: images and classes used, files excluded, duplicated content."""
    images = read_manifest(manifest_csv)
    excluded = pd.read_csv(excluded_csv, dtype=str, keep_default_na=False)
    duplicates = pd.read_csv(duplicates_csv, dtype={"sha256": str, "id": str})
    n_excluded = excluded_file_count(excluded)
    per_class = images["class_name"].value_counts()
    return {
        "dataset": name,
        "images": len(images),
        "classes": len(per_class),
        "smallest_class": int(per_class.min()) if len(per_class) else 0,
        "excluded": n_excluded,
        "excluded_fraction": round(n_excluded / max(1, len(images) + n_excluded), 6),
        "empty_classes": int((excluded["reason"] == EMPTY_CLASS_REASON).sum()) if len(excluded) else 0,
        "duplicates": len(duplicates),
        "duplicates_across_classes": int(duplicates["across_classes"].astype(bool).sum()) if len(duplicates) else 0,
        "image_size": image_size_summary(images),
    }


def write_dataset_summary(
    names: Iterable[str],
    manifests: Iterable[str | Path],
    excluded: Iterable[str | Path],
    duplicates: Iterable[str | Path],
    out_csv: str | Path,
) -> pd.DataFrame:
    """results/summary/datasets.csv: per dataset, what was used, excluded and duplicated."""
    rows = [dataset_counts(*files) for files in zip(names, manifests, excluded, duplicates, strict=True)]
    table = pd.DataFrame(rows, columns=DATASET_COLUMNS)
    write_csv_table(table, out_csv)
    return table
