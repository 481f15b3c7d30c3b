"""Evaluation of one grid cell: accuracy, retrieval quality of every search mode, and timings.

Relevance is "shares a label with the query": the class for single-label datasets, any of the
image's labels for multi-label ones (Pascal VOC). Modes:

- ``clustered``, ``class``, ``global``: see :mod:`cbir.search.index`;
- ``faiss_flat`` / ``faiss_ivf``: faiss over the whole gallery, exact and approximate.

Because the clustered and class-restricted results all come from the predicted class, their
precision against "same class" is bounded by the classifier; ``recall_at_k_vs_exact`` (the
overlap of a mode's top-k with the exact top-k over all images) judges them as approximate
searches instead.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from cbir.extraction.latency import clock, latency_summary
from cbir.hardware import cpu_hardware
from cbir.search.cell import CellModels, load_cell

PRECISION_AT = (5, 10, 20)
# what the feature file recorded of the network that made it, copied into the metrics as features_<key>
FEATURE_RECORD = ("arch", "weights", "pooling", "gem_p", "image_size", "layer", "engine", "precision")
EXACT_MODES = ("class", "global")
QUERY_CHUNK = 256


# --- metrics ---------------------------------------------------------------------------


def label_sets(labels: np.ndarray, n_classes: int, extra: list[list[int]] | None = None) -> np.ndarray:
    """Multi-hot label sets (n, n_classes): each image's label, plus any further labels it has."""
    sets = np.zeros((len(labels), n_classes), dtype=bool)
    sets[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] = True
    for row, more in enumerate(extra or []):
        sets[row, list(more)] = True
    return sets


def relevance(query_sets: np.ndarray, gallery_sets: np.ndarray) -> np.ndarray:
    """(n_queries, n_gallery) True where the gallery image shares a label with the query."""
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


def fit_logistic(x: np.ndarray, y: np.ndarray, c: float) -> tuple[float, float]:
    """Intercept and slope of a logistic regression of ``y`` on one feature ``x``, with scikit-learn's
    ``LogisticRegression(C=c)`` objective: ``c`` times the summed log-loss plus half the squared slope.

    Minimised with SciPy's L-BFGS-B: SciPy imports in a third of the time scikit-learn takes, which
    every evaluation job would otherwise pay for this one fit (``tests/test_metrics.py`` checks
    that both find the same fit).
    """
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    sign = np.where(y, 1.0, -1.0)

    def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
        intercept, slope = theta
        margin = sign * (intercept + slope * x)
        d_margin = -sign * expit(-margin)  # derivative of -log(expit(margin)) with respect to intercept + slope x
        loss = c * -log_expit(margin).sum() + 0.5 * slope * slope
        return loss, np.array([c * d_margin.sum(), c * (d_margin * x).sum() + slope])

    result = minimize(objective, np.zeros(2), jac=True, method="L-BFGS-B", options={"gtol": 1e-8})
    return float(result.x[0]), float(result.x[1])


def no_match_metrics(calibration: dict[str, float], mode: str = CALIBRATED_MODE) -> dict[str, float]:
    """The calibration's entries in the metrics JSON: ``no_match_{distance,precision,recall}_<mode>``,
    ``relevance_{intercept,slope}_<mode>`` and ``no_match_results_<mode>`` (results it was fitted on)."""
    out = {f"no_match_{key}_{mode}": float(calibration[key]) for key in ("distance", "precision", "recall")}
    out.update({f"relevance_{key}_{mode}": float(calibration[key]) for key in ("intercept", "slope")})
    out[f"no_match_results_{mode}"] = int(calibration["n"])
    return out


