"""Settings chosen by validation inside the training split: the draw, the candidates, the choice, the record."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cbir.evaluation.validation import neighbour_agreement, setting_grid, validate_cell, validation_rows
from cbir.fitting.chosen import Selection
from cbir.fitting.rerank import NO_RERANK, Rerank, rerank_candidates
from cbir.search.index import RetrievalIndex
from cbir.search.rerank import RerankedSearch

VALIDATION = {"fraction": 0.2, "candidates": {"lda": {"shrinkage": ["auto", None]}}, "rerank": {"k": [3], "alpha": [3]}}
MLP = {"hidden_layers": [16], "max_iter": 200}


def blobs(n_classes: int = 6, per_class: int = 30, dim: int = 24, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Classes apart along a few axes, with large noise along the others (where raw distances mislead)."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(n_classes), per_class)
    centres = np.zeros((n_classes, dim))
    centres[:, :4] = rng.normal(scale=2.0, size=(n_classes, 4))
    noise = rng.normal(size=(len(labels), dim)) * np.r_[np.full(4, 0.5), np.full(dim - 4, 4.0)]
    return (centres[labels] + noise).astype(np.float32), labels


def test_the_validation_part_is_a_seeded_stratified_fifth_of_each_class():
    labels = np.repeat(np.arange(5), [10, 20, 30, 40, 7])
    fit, held = validation_rows(labels, 0.2, seed=0)
    assert len(np.intersect1d(fit, held)) == 0 and len(fit) + len(held) == len(labels)
    assert [int((labels[held] == c).sum()) for c in range(5)] == [2, 4, 6, 8, 1]
    assert np.array_equal(held, validation_rows(labels, 0.2, seed=0)[1])
    assert not np.array_equal(held, validation_rows(labels, 0.2, seed=1)[1])
    # too little to validate on: one class, switched off, or fewer than four validation images
    assert validation_rows(np.zeros(50, dtype=int), 0.2, 0) is None
    assert validation_rows(labels, 0.0, 0) is None
    assert validation_rows(np.repeat(np.arange(3), 2), 0.2, 0) is None


def test_the_setting_grid_tries_the_configured_setting_first():
    options = {"lda": {"shrinkage": "auto"}, "whiten": {"power": 0.5}}
    grid = setting_grid("lda", options, {"lda": {"shrinkage": [None, "auto", 0.1]}})
    assert grid == [{"shrinkage": "auto"}, {"shrinkage": None}, {"shrinkage": 0.1}]
    assert setting_grid("whiten", options, {}) == [{"power": 0.5}]
    assert setting_grid("raw", options, {}) == [{}]


def test_validation_chooses_the_best_setting_of_each_space_and_the_best_space():
    features, labels = blobs()
    spaces = ["raw", "l2", "lda", "mlp"]
    selection = validate_cell(features, labels, spaces, {"lda": {"shrinkage": "auto"}}, VALIDATION, MLP, seed=0)
    assert selection.validated and selection.validation["n_validation"] == 36
    for space in spaces:
        plain = [c for c in selection.candidates if c["space"] == space and c["rerank"]["method"] == "none"]
        choice = selection.choice(space)
        # the best settings without re-ranking, then the best re-ranking of those settings (none on a tie)
        assert choice.settings == max(plain, key=lambda c: c["map_global"])["settings"]
        same = [c for c in selection.candidates if c["space"] == space and c["settings"] == choice.settings]
        assert choice.figures["map_global"] == max(c["map_global"] for c in same)
    assert len([c for c in selection.candidates if c["space"] == "lda" and c["rerank"]["method"] == "none"]) == 2
    figures = {space: selection.choice(space).figures["map_global"] for space in spaces}
    assert selection.chosen == max(figures, key=figures.get)
    # LDA sees the class axes the noise hides from raw distances
    assert figures["lda"] > figures["raw"] + 0.2 and selection.chosen in ("lda", "mlp")


def test_the_choice_depends_on_the_training_images_only_and_reads_back(tmp_path):
    features, labels = blobs(seed=1)
    first = validate_cell(features, labels, ["raw", "lda"], {}, VALIDATION, MLP, seed=0)
    again = validate_cell(features.copy(), labels.copy(), ["raw", "lda"], {}, VALIDATION, MLP, seed=0)
    assert first.candidates == again.candidates and first.chosen == again.chosen
    first.save(tmp_path / "selection.json")
    loaded = Selection.load(tmp_path / "selection.json")
    assert loaded.chosen == first.chosen and loaded.choice("lda").rerank == first.choice("lda").rerank
    assert loaded.choice("lda").settings == first.choice("lda").settings
    assert "validation mAP" in loaded.describe() and json.loads((tmp_path / "selection.json").read_text())["candidates"]


def test_without_labels_or_images_to_spare_the_configured_settings_are_kept():
    features, labels = blobs(n_classes=2, per_class=2)
    selection = validate_cell(features, labels, ["raw", "lda"], {"lda": {"shrinkage": "auto"}}, VALIDATION, MLP, 0)
    assert not selection.validated and selection.chosen == "raw"
    assert selection.choice("lda").settings == {"shrinkage": "auto"} and selection.choice("lda").rerank == NO_RERANK
    assert "too few training images" in selection.describe()
    collection = validate_cell(*blobs(), ["raw"], {}, VALIDATION, MLP, 0, labelled=False)
    assert not collection.validated and "without labels" in collection.validation["reason"]


def test_rerank_candidates_and_their_names():
    candidates = rerank_candidates([3, 5], [1, 3])
    assert candidates[0] == NO_RERANK and len(candidates) == 1 + 3 * 2 * 2
    assert Rerank("dba_qe", 5, 3).describe() == "DBA + QE (k 5, α 3)" and NO_RERANK.describe() == "none"
    with pytest.raises(ValueError, match="not one of"):
        Rerank("magic", 3)


def test_the_reranked_search_ranks_with_reranking_but_reports_plain_distances():
    features, labels = blobs(dim=8)
    empty = np.empty(0, dtype=np.int64)
    index = RetrievalIndex(features, labels, np.empty((0, 8)), empty, empty)
    search = RerankedSearch(index, Rerank("dba_qe", 3, 3.0), normalised=False)
    indices, distances = search.search(features[:5], 4)
    assert list(indices[:, 0]) == [0, 1, 2, 3, 4]  # a gallery image finds itself first, at distance 0
    assert np.allclose(distances[:, 0], 0.0, atol=1e-6)
    expected = np.linalg.norm(features[indices] - features[:5, None, :], axis=2)
    assert np.allclose(distances, expected, atol=1e-5)
    plain_order = index.search(features[:5], "global", 4)[0]
    assert not np.array_equal(search.index.gallery, index.gallery)  # the gallery was augmented
    assert indices.shape == plain_order.shape


def test_a_collection_is_judged_by_how_well_changed_copies_find_their_photos():
    features, _ = blobs(dim=16)
    rng = np.random.default_rng(3)
    ids = [f"photo_{i}.jpg" for i in range(len(features))]
    picked = rng.choice(len(features), size=20, replace=False)
    copies = features[picked] + rng.normal(scale=0.3, size=(20, features.shape[1])).astype(np.float32)
    originals = [ids[i] for i in picked] + ["gone.jpg"]  # a copy whose photo left the gallery is not counted
    copies = np.vstack([copies, features[:1]])
    validation = {"copies": 21, "candidates": {"whiten": {"power": [0.5, 0.25]}}, "rerank": {"k": [3]}}
    selection = validate_cell(features, np.zeros(len(features), dtype=int), ["raw", "l2", "whiten", "lda"], {},
                              validation, MLP, seed=0, labelled=False, copies=(copies, originals, ids))  # fmt: skip
    assert selection.validated and selection.validation["criterion"] == "changed copies"
    assert selection.validation["n_validation"] == 20 and set(selection.spaces) == {"raw", "l2", "whiten"}  # no lda
    assert selection.metric == "neighbour_overlap_at_10"
    scores = {space: selection.score(space) for space in selection.spaces}
    assert selection.chosen == max(scores, key=scores.get) and all(0 <= v <= 1 for v in scores.values())
    # copies this close find their photos first, and share most of its neighbours
    assert selection.choice(selection.chosen).figures["copy_finds_photo_first"] > 0.9 and max(scores.values()) > 0.5
    assert "the 10 nearest photos of a changed copy and of its photo agree" in selection.describe()
    without = validate_cell(features, np.zeros(len(features), dtype=int), ["raw", "l2"], {}, validation, MLP, 0,
                            labelled=False)  # fmt: skip
    assert not without.validated and without.chosen == "raw"


def test_neighbour_agreement_compares_the_others_near_a_copy_and_near_its_photo():
    gallery = np.array([[0.0], [1.0], [2.0], [10.0], [11.0], [12.0]])
    # copy of photo 0 near it: neighbours {1, 2} as the photo's; copy of photo 3 drifted towards 0..2
    queries = np.array([[0.1], [5.0], [0.0], [10.0]])
    figures = neighbour_agreement(queries, gallery, np.array([0, 3]), "euclidean", k=2)
    assert figures["copy_finds_photo_first"] == 0.5
    assert figures["neighbour_overlap_at_10"] == pytest.approx((1.0 + 0.0) / 2)


def test_a_query_identical_to_a_gallery_photo_finds_it_first_whatever_the_reranking():
    rng = np.random.default_rng(5)
    # a tight pair (0, 1) and a photo (2) whose neighbours pull its augmented vector away from it
    gallery = np.vstack([[0.0, 0.0], [0.05, 0.0], [1.0, 0.0], [1.6, 0.0], [1.7, 0.1], [1.65, -0.1]])
    empty = np.empty(0, dtype=np.int64)
    index = RetrievalIndex(gallery, np.zeros(len(gallery), dtype=np.int64), np.empty((0, 2)), empty, empty)
    search = RerankedSearch(index, Rerank("dba_qe", 3, 0.0), normalised=False)
    plain_first = [int(i) for i in search.index.search(gallery[2:3], "global", 3)[0][0]]
    indices, distances = search.search(gallery[2:3] + rng.normal(scale=1e-6, size=(1, 2)), 3)
    assert plain_first[0] != 2  # re-ranked alone, another photo would come first...
    assert indices[0, 0] == 2 and distances[0, 0] < 1e-5  # ...but the photo itself is ranked first
    assert sorted(indices[0, 1:]) == sorted(i for i in plain_first if i != 2)[:2]


def test_a_large_validation_part_queries_a_seeded_sample():
    features, labels = blobs()
    capped = validate_cell(features, labels, ["raw", "l2"], {}, {**VALIDATION, "max_queries": 10}, MLP, seed=0)
    assert (capped.validation["n_validation"], capped.validation["n_held_out"]) == (10, 36)
    again = validate_cell(features, labels, ["raw", "l2"], {}, {**VALIDATION, "max_queries": 10}, MLP, seed=0)
    assert capped.candidates == again.candidates
    whole = validate_cell(features, labels, ["raw", "l2"], {}, {**VALIDATION, "max_queries": 0}, MLP, seed=0)
    assert whole.validation["n_validation"] == 36


def test_a_large_training_split_is_fitted_and_ranked_on_a_stratified_sample():
    features, labels = blobs(per_class=40)  # 6 classes: 192 to fit on, 48 held out
    capped = validate_cell(features, labels, ["raw", "lda"], {}, {**VALIDATION, "max_gallery": 60}, MLP, seed=0)
    assert (capped.validation["n_fit"], capped.validation["n_rest"]) == (60, 192)
    assert capped.validated and capped.chosen in ("raw", "lda")
    again = validate_cell(features, labels, ["raw", "lda"], {}, {**VALIDATION, "max_gallery": 60}, MLP, seed=0)
    assert capped.candidates == again.candidates
    whole = validate_cell(features, labels, ["raw", "lda"], {}, {**VALIDATION, "max_gallery": 0}, MLP, seed=0)
    assert whole.validation["n_fit"] == whole.validation["n_rest"] == 192


def test_a_large_collection_keeps_every_copied_photo_in_its_sample():
    features, _ = blobs(per_class=40, dim=16)
    rng = np.random.default_rng(4)
    ids = [f"photo_{i}.jpg" for i in range(len(features))]
    picked = rng.choice(len(features), size=30, replace=False)
    copies = features[picked] + rng.normal(scale=0.05, size=(30, features.shape[1])).astype(np.float32)
    validation = {"copies": 30, "max_gallery": 50, "rerank": {"k": [3]}}
    selection = validate_cell(features, np.zeros(len(features), dtype=int), ["raw", "l2"], {}, validation, MLP,
                              seed=0, labelled=False, copies=(copies, [ids[i] for i in picked], ids))  # fmt: skip
    assert (selection.validation["n_fit"], selection.validation["n_rest"]) == (50, 240)
    # each copy still finds its own photo: the photos were kept in the sample, and rows map back to them
    assert selection.choice("raw").figures["copy_finds_photo_first"] == 1.0
