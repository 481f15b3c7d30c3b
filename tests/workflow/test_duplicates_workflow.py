"""``cbir duplicates``: exact and near-duplicate groups of an indexed dataset."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from cbir.cli import main
from cbir.search.duplicates import (
    NEAR,
)

N, DIM = 60, 256


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
