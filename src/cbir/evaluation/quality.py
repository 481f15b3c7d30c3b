"""Retrieval quality of a cell's searches on a bounded sample of its test queries, every figure with its interval.

The queries are at most ``retrieval.eval_queries`` test images, drawn in proportion to each class
(:func:`cbir.evaluation.ranking.stratified_sample`); each figure is their stratified mean, with the
half-width of its 95 % confidence interval beside it (``<figure>_ci95``). The cost grows with queries ×
gallery, not with test × gallery × log(gallery):

- P@k and mAP@k of every search mode come from its top-k search (the search a user runs);
- mAP over the whole ranking (``map_global``, ``map_class``, and the re-ranked variants') comes from the
  ranks of the relevant gallery images, one sort of each query's distances (:mod:`cbir.evaluation.ranking`);
- the re-ranked variants share their neighbour searches (:class:`cbir.fitting.rerank.RerankVariants`), and query
  expansion in the plain gallery reuses the global search's results.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cbir.evaluation.metrics import (
    CALIBRATED_MODE,
    average_precision,
    calibrate_no_match,
    no_match_metrics,
    overlap_at,
    ranked_relevance,
)
from cbir.evaluation.ranking import PRECISION_AT, QuerySample, exact_rank_figures
from cbir.extraction.latency import clock
from cbir.fitting.rerank import Rerank, RerankVariants
from cbir.search.cell import CellModels
from cbir.search.index import RetrievalIndex

CI_SUFFIX = "_ci95"  # the half-width of a figure's 95 % confidence interval, beside it in the metrics


def summarise(per_query: dict[str, np.ndarray], sample: QuerySample) -> dict[str, float]:
    """Each per-query figure's stratified mean, and beside it (``<name>_ci95``) its interval's half-width."""
    out: dict[str, float] = {}
    for name, values in per_query.items():
        out[name], out[f"{name}{CI_SUFFIX}"] = sample.mean_and_interval(values)
    return out


def class_average_precision(
    index: RetrievalIndex, queries: np.ndarray, predicted: np.ndarray, relevant: np.ndarray, device: str = "cpu"
) -> np.ndarray:
    """AP of the class-restricted search over its whole ranking: each query ranks the gallery images of its
    predicted class; the relevant images of other classes are never found (they count against it)."""
    n_relevant = relevant.sum(axis=1)
    ap = np.zeros(len(queries))
    for group in np.unique(predicted):
        rows = np.flatnonzero(predicted == group)
        members = index.members("class", int(group))
        if len(members) == 0:
            continue
        figures = exact_rank_figures(
            queries[rows], index.gallery[members], relevant[np.ix_(rows, members)],
            precision_at=(), n_relevant=n_relevant[rows], device=device,
        )  # fmt: skip
        ap[rows] = figures["ap"]
    return ap


def retrieval_quality(
    models: CellModels,
    reduced: np.ndarray,
    predicted: np.ndarray,
    relevant: np.ndarray,
    top_k: int,
    sample: QuerySample,
    device: str = "cpu",
) -> tuple[dict[str, float], np.ndarray]:
    """P@k, mAP@k and recall against the exact search of every mode, mAP of the exact modes, and the
    "no good match" calibration of the global mode's top-k (:func:`calibrate_no_match`), each mode's search time
    per query (the queries searched at once: ``time_batched_search_<mode>_us_per_query``); and the global
    search's ranked rows (as deep as the deepest P@k), for the re-ranked variants to reuse."""
    depth = max(*PRECISION_AT, top_k)
    n_relevant = relevant.sum(axis=1)
    per_query: dict[str, np.ndarray] = {}
    rankings: dict[str, np.ndarray] = {}
    calibration = calibrate_no_match(np.empty(0), np.empty(0, dtype=bool))
    timings: dict[str, float] = {}
    for mode, search in models.searchers().items():
        start = clock()
        indices, distances = search(reduced, predicted, depth)
        # this search is the batched one: all the sample's queries at once, timed per query
        timings[f"time_batched_search_{mode}_us_per_query"] = (clock() - start) / 1e3 / max(len(reduced), 1)
        rankings[mode] = indices
        hits = ranked_relevance(indices, relevant)
        for k in PRECISION_AT:
            per_query[f"precision_at_{k}_{mode}"] = hits[:, :k].sum(axis=1) / k
        per_query[f"map_at_{top_k}_{mode}"] = average_precision(hits, n_relevant, top_k)
        if mode == CALIBRATED_MODE:
            calibration = calibrate_no_match(distances[:, :top_k], hits[:, :top_k])
    queries = models.index.prepare(models.embedding.transform(reduced))
    gallery = models.index.gallery
    per_query["map_global"] = exact_rank_figures(queries, gallery, relevant, precision_at=(), device=device)["ap"]
    per_query["map_class"] = class_average_precision(models.index, queries, predicted, relevant, device)
    out = summarise(per_query, sample)
    for mode, indices in rankings.items():
        if mode != "global":
            out[f"recall_at_{top_k}_vs_exact_{mode}"] = overlap_at(indices, rankings["global"], top_k)
    out.update(no_match_metrics(calibration))
    out.update(timings)
    return out, rankings["global"]


def reranked_figures(queries: np.ndarray, gallery: np.ndarray, relevant: np.ndarray, suffix: str,
                     sample: QuerySample, device: str = "cpu") -> dict[str, float]:  # fmt: skip
    """mAP of the whole exact ranking and P@k of one re-ranked variant (``map_<suffix>``,
    ``precision_at_<k>_<suffix>``), each with its interval."""
    figures = exact_rank_figures(queries, gallery, relevant, device=device)
    named = {f"precision_at_{k}_{suffix}": figures[f"precision_at_{k}"] for k in PRECISION_AT}
    return summarise({f"map_{suffix}": figures["ap"], **named}, sample)


def rerank_quality(
    variants: RerankVariants, relevant: np.ndarray, options: dict[str, Any], sample: QuerySample, device: str = "cpu"
) -> dict[str, float]:
    """The global exact search re-ranked with the configured settings (``embeddings.rerank``): α-query expansion
    (``global_qe``), database-side augmentation (``global_dba``), and both (``global_dba_qe``)."""
    qe, dba = options.get("query_expansion", {}), options.get("dba", {})
    wanted = []
    if qe.get("n", 0) > 0:
        wanted.append(("global_qe", Rerank("qe", int(qe["n"]), float(qe["alpha"]))))
    if dba.get("k", 0) > 0:
        wanted.append(("global_dba", Rerank("dba", int(dba["k"]), float(dba["alpha"]))))
        if qe.get("n", 0) > 0:  # the expansion (its n, α) searched in the augmented gallery (its k, α)
            wanted.append(("global_dba_qe", None))
    out: dict[str, float] = {}
    for suffix, rerank in wanted:
        if rerank is None:
            dba_setting = (int(dba["k"]), float(dba["alpha"]))
            queries, gallery = (
                variants.expanded(int(qe["n"]), float(qe["alpha"]), dba_setting),
                variants.augmented(*dba_setting),
            )
        else:
            queries, gallery = variants.vectors(rerank)
        out.update(reranked_figures(queries, gallery, relevant, suffix, sample, device))
    return out
