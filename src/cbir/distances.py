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
