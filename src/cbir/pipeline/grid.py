"""The grid: its cells, its datasets' folders, and the bounds known before any job (class sizes, PCA sizes)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cbir.data.sources import DOWNLOADS, get_source, is_labelled
from cbir.data.split import ALL, OFFICIAL, parse_split, train_count
from cbir.extraction.registry import get_backbone

ORIGINAL = "original"


def static_feature_dim(backbone: Mapping[str, Any]) -> int | None:
    """The feature dimension a backbone entry gives, where it is known without running the network.

    From the registry (:data:`cbir.extraction.registry.BACKBONES`): pooled features (avg, gem) have one value
    per channel; an unpooled map has channels x side^2 values (side: image_size / stride, rounded as
    the entry says), or is known only after extraction (None) where padding sets its size
    (EfficientNet-Lite).
    """
    return get_backbone(backbone["arch"]).static_feature_dim(
        backbone.get("pooling", "none"), int(backbone.get("image_size", 224))
    )


def class_sizes_bound(config: Mapping[str, Any], dataset: str, official: bool) -> tuple[list[int], str] | None:
    """Images per class of a dataset as known before its manifest is built, and where that is known from.

    Asked of the dataset's source: counted for an image folder (files with an image extension:
    some may still be excluded), declared for the paper's datasets (n_classes x images_per_class;
    CIFAR-10's official counts), fixed for scikit-learn's digits. None where unknown: VOC 2012, a
    folder not there yet.
    """
    entry = config["datasets"][dataset]
    return get_source(entry["source"]).class_sizes(entry, dataset_root(config, dataset), official)


def max_train_images(class_sizes: list[int], split: str) -> int:
    """At most how many training images a split of a dataset with these class sizes has."""
    if split in (OFFICIAL, ALL):
        return sum(class_sizes)
    fraction = parse_split(split)
    return sum(train_count(n, fraction) for n in class_sizes if n > 0)


def pca_size_problems(config: Mapping[str, Any]) -> list[str]:
    """PCA sizes larger than a training set or a feature dimension, where these are known before any job.

    A PCA basis has at most min(training images, feature dimension) axes. Sizes not caught here
    (EfficientNet-Lite0 unpooled, VOC 2012) stop the PCA job with the same explanation.
    """
    grid = config["grid"]
    sizes = [(i, int(p)) for i, p in enumerate(grid["pca"]) if p != ORIGINAL]
    if not sizes:
        return []
    problems = []
    for backbone in grid["backbones"]:
        dim = static_feature_dim(config["backbones"][backbone])
        for i, size in sizes:
            if dim is not None and size > dim:
                problems.append(
                    f"config key 'grid.pca[{i}]': {size} is larger than the feature dimension {dim} of backbone "
                    f"'{backbone}' (allowed: 1..{dim} or original)"
                )
    for dataset in grid["datasets"]:
        # a folder dataset is counted once, not once per split
        bounds = {
            official: class_sizes_bound(config, dataset, official)
            for official in {s == OFFICIAL for s in grid["splits"]}
        }
        known = [
            (split, max_train_images(bound[0], split), bound[1])
            for split in grid["splits"]
            if (bound := bounds[split == OFFICIAL]) is not None
        ]
        known = [item for item in known if item[1] > 0]
        if not known:  # unknown before the manifest, or no image there yet (the manifest says so)
            continue
        split, n_train, source = min(known, key=lambda item: item[1])
        for i, size in sizes:
            if size > n_train:
                problems.append(
                    f"config key 'grid.pca[{i}]': {size} is larger than the training set of dataset '{dataset}' "
                    f"at split {split}: at most {n_train} images ({source}) (allowed: 1..{n_train} or original)"
                )
    return problems


def pca_label(size: int | str) -> str:
    return str(size)


def pca_sizes(config: Mapping[str, Any]) -> list[int]:
    """The integer PCA sizes of the grid, ascending."""
    return sorted(int(p) for p in config["grid"]["pca"] if p != ORIGINAL)


def dataset_root(config: Mapping[str, Any], dataset: str) -> Path:
    """Folder holding a dataset's files: ``path`` (relative to data_root) or ``data_root/<name>``.

    A dataset with a ``url`` is unpacked there. Generated datasets (sklearn_digits) are always
    written to ``data_root/<name>``.
    """
    entry = config["datasets"][dataset]
    if entry.get("path"):
        path = Path(entry["path"])
        return path if path.is_absolute() else Path(config["data_root"]) / path
    return Path(config["data_root"]) / dataset


def downloads_dir(config: Mapping[str, Any]) -> Path:
    """Where downloaded archives are kept (and checked again before any re-download)."""
    return Path(config["data_root"]) / DOWNLOADS


def missing_datasets(config: Mapping[str, Any]) -> list[str]:
    """Messages for the datasets of the grid that must be provided but are not there.

    Generated datasets and datasets with a ``url`` (the workflow fetches them) are never missing;
    any other dataset must be present in the layout of its source.
    """
    messages = []
    for name in config["grid"]["datasets"]:
        entry = config["datasets"][name]
        source = get_source(entry["source"])
        if source.generated or entry.get("url"):
            continue
        root = dataset_root(config, name)
        reason = source.missing_reason(entry, root)
        if reason:
            how = entry.get("how_to_get", "")
            messages.append(
                f"dataset '{name}' not found at '{root}' (source {source.name}: {reason}): "
                f"{source.instructions(name)}." + (f" {how.strip()}" if how else "")
            )
    return messages


@dataclass(frozen=True)
class GridCell:
    dataset: str
    backbone: str
    split: str
    pca: str
    k: int


def grid_cells(config: Mapping[str, Any]) -> list[GridCell]:
    grid = config["grid"]
    return [
        GridCell(dataset, backbone, split, pca_label(pca), int(k))
        for dataset in grid["datasets"]
        for backbone in grid["backbones"]
        for split in grid["splits"]
        for pca in grid["pca"]
        for k in cluster_counts(config, dataset)
    ]


def dataset_is_labelled(config: Mapping[str, Any], dataset: str) -> bool:
    return is_labelled(config["datasets"][dataset])


def cluster_counts(config: Mapping[str, Any], dataset: str) -> list[int]:
    """The k of a dataset's cells: the grid's k-means clusters per class, or for a collection without labels
    its ``clusters`` over the whole collection (``auto``: the square root of its image files, at least 1)."""
    if dataset_is_labelled(config, dataset):
        return [int(k) for k in config["grid"]["k"]]
    clusters = config["datasets"][dataset].get("clusters", "auto")
    if clusters != "auto":
        return [int(clusters)]
    bound = class_sizes_bound(config, dataset, official=False)
    n_images = sum(bound[0]) if bound else 0
    return [max(1, round(math.sqrt(n_images)))]
