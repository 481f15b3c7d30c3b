"""Retrieval metrics against hand-computed cases."""

import numpy as np
import pytest

from cbir.evaluation.metrics import (
    average_precision,
    calibrate_no_match,
    label_sets,
    no_match_metrics,
    overlap_at,
    precision_at,
    ranked_relevance,
    relevance,
)
from cbir.evaluation.timing import total_query_times
from cbir.extraction.latency import latency_summary


def test_precision_at_k_counts_missing_results_as_not_relevant():
    hits = np.array([[1, 1, 0, 1, 0], [0, 0, 0, 0, 0]], dtype=bool)
    assert precision_at(hits, 5) == pytest.approx((3 / 5 + 0) / 2)
    assert precision_at(hits, 2) == pytest.approx(0.5)
    assert precision_at(hits[:, :3], 5) == pytest.approx((2 / 5) / 2)  # only 3 results for k = 5


def test_map_and_precision_disagree_on_order():
    """Same P@4, different rankings: AP rewards relevant results that come first."""
    early = np.array([[1, 1, 0, 0]], dtype=bool)
    late = np.array([[0, 0, 1, 1]], dtype=bool)
    assert precision_at(early, 4) == precision_at(late, 4) == 0.5
    # 2 relevant images in the gallery: AP = (1/1 + 2/2) / 2 and (1/3 + 2/4) / 2
    assert average_precision(early, np.array([2]))[0] == pytest.approx(1.0)
    assert average_precision(late, np.array([2]))[0] == pytest.approx((1 / 3 + 2 / 4) / 2)


def test_average_precision_normalisation_full_and_at_k():
    ranked = np.array([[1, 0, 1, 0, 0]], dtype=bool)
    # 4 relevant images exist; 2 of them were ranked at 1 and 3
    assert average_precision(ranked, np.array([4]))[0] == pytest.approx((1 + 2 / 3) / 4)
    # at k = 2: normalised by min(k, 4) = 2, only the first hit counts
    assert average_precision(ranked, np.array([4]), k=2)[0] == pytest.approx(1 / 2)
    assert average_precision(np.zeros((1, 3), bool), np.array([0]))[0] == 0.0


def test_multi_label_relevance_is_sharing_any_label():
    gallery = label_sets(np.array([0, 1, 2]), 3, extra=[[1], [], []])  # image 0 has labels {0, 1}
    query = label_sets(np.array([1]), 3)
    assert relevance(query, gallery).tolist() == [[True, True, False]]
    ranked = ranked_relevance(np.array([[2, 0, -1]]), relevance(query, gallery))
    assert ranked.tolist() == [[False, True, False]]


def test_overlap_at_k_is_recall_against_the_reference():
    approx = np.array([[1, 2, 3], [7, 8, -1]])
    exact = np.array([[3, 2, 9], [7, 8, 9]])
    assert overlap_at(approx, exact, 3) == pytest.approx((2 / 3 + 2 / 3) / 2)


def test_latency_summary_and_totals():
    summary = latency_summary([1000, 2000, 3000, 4000, 100000])
    assert summary["median_us"] == pytest.approx(3.0)
    assert summary["p95_us"] == pytest.approx(4 + 0.8 * 96)  # linear interpolation at rank 3.8
    metrics = {
        "time_extract_median_us": 100.0,
        "time_predict_median_us": 10.0,
        "time_search_clustered_median_us": 1.0,
        "time_search_global_median_us": 5.0,
    }
    totals = total_query_times(metrics, ["clustered", "global"])
    assert totals == {"time_total_clustered_median_us": 111.0, "time_total_global_median_us": 105.0}


def test_the_no_match_distance_recovers_a_clear_crossing():
    """Relevance falls with distance, crossing 0.5 at 0.8: the calibrated distance is found there."""
    rng = np.random.default_rng(0)
    distances = rng.uniform(0, 2, 4000)
    relevant = rng.random(4000) < 1 / (1 + np.exp((distances - 0.8) * 8))
    fit = calibrate_no_match(distances, relevant)
    assert fit["distance"] == pytest.approx(0.8, abs=0.05)
    assert fit["slope"] < 0 and 1 / (1 + np.exp(-(fit["intercept"] + fit["slope"] * fit["distance"]))) == pytest.approx(
        0.5
    )
    kept = distances <= fit["distance"]
    assert fit["precision"] == pytest.approx(relevant[kept].mean())
    assert fit["recall"] == pytest.approx(relevant[kept].sum() / relevant.sum())
    assert fit["n"] == 4000
    # a clean split (perfectly separable) falls in the gap between the two groups
    clean = calibrate_no_match(np.array([0.1, 0.2, 0.3, 1.0, 1.1, np.inf]), np.array([1, 1, 1, 0, 0, 0], bool))
    assert 0.3 < clean["distance"] < 1.0 and clean["precision"] == clean["recall"] == 1.0 and clean["n"] == 5


def test_the_no_match_distance_when_all_or_no_results_are_relevant():
    distances = np.array([[0.2, 0.5, 0.9], [0.3, 0.4, 1.5]])
    everything = calibrate_no_match(distances, np.ones_like(distances, dtype=bool))
    assert everything["distance"] == 1.5 and everything["precision"] == everything["recall"] == 1.0
    assert everything["slope"] == 0 and everything["intercept"] > 0  # estimated relevance above one half
    nothing = calibrate_no_match(distances, np.zeros_like(distances, dtype=bool))
    assert nothing["distance"] == 0.0 and np.isnan(nothing["precision"]) and np.isnan(nothing["recall"])
    assert nothing["slope"] == 0 and nothing["intercept"] < 0
    empty = calibrate_no_match(np.empty(0), np.empty(0, dtype=bool))
    assert np.isnan(empty["distance"]) and empty["n"] == 0
    assert set(no_match_metrics(everything)) == {
        "no_match_distance_global", "no_match_precision_global", "no_match_recall_global",
        "relevance_intercept_global", "relevance_slope_global", "no_match_results_global"}  # fmt: skip


@pytest.mark.parametrize("seed", range(3))
def test_the_logistic_fit_is_scikit_learns(seed: int):
    from sklearn.linear_model import LogisticRegression

    from cbir.evaluation.metrics import fit_logistic

    rng = np.random.default_rng(seed)
    x = rng.normal(size=500)
    y = rng.random(500) < 1 / (1 + np.exp(-(0.3 - 1.7 * x)))
    for c in (1e4, 1.0, 0.01):
        reference = LogisticRegression(C=c, tol=1e-10, max_iter=10_000).fit(x[:, None], y)
        intercept, slope = fit_logistic(x, y, c)
        assert intercept == pytest.approx(reference.intercept_[0], abs=1e-4)
        assert slope == pytest.approx(reference.coef_[0, 0], abs=1e-4)
