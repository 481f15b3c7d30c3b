"""Embedding spaces: what each fitted space computes, storage, re-ranking, and a cell searched in a space."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cbir.fitting.chosen import Selection
from cbir.fitting.spaces import load_embedding
from cbir.io import load_arrays
from cbir.layout import SELECTION, embedding_name, metrics_name
from cbir.search.cell import BEST, best_space, load_cell


def test_the_finished_run_searches_in_every_space_and_best_is_validations_choice(finished_run):
    root, config = finished_run
    cell = root / "results/tiny/lite/80-20/8"
    selection = Selection.load(cell / SELECTION)
    gallery, _ = load_arrays(cell / "gallery.h5")
    # the validation part is drawn from the training images only (the gallery), a fifth of each class
    assert selection.validated
    assert selection.validation["n_fit"] + selection.validation["n_validation"] == len(gallery["ids"])
    assert selection.validation["n_validation"] == pytest.approx(0.2 * len(gallery["ids"]), abs=3)
    tried = {
        (c["space"], json.dumps(c["settings"], sort_keys=True), c["rerank"]["method"]) for c in selection.candidates
    }
    assert {("lda", '{"shrinkage": "auto"}', "none"), ("lda", '{"shrinkage": null}', "none")} <= tried
    assert {method for _, _, method in tried} == {"none", "qe", "dba", "dba_qe"}
    figures = {space: selection.choice(space).figures["map_global"] for space in config["grid"]["embeddings"]}
    assert selection.chosen == max(figures, key=figures.get) and figures[selection.chosen] == max(figures.values())
    for space in config["grid"]["embeddings"]:
        choice = selection.choice(space)
        metrics = json.loads((cell / metrics_name(2, space)).read_text())
        assert metrics["space"] == space and metrics["chosen"] == (space == selection.chosen)
        assert metrics["validation_map_global"] == choice.figures["map_global"]
        assert json.loads(metrics["space_settings"]) == choice.settings
        assert metrics["rerank_chosen"] == choice.rerank.describe()
        # the test figures of the chosen re-ranking, beside those without it and with the fixed settings
        assert ("map_global_reranked" in metrics) == choice.rerank.active
        measured = ["map_global", "precision_at_10_global", "map_global_qe", "map_global_dba", "map_global_dba_qe"]
        measured += ["precision_at_5_clustered", "precision_at_5_faiss_flat", "time_search_clustered_median_us"]
        for key in measured:
            assert 0 <= metrics[key] < float("inf"), (space, key)
        if space != "raw":  # the space was refitted on the whole training split with the chosen settings
            assert load_embedding(cell / embedding_name(space)).settings == choice.settings
            assert metrics["time_fit_space_s"] >= 0
    best, value = best_space(cell, 2)
    assert (best, value) == (selection.chosen, figures[selection.chosen])
    loaded = load_cell(cell, 2, space=BEST)
    assert loaded.space == best and loaded.rerank == selection.choice(best).rerank
    assert loaded.describe_setting().startswith(best) and "validation mAP" in loaded.describe_setting()
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
    raw = spaces[spaces["space"] == "raw"].set_index("pca")
    metrics = pd.read_csv(root / "results/summary/metrics.csv").set_index("pca")
    # the paper's rows are metrics.csv's; where validation chose a re-ranking, the test figures are re-ranked
    assert np.allclose(raw["map_global_plain"].sort_index(), metrics["map_global"].sort_index())
    reranked = metrics.get("map_global_reranked", pd.Series(np.nan, index=metrics.index)).notna()
    assert np.allclose(
        raw["map_global"].sort_index(),
        metrics["map_global_reranked"].where(reranked, metrics["map_global"]).sort_index(),
    )
    assert (spaces.groupby("pca")["chosen"].sum() == 1).all()  # one space searched per cell
    assert {"validation_map_global", "validation_precision_at_10_global"} <= set(spaces.columns)
    table = (root / "results/summary/embedding_spaces_80-20.md").read_text()
    assert "8 · lda" in table and "mAP +DBA+QE" in table and "validation mAP" in table
    page = (root / "results/summary/html/tables_80-20.html").read_text()
    assert "Retrieval quality per embedding space" in page
