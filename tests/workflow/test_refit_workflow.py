"""update.refit when_due: images added to a collection join the kept clusters, with the PCA basis kept, until a
refit is due (refit_after of the fitted training set), then everything is refitted."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.search.cell import load_cell

from helpers import collection_config, make_collection, planned_jobs, run_snakemake, write_config

FITTING = {"fit_pca", "cluster", "train_mlp", "fit_spaces"}


def add_photos(folder: Path, n: int, seed: int) -> None:
    for i in range(n):
        pixels = np.random.default_rng(seed + i).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"added_{seed}_{i}.png")


@pytest.mark.workflow
def test_a_collection_keeps_its_models_until_a_refit_is_due(tmp_path: Path):
    folder = make_collection(tmp_path / "data" / "photos")  # 36 images
    config = collection_config(folder)
    config["grid"]["splits"] = ["all"]
    config["update"] = {"refit": "when_due", "refit_after": 0.2}
    config_path = write_config(tmp_path / "config.yaml", config)
    first = run_snakemake(tmp_path, config_path)
    assert first.returncode == 0, first.stderr[-3000:]
    cell = tmp_path / "results/photos/lite/all/8"
    basis = (tmp_path / "results/photos/lite/all/pca_basis.h5").stat().st_mtime_ns
    centroids = load_cell(cell).clusters.centroids

    add_photos(folder, 3, seed=10)  # 39 images: 8% more than the fit, not due
    jobs = planned_jobs(run_snakemake(tmp_path, config_path, "-n"))
    assert jobs["manifest"] == 1 and jobs["project"] == 3 and not FITTING & set(jobs)
    # one core: with two, Snakemake's DAG update after the plan_shards checkpoint can run while the
    # split job has removed its output to rewrite it, and an ancient input that is missing at that
    # moment does not hold back fit_pca ("Input files updated by another job"): a spurious refit,
    # noted on the issue, that the workflow does not yet guard against (making plan_shards wait for
    # the split files changed its input set whenever a split is added, which re-planned everything)
    second = run_snakemake(tmp_path, config_path, "--cores", "1")
    assert second.returncode == 0, second.stderr[-3000:]
    assert (tmp_path / "results/photos/lite/all/pca_basis.h5").stat().st_mtime_ns == basis
    loaded = load_cell(cell)
    assert len(loaded.gallery_ids) == 39 and loaded.placed_since_fit == 3
    assert np.array_equal(loaded.clusters.centroids, centroids)
    metrics = json.loads((cell / "metrics_k6.json").read_text())
    assert metrics["images_placed_since_fit"] == 3 and metrics["n_train"] == 39

    add_photos(folder, 6, seed=20)  # 45 images: 25% more than the fit, due
    jobs = planned_jobs(run_snakemake(tmp_path, config_path, "-n"))
    assert {"fit_pca", "cluster"} <= set(jobs)
