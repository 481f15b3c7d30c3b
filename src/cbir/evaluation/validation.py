"""Settings chosen by validation inside a cell's training split: the test split is never looked at.

The training images are split once more, seeded and stratified (``validation.fraction`` of each
class, 20 % by default): a validation part and the rest. Every candidate is fitted on the rest only
and judged by the validation images' exact global ranking of the rest (mAP over the whole ranking;
P@10 beside it):

1. each space with each of its settings (``validation.candidates``: the LDA's shrinkage, the
   whitening's power, ...; the MLP space's MLP is trained on the rest with the config's settings);
2. for each space's best settings, each re-ranking (none, query expansion, database-side
   augmentation, both; ``validation.rerank``'s k and α);
3. the space whose best setting scores highest (ties: the earlier space, ``raw`` first).

On a large training split the cost is bounded: at most ``validation.max_queries`` validation images query, and
at most ``validation.max_gallery`` of the rest (a stratified sample) are fitted on and ranked; the re-rankings
share one neighbour search of each gallery (:class:`cbir.fitting.rerank.RerankVariants`).

The PCA the cell's features are in was fitted on the whole training split without labels; the choice
is then refitted on the whole training split (rule fit_spaces), and the test split is used once, to
report (rule evaluate). Relevance is "same class" (a multi-label image counts by its main label here).
"""

from __future__ import annotations

import functools
import itertools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from cbir.data.split import make_split
from cbir.distances import l2_normalise
from cbir.evaluation.ranking import exact_rank_figures, stratified_sample
from cbir.extraction.copies import AUGMENTATION
from cbir.fitting.chosen import (
    COPY_METRIC,
    VALIDATION_FIGURES,
    VALIDATION_METRIC,
    Selection,
    SpaceChoice,
    unvalidated,
)
from cbir.fitting.mlp import MlpModel, train_mlp
from cbir.fitting.rerank import NO_RERANK, RerankVariants, nearest_rows, rerank_candidates
from cbir.fitting.spaces import SPACES, fit_embedding
from cbir.layout import RAW

log = logging.getLogger(__name__)

# the validation part is drawn apart from the train/test split's own draw (same seed, another stream)
VALIDATION_SEED_OFFSET = 7919
MIN_VALIDATION_IMAGES = 4
MAX_QUERIES = 500  # validation images that query, at most (validation.max_queries)
# cbir's own spaces that do not use the MLP: validating them trains none
WITHOUT_MLP = frozenset({"raw", "l2", "whiten", "lda"})
COPY_NEIGHBOURS = 10  # the neighbourhood a changed copy and its photo are compared by


