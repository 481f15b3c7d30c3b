"""Retrieval: the paper's clustered search and the two exact comparison searches.

- ``clustered``: nearest centroid of the predicted class, then the members of that cluster
  nearest to the query (the paper's method);
- ``class``: exact nearest neighbours among all training images of the predicted class;
- ``global``: exact nearest neighbours over the whole training set.

Results are ordered by distance, ties broken by gallery position, so the ranking is
deterministic. Rows shorter than ``top_k`` (a small cluster) are padded with -1 / inf.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from cbir.distances import (
    FLOAT32_SCREEN_MIN_MEMBERS,
    l2_normalise,
    screened_block_rows,
    screened_top_k,
    smallest_columns,
    squared_distances,
)
from cbir.fitting.kmeans import centroids_by_class, nearest_class_centroids

MODES = ("clustered", "class", "global")


class ModeTitle(NamedTuple):
    short: str  # on the page, the montages and the CLI
    report: str  # in the summary's tables and plots


# every search mode evaluated: the three above, then faiss over the whole gallery (exact, approximate)
MODE_TITLES = {
    "clustered": ModeTitle("with clustering", "clustered (paper)"),
    "class": ModeTitle("without clustering", "predicted class, exact"),
    "global": ModeTitle("all images", "all images, exact"),
    "faiss_flat": ModeTitle("faiss flat", "faiss flat"),
    "faiss_ivf": ModeTitle("faiss IVF", "faiss IVF"),
}
METRICS = ("euclidean", "cosine")


def _pad(indices: np.ndarray, found: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Pad rows shorter than ``top_k`` (a small cluster) with -1 / inf."""
    if indices.shape[1] < top_k:
        pad = ((0, 0), (0, top_k - indices.shape[1]))
        indices = np.pad(indices, pad, constant_values=-1)
        found = np.pad(found, pad, constant_values=np.inf)
    return indices, found


