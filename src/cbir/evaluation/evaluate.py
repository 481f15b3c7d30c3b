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
from cbir.evaluation.feedback import simulate_feedback
from cbir.evaluation.metrics import label_sets, overlap_at, relevance
from cbir.evaluation.quality import rerank_quality, reranked_figures, retrieval_quality
from cbir.evaluation.ranking import QuerySample, evaluation_device, stratified_sample
from cbir.evaluation.timing import time_batched_queries, time_single_queries, total_query_times
from cbir.fitting.chosen import VALIDATION_FIGURES, Selection
from cbir.fitting.rerank import NO_RERANK, Rerank, RerankVariants
from cbir.hardware import cpu_hardware
from cbir.io import library_versions, load_arrays, load_features, write_json
from cbir.layout import RAW, embedding_name
from cbir.search.cell import CellModels, load_cell
from cbir.search.feedback import FeedbackSettings

# what the feature file recorded of the network that made it, copied into the metrics as features_<key>
TIMING_QUERIES = 200  # test queries timed one at a time (retrieval.timing_queries)
FEATURE_RECORD = ("arch", "weights", "pooling", "gem_p", "image_size", "layer", "engine", "precision")


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
    max_queries: int = 0,
    seed: int = 0,
    rerank: dict[str, Any] | None = None,
    chosen: Rerank = NO_RERANK,
    device: str = "cpu",
    timing_queries: int = TIMING_QUERIES,
    feedback: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Accuracy (on every test image); retrieval quality on at most ``max_queries`` of them (drawn in proportion
    to each class; 0: all), with the configured re-ranked variants (``rerank``) and the one validation chose
    (``chosen``, as ``global_reranked``); and single (on ``timing_queries`` of them) and batched timings.
    ``device``: where the whole rankings are computed (``cuda``: on the GPU). ``feedback`` (the config's section):
    the simulated user's rounds of relevance feedback on at most ``feedback.eval_queries`` of the sample."""
    test_labels = np.asarray(test_labels)
    reduced = models.projection.transform(raw_test_features)
    predicted = models.mlp.predict(reduced)
    rows = stratified_sample(test_labels, max_queries, seed)
    sample = QuerySample.of(test_labels, rows)
    metrics: dict[str, Any] = {
        "n_test": len(test_labels),
        "accuracy": float(np.mean(predicted == test_labels)) if len(test_labels) else float("nan"),
        "n_queries_evaluated": len(rows),
        "eval_queries": max_queries,
        "eval_device": device,
    }
    relevant = relevance(query_sets[rows], gallery_sets)
    quality, global_top = retrieval_quality(models, reduced[rows], predicted[rows], relevant, top_k, sample, device)
    metrics.update(quality)
    if rerank or chosen.active:
        queries = models.index.prepare(models.embedding.transform(reduced[rows]))
        known = global_top if len(global_top) and (global_top >= 0).all() else None
        variants = RerankVariants(
            queries, models.index.gallery, models.embedding.normalised, global_top.shape[1], known
        )
        if rerank:
            metrics.update(rerank_quality(variants, relevant, rerank, sample, device))
        if chosen.active:
            reranked = variants.vectors(chosen)
            metrics.update(reranked_figures(*reranked, relevant, "global_reranked", sample, device))
    if feedback and int(feedback.get("rounds", 0)) > 0:
        metrics.update(feedback_figures(models, reduced, test_labels, rows, relevant, feedback, seed))
    # timed on the sample too: one query at a time on timing_queries of it, in proportion to each class
    timed = rows[stratified_sample(test_labels[rows], timing_queries, seed)]
    metrics.update(time_single_queries(models, raw_test_features[timed], top_k))
    metrics.update(time_batched_queries(models, raw_test_features[rows], top_k, searches=False))
    metrics["n_queries_timed"] = len(timed)
    return metrics


def feedback_figures(
    models: CellModels,
    reduced: np.ndarray,
    test_labels: np.ndarray,
    rows: np.ndarray,
    relevant: np.ndarray,
    feedback: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """The simulated user's rounds (:mod:`cbir.evaluation.feedback`) over the whole gallery, on a stratified part
    of the evaluated ``rows`` (``relevant``: their relevance, in that order)."""
    part = stratified_sample(test_labels[rows], int(feedback.get("eval_queries", 0)), seed)
    queries = models.index.prepare(models.embedding.transform(reduced[rows[part]]))
    return simulate_feedback(
        queries,
        models.index.gallery,
        relevant[part],
        QuerySample.of(test_labels, rows[part]),
        normalised=models.embedding.normalised or models.index.metric == "cosine",
        settings=FeedbackSettings.from_mapping(feedback),
        rounds=int(feedback["rounds"]),
    )


def evaluate_without_labels(
    models: CellModels,
    raw_queries: np.ndarray,
    own_rows: np.ndarray,
    *,
    top_k: int = 5,
    timing_queries: int = TIMING_QUERIES,
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
    timed = stratified_sample(np.zeros(len(raw_queries)), timing_queries, 0)
    metrics.update(time_single_queries(models, raw_queries[timed], top_k))
    metrics.update(time_batched_queries(models, raw_queries, top_k))
    metrics["n_queries_timed"] = len(timed)
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


def feedback_measured(feedback: dict[str, Any] | None, space: str, selection: Selection | None) -> bool:
    """Whether the simulated user refines in ``space``: with ``feedback.eval_spaces`` chosen (the default), in the
    paper's space and the one validation chose (where cbir query and cbir serve refine); with searched (cbir
    index), in the chosen one only; with all, in every space."""
    if not feedback:
        return False
    which = feedback.get("eval_spaces", "chosen")
    if which == "searched":
        return space == (selection.chosen if selection is not None else RAW)
    if which == "all" or selection is None:
        return True
    return space in (RAW, selection.chosen)


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
    loaded: dict[str, Any] | None = None,
    feedback: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load one grid cell with k clusters per class, searching in ``space``, evaluate it on its test images and
    write the metrics JSON. ``rerank`` (query expansion, database-side augmentation with fixed settings) adds
    their measured quality; ``selection_path``, what validation chose (:mod:`cbir.evaluation.validation`): its
    figures beside the test's, and the test figures of the global search with the re-ranking chosen. ``loaded``:
    what an earlier space's evaluation of the same cell read (the test features, the manifest), kept for the next."""
    loaded = {} if loaded is None else loaded
    if "test" not in loaded:
        loaded["test"] = load_features(features, split_ids(split, "test"))
    test = loaded["test"]
    selection = Selection.load(selection_path) if selection_path is not None else None
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
        "mlp_early_stopping": models.mlp.early_stopping,
        "faiss_ivf_nlist": models.faiss["ivf"].nlist if "ivf" in models.faiss else None,
    }
    result["labelled"] = cell.labelled
    if not cell.labelled:
        if len(test.ids):
            rows = stratified_sample(np.zeros(len(test.ids)), int(retrieval.get("eval_queries", 0)), seed)
            raw_queries, own_rows = test.features[rows], np.full(len(rows), -1)
        else:  # split all: queries drawn from the gallery
            raw_queries, own_rows = gallery_queries(features, cell.gallery_ids, retrieval["eval_queries"], seed)
        timing_queries = int(retrieval.get("timing_queries", TIMING_QUERIES))
        result.update(
            evaluate_without_labels(models, raw_queries, own_rows, top_k=top_k, timing_queries=timing_queries)
        )
    else:
        if "manifest" not in loaded:  # the label sets: a collection without labels needs none
            loaded["manifest"] = read_manifest(manifest)
        table = loaded["manifest"]
        n_classes = int(table["label"].max()) + 1
        query_sets = manifest_label_sets(table, test.ids, n_classes)
        gallery_sets = manifest_label_sets(table, cell.gallery_ids, n_classes)
        chosen = selection.choice(cell.space).rerank if selection is not None else NO_RERANK
        result.update(
            evaluate_cell(
                models,
                test.features,
                test.labels,
                query_sets,
                gallery_sets,
                top_k=top_k,
                max_queries=int(retrieval.get("eval_queries", 0)),
                seed=seed,
                rerank=rerank,
                chosen=chosen,
                device=loaded.setdefault("device", evaluation_device(str(retrieval.get("eval_device", "auto")))),
                timing_queries=int(retrieval.get("timing_queries", TIMING_QUERIES)),
                feedback=feedback if feedback_measured(feedback, cell.space, selection) else None,
            )
        )
    if cell.space != "raw":
        _, fitted = load_arrays(cell.folder / embedding_name(cell.space))
        result["time_fit_space_s"] = float(fitted.get("fit_seconds", float("nan")))
    if selection is not None:
        result.update(chosen_figures(selection, cell.space))
    if feedback is not None:  # what cbir query and cbir serve refine with (cbir.search.refine.cell_feedback_settings)
        result["feedback_settings"] = json.dumps(FeedbackSettings.from_mapping(feedback).as_dict(), sort_keys=True)
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
