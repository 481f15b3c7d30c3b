"""PCA: one exact decomposition per training split, from which every grid size is a slice."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from cbir.io import id_rows, load_arrays, save_arrays


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


PCA_METHODS = ("exact", "incremental", "sample")


def choose_pca_method(n_train: int, options: Mapping[str, Any]) -> str:
    """'exact' up to ``options['exact_max_images']`` training images, else ``options['large_method']``."""
    return "exact" if n_train <= options["exact_max_images"] else options["large_method"]


class FeatureRows:
    """Rows of a feature file, read on demand: a training set that is never loaded whole.

    Supports ``len``, ``shape`` and indexing by a slice or an increasing index array, which is
    what :func:`fit_pca_basis` needs for its large-data methods. ``ids`` selects rows (kept in
    file order); None keeps every row.
    """

    def __init__(self, path: str | Path, ids: Sequence[str] | None = None) -> None:
        self.path = Path(path)
        with h5py.File(self.path, "r") as f:
            n_rows, self.dim = f["features"].shape
            if ids is None:
                self.rows = np.arange(n_rows)
            else:
                self.rows = np.sort(id_rows(f["ids"].asstr()[()], ids, path))

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.rows), self.dim

    def __getitem__(self, key: slice | np.ndarray) -> np.ndarray:
        rows = self.rows[key]
        if len(rows) == 0:
            return np.empty((0, self.dim), dtype=np.float32)
        with h5py.File(self.path, "r") as f:
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            if hi - lo <= 4 * len(rows):  # dense enough: one contiguous read, then keep the rows
                return np.asarray(f["features"][lo:hi], dtype=np.float32)[rows - lo]
            return np.asarray(f["features"][rows], dtype=np.float32)  # increasing indices


def fit_pca_basis(
    train_features: np.ndarray | FeatureRows,
    n_components: int,
    seed: int = 0,
    *,
    method: str = "exact",
    batch_size: int = 4096,
    sample_size: int = 100_000,
) -> Projection:
    """PCA of the training features with ``n_components`` leading axes.

    ``exact`` (the default, the paper's): full SVD. Its leading axes do not depend on how many
    are kept, so every smaller grid size is a slice of this basis.

    For training sets too large to hold in memory, ``train_features`` may be a
    :class:`FeatureRows` (anything with ``shape`` and row slicing), and:

    - ``incremental``: IncrementalPCA over batches of at least ``batch_size`` rows (raised to
      ``n_components``), read one batch at a time, so memory is O(batch x dim);
    - ``sample``: the exact PCA of ``sample_size`` training rows drawn with ``seed`` (all of
      them when the training set is not larger).

    Both approximate the exact basis; smaller sizes are still slices of the fitted one.
    """
    if method not in PCA_METHODS:
        raise ValueError(f"unknown PCA method '{method}' (allowed: {', '.join(PCA_METHODS)})")
    n_samples, n_features = train_features.shape
    limit = max_components(n_samples, n_features)
    if n_components > limit:
        raise ValueError(
            f"PCA size {n_components} exceeds what the training set allows: "
            f"min(training images = {n_samples}, feature dimension = {n_features}) = {limit}; "
            "remove that size from grid.pca or use a larger training split"
        )
    if method == "incremental":
        return _fit_incremental(train_features, n_components, batch_size)
    if method == "sample" and sample_size < n_samples:
        if n_components > sample_size:
            raise ValueError(f"PCA size {n_components} exceeds the PCA sample of {sample_size} images")
        chosen = np.sort(np.random.default_rng(seed).choice(n_samples, size=sample_size, replace=False))
        train_features = _read_rows(train_features, chosen, batch_size)
    return _fit_exact(train_features, n_components, seed)


def _fit_exact(train_features: np.ndarray | FeatureRows, n_components: int, seed: int) -> Projection:
    from sklearn.decomposition import PCA  # sklearn on first use: the Snakefile and the CLI import this

    if isinstance(train_features, FeatureRows):
        train_features = train_features[:]
    pca = PCA(n_components=n_components, svd_solver="full", random_state=seed)
    pca.fit(np.asarray(train_features, dtype=np.float64))
    return Projection(
        mean=pca.mean_.astype(np.float32),
        components=pca.components_.astype(np.float32),
        explained_variance_ratio=pca.explained_variance_ratio_.astype(np.float32),
    )


def _read_rows(features: np.ndarray | FeatureRows, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """``features[rows]`` for increasing ``rows``, read ``batch_size`` rows at a time."""
    out = np.empty((len(rows), features.shape[1]), dtype=np.float32)
    for start in range(0, len(rows), batch_size):
        out[start : start + batch_size] = features[rows[start : start + batch_size]]
    return out


def _fit_incremental(train_features: np.ndarray | FeatureRows, n_components: int, batch_size: int) -> Projection:
    from sklearn.decomposition import IncrementalPCA  # sklearn on first use: the Snakefile and the CLI import this

    n_samples = train_features.shape[0]
    batch_size = max(batch_size, n_components)
    # equal batches of at least batch_size rows: IncrementalPCA needs n_components rows per step
    bounds = np.linspace(0, n_samples, max(1, n_samples // batch_size) + 1).astype(int)
    pca = IncrementalPCA(n_components=n_components)
    for start, stop in itertools.pairwise(bounds):
        pca.partial_fit(np.asarray(train_features[start:stop], dtype=np.float64))
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
