"""The paper's two claims (clustering makes search faster, and its results more semantic), judged by the run's metrics.

:func:`claim_table` takes the run's metrics (one row per grid cell: the columns of
``results/summary/metrics.csv``); the verdicts take some of its rows, e.g. one dataset's cells.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from cbir.report.paper import KEYS
from cbir.search.index import MODE_TITLES


def claim_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Per grid cell, what the paper's two claims rest on.

    Speed: the ratio of the median search times of exact search in the predicted class (``class``)
    and of exhaustive exact search (``global``) to the median time of the clustered search, and
    the same for the whole query (forward + prediction + search). Semantics: the same-class
    precision@k of every mode and the recall@k of the clustered and class searches against exact
    search over all images.
    """
    top_k = int(frame["top_k"].iloc[0]) if "top_k" in frame.columns and len(frame) else 5
    out = frame[KEYS].copy()
    clustered = frame["time_search_clustered_median_us"]
    out["speedup_vs_class"] = frame["time_search_class_median_us"] / clustered
    out["speedup_vs_global"] = frame["time_search_global_median_us"] / clustered
    if "time_total_clustered_median_us" in frame.columns:
        total = frame["time_total_clustered_median_us"]
        out["query_speedup_vs_class"] = frame["time_total_class_median_us"] / total
        out["query_speedup_vs_global"] = frame["time_total_global_median_us"] / total
    k = top_k if f"precision_at_{top_k}_clustered" in frame.columns else 5
    for column in frame.columns:
        if column.startswith(f"precision_at_{k}_") or column.startswith(f"recall_at_{top_k}_vs_exact_"):
            out[column] = frame[column]
    return out.reset_index(drop=True)


def _times(n: int, of: int) -> str:
    return f"in all {of} cells" if n == of else ("in no cell" if n == 0 else f"in {n} of {of} cells")


def _ratio_range(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return "not measured"
    if len(values) == 1:
        return f"×{values.iloc[0]:.2f}"
    return f"×{values.median():.2f} (median over {len(values)} cells; ×{values.min():.2f} to ×{values.max():.2f})"


def speed_verdict(claims: pd.DataFrame) -> tuple[str, list[str]]:
    """The verdict on "clustering makes search faster" over some grid cells, and the numbers behind it."""
    n = len(claims)
    faster_class = int((claims["speedup_vs_class"] > 1).sum())
    faster_global = int((claims["speedup_vs_global"] > 1).sum())
    if faster_class == n and faster_global == n:
        verdict = "holds: the clustered search is faster than both exact searches in every cell"
    elif faster_class == 0 and faster_global == n:
        verdict = (
            "holds against exhaustive search only: the clustered search is slower than exact search in the "
            "predicted class, which it narrows further"
        )
    elif faster_class == 0 and faster_global == 0:
        verdict = "does not hold: the clustered search is slower than both exact searches"
    else:
        verdict = (
            f"holds in part: faster than search in the predicted class {_times(faster_class, n)}, "
            f"than exhaustive search {_times(faster_global, n)}"
        )
    details = [
        f"speed-up of the search over exact search in the predicted class: {_ratio_range(claims['speedup_vs_class'])}"
        f", faster {_times(faster_class, n)}",
        f"speed-up of the search over exhaustive exact search: {_ratio_range(claims['speedup_vs_global'])}"
        f", faster {_times(faster_global, n)}",
    ]
    if "query_speedup_vs_class" in claims.columns:
        details.append(
            "the whole query (CNN forward + prediction + search) with clustering against without: "
            f"{_ratio_range(claims['query_speedup_vs_class'])}; against exhaustive: "
            f"{_ratio_range(claims['query_speedup_vs_global'])}"
        )
    return verdict, details


def _median(claims: pd.DataFrame, column: str) -> float:
    return float(claims[column].median()) if column in claims.columns else float("nan")


def semantic_verdict(claims: pd.DataFrame, top_k: int = 5) -> tuple[str, list[str]]:
    """The verdict on "clustering makes results more semantic", with the numbers behind it.

    Same-class precision@k of the clustered search against exact search over all images (the
    claim) and against exact search in the predicted class (what the clusters add to the class
    prediction), medians over the cells; recall@k against exact search.
    """
    columns = [c for c in claims.columns if c.startswith("precision_at_")]
    precision = {mode: c for mode in MODE_TITLES for c in columns if c.endswith(f"_{mode}")}
    k = next((c.removeprefix("precision_at_").split("_", 1)[0] for c in precision.values()), str(top_k))
    p = {mode: _median(claims, column) for mode, column in precision.items()}
    clustered, exact_all, exact_class = p.get("clustered", np.nan), p.get("global", np.nan), p.get("class", np.nan)
    better_all = int((claims[precision["clustered"]] > claims[precision["global"]]).sum())
    n = len(claims)
    if better_all == n:
        verdict = f"holds against exact search over all images: a higher same-class P@{k} in every cell"
    elif better_all == 0:
        verdict = f"does not hold: the clustered search's same-class P@{k} is never above exact search over all images"
    else:
        verdict = f"holds in part: a higher same-class P@{k} than exact search over all images {_times(better_all, n)}"
    verdict += f" (median {clustered:.3f} vs {exact_all:.3f})"
    gain = clustered - exact_class
    if abs(gain) < 0.005:
        verdict += (
            f"; against exact search in the predicted class it is the same ({clustered:.3f} vs {exact_class:.3f}): "
            "what differs from exhaustive search comes from the class prediction, not from the clusters"
        )
    else:
        verdict += f"; against exact search in the predicted class: {gain:+.3f} ({clustered:.3f} vs {exact_class:.3f})"
    details = [
        f"same-class P@{k}, median over {n} cell(s): "
        + ", ".join(f"{MODE_TITLES[mode].report} {value:.3f}" for mode, value in p.items())
    ]
    recall = {
        mode: _median(claims, c) for mode in MODE_TITLES for c in claims.columns if c.endswith(f"_vs_exact_{mode}")
    }
    if recall:
        details.append(
            f"recall@{top_k} against exact search over all images (share of the exact top-{top_k} found), median: "
            + ", ".join(f"{MODE_TITLES[mode].report} {value:.3f}" for mode, value in recall.items())
        )
    return verdict, details