def validation_rows(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The rows fitted on and the validation rows (stratified, seeded), or None when there is too little to
    validate on: fewer than two classes with a validation image, or fewer than four validation images."""
    labels = np.asarray(labels)
    if fraction <= 0 or len(np.unique(labels)) < 2:
        return None
    is_fit = make_split(labels, 1.0 - fraction, seed + VALIDATION_SEED_OFFSET)
    held = np.flatnonzero(~is_fit)
    if len(held) < MIN_VALIDATION_IMAGES or len(np.unique(labels[held])) < 2:
        return None
    return np.flatnonzero(is_fit), held


def query_sample(rows: np.ndarray, max_queries: int, seed: int) -> np.ndarray:
    """``rows``, or a seeded sample of ``max_queries`` of them (ascending) when there are more."""
    if max_queries <= 0 or len(rows) <= max_queries:
        return rows
    return np.sort(np.random.default_rng([seed, VALIDATION_SEED_OFFSET]).choice(rows, max_queries, replace=False))


def gallery_sample(n: int, required: np.ndarray, max_gallery: int, seed: int) -> np.ndarray:
    """Rows (ascending) of ``n``: all of them, or when there are more than ``max_gallery`` (> 0), the ``required``
    rows and a seeded sample of the others, ``max_gallery`` in all (or the required ones, when more)."""
    if max_gallery <= 0 or n <= max_gallery:
        return np.arange(n)
    others = np.setdiff1d(np.arange(n), required)
    extra = max(0, max_gallery - len(np.unique(required)))
    picked = np.random.default_rng([seed, VALIDATION_SEED_OFFSET, n]).choice(others, extra, replace=False)
    return np.union1d(required, picked)


def setting_grid(space: str, options: Mapping[str, Any], candidates: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The space's configured settings, each candidate value of ``candidates[space]`` put in turn (the
    configured setting first, so that a tie keeps it)."""
    base = dict(options.get(space) or {})
    grid = dict(candidates.get(space) or {})
    if not grid:
        return [base]
    keys = list(grid)
    settings = [{**base, **dict(zip(keys, values, strict=True))} for values in itertools.product(*grid.values())]
    settings.sort(key=lambda s: s != base)
    unique: list[dict[str, Any]] = []
    for setting in settings:
        if setting not in unique:
            unique.append(setting)
    return unique


def ranking_quality(queries: np.ndarray, gallery: np.ndarray, relevant: np.ndarray, metric: str) -> dict[str, float]:
    """The validation figures (:data:`VALIDATION_FIGURES`) of ``queries`` ranking ``gallery`` (both in the space):
    mAP of the whole ranking and P@10, from the ranks of the relevant images."""
    if metric == "cosine":
        queries, gallery = l2_normalise(queries), l2_normalise(gallery)
    figures = exact_rank_figures(np.asarray(queries, np.float64), np.asarray(gallery, np.float64), relevant)
    named = {"map_global": figures["ap"], **{f"{name}_global": values for name, values in figures.items()}}
    return {name: float(named[name].mean()) if len(queries) else float("nan") for name in VALIDATION_FIGURES}


def validate_cell(
    features: np.ndarray,
    labels: np.ndarray,
    spaces: Sequence[str],
    options: Mapping[str, Any],
    validation: Mapping[str, Any],
    mlp_settings: Mapping[str, Any],
    seed: int,
    metric: str = "euclidean",
    labelled: bool = True,
    copies: tuple[np.ndarray, Sequence[str], Sequence[str]] | None = None,
) -> Selection:
    """Choose each space's settings and re-ranking, and the space, on a validation part of the training
    images ``features`` (a cell's gallery: its PCA-reduced training features) and ``labels``.

    A collection without labels (``labelled`` false) is judged by ``copies`` instead: (the reduced features of
    changed copies of some of its photos, their originals' ids, the gallery's ids); each label-free space is
    fitted on the whole gallery and scored by how far a copy's nearest other photos are its original's
    (:func:`neighbour_agreement`)."""
    spaces = list(dict.fromkeys([RAW, *spaces]))
    if not labelled:
        return _validate_collection(features, spaces, options, validation, seed, metric, copies)
    rows = validation_rows(labels, float(validation.get("fraction", 0.2)), seed)
    if rows is None:
        return unvalidated(spaces, options, "too few training images to hold a validation part out")
    fit_rows, held_rows = rows
    # a large validation part is sampled (seeded): each candidate ranks the rest once per query; and a large rest
    # too (stratified): re-ranking searches it for each image's neighbours
    n_rest = len(fit_rows)
    fit_rows = fit_rows[stratified_sample(np.asarray(labels)[fit_rows], int(validation.get("max_gallery", 0)), seed)]
    queried = query_sample(held_rows, int(validation.get("max_queries", MAX_QUERIES)), seed)
    fit_x, fit_y = np.asarray(features)[fit_rows], np.asarray(labels)[fit_rows]
    val_x, val_y = np.asarray(features)[queried], np.asarray(labels)[queried]
    record = {
        "criterion": "held-out training images",
        "fraction": float(validation.get("fraction", 0.2)),
        "seed": seed + VALIDATION_SEED_OFFSET,
        "n_fit": len(fit_rows),
        "n_rest": n_rest,
        "n_validation": len(queried),
        "n_held_out": len(held_rows),
    }
    mlp = _lazy_mlp(fit_x, fit_y, mlp_settings, seed)
    score = functools.partial(ranking_quality, relevant=val_y[:, None] == fit_y[None, :], metric=metric)
    return _choose(fit_x, fit_y, val_x, score, VALIDATION_METRIC, spaces, options, validation, mlp, record)


def _validate_collection(
    features: np.ndarray,
    spaces: list[str],
    options: Mapping[str, Any],
    validation: Mapping[str, Any],
    seed: int,
    metric: str,
    copies: tuple[np.ndarray, Sequence[str], Sequence[str]] | None,
) -> Selection:
    free = [space for space in spaces if not SPACES[space].uses_labels]
    if copies is None:
        return unvalidated(free, options, "a collection without labels, and no changed copies to judge it by")
    copy_features, originals, gallery_ids = copies
    position = {str(image_id): row for row, image_id in enumerate(gallery_ids)}
    kept = [i for i, original in enumerate(originals) if str(original) in position]
    if len(kept) < MIN_VALIDATION_IMAGES:
        return unvalidated(free, options, "a collection without labels, and too few changed copies of its photos")
    photo_rows = np.array([position[str(originals[i])] for i in kept])
    # a large collection: the copies' photos and a seeded sample of the others (re-ranking searches them all)
    sampled = gallery_sample(len(gallery_ids), photo_rows, int(validation.get("max_gallery", 0)), seed)
    gallery = np.asarray(features)[sampled]
    photo_rows = np.searchsorted(sampled, photo_rows)
    record = {
        "criterion": "changed copies",
        "augmentation": AUGMENTATION,
        "n_fit": len(gallery),
        "n_rest": len(gallery_ids),
        "n_validation": len(kept),
    }

    def no_mlp() -> MlpModel:
        raise ValueError("a collection without labels has no MLP")

    # the copies, then their photos, are the queries: a copy's neighbours are compared with its photo's
    queries = np.vstack([np.asarray(copy_features)[kept], gallery[photo_rows]])
    score = functools.partial(neighbour_agreement, photo_rows=photo_rows, metric=metric)
    labels = np.zeros(len(gallery), dtype=np.int64)
    return _choose(gallery, labels, queries, score, COPY_METRIC, free, options, validation, no_mlp, record)


def neighbour_agreement(
    queries: np.ndarray, gallery: np.ndarray, photo_rows: np.ndarray, metric: str, k: int = COPY_NEIGHBOURS
) -> dict[str, float]:
    """How far the ``k`` nearest other photos of each changed copy (the first half of ``queries``) are those of
    its photo (the second half), and how often the copy finds its photo first: a label-free judge of a space.

    Finding the photo from its copy alone rewards spaces that tell near-identical photos apart (whitening does),
    which is not what finds photos of the same kind; the agreement of the neighbourhoods is (measured against
    labels on Corel-1K and Fashion-MNIST: docs, "Settings chosen by validation")."""
    if metric == "cosine":
        queries, gallery = l2_normalise(queries), l2_normalise(gallery)
    n = len(photo_rows)
    k = min(k, len(gallery) - 1)
    top = nearest_rows(queries, gallery, k + 1)
    copies, photos = top[:n], top[n:]
    pairs = zip(copies, photos, photo_rows, strict=True)
    overlap = [len(_others(copy, row, k) & _others(photo, row, k)) / k for copy, photo, row in pairs]
    return {COPY_METRIC: float(np.mean(overlap)), "copy_finds_photo_first": float(np.mean(copies[:, 0] == photo_rows))}


def _others(neighbours: np.ndarray, photo: int, k: int) -> set[int]:
    """The first ``k`` neighbours other than the photo itself."""
    return {int(x) for x in [x for x in neighbours if x != photo][:k]}


def _choose(
    fit_x: np.ndarray,
    fit_y: np.ndarray,
    query_x: np.ndarray,
    score: Callable[[np.ndarray, np.ndarray], dict[str, float]],
    metric_name: str,
    spaces: list[str],
    options: Mapping[str, Any],
    validation: Mapping[str, Any],
    mlp: Callable[[], MlpModel],
    record: dict[str, Any],
) -> Selection:
    """Every candidate fitted on ``fit_x`` (``fit_y``) and scored by ``score`` (of ``query_x`` and the gallery,
    both in the candidate's space, re-ranked); the best by the figure ``metric_name``."""
    reranks = rerank_candidates(list(validation.get("rerank", {}).get("k", [])),
                                list(validation.get("rerank", {}).get("alpha", [3.0])))  # fmt: skip
    candidates: list[dict[str, Any]] = []
    choices: dict[str, SpaceChoice] = {}
    started = time.perf_counter()
    for space in spaces:
        scored = []
        for settings in setting_grid(space, options, validation.get("candidates", {})):
            embedding = fit_embedding(space, fit_x, fit_y, None if space in WITHOUT_MLP else mlp(), {space: settings})
            queries, gallery = embedding.transform(query_x), embedding.transform(fit_x)
            figures = score(queries, gallery)
            candidates.append({"space": space, "settings": settings, "rerank": NO_RERANK.as_dict(), **figures})
            scored.append((figures, settings, queries, gallery, embedding.normalised))
        figures, settings, queries, gallery, normalised = _best(scored, metric_name)
        choice = SpaceChoice(settings, NO_RERANK, figures)
        # every re-ranking shares the neighbour searches: the gallery's own once, the queries' once per gallery
        variants = RerankVariants(queries, gallery, normalised, depth=max((r.k for r in reranks), default=0))
        for rerank in reranks[1:]:
            reranked = score(*variants.vectors(rerank))
            candidates.append({"space": space, "settings": settings, "rerank": rerank.as_dict(), **reranked})
            if reranked[metric_name] > choice.figures[metric_name]:
                choice = SpaceChoice(settings, rerank, reranked)
        choices[space] = choice
    chosen = max(spaces, key=lambda s: (choices[s].figures[metric_name], -spaces.index(s)))
    log.info("validation: %d candidates in %.1f s; chosen %s", len(candidates), time.perf_counter() - started, chosen)
    record = {**record, "metric": metric_name, "seconds": time.perf_counter() - started}
    return Selection(chosen, choices, record, candidates)


def _best(scored: list[tuple[dict[str, float], Any, Any, Any, bool]], metric_name: str) -> tuple[Any, ...]:
    """The highest validation figure; a tie keeps the earlier (the configured setting first)."""
    return max(enumerate(scored), key=lambda item: (item[1][0][metric_name], -item[0]))[1]


def _lazy_mlp(
    features: np.ndarray, labels: np.ndarray, settings: Mapping[str, Any], seed: int
) -> Callable[[], MlpModel]:
    """The MLP trained on the rows fitted on, when a space first needs it (only ``mlp`` does, of cbir's own)."""
    trained: list[MlpModel] = []

    def get() -> MlpModel:
        if not trained:
            trained.append(train_mlp(features, labels, **{**dict(settings), "seed": seed}))
        return trained[0]

    return get
