"""Re-ranking of the global search, in any embedding space, and its settings.

- α-query expansion (``qe``): each query averaged with its first ``k`` results, then searched again;
- database-side augmentation (``dba``): each gallery vector averaged with its ``k`` nearest other
  gallery vectors, once, before any search;
- both (``dba_qe``): the expansion searched in the augmented gallery.

The neighbours are weighted by their cosine similarity to the vector, to the power α. Which method,
``k`` and α a cell uses is chosen by validation inside its training split (:mod:`cbir.fitting.selection`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from cbir.distances import l2_normalise, squared_distances

METHODS = ("none", "qe", "dba", "dba_qe")
NEIGHBOUR_BLOCK = 1024  # query rows per distance block


@dataclass(frozen=True)
class Rerank:
    """How the global search is re-ranked: a method of :data:`METHODS`, with ``k`` neighbours weighted by α."""

    method: str = "none"
    k: int = 0
    alpha: float = 3.0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"re-ranking method '{self.method}' is not one of {', '.join(METHODS)}")

    @property
    def expands_queries(self) -> bool:
        return self.method in ("qe", "dba_qe") and self.k > 0

    @property
    def augments_database(self) -> bool:
        return self.method in ("dba", "dba_qe") and self.k > 0

    @property
    def active(self) -> bool:
        return self.expands_queries or self.augments_database

    def describe(self) -> str:
        """``none``, ``DBA + QE (k 5, α 3)``: as the summary and ``cbir query`` name it."""
        if not self.active:
            return "none"
        name = {"qe": "QE", "dba": "DBA", "dba_qe": "DBA + QE"}[self.method]
        return f"{name} (k {self.k}, α {self.alpha:g})"

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "k": self.k, "alpha": self.alpha}

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> Rerank:
        values = values or {}
        return cls(str(values.get("method", "none")), int(values.get("k", 0)), float(values.get("alpha", 3.0)))


NO_RERANK = Rerank()


def rerank_candidates(ks: list[int], alphas: list[float]) -> list[Rerank]:
    """None, then every method with every ``k`` and α (validation picks one, :mod:`cbir.fitting.selection`)."""
    return [NO_RERANK] + [
        Rerank(method, int(k), float(alpha)) for method in METHODS[1:] for k in ks for alpha in alphas if int(k) > 0
    ]


def rerank_vectors(
    queries: np.ndarray, gallery: np.ndarray, rerank: Rerank, normalised: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The queries and the gallery as the re-ranked global search compares them (both in the space already)."""
    queries = np.asarray(queries, dtype=np.float64)
    gallery = np.asarray(gallery, dtype=np.float64)
    if rerank.augments_database:
        gallery = augment_database(gallery, rerank.k, rerank.alpha, normalised).astype(np.float64)
    if rerank.expands_queries:
        n = min(rerank.k, len(gallery))
        top = nearest_rows(queries, gallery, n)
        queries = expand_queries(queries, gallery, top, n, rerank.alpha, normalised).astype(np.float64)
    return queries, gallery


def nearest_rows(queries: np.ndarray, gallery: np.ndarray, n: int, exclude_self: bool = False) -> np.ndarray:
    """The ``n`` nearest gallery rows of each query, nearest first (ties: the lower row), a block at a time.

    ``exclude_self``: the queries are the gallery, and a row is not its own neighbour.
    """
    queries = np.asarray(queries, dtype=np.float64)
    gallery = np.asarray(gallery, dtype=np.float64)
    sq_norms = np.einsum("ij,ij->i", gallery, gallery)
    out = np.empty((len(queries), n), dtype=np.int64)
    for start in range(0, len(queries), NEIGHBOUR_BLOCK):
        block = squared_distances(queries[start : start + NEIGHBOUR_BLOCK], gallery, sq_norms)
        if exclude_self:
            block[np.arange(len(block)), np.arange(start, start + len(block))] = np.inf
        nearest = np.argpartition(block, n - 1, axis=1)[:, :n] if n < block.shape[1] else np.argsort(block, axis=1)
        order = np.lexsort((nearest, np.take_along_axis(block, nearest, axis=1)), axis=1)
        out[start : start + len(block)] = np.take_along_axis(nearest, order, axis=1)[:, :n]
    return out


def _neighbour_weights(vectors: np.ndarray, neighbours: np.ndarray, gallery: np.ndarray, alpha: float) -> np.ndarray:
    """cos(vector, neighbour)^alpha, negative similarities weighted 0."""
    unit = l2_normalise(vectors)[:, None, :]
    similarity = np.einsum("ijd,ikd->ik", unit, l2_normalise(gallery)[neighbours])
    return np.maximum(similarity, 0.0) ** alpha


def _weighted_average(vectors: np.ndarray, neighbours: np.ndarray, weights: np.ndarray, gallery: np.ndarray,
                      normalised: bool) -> np.ndarray:  # fmt: skip
    total = vectors + np.einsum("ik,ikd->id", weights, gallery[neighbours])
    if normalised:
        return l2_normalise(total).astype(np.float32)
    return (total / (1.0 + weights.sum(axis=1, keepdims=True))).astype(np.float32)


def expand_queries(queries: np.ndarray, gallery: np.ndarray, top: np.ndarray, n: int, alpha: float,
                   normalised: bool) -> np.ndarray:  # fmt: skip
    """α-query expansion: each query averaged with its first ``n`` results (``top``: ranked gallery rows)."""
    neighbours = np.asarray(top)[:, :n]
    weights = _neighbour_weights(queries, neighbours, gallery, alpha)
    return _weighted_average(np.asarray(queries, dtype=np.float64), neighbours, weights, gallery, normalised)


def augment_database(gallery: np.ndarray, k: int, alpha: float, normalised: bool) -> np.ndarray:
    """Database-side augmentation: each gallery vector averaged with its ``k`` nearest other gallery vectors."""
    gallery = np.asarray(gallery, dtype=np.float64)
    neighbours = nearest_rows(gallery, gallery, min(k, len(gallery) - 1), exclude_self=True)
    weights = _neighbour_weights(gallery, neighbours, gallery, alpha)
    return _weighted_average(gallery, neighbours, weights, gallery, normalised)
