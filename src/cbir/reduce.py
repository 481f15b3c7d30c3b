"""PCA: one exact decomposition per training split, from which every grid size is a slice."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from cbir.io import load_arrays, save_arrays


@dataclass
class Projection:
    """x -> (x - mean) @ components.T; the identity when ``components`` is None ('original')."""

    mean: np.ndarray | None
    components: np.ndarray | None
    explained_variance_ratio: np.ndarray | None = None

    @property
    def is_identity(self) -> bool:
        return self.components is None

    def transform(self, features: np.ndarray) -> np.ndarray:
        features = np.asarray(features, dtype=np.float32)
        if self.components is None:
            return features
        return (features - self.mean) @ self.components.T

    def truncate(self, n_components: int) -> Projection:
        """The projection onto the leading ``n_components`` axes (equal to a PCA fitted at that size)."""
        if self.components is None or n_components > len(self.components):
            available = "none" if self.components is None else len(self.components)
            raise ValueError(f"cannot take {n_components} components from a basis of {available}")
        ratio = None if self.explained_variance_ratio is None else self.explained_variance_ratio[:n_components]
        return Projection(self.mean, self.components[:n_components], ratio)


def max_components(n_samples: int, n_features: int) -> int:
    return min(n_samples, n_features)


def fit_pca_basis(train_features: np.ndarray, n_components: int, seed: int = 0) -> Projection:
    """Exact (full SVD) PCA of the training features with ``n_components`` leading axes.

    With an exact SVD the leading axes do not depend on how many are kept, so every smaller
    grid size is a slice of this basis.
    """
    from sklearn.decomposition import PCA

    n_samples, n_features = train_features.shape
    limit = max_components(n_samples, n_features)
    if n_components > limit:
        raise ValueError(
            f"PCA size {n_components} exceeds what the training set allows: "
            f"min(training images = {n_samples}, feature dimension = {n_features}) = {limit}; "
            "remove that size from grid.pca or use a larger training split"
        )
    pca = PCA(n_components=n_components, svd_solver="full", random_state=seed)
    pca.fit(np.asarray(train_features, dtype=np.float64))
    return Projection(
        mean=pca.mean_.astype(np.float32),
        components=pca.components_.astype(np.float32),
        explained_variance_ratio=pca.explained_variance_ratio_.astype(np.float32),
    )


def save_projection(path: str | Path, projection: Projection, attrs: dict[str, Any]) -> None:
    arrays = {}
    if projection.components is not None:
        arrays = {"mean": projection.mean, "components": projection.components}
        if projection.explained_variance_ratio is not None:
            arrays["explained_variance_ratio"] = projection.explained_variance_ratio
    save_arrays(path, arrays, {"identity": projection.is_identity, **attrs})


def load_projection(path: str | Path) -> Projection:
    arrays, _ = load_arrays(path)
    return Projection(arrays.get("mean"), arrays.get("components"), arrays.get("explained_variance_ratio"))
