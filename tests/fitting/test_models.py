"""PCA, intra-class k-means and the MLP: behaviour and what is stored."""

from pathlib import Path

import numpy as np
import pytest
from sklearn.decomposition import PCA
from sklearn.neural_network import MLPClassifier
from sklearn.preprocessing import StandardScaler

from cbir.fitting.kmeans import fit_intra_class_kmeans, load_clusters, save_clusters
from cbir.fitting.mlp import EARLY_STOPPING_MIN_IMAGES, load_mlp, save_mlp, train_mlp, uses_early_stopping
from cbir.fitting.pca import Projection, fit_pca_basis, load_projection, save_projection


@pytest.fixture
def blobs():
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 5, size=(4, 30))
    labels = np.repeat(np.arange(4), 25)
    features = (centres[labels] + rng.normal(0, 1, size=(100, 30))).astype(np.float32)
    return features, labels


def test_smaller_pca_sizes_are_slices_of_the_largest(blobs):
    features, _ = blobs
    basis = fit_pca_basis(features, 20)
    for n in (3, 10, 20):
        separate = PCA(n_components=n, svd_solver="full").fit(features.astype(np.float64))
        sliced = basis.truncate(n)
        # identical up to the sign of each axis
        signs = np.sign(np.sum(sliced.components * separate.components_, axis=1))
        assert np.allclose(sliced.components * signs[:, None], separate.components_, atol=1e-4)
        assert np.allclose(sliced.transform(features) * signs, separate.transform(features), atol=1e-3)


def test_pca_size_beyond_the_training_set_is_a_clear_error(blobs):
    features, _ = blobs
    with pytest.raises(ValueError, match=r"PCA size 31 exceeds .* feature dimension = 30"):
        fit_pca_basis(features, 31)
    with pytest.raises(ValueError, match="training images = 10"):
        fit_pca_basis(features[:10], 20)


def test_projection_round_trip_and_identity(blobs, tmp_path: Path):
    features, _ = blobs
    basis = fit_pca_basis(features, 5)
    save_projection(tmp_path / "p.h5", basis, {"pca": "5"})
    assert np.allclose(load_projection(tmp_path / "p.h5").transform(features), basis.transform(features))
    identity = Projection(None, None)
    save_projection(tmp_path / "id.h5", identity, {"pca": "original"})
    assert np.array_equal(load_projection(tmp_path / "id.h5").transform(features), features)


def test_kmeans_clusters_each_class_separately(blobs, tmp_path: Path):
    features, labels = blobs
    clusters = fit_intra_class_kmeans(features, labels, 3, seed=0)
    assert clusters.centroids.shape == (12, 30)
    assert list(clusters.centroid_labels) == [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
    # every image is assigned to a centroid of its own class
    assert np.array_equal(clusters.centroid_labels[clusters.assignments], labels)
    assert all(clusters.converged.values())
    save_clusters(tmp_path / "c.h5", clusters, np.arange(100).astype(str), {"k": 3})
    loaded, ids, attrs = load_clusters(tmp_path / "c.h5")
    assert np.array_equal(loaded.assignments, clusters.assignments) and attrs["k"] == 3
    assert loaded.n_iter == clusters.n_iter
    assert list(ids) == [str(i) for i in range(100)]


def test_kmeans_is_repeatable(blobs):
    features, labels = blobs
    first = fit_intra_class_kmeans(features, labels, 3, seed=7)
    second = fit_intra_class_kmeans(features, labels, 3, seed=7)
    assert np.array_equal(first.assignments, second.assignments)


def test_class_smaller_than_k_gets_one_cluster_per_image_and_a_warning(blobs):
    features, labels = blobs
    keep = np.r_[np.flatnonzero(labels != 3), np.flatnonzero(labels == 3)[:2]]
    with pytest.warns(UserWarning, match="class 3 has 2 training image"):
        clusters = fit_intra_class_kmeans(features[keep], labels[keep], 3)
    assert (clusters.centroid_labels == 3).sum() == 2


def test_mlp_numpy_forward_matches_scikit_learn(blobs):
    features, labels = blobs
    model = train_mlp(features, labels, hidden_layers=[16, 8], max_iter=300, seed=0)
    scaler = StandardScaler().fit(features)
    reference = MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=300, random_state=0)
    reference.fit(scaler.transform(features), labels)
    expected = reference.predict_proba(scaler.transform(features))
    assert np.allclose(model.predict_proba(features), expected, atol=1e-4)
    assert model.n_iter == reference.n_iter_


def test_mlp_binary_case_and_storage(blobs, tmp_path: Path):
    features, labels = blobs
    binary = labels[labels < 2]
    model = train_mlp(features[labels < 2], binary, hidden_layers=[8], seed=0)
    assert model.output_activation == "logistic"
    assert model.predict_proba(features[:3]).shape == (3, 2)
    assert (model.predict(features[labels < 2]) == binary).mean() > 0.95
    save_mlp(tmp_path / "mlp.h5", model, {"seed": 0})
    loaded = load_mlp(tmp_path / "mlp.h5")
    assert np.array_equal(loaded.predict_proba(features), model.predict_proba(features))
    assert loaded.converged == model.converged and loaded.n_iter == model.n_iter


def test_early_stopping_is_automatic_from_a_large_training_set_on():
    balanced = np.arange(EARLY_STOPPING_MIN_IMAGES) % 10
    assert not uses_early_stopping("auto", balanced[:-1])
    assert uses_early_stopping("auto", balanced)
    assert uses_early_stopping(True, np.arange(40) % 2) and not uses_early_stopping(False, balanced)
    # the held-out tenth must be stratified: a class of one image, or more classes than it holds, rules it out
    lonely = np.append(balanced, 99)
    assert not uses_early_stopping("auto", lonely)
    many = np.arange(EARLY_STOPPING_MIN_IMAGES) % 2000  # 1,000 held out for 2,000 classes
    assert not uses_early_stopping("auto", many)
    with pytest.warns(UserWarning, match="cannot be held out; every image is trained on"):
        assert not uses_early_stopping(True, lonely)


def test_early_stopping_holds_out_a_part_and_keeps_its_best_epoch(tmp_path: Path):
    # overlapping classes: the training loss keeps falling long after the held-out accuracy stops rising
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 200)
    features = rng.normal(0, 1.0, size=(600, 20)) + 0.6 * np.eye(3, 20)[labels]
    full = train_mlp(features, labels, hidden_layers=[64], max_iter=300, early_stopping=False, seed=0)
    stopped = train_mlp(features, labels, hidden_layers=[64], max_iter=300, early_stopping=True, seed=0)
    assert stopped.early_stopping and not full.early_stopping
    assert stopped.n_iter < full.n_iter
    reference = MLPClassifier(hidden_layer_sizes=(64,), max_iter=300, early_stopping=True, random_state=0)
    reference.fit(StandardScaler().fit_transform(features), labels)
    assert stopped.n_iter == reference.n_iter_
    save_mlp(tmp_path / "mlp.h5", stopped, {"seed": 0})
    assert load_mlp(tmp_path / "mlp.h5").early_stopping
