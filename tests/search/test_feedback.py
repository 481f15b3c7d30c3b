"""Relevance feedback's methods (cbir.search.feedback): Rocchio's refined query, the learned linear score, one round."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.search.feedback import (
    FeedbackSettings,
    Marks,
    blended_scores,
    feedback_search,
    fit_direction,
    refine_query,
)


def blobs(seed: int = 0, per_class: int = 60, dim: int = 8, spread: float = 1.6) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim)) * 2.0
    labels = np.repeat(np.arange(3), per_class)
    return centres[labels] + rng.normal(scale=spread, size=(len(labels), dim)), labels


def test_a_row_marked_both_ways_counts_as_relevant():
    marks = Marks(relevant=[3, 1, 3], irrelevant=[1, 2])
    assert marks.relevant.tolist() == [1, 3]
    assert marks.irrelevant.tolist() == [2]
    assert not marks.empty and Marks().empty


def test_rocchio_moves_the_query_by_the_marks_means():
    gallery = np.array([[2.0, 0.0], [4.0, 0.0], [0.0, 10.0]])
    settings = FeedbackSettings(alpha=1.0, beta=0.5, gamma=0.25)
    refined = refine_query(np.array([1.0, 1.0]), gallery, Marks([0, 1], [2]), settings, normalised=False)
    np.testing.assert_allclose(refined, [1.0 + 0.5 * 3.0, 1.0 - 0.25 * 10.0])
    unit = refine_query(np.array([1.0, 1.0]), gallery, Marks([0, 1], [2]), settings, normalised=True)
    np.testing.assert_allclose(np.linalg.norm(unit), 1.0)
    np.testing.assert_allclose(unit, refined / np.linalg.norm(refined))


def test_the_learned_score_puts_the_positives_above_the_negatives():
    gallery, labels = blobs()
    query = gallery[0]
    relevant, irrelevant = np.flatnonzero(labels == 0)[1:6], np.flatnonzero(labels != 0)[:5]
    direction, bias = fit_direction(query, gallery, Marks(relevant, irrelevant), FeedbackSettings(pseudo_negatives=0))
    scores = gallery @ direction + bias
    assert scores[relevant].min() > scores[irrelevant].max()
    # unmarked images: the class of the relevant marks scores higher on average
    assert scores[labels == 0].mean() > scores[labels != 0].mean()


def test_without_any_negative_there_is_no_learned_score():
    gallery, _ = blobs()
    settings = FeedbackSettings(pseudo_negatives=0)
    assert fit_direction(gallery[0], gallery, Marks([1, 2]), settings) is None
    assert fit_direction(gallery[0], gallery, Marks([1, 2]), FeedbackSettings(pseudo_negatives=5)) is not None


def test_blended_scores_without_a_direction_rank_by_distance_to_the_refined_query():
    gallery, _ = blobs()
    refined = gallery[:2] + 0.1
    scores = blended_scores(refined, gallery, np.einsum("ij,ij->i", gallery, gallery))
    distances = np.linalg.norm(gallery[None] - refined[:, None], axis=2)
    np.testing.assert_allclose(scores, -distances, atol=1e-9)
    # a row without a classifier (NaN direction) keeps the plain ranking while the other blends
    direction = np.vstack([np.full(gallery.shape[1], np.nan), np.ones(gallery.shape[1])])
    mixed = blended_scores(refined, gallery, np.einsum("ij,ij->i", gallery, gallery), direction, np.zeros(2), 0.5)
    np.testing.assert_allclose(mixed[0], -distances[0], atol=1e-9)
    assert not np.allclose(np.argsort(-mixed[1]), np.argsort(distances[1]))


@pytest.mark.parametrize("method", ["rocchio", "learned"])
def test_a_round_of_marks_brings_the_marked_class_forward(method: str):
    gallery, labels = blobs(spread=2.2)
    settings = FeedbackSettings(method=method)
    members = np.arange(len(gallery))
    query = (gallery[labels == 0].mean(axis=0) + gallery[labels == 1].mean(axis=0)) / 2  # between two classes
    plain = feedback_search(query, query, gallery, members, Marks(), settings, 10)
    np.testing.assert_array_equal(plain, np.argsort(np.linalg.norm(gallery - query, axis=1), kind="stable")[:10])
    marks = Marks(relevant=[r for r in plain if labels[r] == 0], irrelevant=[r for r in plain if labels[r] != 0])
    assert len(marks.relevant) and len(marks.irrelevant)
    refined = refine_query(query, gallery, marks, settings, normalised=False)
    after = feedback_search(query, refined, gallery, members, marks, settings, 10)
    assert (labels[after] == 0).mean() > (labels[plain] == 0).mean()
    assert set(marks.relevant) <= set(after)  # what the user marked relevant stays in view


def test_excluded_rows_are_never_returned_and_members_bound_the_search():
    gallery, labels = blobs()
    members = np.flatnonzero(labels == 1)
    found = feedback_search(gallery[members[0]], gallery[members[0]], gallery, members, Marks(), FeedbackSettings(), 5,
                            exclude=[members[0]])  # fmt: skip
    assert members[0] not in found
    assert set(found) <= set(members) and len(found) == 5


def test_settings_are_checked_and_read_from_a_mapping():
    with pytest.raises(ValueError, match="not one of"):
        FeedbackSettings(method="svm")
    with pytest.raises(ValueError, match="blend"):
        FeedbackSettings(blend=1.5)
    settings = FeedbackSettings.from_mapping({"method": "rocchio", "beta": 0.5, "rounds": 3, "eval_queries": 10})
    assert settings.method == "rocchio" and settings.beta == 0.5 and settings.gamma == FeedbackSettings().gamma
