"""Evaluation of one grid cell: accuracy, retrieval precision and per-query timings."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from cbir.classify import MlpModel
from cbir.cluster import IntraClassClusters
from cbir.reduce import Projection
from cbir.retrieve import MODES, RetrievalIndex


def precision_at_k(retrieved_labels: np.ndarray, query_labels: np.ndarray, k: int) -> float:
    """Mean fraction of the first ``k`` results that share the query's label.

    Missing results (a cluster smaller than k, marked -1) count as not relevant.
    """
    retrieved_labels = np.asarray(retrieved_labels)[:, :k]
    relevant = retrieved_labels == np.asarray(query_labels)[:, None]
    return float(relevant.sum(axis=1).mean() / k) if len(relevant) else float("nan")


def latency_summary(samples_ns: list[int] | np.ndarray) -> dict[str, float]:
    micro = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return {"median_us": float(np.median(micro)), "p95_us": float(np.percentile(micro, 95))}


@dataclass
class CellModels:
    projection: Projection
    mlp: MlpModel
    index: RetrievalIndex


def build_index(
    train_features: np.ndarray, train_labels: np.ndarray, clusters: IntraClassClusters, metric: str
) -> RetrievalIndex:
    return RetrievalIndex(
        gallery=train_features,
        labels=train_labels,
        centroids=clusters.centroids,
        centroid_labels=clusters.centroid_labels,
        assignments=clusters.assignments,
        metric=metric,
    )


def time_single_queries(models: CellModels, raw_queries: np.ndarray, top_k: int) -> dict[str, Any]:
    """Latency of one query at a time: projection + class prediction, then each search."""
    predict_ns: list[int] = []
    search_ns: dict[str, list[int]] = {mode: [] for mode in MODES}
    clock = time.perf_counter_ns
    for row in range(len(raw_queries)):
        start = clock()
        reduced = models.projection.transform(raw_queries[row : row + 1])
        predicted = models.mlp.predict(reduced)
        predict_ns.append(clock() - start)
        for mode in MODES:
            start = clock()
            models.index.search(reduced, mode, top_k, predicted)
            search_ns[mode].append(clock() - start)
    out: dict[str, Any] = {}
    for stat, value in latency_summary(predict_ns).items():
        out[f"time_predict_{stat}"] = value
    for mode in MODES:
        for stat, value in latency_summary(search_ns[mode]).items():
            out[f"time_search_{mode}_{stat}"] = value
        total = np.asarray(search_ns[mode]) + (0 if mode == "global" else np.asarray(predict_ns))
        out[f"time_total_{mode}_median_us"] = latency_summary(total)["median_us"]
    return out


def time_batched_queries(models: CellModels, raw_queries: np.ndarray, top_k: int) -> dict[str, float]:
    """Throughput with all test queries sent at once, as microseconds per query."""
    clock = time.perf_counter_ns
    n = max(len(raw_queries), 1)
    start = clock()
    reduced = models.projection.transform(raw_queries)
    predicted = models.mlp.predict(reduced)
    out = {"time_batched_predict_us_per_query": (clock() - start) / 1e3 / n}
    for mode in MODES:
        start = clock()
        models.index.search(reduced, mode, top_k, predicted)
        out[f"time_batched_search_{mode}_us_per_query"] = (clock() - start) / 1e3 / n
    return out


def evaluate_cell(
    models: CellModels,
    raw_test_features: np.ndarray,
    test_labels: np.ndarray,
    *,
    top_k: int = 5,
) -> dict[str, Any]:
    """Accuracy, precision@top_k of each retrieval mode against the true class, and timings."""
    test_labels = np.asarray(test_labels)
    reduced = models.projection.transform(raw_test_features)
    predicted = models.mlp.predict(reduced)
    metrics: dict[str, Any] = {
        "n_test": len(test_labels),
        "accuracy": float(np.mean(predicted == test_labels)) if len(test_labels) else float("nan"),
    }
    gallery_labels = np.append(models.index.labels, -1)  # index -1 (padding) maps to label -1
    for mode in MODES:
        indices, _ = models.index.search(reduced, mode, top_k, predicted)
        metrics[f"precision_at_{top_k}_{mode}"] = precision_at_k(gallery_labels[indices], test_labels, top_k)
    metrics.update(time_single_queries(models, raw_test_features, top_k))
    metrics.update(time_batched_queries(models, raw_test_features, top_k))
    return metrics


def cell_metrics(
    *,
    features: str,
    split: str,
    projection: str,
    gallery: str,
    classifier: str,
    clusters: str,
    out_path: str,
    cell: dict[str, str],
    top_k: int,
    metric: str,
    seed: int,
) -> dict[str, Any]:
    """Load one grid cell's artifacts, evaluate it on its test images and write the metrics JSON."""
    from cbir.classify import load_mlp
    from cbir.cluster import load_clusters
    from cbir.data import split_ids
    from cbir.io import library_versions, load_arrays, load_features, write_json
    from cbir.reduce import load_projection

    test = load_features(features, split_ids(split, "test"))
    train, _ = load_arrays(gallery)
    fitted_clusters, cluster_ids, _ = load_clusters(clusters)
    if list(cluster_ids) != list(train["ids"]):
        raise ValueError(f"'{clusters}' was fitted on other training images than '{gallery}'")
    mlp = load_mlp(classifier)
    models = CellModels(
        projection=load_projection(projection),
        mlp=mlp,
        index=build_index(train["features"], train["labels"], fitted_clusters, metric),
    )
    result: dict[str, Any] = {
        "dataset": cell["dataset"],
        "backbone": cell["backbone"],
        "split": cell["split"],
        "pca": cell["pca"],
        "k": int(cell["k"]),
        "n_train": len(train["ids"]),
        "n_classes": len(np.unique(train["labels"])),
        "feature_dim": int(test.features.shape[1]),
        "reduced_dim": int(train["features"].shape[1]),
        "top_k": top_k,
        "metric": metric,
        "n_clusters": len(fitted_clusters.centroids),
        "kmeans_max_iter_used": max(fitted_clusters.n_iter.values(), default=0),
        "kmeans_all_converged": all(fitted_clusters.converged.values()),
        "mlp_n_iter": mlp.n_iter,
        "mlp_converged": mlp.converged,
    }
    result.update(evaluate_cell(models, test.features, test.labels, top_k=top_k))
    result["seed"] = seed
    result["library_versions"] = library_versions()
    write_json(out_path, result)
    return result
