"""Retrieval metrics: precision@k, average precision, recall against a reference ranking, the no-match distance.

Relevance is a shared label (:func:`relevance`); the "no good match" distance comes from a logistic
regression of relevance on distance (:func:`calibrate_no_match`).
"""

from __future__ import annotations

import numpy as np

from cbir.evaluation.ranking import PRECISION_AT, exact_rank_figures


def label_sets(labels: np.ndarray, n_classes: int, extra: list[list[int]] | None = None) -> np.ndarray:
    """Multi-hot label sets (n, n_classes): each image's label, plus any further labels it has."""
    sets = np.zeros((len(labels), n_classes), dtype=bool)
    sets[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] = True
    for row, more in enumerate(extra or []):
        sets[row, list(more)] = True
    return sets


def relevance(query_sets: np.ndarray, gallery_sets: np.ndarray) -> np.ndarray:
    """(n_queries, n_gallery) True where the gallery image shares a label with the query."""
    if (query_sets.sum(axis=1) == 1).all() and (gallery_sets.sum(axis=1) == 1).all():  # one label each
        return query_sets.argmax(axis=1)[:, None] == gallery_sets.argmax(axis=1)[None, :]
    return (query_sets.astype(np.float32) @ gallery_sets.astype(np.float32).T) > 0


