"""Query timings of a grid cell: one query at a time, all queries at once, and end to end per search mode."""

from __future__ import annotations

from typing import Any

import numpy as np

from cbir.extraction.latency import clock, latency_summary
from cbir.search.cell import CellModels


def time_single_queries(models: CellModels, raw_queries: np.ndarray, top_k: int) -> dict[str, float]:
    """One query at a time: projection + class prediction, then each search."""
    searchers = models.searchers()
    predict_ns: list[int] = []
    search_ns: dict[str, list[int]] = {mode: [] for mode in searchers}
    for row in range(len(raw_queries)):
        start = clock()
        reduced = models.projection.transform(raw_queries[row : row + 1])
        predicted = models.mlp.predict(reduced)
        predict_ns.append(clock() - start)
        for mode, search in searchers.items():
            start = clock()
            search(reduced, predicted, top_k)
            search_ns[mode].append(clock() - start)
    out = {f"time_predict_{stat}": value for stat, value in latency_summary(predict_ns).items()}
    for mode, samples in search_ns.items():
        out.update({f"time_search_{mode}_{stat}": value for stat, value in latency_summary(samples).items()})
    return out


def time_batched_queries(
    models: CellModels, raw_queries: np.ndarray, top_k: int, searches: bool = True
) -> dict[str, float]:
    """All test queries at once, reported per query; ``searches`` false: the projection and prediction only (the
    searches were timed where they ran, :func:`cbir.evaluation.quality.retrieval_quality`)."""
    n = max(len(raw_queries), 1)
    start = clock()
    reduced = models.projection.transform(raw_queries)
    predicted = models.mlp.predict(reduced)
    out = {"time_batched_predict_us_per_query": (clock() - start) / 1e3 / n}
    if not searches:
        return out
    for mode, search in models.searchers().items():
        start = clock()
        search(reduced, predicted, top_k)
        out[f"time_batched_search_{mode}_us_per_query"] = (clock() - start) / 1e3 / n
    return out


def total_query_times(metrics: dict[str, Any], modes: list[str]) -> dict[str, float]:
    """Median end-to-end query time per mode: extraction + prediction (where used) + search.

    Sums of medians, a close and simple estimate of the median of the sum.
    """
    extract = metrics.get("time_extract_median_us", 0.0)
    out = {}
    for mode in modes:
        predict = metrics["time_predict_median_us"] if mode in ("clustered", "class") else 0.0
        out[f"time_total_{mode}_median_us"] = extract + predict + metrics[f"time_search_{mode}_median_us"]
    return out
