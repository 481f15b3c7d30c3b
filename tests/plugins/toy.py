"""A plugin as a user would write one: a toy backbone and a toy dataset source, added through the registries alone.

Named in a config as ``plugins: [tests/plugins/toy.py]`` (docs, "Plugin API"); the workflow
imports it before checking the config and in every job.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from cbir.extend import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    Source,
    data_dir,
    image_record,
    make_manifest,
    register_backbone,
    register_source,
)


def _toy_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU(),
    )


register_backbone(
    Backbone(
        name="toy_cnn",
        build=_toy_cnn,
        trunk=lambda model: model,
        layer="second conv + ReLU, 16 x size/4 x size/4",
        channels=16,
        stride=4,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        state_prefix="",
        licence="test code, MIT",
    )
)


class LabelsCsvSource(Source):
    """Images in one folder, their classes in ``labels.csv`` (columns ``file``, ``class``)."""

    name = "labels_csv"
    keys = frozenset({"path"})
    how_to_provide = "put the images and a labels.csv (file,class) there"

    def missing_reason(self, entry: Mapping[str, Any], root: Path) -> str | None:
        labels = data_dir(root, entry) / "labels.csv"
        return None if labels.is_file() else f"'{labels}' does not exist"

    def manifest(self, entry: Mapping[str, Any], root: Path, images_dir: Path | None = None):
        folder = data_dir(root, entry)
        with open(folder / "labels.csv", newline="") as f:
            pairs = [(row["file"], row["class"]) for row in csv.DictReader(f)]
        classes = sorted({name for _, name in pairs})
        rows, excluded = [], []
        for file, name in pairs:
            record = image_record(folder / file, file, classes.index(name), name)
            if isinstance(record, str):
                excluded.append({"path": str(folder / file), "class_name": name, "reason": record})
            else:
                rows.append(record)
        return make_manifest(rows, excluded, classes)


register_source(LabelsCsvSource())