def retrieval_quality(
    models: CellModels,
    reduced: np.ndarray,
    predicted: np.ndarray,
    query_sets: np.ndarray,
    gallery_sets: np.ndarray,
    top_k: int,
) -> dict[str, float]:
    """P@k, mAP@k and recall against the exact search of every mode, mAP of the exact modes, and the
    "no good match" calibration of the global mode's top-k (:func:`calibrate_no_match`)."""
    out: dict[str, float] = {}
    depth = max(*PRECISION_AT, top_k)
    searchers = models.searchers()
    relevant = relevance(query_sets, gallery_sets)
    n_relevant = relevant.sum(axis=1)
    # the exact modes rank the whole gallery once, for mAP; the first `depth` columns of that
    # ranking are their top-depth results (a partial top-k equals a full stable sort's start),
    # padded with -1 like a top-depth search of a smaller gallery
    full_map, exact_top = {}, {}
    calibration: dict[str, list[np.ndarray]] = {"distances": [], "relevant": []}
    for mode in EXACT_MODES:
        ap, top = [], []
        for first in range(0, len(reduced), QUERY_CHUNK):
            rows = slice(first, first + QUERY_CHUNK)
            indices, distances = searchers[mode](reduced[rows], predicted[rows], len(gallery_sets))
            hits = ranked_relevance(indices, relevant[rows])
            ap.append(average_precision(hits, n_relevant[rows]))
            if mode == CALIBRATED_MODE:
                calibration["distances"].append(distances[:, :top_k])
                calibration["relevant"].append(hits[:, :top_k])
            top.append(np.pad(indices[:, :depth], ((0, 0), (0, max(0, depth - indices.shape[1]))), constant_values=-1))
        full_map[mode] = float(np.concatenate(ap).mean()) if ap else float("nan")
        exact_top[mode] = np.concatenate(top) if top else np.empty((0, depth), dtype=np.int64)
    rankings = {
        mode: exact_top[mode] if mode in exact_top else search(reduced, predicted, depth)[0]
        for mode, search in searchers.items()
    }
    for mode, indices in rankings.items():
        hits = ranked_relevance(indices, relevant)
        for k in PRECISION_AT:
            out[f"precision_at_{k}_{mode}"] = precision_at(hits, k)
        out[f"map_at_{top_k}_{mode}"] = float(average_precision(hits, n_relevant, top_k).mean())
        if mode != "global":
            out[f"recall_at_{top_k}_vs_exact_{mode}"] = overlap_at(indices, rankings["global"], top_k)
    for mode, value in full_map.items():
        out[f"map_{mode}"] = value
    out.update(
        no_match_metrics(
            calibrate_no_match(
                np.concatenate(calibration["distances"]) if calibration["distances"] else np.empty(0),
                np.concatenate(calibration["relevant"]) if calibration["relevant"] else np.empty(0, dtype=bool),
            )
        )
    )
    return out


def _global_quality(queries: np.ndarray, gallery: np.ndarray, relevant: np.ndarray, suffix: str) -> dict[str, float]:
    """mAP of the full exact ranking and P@k, for queries and a gallery already in the search space."""
    from cbir.distances import squared_distances

    sq_norms = np.einsum("ij,ij->i", gallery, gallery)
    ap, top = [], []
    n_relevant = relevant.sum(axis=1)
    for first in range(0, len(queries), QUERY_CHUNK):
        rows = slice(first, first + QUERY_CHUNK)
        order = np.argsort(squared_distances(queries[rows], gallery, sq_norms), axis=1, kind="stable")
        hits = ranked_relevance(order, relevant[rows])
        ap.append(average_precision(hits, n_relevant[rows]))
        top.append(hits[:, : max(PRECISION_AT)])
    hits = np.concatenate(top) if top else np.zeros((0, max(PRECISION_AT)), dtype=bool)
    out = {f"precision_at_{k}_{suffix}": precision_at(hits, k) for k in PRECISION_AT}
    out[f"map_{suffix}"] = float(np.concatenate(ap).mean()) if ap else float("nan")
    return out


