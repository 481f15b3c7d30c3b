"""Evaluation of one grid cell: accuracy, retrieval quality of every search mode, and timings.

Relevance is "shares a label with the query": the class for single-label datasets, any of the
image's labels for multi-label ones (Pascal VOC). Modes:

- ``clustered``, ``class``, ``global``: see :mod:`cbir.search.index`;
- ``faiss_flat`` / ``faiss_ivf``: faiss over the whole gallery, exact and approximate.

Because the clustered and class-restricted results all come from the predicted class, their
precision against "same class" is bounded by the classifier; ``recall_at_k_vs_exact`` (the
overlap of a mode's top-k with the exact top-k over all images) judges them as approximate
searches instead. The metrics are in :mod:`cbir.evaluation.metrics`, the timings in
:mod:`cbir.evaluation.timing`.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from cbir.data.manifest import read_manifest
from cbir.data.split import split_ids
from cbir.evaluation.metrics import (
    CALIBRATED_MODE,
    PRECISION_AT,
    average_precision,
    calibrate_no_match,
    exact_ranking_quality,
    label_sets,
    no_match_metrics,
    overlap_at,
    precision_at,
    ranked_relevance,
    relevance,
)
from cbir.evaluation.timing import time_batched_queries, time_single_queries, total_query_times
from cbir.fitting.chosen import VALIDATION_FIGURES, Selection
from cbir.fitting.rerank import augment_database, expand_queries, nearest_rows, rerank_vectors
from cbir.hardware import cpu_hardware
from cbir.io import library_versions, load_arrays, load_features, write_json
from cbir.layout import embedding_name
from cbir.search.cell import CellModels, load_cell

# what the feature file recorded of the network that made it, copied into the metrics as features_<key>
FEATURE_RECORD = ("arch", "weights", "pooling", "gem_p", "image_size", "layer", "engine", "precision")
EXACT_MODES = ("class", "global")
QUERY_CHUNK = 256


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


def rerank_quality(
    models: CellModels,
    reduced: np.ndarray,
    query_sets: np.ndarray,
    gallery_sets: np.ndarray,
    options: dict[str, Any],
) -> dict[str, float]:
    """Global exact search re-ranked: α-query expansion (``global_qe``), database-side augmentation
    (``global_dba``), and both (``global_dba_qe``), each with its mAP and P@k, computed in the cell's space."""
    relevant = relevance(query_sets, gallery_sets)
    normalised = models.embedding.normalised
    queries = models.embedding.transform(reduced).astype(np.float64)
    gallery = models.index.gallery
    qe, dba = options.get("query_expansion", {}), options.get("dba", {})
    out: dict[str, float] = {}

    def expanded(gallery_vectors: np.ndarray) -> np.ndarray:
        top = nearest_rows(queries, gallery_vectors, qe["n"])
        return expand_queries(queries, gallery_vectors, top, qe["n"], qe["alpha"], normalised).astype(np.float64)

    if qe.get("n", 0) > 0:
        out.update(exact_ranking_quality(expanded(gallery), gallery, relevant, "global_qe"))
    if dba.get("k", 0) > 0:
        augmented = augment_database(gallery, dba["k"], dba["alpha"], normalised).astype(np.float64)
        out.update(exact_ranking_quality(queries, augmented, relevant, "global_dba"))
        if qe.get("n", 0) > 0:
            out.update(exact_ranking_quality(expanded(augmented), augmented, relevant, "global_dba_qe"))
    return out


def chosen_figures(selection: Selection, space: str) -> dict[str, Any]:
    """What validation chose for ``space`` as the metrics record it: whether it is the space searched, its
    settings and re-ranking, and its validation figures (``validation_map_global``, ...)."""
    choice = selection.choice(space)
    return {
        "chosen": space == selection.chosen,
        "space_settings": json.dumps(choice.settings, sort_keys=True),
        "rerank_chosen": choice.rerank.describe(),
        "validation_images": int(selection.validation.get("n_validation", 0)),
        **{f"validation_{name}": choice.figures.get(name, float("nan")) for name in VALIDATION_FIGURES},
    }


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
    selection_path: str | None = None,
) -> dict[str, Any]:
    """Load one grid cell with k clusters per class, searching in ``space``, evaluate it on its test images and
    write the metrics JSON. ``rerank`` (query expansion, database-side augmentation with fixed settings) adds
    their measured quality; ``selection_path``, what validation chose (:mod:`cbir.evaluation.validation`): its
    figures beside the test's, and the test figures of the global search with the re-ranking chosen."""
    test = load_features(features, split_ids(split, "test"))
    cell = load_cell(cell_folder, k, retrieval["metric"], retrieval.get("faiss"), seed, space=space, rerank=False)
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
        _, fitted = load_arrays(cell.folder / embedding_name(cell.space))
        result["time_fit_space_s"] = float(fitted.get("fit_seconds", float("nan")))
    if rerank:
        result.update(
            rerank_quality(models, models.projection.transform(test.features), query_sets, gallery_sets, rerank)
        )
    if selection_path is not None:
        selection = Selection.load(selection_path)
        result.update(chosen_figures(selection, cell.space))
        chosen = selection.choice(cell.space).rerank
        if cell.labelled and chosen.active:
            queries = models.embedding.transform(models.projection.transform(test.features))
            reranked = rerank_vectors(queries, models.index.gallery, chosen, models.embedding.normalised)
            result.update(exact_ranking_quality(*reranked, relevance(query_sets, gallery_sets), "global_reranked"))
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
