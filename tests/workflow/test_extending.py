"""Extending cbir through its registries alone: a plugin's toy backbone and toy dataset source run
the whole workflow, and a cell built with them answers `cbir query` (docs, "Plugin API")."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import h5py
import pandas as pd
import pytest

from helpers import REPO, make_image_folder, run_snakemake, write_config

pytestmark = pytest.mark.workflow
PLUGIN = REPO / "tests" / "plugins" / "toy.py"


def labels_csv_dataset(root: Path) -> Path:
    """The toy source's layout: the images in one folder, their classes in labels.csv."""
    classes = make_image_folder(root / "by_class", per_class=8, size=32)
    flat = root / "flat"
    flat.mkdir(parents=True)
    with open(flat / "labels.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file", "class"])
        for image in sorted(classes.glob("*/*.png")):
            name = f"{image.parent.name}_{image.name}"
            (flat / name).write_bytes(image.read_bytes())
            writer.writerow([name, image.parent.name])
    return flat


def test_a_plugin_backbone_and_source_run_the_workflow_and_answer_queries(tmp_path: Path):
    data = labels_csv_dataset(tmp_path / "data")
    config = {
        "plugins": [str(PLUGIN)],
        "data_root": str(tmp_path / "data"),
        "grid": {"datasets": ["toyset"], "backbones": ["toy"], "splits": ["75-25"], "pca": [4, "original"], "k": [2]},
        "datasets": {"toyset": {"source": "labels_csv", "path": str(data)}},
        "backbones": {"toy": {"arch": "toy_cnn", "weights": "random", "pooling": "avg", "image_size": 32}},
        "extraction": {"batch_size": 8, "num_workers": 0, "threads": 1, "precision": "fp32", "engine": "torch"},
        "mlp": {"hidden_layers": [16], "max_iter": 300},
        "kmeans": {"n_init": 2},
    }
    result = run_snakemake(tmp_path, write_config(tmp_path / "config.yaml", config))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]

    manifest = pd.read_csv(tmp_path / "results/toyset/manifest.csv")
    assert len(manifest) == 24 and set(manifest["class_name"]) == {"red", "green", "blue"}
    with h5py.File(tmp_path / "results/toyset/features/toy.h5") as f:
        assert f.attrs["arch"] == "toy_cnn" and f["features"].shape == (24, 16)
        assert f.attrs["plugin"] == str(PLUGIN)  # recorded, so a query can import it again
    metrics = pd.read_csv(tmp_path / "results/summary/metrics.csv")
    assert sorted(metrics["pca"].astype(str)) == ["4", "original"] and set(metrics["backbone"]) == {"toy"}
    assert metrics["accuracy"].between(0, 1).all()

    # a fresh process that never saw the config: the feature record brings the plugin back
    split = pd.read_csv(tmp_path / "results/toyset/splits/75-25.csv")
    train_id = split.loc[split["subset"] == "train", "id"].iloc[0]
    query = data / train_id
    answer = subprocess.run(
        [sys.executable, "-m", "cbir.cli", "query", str(query), "--model", "results/toyset/toy/75-25/4", "--json"],
        cwd=tmp_path, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert answer.returncode == 0, answer.stderr[-3000:]
    (found,) = json.loads(answer.stdout)
    assert found["results"]["global"][0]["id"] == train_id  # a training image finds itself first


def test_a_misspelt_plugin_stops_the_run_before_any_job(tmp_path: Path):
    config = {
        "plugins": [str(tmp_path / "nowhere.py")],
        "grid": {"datasets": ["d"], "backbones": ["b"], "splits": ["80-20"], "pca": ["original"], "k": [2]},
        "datasets": {"d": {"source": "sklearn_digits"}},
        "backbones": {"b": {"arch": "vgg16"}},
    }
    result = run_snakemake(tmp_path, write_config(tmp_path / "config.yaml", config), "-n")
    assert result.returncode != 0
    output = result.stdout + result.stderr  # a dry run reports on stdout
    assert f"config key 'plugins[0]': plugin file '{tmp_path / 'nowhere.py'}' does not exist" in output