def _nearest_rows(queries: np.ndarray, gallery: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` nearest gallery rows of each query, nearest first, a chunk of queries at a time."""
    from cbir.search.index import RetrievalIndex

    empty = np.empty(0, dtype=np.int64)
    labels = np.zeros(len(gallery), dtype=np.int64)
    index = RetrievalIndex(gallery, labels, np.empty((0, gallery.shape[1])), empty, empty)
    rows = [index.search(queries[i : i + QUERY_CHUNK], "global", n)[0] for i in range(0, len(queries), QUERY_CHUNK)]
    return np.concatenate(rows) if rows else np.empty((0, n), dtype=np.int64)


def rerank_quality(
    models: CellModels,
    reduced: np.ndarray,
    query_sets: np.ndarray,
    gallery_sets: np.ndarray,
    options: dict[str, Any],
) -> dict[str, float]:
    """Global exact search re-ranked: α-query expansion (``global_qe``), database-side augmentation
    (``global_dba``), and both (``global_dba_qe``), each with its mAP and P@k, computed in the cell's space."""
    from cbir.fitting.spaces import augment_database, expand_queries

    relevant = relevance(query_sets, gallery_sets)
    normalised = models.embedding.normalised
    queries = models.embedding.transform(reduced).astype(np.float64)
    gallery = models.index.gallery
    qe, dba = options.get("query_expansion", {}), options.get("dba", {})
    out: dict[str, float] = {}

    def expanded(gallery_vectors: np.ndarray) -> np.ndarray:
        top = _nearest_rows(queries, gallery_vectors, qe["n"])
        return expand_queries(queries, gallery_vectors, top, qe["n"], qe["alpha"], normalised).astype(np.float64)

    if qe.get("n", 0) > 0:
        out.update(_global_quality(expanded(gallery), gallery, relevant, "global_qe"))
    if dba.get("k", 0) > 0:
        augmented = augment_database(gallery, dba["k"], dba["alpha"], normalised).astype(np.float64)
        out.update(_global_quality(queries, augmented, relevant, "global_dba"))
        if qe.get("n", 0) > 0:
            out.update(_global_quality(expanded(augmented), augmented, relevant, "global_dba_qe"))
    return out


# --- timings ---------------------------------------------------------------------------


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


def time_batched_queries(models: CellModels, raw_queries: np.ndarray, top_k: int) -> dict[str, float]:
    """All test queries at once, reported per query."""
    n = max(len(raw_queries), 1)
    start = clock()
    reduced = models.projection.transform(raw_queries)
    predicted = models.mlp.predict(reduced)
    out = {"time_batched_predict_us_per_query": (clock() - start) / 1e3 / n}
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


def evaluate_cell(
    models: CellModels,
    raw_test_features: np.ndarray,
    test_labels: np.ndarray,
    query_sets: np.ndarray,
    gallery_sets: np.ndarray,
    *,
    top_k: int = 5,
) -> dict[str, Any]:
    """Accuracy, retrieval quality of every mode, and single/batched timings."""
    test_labels = np.asarray(test_labels)
    reduced = models.projection.transform(raw_test_features)
    predicted = models.mlp.predict(reduced)
    metrics: dict[str, Any] = {
        "n_test": len(test_labels),
        "accuracy": float(np.mean(predicted == test_labels)) if len(test_labels) else float("nan"),
    }
    metrics.update(retrieval_quality(models, reduced, predicted, query_sets, gallery_sets, top_k))
    metrics.update(time_single_queries(models, raw_test_features, top_k))
    metrics.update(time_batched_queries(models, raw_test_features, top_k))
    return metrics


def evaluate_without_labels(
    models: CellModels, raw_queries: np.ndarray, own_rows: np.ndarray, *, top_k: int = 5
) -> dict[str, Any]:
    """A collection without labels: each search's recall@k against exact search over the whole gallery,
    and single/batched timings. ``own_rows``: each query's own gallery row (-1 for a query that is not in
    the gallery), left out of every result so that no query finds itself."""
    reduced = models.projection.transform(raw_queries)
    predicted = models.mlp.predict(reduced)  # one class: every search looks at the whole gallery
    rankings = {}
    for mode, search in models.searchers().items():
        if mode == "class":  # one class: the global search
            continue
        indices = search(reduced, predicted, top_k + 1)[0]
        rankings[mode] = np.array([row[row != own][:top_k] for row, own in zip(indices, own_rows, strict=True)])
    metrics: dict[str, Any] = {"n_test": len(raw_queries), "queries_from_gallery": bool((own_rows >= 0).any())}
    for mode, indices in rankings.items():
        if mode != "global":
            metrics[f"recall_at_{top_k}_vs_exact_{mode}"] = overlap_at(indices, rankings["global"], top_k)
    metrics.update(time_single_queries(models, raw_queries, top_k))
    metrics.update(time_batched_queries(models, raw_queries, top_k))
    return metrics


def gallery_queries(features: str, gallery_ids: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split ``all``: a seeded sample of ``n`` gallery images as queries (raw features), with their gallery rows."""
    from cbir.io import load_features

    rows = np.sort(np.random.default_rng(seed).permutation(len(gallery_ids))[: min(n, len(gallery_ids))])
    raw = load_features(features, [str(gallery_ids[row]) for row in rows]).features
    return raw, rows


# --- one grid cell from its artifacts ------------------------------------------------------


def manifest_label_sets(manifest: Any, ids: list[str] | np.ndarray, n_classes: int) -> np.ndarray:
    """Label sets of ``ids`` from the manifest; a ``labels`` column ('|'-joined class names) adds labels."""
    rows = manifest.set_index("id").loc[list(ids)]
    extra = None
    if "labels" in rows.columns:
        index_of = dict(zip(manifest["class_name"], manifest["label"], strict=False))
        extra = [
            [index_of[name] for name in str(value).split("|") if name in index_of] if isinstance(value, str) else []
            for value in rows["labels"]
        ]
    return label_sets(rows["label"].to_numpy(), n_classes, extra)


def cell_metrics(
    *,
    features: str,
    manifest: str,
    split: str,
    cell_folder: str,
    k: int,
    extraction_timing: str,
    out_path: str,
    retrieval: dict[str, Any],
    seed: int,
    space: str = "raw",
    rerank: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load one grid cell with k clusters per class, searching in ``space``, evaluate it on its test images and
    write the metrics JSON. ``rerank`` (query expansion, database-side augmentation) adds their measured quality."""
    import json

    from cbir.data.manifest import read_manifest
    from cbir.data.split import split_ids
    from cbir.io import library_versions, load_arrays, load_features, write_json

    test = load_features(features, split_ids(split, "test"))
    cell = load_cell(cell_folder, k, retrieval["metric"], retrieval.get("faiss"), seed, space=space)
    models, clusters = cell.models, cell.clusters
    top_k = retrieval["top_k"]
    result: dict[str, Any] = {
        **cell.identity.as_dict(),
        "k": cell.k,
        "n_train": len(cell.gallery_ids),
        "n_classes": len(np.unique(cell.gallery_labels)),
        "feature_dim": int(test.features.shape[1]),
        "reduced_dim": cell.reduced_dim,
        "space": cell.space,
        "embedding_dim": int(models.index.gallery.shape[1]),
        "top_k": top_k,
        "metric": retrieval["metric"],
        "n_clusters": len(clusters.centroids),
        # update.refit when_due: gallery images that joined the kept clusters instead of a refit
        "images_placed_since_fit": cell.placed_since_fit,
        "kmeans_max_iter_used": max(clusters.n_iter.values(), default=0),
        "kmeans_all_converged": all(clusters.converged.values()),
        "mlp_n_iter": models.mlp.n_iter,
        "mlp_converged": models.mlp.converged,
        "faiss_ivf_nlist": models.faiss["ivf"].nlist if "ivf" in models.faiss else None,
    }
    result["labelled"] = cell.labelled
    if not cell.labelled:
        if len(test.ids):
            raw_queries, own_rows = test.features, np.full(len(test.ids), -1)
        else:  # split all: queries drawn from the gallery
            raw_queries, own_rows = gallery_queries(features, cell.gallery_ids, retrieval["eval_queries"], seed)
        result.update(evaluate_without_labels(models, raw_queries, own_rows, top_k=top_k))
        rerank = None  # re-ranking is measured by its precision, which needs labels
    else:
        table = read_manifest(manifest)  # the label sets: a collection without labels needs none
        n_classes = int(table["label"].max()) + 1
        query_sets = manifest_label_sets(table, test.ids, n_classes)
        gallery_sets = manifest_label_sets(table, cell.gallery_ids, n_classes)
        result.update(evaluate_cell(models, test.features, test.labels, query_sets, gallery_sets, top_k=top_k))
    if cell.space != "raw":
        from cbir.layout import embedding_name

        _, fitted = load_arrays(cell.folder / embedding_name(cell.space))
        result["time_fit_space_s"] = float(fitted.get("fit_seconds", float("nan")))
    if rerank:
        result.update(
            rerank_quality(models, models.projection.transform(test.features), query_sets, gallery_sets, rerank)
        )
    with open(extraction_timing) as f:
        timing = json.load(f)
    result.update({key: value for key, value in timing.items() if key.startswith("time_")})
    result.update(total_query_times(result, list(models.searchers())))
    # what ran: the network as the feature file recorded it, and the hardware of the timings
    result.update({f"features_{key}": test.attrs.get(key) for key in FEATURE_RECORD})
    result["hardware_extract"] = timing.get("hardware", timing.get("device"))
    result["hardware_search"] = cpu_hardware()
    result["seed"] = seed
    result["library_versions"] = library_versions()
    write_json(out_path, result)
    return result
