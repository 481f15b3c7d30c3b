"""The global search re-ranked as validation chose (:mod:`cbir.fitting.rerank`), for ``cbir query``, ``cbir serve``
and the Python API.

Database-side augmentation is applied to the gallery once, when the cell is loaded; query expansion
costs a second search per query. The results are ranked by the re-ranked search; the distances
reported are the query's to each result in the cell's space, as without re-ranking, so that an
identical photo still shows at distance 0 (and first) and the "no good match" distance keeps its meaning.
"""

from __future__ import annotations

import numpy as np

from cbir.fitting.rerank import Rerank, augment_database, expand_queries
from cbir.search.index import RetrievalIndex

SAME_PHOTO_RATIO = 0.02  # a query this much nearer one gallery photo than any other is that photo


class RerankedSearch:
    """Exact global search of ``index``'s gallery with ``rerank`` (its vectors are in the cell's space)."""

    def __init__(self, index: RetrievalIndex, rerank: Rerank, normalised: bool) -> None:
        self.plain = index
        self.rerank = rerank
        self.normalised = normalised
        gallery = index.gallery
        if rerank.augments_database:
            gallery = augment_database(gallery, rerank.k, rerank.alpha, normalised)
        self.index = RetrievalIndex(
            gallery, index.labels, index.centroids, index.centroid_labels, index.assignments, index.metric
        )

    def search(self, queries: np.ndarray, top_k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k gallery rows of each query (in the space), ranked re-ranked, with their plain distances."""
        queries = np.asarray(queries, dtype=np.float64)
        searched = queries
        if self.rerank.expands_queries:
            n = min(self.rerank.k, len(self.index.gallery))
            top = self.index.search(queries, "global", n)[0]
            searched = expand_queries(queries, self.index.gallery, top, n, self.rerank.alpha, self.normalised)
        indices, _ = self.index.search(searched, "global", top_k)
        indices = self._same_photo_first(queries, indices)
        return indices, self._plain_distances(queries, indices)

    def _same_photo_first(self, queries: np.ndarray, indices: np.ndarray) -> np.ndarray:
        """The query's own photo, where the gallery holds it, ranked first: re-ranking averages a gallery photo
        with its neighbours, and the average of others may come nearer than the photo itself. "Its own" means
        far nearer than anything else: at most :data:`SAME_PHOTO_RATIO` of the distance to the second nearest."""
        nearest, distances = self.plain.search(queries, "global", 2)
        if nearest.shape[1] < 2:
            return indices
        same = (nearest[:, 0] >= 0) & (distances[:, 0] <= SAME_PHOTO_RATIO * distances[:, 1])
        for row in np.flatnonzero(same & (indices[:, 0] != nearest[:, 0])):
            others = [i for i in indices[row] if i != nearest[row, 0]]
            indices[row] = [nearest[row, 0], *others][: indices.shape[1]]
        return indices

    def _plain_distances(self, queries: np.ndarray, indices: np.ndarray) -> np.ndarray:
        difference = self.plain.gallery[np.maximum(indices, 0)] - self.plain.prepare(queries)[:, None, :]
        distances = self.plain.reported_distances(np.einsum("qkd,qkd->qk", difference, difference))
        return np.where(indices >= 0, distances, np.inf)
