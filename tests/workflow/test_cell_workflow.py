"""A grid cell's artifact names, and loading a trained cell once for the evaluation, queries and the server."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from cbir.layout import GALLERY, PROJECTION, clusters_name, metrics_name
from cbir.search.cell import CellIdentity, ModelFolderError, load_cell
from cbir.search.index import MODES

CELL = "results/tiny/lite/80-20/8"


def copy_cell(finished_run, target: Path) -> Path:
    root, _ = finished_run
    shutil.copytree(root / CELL, target)
    return target


@pytest.mark.workflow
def test_a_trained_cell_is_loaded_with_its_models_and_metrics(finished_run):
    root, _ = finished_run
    cell = load_cell(root / CELL, faiss_options={"enabled": True, "nlist": 2, "nprobe": 1})
    assert cell.k == 2 and cell.folder == root / CELL
    assert cell.identity == CellIdentity("tiny", "lite", "80-20", "8")
    assert cell.class_names == ["blue", "green", "red"]
    assert len(cell.gallery_ids) == len(cell.gallery_paths) == len(cell.gallery_labels) == 24
    assert cell.record["arch"] == "efficientnet_lite0" and cell.feature_dim == 1280
    assert cell.models.index.gallery.shape == (24, 8)
    assert len(cell.clusters.centroids) == 3 * 2
    assert set(cell.models.searchers()) == {*MODES, "faiss_flat", "faiss_ivf"}
    metrics = json.loads((root / CELL / metrics_name(2)).read_text())
    assert cell.saved_metrics() == metrics
    assert {key: metrics[key] for key in ("dataset", "backbone", "split", "pca", "k")} == {
        **cell.identity.as_dict(),
        "k": cell.k,
    }


@pytest.mark.workflow
def test_the_identity_comes_from_the_artifacts_wherever_the_cell_is_copied(finished_run, tmp_path: Path):
    copy = copy_cell(finished_run, tmp_path / "other" / "names" / "on" / "path")
    cell = load_cell(copy)
    assert cell.identity == CellIdentity("tiny", "lite", "80-20", "8")
    assert cell.saved_metrics()["dataset"] == "tiny"
    for name in (PROJECTION, GALLERY):
        with h5py.File(copy / name, "r") as f:
            assert {key: f.attrs[key] for key in ("dataset", "backbone", "split", "pca")} == cell.identity.as_dict()


@pytest.mark.workflow
def test_a_gallery_without_the_names_is_named_by_its_folder(finished_run, tmp_path: Path):
    copy = copy_cell(finished_run, tmp_path / "digits" / "resnet" / "70-30" / "8")
    with h5py.File(copy / GALLERY, "r+") as f:
        for key in ("dataset", "backbone", "split"):
            del f.attrs[key]
    assert load_cell(copy).identity == CellIdentity("digits", "resnet", "70-30", "8")


@pytest.mark.workflow
def test_clusters_fitted_on_other_images_are_refused(finished_run, tmp_path: Path):
    from cbir.fitting.kmeans import load_clusters, save_clusters

    copy = copy_cell(finished_run, tmp_path / "cell")
    clusters, ids, _ = load_clusters(copy / clusters_name(2))
    save_clusters(copy / clusters_name(2), clusters, np.asarray(ids)[::-1], {"k": 2})
    with pytest.raises(ModelFolderError, match=r"clusters_k2\.h5' was fitted on other images than the gallery"):
        load_cell(copy)
