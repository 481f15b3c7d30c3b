"""Embedding spaces: what each fitted space computes, storage, re-ranking, and a cell searched in a space."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cbir.layout import embedding_name, metrics_name
from cbir.search.cell import BEST, best_space, load_cell


def test_the_finished_run_searches_in_every_space_and_best_picks_the_highest_map(finished_run):
    root, config = finished_run
    cell = root / "results/tiny/lite/80-20/8"
    scores = {}
    for space in config["grid"]["embeddings"]:
        metrics = json.loads((cell / metrics_name(2, space)).read_text())
        assert metrics["space"] == space
        measured = ["map_global", "precision_at_10_global", "map_global_qe", "map_global_dba", "map_global_dba_qe"]
        measured += ["precision_at_5_clustered", "precision_at_5_faiss_flat", "time_search_clustered_median_us"]
        for key in measured:
            assert 0 <= metrics[key] < float("inf"), (space, key)
        scores[space] = metrics["map_global"]
        if space != "raw":
            assert (cell / embedding_name(space)).is_file() and metrics["time_fit_space_s"] >= 0
    best, value = best_space(cell, 2)
    assert value == max(scores.values()) and scores[best] == value
    loaded = load_cell(cell, 2, space=BEST)
    assert loaded.space == best and loaded.saved_metrics()["map_global"] == value
    # the loaded cell ranks as the evaluation did: a training image's nearest neighbour is itself
    gallery = loaded.models.projection.transform(np.zeros((1, loaded.feature_dim), dtype=np.float32))
    assert loaded.models.searchers()["global"](gallery, np.array([0]), 3)[0].shape == (1, 3)


def test_a_space_the_cell_lacks_is_refused_with_what_it_has(finished_run):
    root, _ = finished_run
    from cbir.search.cell import ModelFolderError

    with pytest.raises(ModelFolderError, match=r"no embedding space 'nope'.*available: .*lda"):
        load_cell(root / "results/tiny/lite/80-20/8", 2, space="nope")


def test_the_summary_has_every_cell_in_every_space(finished_run):
    import pandas as pd

    root, config = finished_run
    spaces = pd.read_csv(root / "results/summary/spaces.csv")
    assert len(spaces) == 3 * len(config["grid"]["embeddings"])  # PCA 4, 8, original
    assert list(dict.fromkeys(spaces["space"])) == config["grid"]["embeddings"]
    raw = spaces[spaces["space"] == "raw"].set_index("pca")["map_global"]
    metrics = pd.read_csv(root / "results/summary/metrics.csv").set_index("pca")["map_global"]
    assert np.allclose(raw.sort_index(), metrics.sort_index())  # the paper's rows are metrics.csv's
    table = (root / "results/summary/embedding_spaces_80-20.md").read_text()
    assert "8 · lda" in table and "mAP +DBA+QE" in table
    page = (root / "results/summary/html/tables_80-20.html").read_text()
    assert "Retrieval quality per embedding space" in page
