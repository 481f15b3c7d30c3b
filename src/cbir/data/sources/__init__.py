"""The dataset sources (``datasets.<name>.source`` in the config) in one registry, and their manifests.

Every source ends in the same :class:`cbir.data.manifest.Manifest` as an image folder (``id``, ``path``,
``label``, ``class_name``, ``width``, ``height``, ``bytes``, ``sha256`` of each image, and the
``excluded`` table), with the class mapping of the literature. Two add columns:
``official_subset`` (``train``/``test`` of the dataset's own split: CIFAR-10, Fashion-MNIST, VOC 2012) and
``labels`` (VOC 2012's full label set, '|'-joined class names).

A new source is one module with a :class:`Source` subclass and one ``register_source`` line below
(or a call to :func:`register_source` from a plugin, before the config is loaded).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import pandas as pd

from cbir.data.inspection import FileRecords, scanning
from cbir.data.manifest import DatasetError, Manifest, common_reasons, excluded_file_count, write_csv_table
from cbir.data.sources.cifar10 import (
    CIFAR10_BATCHES,
    CIFAR10_CLASSES,
    Cifar10Source,
    UnsafePickleError,
    export_cifar10_png,
    restricted_load,
)
from cbir.data.sources.digits import DigitsSource
from cbir.data.sources.fashion_mnist import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    FashionMnistSource,
    export_fashion_mnist_png,
    fashion_mnist_paths,
    read_idx_gz,
)
from cbir.data.sources.fetch import (
    DOWNLOADS,
    UNPACKED_STAMP,
    ArchiveSpec,
    download_archive,
    fetch_dataset,
    safe_extract,
    unpack_archive,
    verify_archive,
)
from cbir.data.sources.folder import FolderSource, is_labelled
from cbir.data.sources.indexed import COREL1K_CLASSES, Corel1kSource, Corel10kSource, Ghim10kSource, IndexedSpec
from cbir.data.sources.registry import SOURCES, get_source, official_split_sources, register_source
from cbir.data.sources.source import COMMON_KEYS, Source, data_dir
from cbir.data.sources.voc2012 import VOC_CLASSES, Voc2012Source, voc_labels

__all__ = [
    "CIFAR10_BATCHES",
    "CIFAR10_CLASSES",
    "COREL1K_CLASSES",
    "DOWNLOADS",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_FILES",
    "SOURCES",
    "UNPACKED_STAMP",
    "VOC_CLASSES",
    "ArchiveSpec",
    "IndexedSpec",
    "Source",
    "UnsafePickleError",
    "build_manifest",
    "data_dir",
    "download_archive",
    "entry_problems",
    "export_cifar10_png",
    "export_fashion_mnist_png",
    "fashion_mnist_paths",
    "fetch_dataset",
    "get_source",
    "is_labelled",
    "official_split_sources",
    "official_split_table",
    "prepared_datasets_pattern",
    "read_idx_gz",
    "register_source",
    "restricted_load",
    "safe_extract",
    "unpack_archive",
    "verify_archive",
    "voc_labels",
]

register_source(FolderSource())
register_source(DigitsSource())
register_source(Corel1kSource())
register_source(Corel10kSource())
register_source(Ghim10kSource())
register_source(Cifar10Source())
register_source(Voc2012Source())
register_source(FashionMnistSource())


def prepared_datasets_pattern(datasets: Mapping[str, Mapping[str, Any]], rule: str) -> str:
    """A ``dataset`` wildcard pattern matching only the configured datasets whose source is prepared by ``rule``.

    Rules that write the same folder (``results/<dataset>/images``: cifar10_images,
    fashion_mnist_images) then each match only their own datasets; none: a pattern that matches nothing.
    """
    names = [name for name, entry in datasets.items() if get_source(entry["source"]).prepared_by == rule]
    return "|".join(re.escape(name) for name in names) or "(?!)"


def entry_problems(name: str, entry: Mapping[str, Any]) -> list[str]:
    """Keys that do not belong to the entry's source, and missing companions (sha256 of a url)."""
    source = entry["source"]
    keys = get_source(source).keys
    problems = []
    extra = sorted(set(entry) - keys - COMMON_KEYS)
    if extra:
        allowed = ", ".join(sorted(keys | COMMON_KEYS))
        problems.append(
            f"config key 'datasets.{name}': {', '.join(extra)} not used by source '{source}' (allowed: {allowed})"
        )
    if entry.get("url") and not entry.get("sha256"):
        problems.append(
            f"config key 'datasets.{name}.sha256': required when url is set (the archive's SHA-256, "
            "checked before anything is unpacked)"
        )
    subdir = PurePosixPath(str(entry.get("subdir") or ""))
    if subdir.is_absolute() or ".." in subdir.parts:
        problems.append(f"config key 'datasets.{name}.subdir': must be a relative path inside the dataset folder")
    return problems


def build_manifest(
    source: str,
    entry: Mapping[str, Any],
    root: Path,
    images_dir: Path | None = None,
    *,
    records: FileRecords | None = None,
    workers: int = 1,
    rejected_csv: str | Path | None = None,
) -> Manifest:
    """The manifest of any configured dataset; ``images_dir`` is where the workflow exported its images.

    The source's files are inspected by ``workers`` processes, except those ``records`` (the
    dataset's file record cache) knows unchanged; ``records`` then also holds what was found.
    A dataset in which no image could be used is an error, not an empty table; the excluded files
    are then listed with their reasons in ``rejected_csv``, where given, which the message names.
    """
    root = Path(root)
    with scanning(records, workers):
        manifest = get_source(source).manifest(entry, root, images_dir)
    if manifest.images.empty:
        where = f"'{data_dir(root, entry)}'"
        n_excluded = excluded_file_count(manifest.excluded)
        if not n_excluded:
            raise DatasetError(f"no usable image in the {source} dataset at {where}: it holds no image file")
        listed = ""
        if rejected_csv is not None:
            write_csv_table(manifest.excluded, rejected_csv)
            listed = f"; the files and reasons are listed in '{rejected_csv}'"
        raise DatasetError(
            f"no usable image in the {source} dataset at {where}: {n_excluded} file(s) excluded, "
            f"most common reasons: {common_reasons(manifest.excluded)}{listed}"
        )
    return manifest


def official_split_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """The dataset's own train/test split (``official_subset``) in the split-file format."""
    if "official_subset" not in manifest.columns:
        raise DatasetError(
            f"this dataset has no official split (only {', '.join(official_split_sources())} have one); "
            "use a ratio split such as 80-20"
        )
    subset = manifest["official_subset"].fillna("").astype(str)
    unassigned = manifest.loc[~subset.isin(["train", "test"]), "id"]
    if len(unassigned):
        raise DatasetError(
            f"{len(unassigned)} image(s) are in neither official subset, e.g. '{unassigned.iloc[0]}'"
        )  # fmt: skip
    return pd.DataFrame({"id": manifest["id"], "label": manifest["label"], "subset": subset})
