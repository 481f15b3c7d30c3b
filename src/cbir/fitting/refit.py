"""When a cell's fitted models are refitted after images were added, and how added images join kept clusters.

With ``update.refit: always`` (the default) every model stage refits whenever the features
change. With ``when_due``, the PCA basis, the MLP, the k-means centroids and the further spaces
fitted on a cell's training images are kept while its training set has changed by at most
``update.refit_after`` of what they were fitted on, and has the same classes: the new images are
projected with the kept basis and embedded with the kept spaces, each joins the nearest kept
centroid of its class (:func:`place_new_images`, when the cell is loaded), and the faiss
indexes, built when the cell is loaded, hold them. Past that share, or with a class added or
gone, everything is refitted. Only the splits that keep every image where it was (``all``,
``official``) keep models: a ratio split reshuffles a class whose images change.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import h5py
import numpy as np

from cbir.fitting.kmeans import IntraClassClusters, centroids_by_class, nearest_class_centroids

REFIT_POLICIES = ("always", "when_due")
WHEN_DUE = "when_due"


def fitted_on(path: str | Path) -> tuple[int, int | None] | None:
    """(training images, classes) a fitted artifact records (``n_train``, ``n_classes``); None when it
    does not exist or does not say."""
    try:
        with h5py.File(path, "r") as f:
            if "n_train" not in f.attrs:
                return None
            classes = f.attrs.get("n_classes")
            return int(f.attrs["n_train"]), None if classes is None else int(classes)
    except OSError:
        return None


def refit_due(fitted: tuple[int, int | None] | None, current: tuple[int, int] | None, refit_after: float) -> bool:
    """Whether models fitted on ``fitted`` (images, classes) are refitted for a training set of ``current``:
    when either is unknown, the classes differ, or the count changed by more than ``refit_after`` of the fit."""
    if fitted is None or current is None:
        return True
    (n_fitted, classes_fitted), (n_now, classes_now) = fitted, current
    if classes_fitted is not None and classes_fitted != classes_now:
        return True
    return abs(n_now - n_fitted) > refit_after * n_fitted


def place_new_images(
    clusters: IntraClassClusters,
    fitted_ids: np.ndarray,
    gallery_ids: np.ndarray,
    vectors: np.ndarray,
    labels: np.ndarray,
) -> tuple[IntraClassClusters, int]:
    """The clusters over the current gallery: images the centroids were fitted with keep their cluster,
    images added since join the nearest centroid of their class (``vectors``: the gallery in the
    centroids' space), images removed since drop out. Returns the clusters and how many joined.

    A class without any centroid (added since the fit) is a :class:`ValueError`: a refit is due.
    """
    fitted_rows = {str(image_id): row for row, image_id in enumerate(fitted_ids)}
    assignments = np.empty(len(gallery_ids), dtype=clusters.assignments.dtype)
    new_rows = []
    for row, image_id in enumerate(gallery_ids):
        fitted_row = fitted_rows.get(str(image_id))
        if fitted_row is None:
            new_rows.append(row)
        else:
            assignments[row] = clusters.assignments[fitted_row]
    if new_rows:
        new_labels = labels[new_rows]
        class_centroids = centroids_by_class(clusters.centroid_labels)
        chosen = nearest_class_centroids(
            vectors[new_rows].astype(np.float64), new_labels, clusters.centroids.astype(np.float64), class_centroids
        )
        if (chosen < 0).any():
            label = int(new_labels[chosen < 0].min())
            raise ValueError(f"images of class {label} were added, which no fitted centroid has: a refit is due")
        assignments[new_rows] = chosen
    return dataclasses.replace(clusters, assignments=assignments), len(new_rows)
