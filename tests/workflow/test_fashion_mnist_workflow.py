"""The ``fashion_mnist`` source: the strict IDX reader, the PNG export with the official split, the per-class cap,
the errors for broken files, the config checks, the data rules, and the real files where Debian installed them."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cbir.data.manifest import read_manifest

from dataset_fixtures import cifar_tree, default_config_with, fake_fashion
from helpers import planned_jobs, run_snakemake, write_config

# --- fake files in the real layout ----------------------------------------------------------


# --- the reader -----------------------------------------------------------------------------


# --- the export and the manifest -------------------------------------------------------------


# --- the per-class cap ------------------------------------------------------------------------


# --- presence and configuration ----------------------------------------------------------------


# --- the workflow ----------------------------------------------------------------------------------


@pytest.mark.workflow
def test_data_rules_export_and_index_fashion_mnist_beside_cifar10(tmp_path: Path):
    fake_fashion(tmp_path / "data" / "fm", per_class={"train": 6, "test": 2})
    cifar_tree(tmp_path / "data" / "cifar")
    config = default_config_with(
        tmp_path / "data",
        {
            "fm": {"source": "fashion_mnist", "path": "fm", "max_per_class": 4},
            "cifar": {"source": "cifar10", "path": "cifar"},
        },
        ["official"],
    )
    config_path = write_config(tmp_path / "config.yaml", config)
    targets = [f"results/{name}/splits/official.csv" for name in ("fm", "cifar")]
    result = run_snakemake(tmp_path, config_path, *targets)
    assert result.returncode == 0, result.stderr[-4000:]

    manifest = read_manifest(tmp_path / "results/fm/manifest.csv")
    assert len(manifest) == 12 and set(manifest["width"]) == {64}  # the schema's image_size default
    official = pd.read_csv(tmp_path / "results/fm/splits/official.csv")
    assert official.groupby(["label", "subset"]).size().to_dict() == {
        (label, subset): n for label in (0, 1, 2) for subset, n in (("test", 1), ("train", 3))
    }
    report = json.loads((tmp_path / "results/fm/images/export.json").read_text())
    assert report["max_per_class"] == 4 and report["seed"] == 0
    assert len(read_manifest(tmp_path / "results/cifar/manifest.csv")) == 60
    assert (tmp_path / "results/logs/fashion_mnist_images/fm.log").is_file()

    again = run_snakemake(tmp_path, config_path, "-n", *targets)
    assert again.returncode == 0 and planned_jobs(again) == {}
    # replaced IDX files export the images again
    fake_fashion(tmp_path / "data" / "fm", per_class={"train": 6, "test": 2}, seed=1)
    changed = run_snakemake(tmp_path, config_path, "-n", *targets)
    assert planned_jobs(changed).get("fashion_mnist_images") == 1 and "cifar10_images" not in planned_jobs(changed)


# --- real data ---------------------------------------------------------------------------------------