def ranked_relevance(indices: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Relevance of each ranked result; padding (-1) is not relevant."""
    picked = np.take_along_axis(relevant, np.maximum(indices, 0), axis=1)
    return picked & (indices >= 0)


def precision_at(relevant_ranked: np.ndarray, k: int) -> float:
    """Mean fraction of the first k results that are relevant (missing results count as not)."""
    if len(relevant_ranked) == 0:
        return float("nan")
    return float(relevant_ranked[:, :k].sum(axis=1).mean() / k)


def average_precision(relevant_ranked: np.ndarray, n_relevant: np.ndarray, k: int | None = None) -> np.ndarray:
    """Average precision per query over the ranking (or its first k results).

    Full ranking: normalised by all relevant gallery images; at k: by min(k, relevant images),
    so a perfect top-k scores 1. A query with no relevant image scores 0.
    """
    ranked = relevant_ranked if k is None else relevant_ranked[:, :k]
    hits = np.cumsum(ranked, axis=1)
    precision = hits / np.arange(1, ranked.shape[1] + 1)
    denominator = np.asarray(n_relevant, dtype=np.float64)
    if k is not None:
        denominator = np.minimum(denominator, k)
    total = (precision * ranked).sum(axis=1)
    return np.divide(total, denominator, out=np.zeros_like(total), where=denominator > 0)


def overlap_at(indices: np.ndarray, reference: np.ndarray, k: int) -> float:
    """Recall@k of a search against a reference top-k: the mean share of the reference found."""
    if len(indices) == 0:
        return float("nan")
    found = [len(set(a[:k][a[:k] >= 0]) & set(b[:k][b[:k] >= 0])) / k for a, b in zip(indices, reference, strict=True)]
    return float(np.mean(found))


# the "no good match" distance: where the estimated share of relevant results falls below this
MATCH_SHARE = 0.5
CALIBRATED_MODE = "global"


def calibrate_no_match(distances: np.ndarray, relevant: np.ndarray) -> dict[str, float]:
    """The distance beyond which a result is more likely not relevant than relevant, from results
    whose relevance is known (the test queries' top-k against the training images).

    A logistic regression of relevance on distance, P(relevant | d) = 1 / (1 + exp(-(intercept +
    slope * d))), fitted on the standardised distances with almost no regularisation (:func:`fit_logistic`);
    ``distance`` is where it crosses 0.5, ``-intercept / slope`` (at least 0). ``precision`` and
    ``recall`` are those of "distance <= threshold" as a detector of relevant results among the
    same results (recall: of the relevant results among them, not of all relevant gallery images).

    When every result is relevant there is no crossing: the threshold is the farthest distance
    seen (nothing beyond it was observed); when none is, it is 0 (only exact duplicates count).
    Then the slope is 0 and the intercept the log-odds of the smoothed share (n_relevant + 1) / (n + 2).
    Undefined values are NaN.
    """
    d = np.asarray(distances, dtype=np.float64).ravel()
    r = np.asarray(relevant, dtype=bool).ravel()
    finite = np.isfinite(d)
    d, r = d[finite], r[finite]
    nan = float("nan")
    out = {"distance": nan, "precision": nan, "recall": nan, "intercept": nan, "slope": nan, "n": len(d)}
    if len(d) == 0:
        return out
    n_relevant = int(r.sum())
    centre, scale = float(d.mean()), float(d.std())
    if 0 < n_relevant < len(d) and scale > 0:
        standard_intercept, standard_slope = fit_logistic((d - centre) / scale, r, c=1e4)
        slope = standard_slope / scale
        intercept = standard_intercept - slope * centre
        if slope < 0:
            threshold = max(0.0, -intercept / slope)
        else:  # relevance does not fall with distance: all or nothing
            threshold = float(d.max()) if intercept + slope * d.max() >= 0 else 0.0
    else:
        share = (n_relevant + 1) / (len(d) + 2)
        slope, intercept = 0.0, float(np.log(share / (1 - share)))
        threshold = float(d.max()) if n_relevant * 2 >= len(d) else 0.0
    kept = d <= threshold
    out.update(distance=threshold, intercept=intercept, slope=slope)
    if kept.any():
        out["precision"] = float(r[kept].mean())
    if n_relevant:
        out["recall"] = float((r & kept).sum() / n_relevant)
    return out


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float, max_iter: int = 100) -> tuple[float, float]:
    """Intercept and slope of a logistic regression of ``y`` on one feature ``x``, with scikit-learn's
    ``LogisticRegression(C=c)`` objective: ``c`` times the summed log-loss plus half the squared slope.

    Newton's method on the two parameters, each step halved until the objective falls: a few NumPy operations,
    where importing SciPy's optimiser (or scikit-learn) would cost every evaluation job more than the fit
    (``tests/evaluation/test_metrics.py`` checks that both find the same fit).
    """
    x = np.asarray(x, dtype=np.float64)
    sign = np.where(y, 1.0, -1.0)
    theta = np.zeros(2)

    def objective(theta: np.ndarray) -> float:
        return float(c * np.logaddexp(0.0, -sign * (theta[0] + theta[1] * x)).sum() + 0.5 * theta[1] ** 2)

    value = objective(theta)
    for _ in range(max_iter):
        p = 1.0 / (1.0 + np.exp(-(theta[0] + theta[1] * x)))  # P(y) under the current fit
        residual = p - (sign > 0)
        gradient = np.array([c * residual.sum(), c * (residual * x).sum() + theta[1]])
        w = c * p * (1.0 - p)
        hessian = np.array([[w.sum(), (w * x).sum()], [(w * x).sum(), (w * x * x).sum() + 1.0]])
        step = np.linalg.solve(hessian + 1e-12 * np.eye(2), gradient)
        scale = 1.0
        while scale > 1e-10 and objective(theta - scale * step) > value:
            scale /= 2
        theta = theta - scale * step
        new_value = objective(theta)
        if value - new_value <= 1e-12 * max(1.0, abs(value)) and np.abs(scale * step).max() < 1e-10:
            break
        value = new_value
    return float(theta[0]), float(theta[1])


def no_match_metrics(calibration: dict[str, float], mode: str = CALIBRATED_MODE) -> dict[str, float]:
    """The calibration's entries in the metrics JSON: ``no_match_{distance,precision,recall}_<mode>``,
    ``relevance_{intercept,slope}_<mode>`` and ``no_match_results_<mode>`` (results it was fitted on)."""
    out = {f"no_match_{key}_{mode}": float(calibration[key]) for key in ("distance", "precision", "recall")}
    out.update({f"relevance_{key}_{mode}": float(calibration[key]) for key in ("intercept", "slope")})
    out[f"no_match_results_{mode}"] = int(calibration["n"])
    return out


def exact_ranking_quality(
    queries: np.ndarray, gallery: np.ndarray, relevant: np.ndarray, suffix: str
) -> dict[str, float]:
    """mAP of the full exact ranking and P@k (``map_<suffix>``, ``precision_at_<k>_<suffix>``), means over the
    queries, for queries and a gallery already in the search space; ``relevant``: (queries, gallery) True where
    relevant. From the ranks of the relevant images (:func:`cbir.evaluation.ranking.exact_rank_figures`)."""
    figures = exact_rank_figures(queries, gallery, relevant)
    mean = {name: float(values.mean()) if len(values) else float("nan") for name, values in figures.items()}
    out = {f"precision_at_{k}_{suffix}": mean[f"precision_at_{k}"] for k in PRECISION_AT}
    out[f"map_{suffix}"] = mean["ap"]
    return out
