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

from cbir.distances import l2_normalise, nearest_columns

METHODS = ("none", "qe", "dba", "dba_qe")
# exact neighbour searches up to this many query-gallery pairs (a 10,000-image gallery's own neighbours)
EXACT_NEIGHBOUR_PAIRS = 10_000**2
# an inverted file pays for its training (~40·N·√N·d: 4·√N lists, 10 k-means passes) only from about this many
# queries per √N; fewer (the evaluation's 2,000 queries expanded in a 56,000-image gallery) are searched exactly
INVERTED_FILE_QUERIES_PER_ROOT = 40
NEIGHBOUR_PROBES = 32  # inverted lists searched per query by an approximate neighbour search
# vectors of more than twice this many dimensions are searched in their leading principal components for
# CANDIDATES_PER_NEIGHBOUR times as many candidates, which are then ranked in all their dimensions
CANDIDATE_DIMENSIONS = 256
CANDIDATES_PER_NEIGHBOUR = 3
COMPONENTS_SAMPLE = 5000  # gallery rows the principal components are computed from (seeded)
RANKED_ROWS = 512  # queries whose candidates are ranked at once (512 x 60 x 1,280 float32: 157 MB)


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
    return RerankVariants(queries, gallery, normalised).vectors(rerank)


class RerankVariants:
    """The re-ranked variants of one global search (queries and gallery in the space already), sharing their
    neighbour searches: the gallery's own neighbours are found once for database-side augmentation with every k
    and α, and the queries' once per gallery searched (plain, or augmented with one k and α) for expansion with
    every k; each search goes as deep as the deepest variant asked for (``depth``, or the k asked)."""

    def __init__(self, queries: np.ndarray, gallery: np.ndarray, normalised: bool, depth: int = 0,
                 query_neighbours: np.ndarray | None = None) -> None:  # fmt: skip
        """``query_neighbours``: the queries' nearest rows of the plain gallery, nearest first, when a search
        already found them (ties: the lower row)."""
        self.queries = np.asarray(queries, dtype=np.float64)
        self.gallery = np.asarray(gallery, dtype=np.float64)
        self.normalised = normalised
        self.depth = depth
        self._gallery_neighbours: np.ndarray | None = None
        # what every augmentation shares: the cosines to the gallery's neighbours, and per α the running sum of the
        # weighted neighbours (k neighbours summed, the sum), which a larger k goes on from
        self._gallery_similarity: np.ndarray | None = None
        self._running: dict[float, tuple[int, np.ndarray]] = {}
        self._augmented: dict[tuple[int, float], np.ndarray] = {}
        self._query_neighbours: dict[tuple[int, float] | None, np.ndarray] = {}
        if query_neighbours is not None:
            self._query_neighbours[None] = np.asarray(query_neighbours)

    def vectors(self, rerank: Rerank) -> tuple[np.ndarray, np.ndarray]:
        """The queries and the gallery as ``rerank``'s search compares them."""
        augmented_with = (rerank.k, rerank.alpha) if rerank.augments_database else None
        gallery = self.augmented(rerank.k, rerank.alpha) if augmented_with else self.gallery
        if not rerank.expands_queries:
            return self.queries, gallery
        return self.expanded(rerank.k, rerank.alpha, augmented_with), gallery

    def expanded(self, n: int, alpha: float, augmented_with: tuple[int, float] | None = None) -> np.ndarray:
        """The queries expanded with their first ``n`` results weighted by α, in the plain gallery or in the one
        augmented with (k, α) ``augmented_with``."""
        gallery = self.augmented(*augmented_with) if augmented_with else self.gallery
        n = min(n, len(gallery))
        top = self._query_neighbours.get(augmented_with)
        if top is None or top.shape[1] < n:
            deepest = min(max(n, self.depth), len(gallery))
            top = self._query_neighbours[augmented_with] = nearest_rows(self.queries, gallery, deepest)
        return expand_queries(self.queries, gallery, top, n, alpha, self.normalised).astype(np.float64)

    def augmented(self, k: int, alpha: float) -> np.ndarray:
        """The gallery with database-side augmentation of ``k`` neighbours weighted by α."""
        if (k, alpha) not in self._augmented:
            n = min(k, len(self.gallery) - 1)
            if self._gallery_neighbours is None or self._gallery_neighbours.shape[1] < n:
                deepest = min(max(n, self.depth), len(self.gallery) - 1)
                self._gallery_neighbours = nearest_rows(self.gallery, self.gallery, deepest, exclude_self=True)
                self._gallery_similarity, self._running = None, {}
            self._augmented[(k, alpha)] = self._augment(n, float(alpha)).astype(np.float64)
        return self._augmented[(k, alpha)]

    def _augment(self, n: int, alpha: float) -> np.ndarray:
        """:func:`augment_database` with ``n`` neighbours, bit for bit, from what the other augmentations computed:
        the neighbours' cosines once, and the sum over the first neighbours from the largest k summed with α."""
        if self._gallery_similarity is None:
            self._gallery_similarity = neighbour_similarity(self.gallery, self._gallery_neighbours, self.gallery)
        weights = np.maximum(self._gallery_similarity[:, :n], 0.0) ** alpha
        summed, total = self._running.get(alpha, (0, None))
        if total is None or summed > n:
            summed, total = 0, np.array(self.gallery, dtype=np.float64)
        for rank in range(summed, n):
            total += weights[:, rank, None] * self.gallery[self._gallery_neighbours[:, rank]]
        self._running[alpha] = (n, total)
        return _averaged(total, weights, self.normalised)


