"""update.refit when_due: images added to a collection join the kept clusters, with the PCA basis kept, until a
refit is due (refit_after of the fitted training set), then everything is refitted."""

from __future__ import annotations

import numpy as np
import pytest

from cbir.fitting.kmeans import IntraClassClusters
from cbir.fitting.refit import place_new_images, refit_due


def test_a_refit_is_due_past_the_share_or_with_other_classes():
    assert not refit_due((100, 10), (120, 10), 0.2) and refit_due((100, 10), (121, 10), 0.2)
    assert refit_due((100, 10), (80 - 1, 10), 0.2)  # removals count too
    assert refit_due((100, 10), (101, 11), 0.2)  # a class added
    assert not refit_due((100, None), (110, 3), 0.2)  # a PCA basis records no classes
    assert refit_due(None, (100, 10), 0.2) and refit_due((100, 10), None, 0.2)


def test_added_images_join_the_nearest_centroid_of_their_class_and_removed_ones_drop_out():
    clusters = IntraClassClusters(
        centroids=np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]]),
        centroid_labels=np.array([0, 0, 1]),
        assignments=np.array([0, 1, 2]),
    )
    gallery_ids = np.array(["b", "c", "new1", "new2"])  # "a" removed
    vectors = np.array([[9.0, 0.0], [0.0, 9.0], [9.0, 1.0], [1.0, 1.0]])
    labels = np.array([0, 1, 0, 1])
    placed, n_new = place_new_images(clusters, np.array(["a", "b", "c"]), gallery_ids, vectors, labels)
    assert n_new == 2 and placed.assignments.tolist() == [1, 2, 1, 2]  # new2: its class's one centroid
    with pytest.raises(ValueError, match=r"class 2 .* a refit is due"):
        place_new_images(clusters, np.array(["a"]), np.array(["x"]), np.zeros((1, 2)), np.array([2]))
