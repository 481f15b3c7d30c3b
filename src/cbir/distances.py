"""Distances between feature rows: L2 normalisation and squared Euclidean distances, blocked."""

from __future__ import annotations

import numpy as np


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms)


def squared_distances(queries: np.ndarray, gallery: np.ndarray, gallery_sq_norms: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances as one matrix product, clipped at 0 against rounding."""
    # in place, in the order q.q - 2 q.g + g.g (scaling by -2 is exact): one (n, m) array in all
    distances = (queries * -2.0) @ gallery.T
    distances += np.einsum("ij,ij->i", queries, queries)[:, None]
    distances += gallery_sq_norms[None, :]
    return np.maximum(distances, 0.0, out=distances)


# A single query against a small group is sorted outright: cheaper than the partition's overhead.
_FULL_SORT_MAX_SIZE = 1536


def smallest_columns(distances: np.ndarray, top_k: int) -> np.ndarray:
    """Per row, the columns of the ``top_k`` smallest values, ordered by (value, column).

    A partial partition (linear time) finds the k-th value; ties at that value are resolved in
    favour of the lower column, so the result equals a full stable sort's first k columns.
    """
    n_rows, n_columns = distances.shape
    if top_k >= n_columns or distances.size <= _FULL_SORT_MAX_SIZE:
        return np.argsort(distances, axis=1, kind="stable")[:, :top_k]
    kth = np.partition(distances, top_k - 1, axis=1)[:, top_k - 1 : top_k]
    chosen = distances <= kth
    if (chosen.sum(axis=1) > top_k).any():  # ties at the k-th value: keep the lowest columns
        at_kth = distances == kth
        needed = top_k - (distances < kth).sum(axis=1, keepdims=True)
        chosen = (distances < kth) | (at_kth & (np.cumsum(at_kth, axis=1) <= needed))
    columns = np.nonzero(chosen)[1].reshape(n_rows, top_k)  # ascending column order per row
    order = np.argsort(np.take_along_axis(distances, columns, axis=1), axis=1, kind="stable")
    return np.take_along_axis(columns, order, axis=1)


# Above this many searched images the candidates are found in float32 and re-ranked in float64.
FLOAT32_SCREEN_MIN_MEMBERS = 512
SCREEN_EXTRA_CANDIDATES = 32
SCREEN_BLOCK_ELEMENTS = 1 << 24  # float32 distances, or gathered float64 candidates' values, per block of queries
FLOAT32_UNIT_ROUNDOFF = 2.0**-24


def screened_top_k(
    queries: np.ndarray,
    queries32: np.ndarray,
    gallery: np.ndarray,
    gallery32: np.ndarray,
    sq_norms: np.ndarray,
    members: np.ndarray,
    top_k: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The float64 top-k of :func:`squared_distances`, at float32 speed.

    Float32 distances pick ``top_k + 32`` candidates per query. Every image whose float32
    distance is within twice a rounding-error bound of the k-th one could belong to the float64
    top-k (the bound holds for any summation order); when all of those are among the candidates,
    re-ranking the candidates in float64 gives exactly the plain float64 answer, ties included.
    Rows where they are not (a crowd of near-equal distances) are searched in plain float64.
    """
    whole = len(members) == len(gallery)  # no copy when the whole gallery is searched
    block32 = gallery32 if whole else gallery32[members]
    norms = sq_norms if whole else sq_norms[members]
    screen = squared_distances(queries32, block32, norms.astype(np.float32))
    width = min(top_k + SCREEN_EXTRA_CANDIDATES, len(members) - 1)
    candidates = np.argpartition(screen, width - 1, axis=1)[:, :width]
    screened = np.take_along_axis(screen, candidates, axis=1)
    kth = np.partition(screened, top_k - 1, axis=1)[:, top_k - 1]
    # every image left out is at least as far as the farthest candidate
    farthest_candidate = screened.max(axis=1)
    query_norms = np.einsum("ij,ij->i", queries, queries)
    slack = (2 * queries.shape[1] + 16) * FLOAT32_UNIT_ROUNDOFF * (query_norms + norms.max())

    chosen = members[np.sort(candidates, axis=1)]  # ascending: ties resolve by gallery position
    exact = query_norms[:, None] - 2.0 * np.einsum("id,ikd->ik", queries, gallery[chosen]) + sq_norms[chosen]
    np.maximum(exact, 0.0, out=exact)
    order = smallest_columns(exact, top_k)
    indices, found = np.take_along_axis(chosen, order, axis=1), np.take_along_axis(exact, order, axis=1)

    crowded = np.flatnonzero(farthest_candidate <= kth + 2.0 * slack)
    if crowded.size:
        squared = squared_distances(queries[crowded], gallery[members], sq_norms[members])
        columns = smallest_columns(squared, top_k)
        indices[crowded], found[crowded] = members[columns], np.take_along_axis(squared, columns, axis=1)
    return indices, found


def screened_block_rows(n_members: int, top_k: int, dim: int) -> int:
    """Queries screened at once: their float32 distances and their candidates' gathered float64 vectors both
    within :data:`SCREEN_BLOCK_ELEMENTS` values (128 MB)."""
    width = top_k + SCREEN_EXTRA_CANDIDATES
    return max(1, min(SCREEN_BLOCK_ELEMENTS // max(1, n_members), SCREEN_BLOCK_ELEMENTS // max(1, width * dim)))


def nearest_columns(queries: np.ndarray, gallery: np.ndarray, top_k: int) -> np.ndarray:
    """Each query's ``top_k`` nearest gallery rows by :func:`squared_distances` in float64, ordered by (distance,
    row): exactly, screened in float32 (:func:`screened_top_k`) where the gallery is large enough to pay."""
    queries = np.asarray(queries, dtype=np.float64)
    gallery = np.asarray(gallery, dtype=np.float64)
    sq_norms = np.einsum("ij,ij->i", gallery, gallery)
    members = np.arange(len(gallery))
    if len(gallery) < FLOAT32_SCREEN_MIN_MEMBERS or top_k >= len(gallery) - 1:
        rows = max(1, SCREEN_BLOCK_ELEMENTS // max(1, len(gallery)))
        blocks = (squared_distances(queries[i : i + rows], gallery, sq_norms) for i in range(0, len(queries), rows))
        return np.concatenate([smallest_columns(block, top_k) for block in blocks] or [np.empty((0, top_k), int)])
    gallery32 = gallery.astype(np.float32)
    rows = screened_block_rows(len(gallery), top_k, gallery.shape[1])
    found = [
        screened_top_k(b, b.astype(np.float32), gallery, gallery32, sq_norms, members, top_k)[0]
        for b in (queries[i : i + rows] for i in range(0, len(queries), rows))
    ]
    return np.concatenate(found) if found else np.empty((0, top_k), dtype=np.int64)