def _top_k(distances: np.ndarray, members: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``top_k`` smallest distances; ``members`` (ascending) names the columns."""
    order = smallest_columns(distances, top_k)
    return _pad(members[order], np.take_along_axis(distances, order, axis=1), top_k)


@dataclass
class RetrievalIndex:
    """A gallery (the training set) with per-class and per-cluster members precomputed."""

    gallery: np.ndarray
    labels: np.ndarray
    centroids: np.ndarray
    centroid_labels: np.ndarray
    assignments: np.ndarray
    metric: str = "euclidean"
    _sq_norms: np.ndarray = field(init=False, repr=False)
    _gallery32: np.ndarray = field(init=False, repr=False)
    _class_members: dict[int, np.ndarray] = field(init=False, repr=False)
    _cluster_members: list[np.ndarray] = field(init=False, repr=False)
    _class_centroids: dict[int, np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"metric '{self.metric}' is not one of {', '.join(METRICS)}")
        self.gallery = self.prepare(self.gallery)
        self.centroids = self.prepare(self.centroids)
        self._sq_norms = np.einsum("ij,ij->i", self.gallery, self.gallery)
        self._gallery32 = self.gallery.astype(np.float32)
        self._class_members = {int(c): np.flatnonzero(self.labels == c) for c in np.unique(self.labels)}
        self._cluster_members = [np.flatnonzero(self.assignments == c) for c in range(len(self.centroids))]
        self._class_centroids = centroids_by_class(self.centroid_labels)

    def prepare(self, x: np.ndarray) -> np.ndarray:
        """Rows as the gallery holds them: float64, of unit length for the cosine metric (whose ranking is then
        the Euclidean one)."""
        x = np.asarray(x, dtype=np.float64)
        return l2_normalise(x) if self.metric == "cosine" else x

    def reported_distances(self, squared: np.ndarray) -> np.ndarray:
        """Report Euclidean distance, or cosine distance (1 - cos) on unit vectors."""
        return squared / 2.0 if self.metric == "cosine" else np.sqrt(squared)

    def nearest_centroids(self, queries: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """For each query, the index of the nearest centroid of its predicted class."""
        return nearest_class_centroids(self.prepare(queries), predicted, self.centroids, self._class_centroids)

    def centroid_distances(self, queries: np.ndarray) -> np.ndarray:
        """Distance of each query to every centroid (queries x centroids), in the units :meth:`search` reports."""
        queries = self.prepare(queries)
        return self.reported_distances(
            squared_distances(queries, self.centroids, np.einsum("ij,ij->i", self.centroids, self.centroids))
        )

    def members(self, mode: str, group: int) -> np.ndarray:
        """Gallery positions searched by one group of queries (ascending)."""
        empty = np.empty(0, dtype=np.int64)
        if mode == "clustered":
            return self._cluster_members[group] if group >= 0 else empty
        if mode == "class":
            return self._class_members.get(group, empty)
        return np.arange(len(self.gallery))

    def search(
        self,
        queries: np.ndarray,
        mode: str,
        top_k: int,
        predicted: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k gallery indices and distances for each query row.

        Queries are grouped by the subset they search (a cluster, a class or the whole
        gallery) so that each group is one matrix product.
        """
        if mode not in MODES:
            raise ValueError(f"retrieval mode '{mode}' is not one of {', '.join(MODES)}")
        if mode != "global" and predicted is None:
            raise ValueError(f"retrieval mode '{mode}' needs the predicted class of each query")
        if mode == "clustered":
            groups = self.nearest_centroids(queries, np.asarray(predicted))
        elif mode == "class":
            groups = np.asarray(predicted)
        else:
            groups = np.zeros(len(queries), dtype=np.int64)
        queries = self.prepare(queries)
        indices = np.full((len(queries), top_k), -1, dtype=np.int64)
        distances = np.full((len(queries), top_k), np.inf)
        for group in np.unique(groups):
            rows = np.flatnonzero(groups == group)
            members = self.members(mode, int(group))
            if len(members) == 0:
                continue
            indices[rows], found = self._search_members(queries[rows], members, top_k)
            distances[rows] = self.reported_distances(found)
        return indices, distances

    def _search_members(self, queries: np.ndarray, members: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k squared distances among ``members``; large groups are screened in float32."""
        if len(members) < FLOAT32_SCREEN_MIN_MEMBERS or top_k >= len(members):
            squared = squared_distances(queries, self.gallery[members], self._sq_norms[members])
            return _top_k(squared, members, top_k)
        # a block of queries at a time, so that memory stays bounded for many queries on a large gallery
        rows = screened_block_rows(len(members), top_k, self.gallery.shape[1])
        found = [
            screened_top_k(b, b.astype(np.float32), self.gallery, self._gallery32, self._sq_norms, members, top_k)
            for b in (queries[i : i + rows] for i in range(0, len(queries), rows))
        ]
        return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])


def ivf_lists(nlist: int | str, n_gallery: int) -> int:
    """IVF lists: the configured number, or for ``auto`` 4·√N, faiss's guideline for N up to about 10⁶ (the
    cost of a query then grows with √N instead of N)."""
    if nlist == "auto":
        return max(1, round(4 * np.sqrt(n_gallery)))
    return int(nlist)


class FaissSearch:
    """The standard alternative to the paper's clustering: a faiss index over the whole gallery.

    ``kind`` is ``flat`` (exact) or ``ivf`` (inverted lists: ``nlist`` k-means cells, of which
    ``nprobe`` are visited per query). Distances are reported as by :class:`RetrievalIndex`.
    """

    def __init__(self, gallery: np.ndarray, kind: str, metric: str = "euclidean", nlist: int | str = 16,
                 nprobe: int = 4, seed: int = 0) -> None:  # fmt: skip
        import faiss  # faiss on first use: the Snakefile and the CLI import this module

        if kind not in ("flat", "ivf"):
            raise ValueError(f"faiss index kind '{kind}' is not one of flat, ivf")
        self.metric = metric
        vectors = self.prepare(gallery)
        dim = vectors.shape[1]
        if kind == "flat":
            self.index = faiss.IndexFlatL2(dim)
            self.nlist = 0
        else:
            # faiss wants >= 39 training points per list; fewer lists on small galleries
            self.nlist = max(1, min(ivf_lists(nlist, len(vectors)), len(vectors) // 39))
            quantizer = faiss.IndexFlatL2(dim)
            self.index = faiss.IndexIVFFlat(quantizer, dim, self.nlist)
            self.index.cp.seed = seed
            self.index.train(vectors)
            self.index.nprobe = min(nprobe, self.nlist)
        self.index.add(vectors)
        self.kind = kind

    def prepare(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return l2_normalise(x).astype(np.float32) if self.metric == "cosine" else x

    def search(self, queries: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        squared, indices = self.index.search(self.prepare(queries), top_k)
        squared = np.where(indices < 0, np.inf, np.maximum(squared, 0.0))
        distances = squared / 2.0 if self.metric == "cosine" else np.sqrt(squared)
        return indices.astype(np.int64), distances