def nearest_rows(queries: np.ndarray, gallery: np.ndarray, n: int, exclude_self: bool = False) -> np.ndarray:
    """The ``n`` nearest gallery rows of each query, nearest first (ties: the lower row), a block at a time.

    ``exclude_self``: the queries are the gallery, and a row is not its own neighbour. Beyond
    :data:`EXACT_NEIGHBOUR_PAIRS` query-gallery pairs and with enough queries to pay for its training (a large
    gallery's own neighbours, which database-side augmentation needs), an inverted file finds them
    (:func:`inverted_file_nearest_rows`): the exact search's cost grows with the square of the gallery.
    """
    many_queries = len(queries) > INVERTED_FILE_QUERIES_PER_ROOT * np.sqrt(len(gallery))
    if len(queries) * len(gallery) > EXACT_NEIGHBOUR_PAIRS and many_queries and n < len(gallery) // 4:
        return inverted_file_nearest_rows(queries, gallery, n, exclude_self)
    own = np.arange(len(queries)) if exclude_self else None
    return nearest_rows_exact(queries, gallery, n, own)


def nearest_rows_exact(queries: np.ndarray, gallery: np.ndarray, n: int, own: np.ndarray | None = None) -> np.ndarray:
    """The exact :func:`nearest_rows` (:func:`cbir.distances.nearest_columns`: float64 distances, screened in
    float32); ``own``: each query's own gallery row, which is not its neighbour."""
    if own is None:
        return nearest_columns(queries, gallery, n).astype(np.int64)
    found = nearest_columns(queries, gallery, n + 1)
    is_own = found == np.asarray(own)[:, None]
    is_own[~is_own.any(axis=1), -1] = True  # a row whose own entry is not among them: the farthest goes
    return found[~is_own].reshape(len(found), n).astype(np.int64)


