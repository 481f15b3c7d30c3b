"""Intra-class clustering: k-means inside each class of the training set."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbir.io import load_arrays, save_arrays

log = logging.getLogger(__name__)


@dataclass
class IntraClassClusters:
    """Centroids of every class's clusters, and each training image's cluster.

    ``centroid_labels[c]`` is the class of centroid ``c``; ``assignments[i]`` is the centroid
    index of training image ``i``.
    """

    centroids: np.ndarray
    centroid_labels: np.ndarray
    assignments: np.ndarray
    n_iter: dict[int, int] = field(default_factory=dict)
    converged: dict[int, bool] = field(default_factory=dict)


def fit_intra_class_kmeans(
    features: np.ndarray,
    labels: np.ndarray,
    k: int,
    *,
    seed: int = 0,
    n_init: int = 10,
    max_iter: int = 300,
) -> IntraClassClusters:
    """k-means with ``k`` clusters per class; a class with fewer than k images gets one per image."""
    from sklearn.cluster import KMeans

    features = np.asarray(features, dtype=np.float32)
    labels = np.asarray(labels)
    centroids, centroid_labels = [], []
    assignments = np.empty(len(labels), dtype=np.int64)
    n_iter, converged = {}, {}
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n_clusters = min(k, len(members))
        if n_clusters < k:
            warnings.warn(
                f"class {label} has {len(members)} training image(s), fewer than k={k}: using {n_clusters} cluster(s)",
                stacklevel=2,
            )
        model = KMeans(n_clusters=n_clusters, n_init=n_init, max_iter=max_iter, random_state=seed)
        model.fit(features[members])
        assignments[members] = len(centroids) + model.labels_
        centroids.extend(model.cluster_centers_)
        centroid_labels.extend([label] * n_clusters)
        n_iter[int(label)] = int(model.n_iter_)
        converged[int(label)] = bool(model.n_iter_ < max_iter)
    return IntraClassClusters(
        centroids=np.asarray(centroids, dtype=np.float32),
        centroid_labels=np.asarray(centroid_labels, dtype=np.int64),
        assignments=assignments,
        n_iter=n_iter,
        converged=converged,
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
    )
    return clusters, arrays["train_ids"], attrs
