"""A cell's "no good match" distance and what a result's similarity means, read from the cell's evaluation."""

from __future__ import annotations

from typing import Any

import numpy as np

from cbir.layout import metrics_name
from cbir.search.cell import Cell

NO_MATCH_METRIC = "no_match_distance_global"
UNLABELLED_NO_MATCH = "a collection without labels has no 'no good match' distance: it is calibrated on labels"


def finite_number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and np.isfinite(value) else None


def match_calibration(model: Cell, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cell's "no good match" distance and where it came from, for the answers' ``no_match``.

    Read from the cell's metrics (``metrics`` or :meth:`Cell.saved_metrics`): the evaluation fits
    it on the test queries' global top-k results (:func:`cbir.evaluation.metrics.calibrate_no_match`).
    ``distance`` is None, and nothing is marked, when the metrics lack it (no metrics file, or one
    written by an older cbir) or were computed with another distance metric than the search's.
    ``intercept`` and ``slope`` are the logistic fit of relevance on distance (None without one).
    """
    metrics = model.saved_metrics() if metrics is None else metrics
    name = metrics_name(model.k, model.space)
    metric = model.models.index.metric
    out: dict[str, Any] = {"distance": None, "precision": None, "recall": None, "metric": NO_MATCH_METRIC,
                           "intercept": None, "slope": None}  # fmt: skip
    if not model.labelled:
        out["source"] = UNLABELLED_NO_MATCH
    elif not metrics:
        out["source"] = f"no {name} in the model folder: no calibrated distance, no result is marked"
    elif finite_number(metrics.get(NO_MATCH_METRIC)) is None:
        out["source"] = (
            f"{name} has no {NO_MATCH_METRIC} (evaluated by an older cbir; rerun the workflow to calibrate it): "
            "no result is marked"
        )
    elif metrics.get("metric", metric) != metric:
        out["source"] = (
            f"{NO_MATCH_METRIC} in {name} was calibrated on {metrics['metric']} distances, but this search "
            f"uses {metric}: no result is marked"
        )
    else:
        out.update(
            distance=finite_number(metrics[NO_MATCH_METRIC]),
            precision=finite_number(metrics.get("no_match_precision_global")),
            recall=finite_number(metrics.get("no_match_recall_global")),
            intercept=finite_number(metrics.get("relevance_intercept_global")),
            slope=finite_number(metrics.get("relevance_slope_global")),
            source=(
                f"{NO_MATCH_METRIC} in {name}: where the estimated share of relevant results among the test "
                f"queries' global top-{metrics.get('top_k', '?')} results against the training images falls "
                "below 0.5"
            ),
        )
    return out


def similarity_kind(model: Cell, calibration: dict[str, Any]) -> str | None:
    """What ``similarity`` means for this cell: ``cosine`` (unit vectors or the cosine metric),
    ``relevance`` (raw space: the calibrated probability that a result is relevant), or None."""
    if model.models.index.metric == "cosine" or model.models.embedding.normalised:
        return "cosine"
    return "relevance" if calibration["intercept"] is not None and calibration["slope"] is not None else None


def similarities(distances: np.ndarray, kind: str | None, metric: str, calibration: dict[str, Any]) -> np.ndarray:
    """The similarity of each distance: cosine = 1 - d (cosine metric) or 1 - d²/2 (Euclidean on unit
    vectors), or the logistic estimate of relevance; NaN where there is none."""
    d = np.asarray(distances, dtype=np.float64)
    finite = np.isfinite(d)  # padding (a small cluster) has no similarity
    d = np.where(finite, d, 0.0)
    if kind == "cosine":
        score = np.clip(1.0 - d if metric == "cosine" else 1.0 - d**2 / 2.0, -1.0, 1.0)
    elif kind == "relevance":
        logit = calibration["intercept"] + calibration["slope"] * d
        score = 1.0 / (1.0 + np.exp(-np.clip(logit, -500, 500)))
    else:
        return np.full(d.shape, np.nan)
    return np.where(finite, score, np.nan)