def inverted_file_nearest_rows(
    queries: np.ndarray, gallery: np.ndarray, n: int, exclude_self: bool = False, seed: int = 0
) -> np.ndarray:
    """:func:`nearest_rows` by a faiss inverted file: 4·√N lists (k-means, seeded, trained on a sample), of which
    :data:`NEIGHBOUR_PROBES` are searched per query, so a gallery's own neighbours cost N·√N instead of N².
    Vectors of more than 2 × :data:`CANDIDATE_DIMENSIONS` dimensions are searched in their leading principal
    components for :data:`CANDIDATES_PER_NEIGHBOUR` × ``n`` candidates, ranked in all dimensions after:
    a 56,000-image Fashion-MNIST gallery's 20 own neighbours at 1,280-D took 10 s instead of 33 s on one core, with
    recall@20 against exact of 0.989 and 0.985 (``raw``, ``whiten``) instead of 0.990 and 0.987 (docs, "Evaluation
    at a bounded cost and at scale"). Approximate: a true neighbour in a list not probed is missed; a query short
    of ``n`` candidates (rare) is searched exactly."""
    import faiss  # only for large galleries

    whole = np.ascontiguousarray(gallery, dtype=np.float32)
    whole_queries = whole if queries is gallery else np.ascontiguousarray(queries, dtype=np.float32)
    vectors, searched_queries, depth = whole, whole_queries, n
    if whole.shape[1] > 2 * CANDIDATE_DIMENSIONS:
        mean, basis = leading_components(whole, CANDIDATE_DIMENSIONS, seed)
        vectors = _projected(whole, mean, basis)
        searched_queries = vectors if whole_queries is whole else _projected(whole_queries, mean, basis)
        depth = min(CANDIDATES_PER_NEIGHBOUR * n, len(gallery) - 1 - int(exclude_self))
    n_gallery, dim = vectors.shape
    lists = max(1, min(round(4 * np.sqrt(n_gallery)), n_gallery // 39))
    index = faiss.IndexIVFFlat(faiss.IndexFlatL2(dim), dim, lists)
    index.cp.seed = seed
    sample = np.random.default_rng(seed).choice(n_gallery, min(n_gallery, 64 * lists), replace=False)
    index.train(vectors[np.sort(sample)])
    index.add(vectors)
    index.nprobe = min(NEIGHBOUR_PROBES, lists)
    _, found = index.search(searched_queries, depth + int(exclude_self))
    if exclude_self:  # each row's own entry out (or, where it was not found, the farthest)
        own = found == np.arange(len(found))[:, None]
        own[~own.any(axis=1), -1] = True
        found = found[~own].reshape(len(found), depth)
    if depth > n:
        found = rank_candidates(whole_queries, whole, found, n)
    short = np.flatnonzero((found < 0).any(axis=1))
    if short.size:
        exact = nearest_rows_exact(np.asarray(queries)[short], gallery, n, short if exclude_self else None)
        found[short] = exact
    return found.astype(np.int64)


def leading_components(vectors: np.ndarray, dimensions: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The mean and the ``dimensions`` leading principal axes (rows) of a seeded sample of ``vectors``."""
    rows = np.random.default_rng(seed).choice(len(vectors), min(len(vectors), COMPONENTS_SAMPLE), replace=False)
    sample = np.asarray(vectors[np.sort(rows)], dtype=np.float32)
    mean = sample.mean(axis=0)
    _, _, axes = np.linalg.svd(sample - mean, full_matrices=False)
    return mean, np.ascontiguousarray(axes[:dimensions])


def _projected(vectors: np.ndarray, mean: np.ndarray, basis: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((vectors - mean) @ basis.T, dtype=np.float32)


def rank_candidates(queries: np.ndarray, gallery: np.ndarray, candidates: np.ndarray, n: int) -> np.ndarray:
    """The ``n`` nearest of each query's ``candidates`` (gallery rows; -1: none) in float32, nearest first (ties:
    the lower row); -1 where a query has fewer than ``n`` candidates."""
    gallery = np.asarray(gallery, dtype=np.float32)
    sq_norms = np.einsum("ij,ij->i", gallery, gallery)
    out = np.empty((len(candidates), n), dtype=np.int64)
    for start in range(0, len(candidates), RANKED_ROWS):
        block = candidates[start : start + RANKED_ROWS]
        rows = np.maximum(block, 0)
        query_block = np.asarray(queries[start : start + RANKED_ROWS], dtype=np.float32)
        dot = np.einsum("qcd,qd->qc", gallery[rows], query_block)
        distances = np.where(block >= 0, sq_norms[rows] - 2.0 * dot, np.inf)
        order = np.lexsort((block, distances), axis=1)[:, :n]
        nearest = np.take_along_axis(block, order, axis=1)
        found = np.isfinite(np.take_along_axis(distances, order, axis=1))
        out[start : start + len(block)] = np.where(found, nearest, -1)
    return out


def neighbour_similarity(vectors: np.ndarray, neighbours: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """cos(vector, neighbour) of each vector's ``neighbours`` (gallery rows). One neighbour rank at a time: the
    (vectors, k, dimensions) array of all neighbours at once held 11 GB for a 56,000-image gallery at 1,280-D."""
    unit, gallery_unit = l2_normalise(vectors), l2_normalise(gallery)
    similarity = np.empty(neighbours.shape)
    for rank in range(neighbours.shape[1]):
        similarity[:, rank] = np.einsum("id,id->i", unit, gallery_unit[neighbours[:, rank]])
    return similarity


def _neighbour_weights(vectors: np.ndarray, neighbours: np.ndarray, gallery: np.ndarray, alpha: float) -> np.ndarray:
    """cos(vector, neighbour)^alpha, negative similarities weighted 0."""
    return np.maximum(neighbour_similarity(vectors, neighbours, gallery), 0.0) ** alpha


def _weighted_average(vectors: np.ndarray, neighbours: np.ndarray, weights: np.ndarray, gallery: np.ndarray,
                      normalised: bool) -> np.ndarray:  # fmt: skip
    total = np.array(vectors, dtype=np.float64)
    for rank in range(neighbours.shape[1]):  # one neighbour rank at a time (see neighbour_similarity)
        total += weights[:, rank, None] * gallery[neighbours[:, rank]]
    return _averaged(total, weights, normalised)


def _averaged(total: np.ndarray, weights: np.ndarray, normalised: bool) -> np.ndarray:
    """A vector plus its weighted neighbours (``total``), as the average: normalised, or divided by the weights."""
    if normalised:
        return l2_normalise(total).astype(np.float32)
    return (total / (1.0 + weights.sum(axis=1, keepdims=True))).astype(np.float32)


def expand_queries(queries: np.ndarray, gallery: np.ndarray, top: np.ndarray, n: int, alpha: float,
                   normalised: bool) -> np.ndarray:  # fmt: skip
    """α-query expansion: each query averaged with its first ``n`` results (``top``: ranked gallery rows)."""
    neighbours = np.asarray(top)[:, :n]
    weights = _neighbour_weights(queries, neighbours, gallery, alpha)
    return _weighted_average(np.asarray(queries, dtype=np.float64), neighbours, weights, gallery, normalised)


def augment_database(
    gallery: np.ndarray, k: int, alpha: float, normalised: bool, neighbours: np.ndarray | None = None
) -> np.ndarray:
    """Database-side augmentation: each gallery vector averaged with its ``k`` nearest other gallery vectors
    (``neighbours``: each row's nearest other rows, nearest first, at least ``k``, when already found)."""
    gallery = np.asarray(gallery, dtype=np.float64)
    k = min(k, len(gallery) - 1)
    if neighbours is None:
        neighbours = nearest_rows(gallery, gallery, k, exclude_self=True)
    neighbours = np.asarray(neighbours)[:, :k]
    weights = _neighbour_weights(gallery, neighbours, gallery, alpha)
    return _weighted_average(gallery, neighbours, weights, gallery, normalised)
