"""Train/test splits: stratified, seeded assignment of a manifest's images and the split file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from cbir.data.manifest import DatasetError


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


def gallery_only_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Split ``all``: every image in the gallery ('train'), none held out (a collection without labels)."""
    return pd.DataFrame({"id": manifest["id"], "label": manifest["label"], "subset": "train"})


def split_ids(split_csv: str | Path, subset: str) -> list[str]:
    """Image ids of one subset ('train' or 'test') of a split file, in file order."""
    table = pd.read_csv(split_csv, dtype={"id": str, "subset": str})
    if subset not in ("train", "test"):
        raise ValueError(f"subset must be 'train' or 'test', not '{subset}'")
    return table.loc[table["subset"] == subset, "id"].tolist()


OFFICIAL = "official"  # the dataset's own train/test split (CIFAR-10, VOC 2012), beside the ratio splits
ALL = "all"  # every image in the gallery: collections without labels (labels: none)


def parse_split(split: str) -> float:
    """'80-20' -> 0.8, the training fraction; 'all' -> 1."""
    if split == ALL:
        return 1.0
    train, test = (int(p) for p in split.split("-"))
    return train / (train + test)
