"""``cbir duplicates``: exact and near-duplicate groups of an indexed dataset."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbir.cli import main
from cbir.data.manifest import MANIFEST_COLUMNS, write_csv_table
from cbir.io import save_arrays
from cbir.search.duplicates import (
    NEAR,
)

N, DIM = 60, 256


def planted_features(seed: int = 0) -> np.ndarray:
    """Random directions (far apart in 256-D) with near copies and exact copies planted."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(N, DIM)).astype(np.float32)
    noise = lambda: 0.02 * rng.normal(size=DIM)  # noqa: E731 (cosine distance ~2e-4)
    x[1], x[2] = x[0] + noise(), x[0] + noise()
    x[11] = x[10] + 0.15 * rng.normal(size=DIM)
    x[12] = x[11] + 0.15 * rng.normal(size=DIM)  # 12 near 11, farther from 10
    x[21], x[31] = x[20], x[30]
    x[22] = x[20] + noise()
    return x * rng.uniform(0.5, 3, size=(N, 1)).astype(np.float32)  # norms must not matter


def checksums() -> list[str]:
    sha = [f"{row:064x}" for row in range(N)]
    sha[21], sha[31] = sha[20], sha[30]
    return sha


@pytest.fixture
def indexed(tmp_path: Path) -> Path:
    """A workflow-like results/tiny/ with a feature file, a manifest and the images."""
    dataset = tmp_path / "results" / "tiny"
    (tmp_path / "images").mkdir()
    labels = np.array([row % 2 for row in range(N)])
    labels[[0, 1, 2, 10, 12]] = 0
    labels[11] = 1
    ids = [f"{'ab'[label]}/{row:03d}.png" for row, label in enumerate(labels)]
    paths = [f"images/{row:03d}.png" for row in range(N)]  # relative to the workflow's folder
    for row, path in enumerate(paths):
        Image.new("RGB", (16, 16), (row * 4, 100, 200)).save(tmp_path / path)
    arrays = {"features": planted_features(), "ids": np.array(ids), "paths": np.array(paths), "labels": labels}
    save_arrays(dataset / "features" / "lite.h5", arrays)
    manifest = pd.DataFrame(
        {
            "id": ids,
            "path": paths,
            "label": labels,
            "class_name": np.array(["a", "b"])[labels],
            "width": 16,
            "height": 16,
            "bytes": 100,
            "sha256": checksums(),
        },
        columns=MANIFEST_COLUMNS,
    )
    write_csv_table(manifest, dataset / "manifest.csv")
    return dataset / "features" / "lite.h5"


def test_duplicates_of_the_workflows_feature_file(finished_run, tmp_path: Path, capsys):
    """The tiny run's images are noisy coloured squares: no identical files; any near groups are real images."""
    root, _ = finished_run
    features = root / "results" / "tiny" / "features" / "lite.h5"
    assert main(["duplicates", str(features), "--json", str(tmp_path / "d.json"), "--threshold", "0"]) == 0
    assert json.loads((tmp_path / "d.json").read_text())["groups"] == []
    assert main(["duplicates", str(features), "--json", str(tmp_path / "d.json")]) == 0
    payload = json.loads((tmp_path / "d.json").read_text())
    manifest = pd.read_csv(root / "results" / "tiny" / "manifest.csv")
    assert payload["images"] == len(manifest) and payload["exact_sets"] == 0
    ids = [image["id"] for g in payload["groups"] for image in g["images"]]
    assert len(ids) == len(set(ids)) == payload["images_involved"] and set(ids) <= set(manifest["id"])
    assert all(g["kind"] == NEAR and g["size"] >= 2 for g in payload["groups"])
    assert "images involved" in capsys.readouterr().out
