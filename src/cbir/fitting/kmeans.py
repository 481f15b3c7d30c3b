"""Intra-class clustering: k-means inside each class of the training set."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbir.distances import squared_distances
from cbir.io import load_arrays, save_arrays

log = logging.getLogger(__name__)


@dataclass
class IntraClassClusters:
    """Centroids of every class's clusters, and each training image's cluster.

    ``centroid_labels[c]`` is the class of centroid ``c``; ``assignments[i]`` is the centroid
    index of training image ``i``. ``capped`` maps each class with fewer training images than k
    to the number of clusters it got (one per image).
    """

    centroids: np.ndarray
    centroid_labels: np.ndarray
    assignments: np.ndarray
    n_iter: dict[int, int] = field(default_factory=dict)
    converged: dict[int, bool] = field(default_factory=dict)
    methods: dict[int, str] = field(default_factory=dict)
    capped: dict[int, int] = field(default_factory=dict)

    def clusters_per_class(self) -> dict[int, int]:
        labels, counts = np.unique(self.centroid_labels, return_counts=True)
        return {int(label): int(count) for label, count in zip(labels, counts, strict=True)}


KMEANS_METHODS = ("exact", "minibatch", "auto")


def fit_intra_class_kmeans(
    features: np.ndarray,
    labels: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    n_init: int = 10,
    max_iter: int = 300,
    method: str = "exact",
    exact_max_images: int = 100_000,
    batch_size: int = 4096,
) -> IntraClassClusters:
    """k-means with ``k`` clusters per class; a class with fewer than k images gets one per image.

    That cap is what a user expects from a small class (every image its own cluster, the search
    still works); it is warned about and recorded in ``capped`` (and the saved file's attributes).

    ``method``: ``exact`` (the default, the paper's) runs Lloyd's k-means on every class;
    ``minibatch`` runs MiniBatchKMeans (batches of ``batch_size`` images) on every class;
    ``auto`` runs exact k-means on classes of up to ``exact_max_images`` training images and
    MiniBatchKMeans on larger ones. The method used per class is in ``methods``.
    """
    from sklearn.cluster import KMeans, MiniBatchKMeans  # sklearn on first use: the Snakefile and the CLI import this

    if method not in KMEANS_METHODS:
        raise ValueError(f"unknown k-means method '{method}' (allowed: {', '.join(KMEANS_METHODS)})")
    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    centroids, centroid_labels = [], []
    assignments = np.empty(len(labels), dtype=np.int64)
    n_iter, converged, methods, capped = {}, {}, {}, {}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_clusters = min(k, len(members))
        if n_clusters < k:
            capped[int(label)] = n_clusters
            warnings.warn(
                f"class {label} has {len(members)} training image(s), fewer than k={k}: using {n_clusters} cluster(s)",
                stacklevel=2,
            )
        used = method if method != "auto" else ("exact" if len(members) <= exact_max_images else "minibatch")
        if used == "exact":
            model = KMeans(n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, random_state=seed)
        else:
            model = MiniBatchKMeans(
                n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, batch_size=batch_size, random_state=seed
            )
        model.fit(features[members])
        assignments[members] = len(centroids) + model.labels_
        centroids.extend(model.cluster_centers_)
        centroid_labels.extend([label] * n_clusters)
        n_iter[int(label)] = int(model.n_iter_)
        converged[int(label)] = bool(model.n_iter_ < max_iter)
        methods[int(label)] = used
    return IntraClassClusters(
        centroids=np.asarray(centroids, dtype=np.float32),
        centroid_labels=np.asarray(centroid_labels, dtype=np.int64),
        assignments=assignments,
        n_iter=n_iter,
        converged=converged,
        methods=methods,
        capped=capped,
    )


def save_clusters(path: str | Path, clusters: IntraClassClusters, ids: np.ndarray, attrs: dict[str, Any]) -> None:
    save_arrays(
        path,
        {
            "centroids": clusters.centroids,
            "centroid_labels": clusters.centroid_labels,
            "assignments": clusters.assignments,
            "train_ids": ids,
        },
        {
            "n_iter": {str(k): v for k, v in clusters.n_iter.items()},
            "converged": {str(k): v for k, v in clusters.converged.items()},
            "methods": {str(k): v for k, v in clusters.methods.items()},
            "clusters_per_class": {str(k): v for k, v in clusters.clusters_per_class().items()},
            # classes with fewer training images than k: their number of clusters
            "k_capped": {str(k): v for k, v in clusters.capped.items()},
            **attrs,
        },
    )


def load_clusters(path: str | Path) -> tuple[IntraClassClusters, np.ndarray, dict[str, Any]]:
    arrays, attrs = load_arrays(path)
    clusters = IntraClassClusters(
        centroids=arrays["centroids"],
        centroid_labels=arrays["centroid_labels"],
        assignments=arrays["assignments"],
        n_iter={int(k): v for k, v in attrs.get("n_iter", {}).items()},
        converged={int(k): v for k, v in attrs.get("converged", {}).items()},
        methods={int(k): v for k, v in attrs.get("methods", {}).items()},
        capped={int(k): int(v) for k, v in attrs.get("k_capped", {}).items()},
    )
    return clusters, arrays["train_ids"], attrs


def centroids_by_class(centroid_labels: np.ndarray) -> dict[int, np.ndarray]:
    """The indices of each class's centroids."""
    return {int(c): np.flatnonzero(centroid_labels == c) for c in np.unique(centroid_labels)}


def nearest_class_centroids(
    queries: np.ndarray, classes: np.ndarray, centroids: np.ndarray, class_centroids: Mapping[int, np.ndarray]
) -> np.ndarray:
    """For each query, the index of the nearest centroid of its class (``class_centroids[c]``: the indices of
    class ``c``'s centroids), by squared Euclidean distance; -1 where its class has no centroid."""
    chosen = np.full(len(queries), -1, dtype=np.int64)
    for label in np.unique(classes):
        rows = np.flatnonzero(classes == label)
        candidates = class_centroids.get(int(label), np.empty(0, dtype=np.int64))
        if len(candidates) == 0:
            continue
        members = centroids[candidates]
        distances = squared_distances(queries[rows], members, np.einsum("ij,ij->i", members, members))
        chosen[rows] = candidates[np.argmin(distances, axis=1)]
    return chosen
