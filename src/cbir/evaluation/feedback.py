"""Relevance feedback measured with a simulated user (:mod:`cbir.search.feedback` holds the methods).

Each sampled test query is searched over the whole gallery (exact, in the cell's space). In every round the
simulated user marks the top :data:`MARKED_PER_ROUND` results of that round's ranking by their labels (relevant:
they share one with the query), adding to the marks of earlier rounds; the next round ranks with all marks so far.
Round 0 is the search without feedback. Each round is scored twice:

- ``full``: the whole ranking, marked images included (what the page shows: those marked not relevant last);
- ``residual``: the ranking without the images marked so far, and their relevant ones out of the count: what
  the feedback found that the user had not yet seen, the fair measure across rounds.

The figures are P@10 and mAP (over the whole ranking), each a stratified mean with its 95 % interval
(:class:`cbir.evaluation.ranking.QuerySample`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cbir.distances import smallest_columns
from cbir.evaluation.ranking import DISTANCE_BLOCK_ELEMENTS, QuerySample, rank_figures, relevant_ranks
from cbir.search.feedback import METHODS, FeedbackSettings, Marks, blended_scores, fit_direction, refine_query

ROUNDS = 3
MARKED_PER_ROUND = 10
RANKINGS = ("full", "residual")
FIGURES = ("precision_at_10", "map")
CI_SUFFIX = "_ci95"


def feedback_key(method: str, round_: int, ranking: str, figure: str) -> str:
    """The metrics' key of one figure: ``feedback_<method>_round<r>_<ranking>_<figure>``."""
    return f"feedback_{method}_round{round_}_{ranking}_{figure}"


def _round_scores(
    queries: np.ndarray,
    gallery: np.ndarray,
    gallery_sq_norms: np.ndarray,
    marks: list[Marks],
    settings: FeedbackSettings,
    normalised: bool,
    keys: np.ndarray,
) -> np.ndarray:
    """Scores (queries, gallery), higher first, of one round of ``settings.method`` with each query's marks."""
    refined = np.stack([refine_query(q, gallery, m, settings, normalised) for q, m in zip(queries, marks, strict=True)])
    if settings.method != "learned":
        return _turned_down_last(blended_scores(refined, gallery, gallery_sq_norms), marks)
    direction = np.full(queries.shape, np.nan)
    bias = np.zeros(len(queries))
    for row, (query, marked) in enumerate(zip(queries, marks, strict=True)):
        fitted = fit_direction(query, gallery, marked, settings, int(keys[row]))
        if fitted is not None:
            direction[row], bias[row] = fitted
    return _turned_down_last(blended_scores(refined, gallery, gallery_sq_norms, direction, bias, settings.blend), marks)


def _turned_down_last(scores: np.ndarray, marks: list[Marks]) -> np.ndarray:
    """Each query's images marked not relevant ranked last, as :func:`cbir.search.feedback.feedback_search` shows."""
    for row, marked in enumerate(marks):
        scores[row, marked.irrelevant] = -np.inf
    return scores


def _figures(scores: np.ndarray, relevant: np.ndarray, marks: list[Marks] | None) -> dict[str, np.ndarray]:
    """P@10 and AP per query of the ranking by ``scores`` (ties by gallery position, as a stable sort ranks them);
    with ``marks``, of the residual ranking: the marked images last and out of the relevant count."""
    if marks is not None:
        scores, relevant = scores.copy(), relevant.copy()
        for row, marked in enumerate(marks):
            scores[row, marked.marked] = -np.inf
            relevant[row, marked.marked] = False
    # the ranks of the relevant images from one sort of the scores' values: no argsort of the whole ranking
    figures = rank_figures(relevant_ranks(-scores, relevant), relevant.sum(axis=1), precision_at=(10,))
    return {"precision_at_10": figures["precision_at_10"], "map": figures["ap"]}


def simulate_feedback(
    queries: np.ndarray,
    gallery: np.ndarray,
    relevant: np.ndarray,
    sample: QuerySample,
    *,
    normalised: bool,
    settings: FeedbackSettings,
    rounds: int = ROUNDS,
    marked_per_round: int = MARKED_PER_ROUND,
    methods: tuple[str, ...] = METHODS,
) -> dict[str, Any]:
    """The simulated user's rounds 0..``rounds`` for each method: ``feedback_<method>_round<r>_<ranking>_<figure>``
    with its ``_ci95``. ``queries`` and ``gallery`` are in the searched space (as the index holds them);
    ``relevant``: (queries, gallery) True where relevant; ``sample``: the queries' strata for the intervals."""
    queries = np.asarray(queries, dtype=np.float64)
    gallery = np.asarray(gallery, dtype=np.float64)
    gallery_sq_norms = np.einsum("ij,ij->i", gallery, gallery)
    per_query: dict[str, list[np.ndarray]] = {}
    block = max(1, DISTANCE_BLOCK_ELEMENTS // max(1, len(gallery)))
    shown = min(marked_per_round, len(gallery))
    for first in range(0, len(queries), block):
        rows = np.arange(first, min(first + block, len(queries)))
        start = blended_scores(queries[rows], gallery, gallery_sq_norms)
        for method in methods:
            method_settings = FeedbackSettings.from_mapping({**settings.as_dict(), "method": method})
            marks = [Marks() for _ in rows]
            scores = start
            for round_ in range(rounds + 1):
                if round_:
                    scores = _round_scores(queries[rows], gallery, gallery_sq_norms, marks, method_settings,
                                           normalised, rows)  # fmt: skip
                for ranking in RANKINGS:
                    figures = _figures(scores, relevant[rows], marks if ranking == "residual" else None)
                    for figure, values in figures.items():
                        per_query.setdefault(feedback_key(method, round_, ranking, figure), []).append(values)
                top = smallest_columns(-scores, shown)
                marks = [
                    _marked(marked, top_row, relevant[row])
                    for marked, top_row, row in zip(marks, top, rows, strict=True)
                ]
    out: dict[str, Any] = {}
    for key, parts in per_query.items():
        out[key], out[key + CI_SUFFIX] = sample.mean_and_interval(np.concatenate(parts))
    out.update(feedback_queries=len(queries), feedback_rounds=rounds, feedback_marked_per_round=shown)
    return out


def _marked(marks: Marks, shown: np.ndarray, relevant: np.ndarray) -> Marks:
    """The marks after the user judged the ``shown`` gallery rows by ``relevant`` (a row of the gallery)."""
    return Marks(
        np.concatenate([marks.relevant, shown[relevant[shown]]]),
        np.concatenate([marks.irrelevant, shown[~relevant[shown]]]),
    )
