"""A grid cell's artifact names, and loading a trained cell once for the evaluation, queries and the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from cbir.layout import CLASSIFIER, GALLERY, PROJECTION, cell_folder, clusters_name, metrics_name, model_files
from cbir.search.cell import ModelFolderError, available_k, load_cell

CELL = "results/tiny/lite/80-20/8"


def test_the_names_of_a_cells_artifacts(tmp_path: Path):
    assert cell_folder("tiny", "lite", "80-20", "8") == CELL
    assert (PROJECTION, GALLERY, CLASSIFIER) == ("projection.h5", "gallery.h5", "classifier.h5")
    assert clusters_name(3) == "clusters_k3.h5" and metrics_name(3) == "metrics_k3.json"
    assert clusters_name("{k}") == "clusters_k{k}.h5"  # the rules' pattern
    assert model_files(2) == ("projection.h5", "gallery.h5", "classifier.h5", "clusters_k2.h5")
    for name in ("clusters_k10.h5", "clusters_k2.h5", "clusters_kx.h5", "clusters_k3.h5.bak", "metrics_k5.json"):
        (tmp_path / name).touch()
    assert available_k(tmp_path) == [2, 10]


def test_a_missing_folder_or_k_is_refused(tmp_path: Path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        load_cell(tmp_path / "nowhere")
    with pytest.raises(ModelFolderError, match=r"incomplete: missing projection\.h5, gallery\.h5, classifier\.h5"):
        load_cell(tmp_path)
