"""Model stages for training sets that do not fit in memory: streamed PCA, mini-batch k-means,
and the memory and wall time the rules ask a scheduler for."""

from pathlib import Path

import h5py
import numpy as np
import pytest

from cbir.fitting.kmeans import fit_intra_class_kmeans, load_clusters, save_clusters
from cbir.fitting.pca import FeatureRows, choose_pca_method, fit_pca_basis
from cbir.pipeline.resources import extraction_runtime_min, file_mb, fit_pca_mem_mb, train_fraction

PCA_OPTIONS = {"exact_max_images": 1000, "large_method": "incremental", "batch_size": 256, "sample_size": 500}


@pytest.fixture(scope="module")
def spectrum() -> np.ndarray:
    """2000 x 40 rows whose variance falls off axis by axis, so the leading axes are well defined."""
    rng = np.random.default_rng(0)
    scales = 2.0 ** -np.arange(40, dtype=np.float64) * 20
    rotation, _ = np.linalg.qr(rng.normal(size=(40, 40)))
    return ((rng.normal(size=(2000, 40)) * scales) @ rotation + 3.0).astype(np.float32)


def _same_axes(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """|cosine| between corresponding axes (1 = the same axis, up to its sign)."""
    return np.abs(np.sum(a * b, axis=1)) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_exact_is_the_default_and_the_choice_follows_the_training_set_size(spectrum):
    default = fit_pca_basis(spectrum, 5)
    exact = fit_pca_basis(spectrum, 5, method="exact")
    assert np.array_equal(default.components, exact.components)
    assert choose_pca_method(1000, PCA_OPTIONS) == "exact"
    assert choose_pca_method(1001, PCA_OPTIONS) == "incremental"
    assert choose_pca_method(1001, {**PCA_OPTIONS, "large_method": "sample"}) == "sample"
    with pytest.raises(ValueError, match="unknown PCA method 'svd'"):
        fit_pca_basis(spectrum, 5, method="svd")


@pytest.mark.parametrize("method", ["incremental", "sample"])
def test_large_data_pca_finds_the_exact_leading_axes(spectrum, method: str):
    exact = fit_pca_basis(spectrum, 8)
    approx = fit_pca_basis(spectrum, 8, method=method, batch_size=256, sample_size=500)
    assert approx.components.shape == (8, 40)
    assert np.all(_same_axes(approx.components[:5], exact.components[:5]) > 0.99)
    assert np.allclose(approx.mean, exact.mean, atol=0.5)
    assert np.allclose(approx.explained_variance_ratio[:3], exact.explained_variance_ratio[:3], atol=0.05)
    # smaller grid sizes are still slices of the fitted basis
    assert np.array_equal(approx.truncate(3).components, approx.components[:3])


def test_sample_pca_is_seeded_and_exact_when_the_sample_holds_everything(spectrum):
    a = fit_pca_basis(spectrum, 4, seed=1, method="sample", sample_size=300)
    b = fit_pca_basis(spectrum, 4, seed=1, method="sample", sample_size=300)
    c = fit_pca_basis(spectrum, 4, seed=2, method="sample", sample_size=300)
    assert np.array_equal(a.components, b.components) and not np.array_equal(a.components, c.components)
    whole = fit_pca_basis(spectrum, 4, method="sample", sample_size=len(spectrum))
    assert np.array_equal(whole.components, fit_pca_basis(spectrum, 4).components)


def test_incremental_batches_smaller_than_the_basis_are_raised_to_it(spectrum):
    basis = fit_pca_basis(spectrum[:130], 30, method="incremental", batch_size=10)
    assert basis.components.shape == (30, 40)
    with pytest.raises(ValueError, match="training images = 20"):
        fit_pca_basis(spectrum[:20], 30, method="incremental")


def test_feature_rows_stream_a_split_from_the_feature_file(spectrum, tmp_path: Path):
    path = tmp_path / "features.h5"
    ids = np.array([f"img{i:04d}" for i in range(len(spectrum))], dtype=object)
    with h5py.File(path, "w") as f:
        f.create_dataset("features", data=spectrum, chunks=(100, 40))
        f.create_dataset("ids", data=ids, dtype=h5py.string_dtype())
    rng = np.random.default_rng(3)
    dense = sorted(rng.choice(len(spectrum), 1600, replace=False))  # a training split
    sparse = sorted(rng.choice(len(spectrum), 50, replace=False))
    for chosen in (dense, sparse):
        rows = FeatureRows(path, [ids[i] for i in reversed(chosen)])  # any id order: kept in file order
        assert rows.shape == (len(chosen), 40) and len(rows) == len(chosen)
        assert np.array_equal(rows[:], spectrum[chosen])
        assert np.array_equal(rows[7:19], spectrum[chosen][7:19])
        assert np.array_equal(rows[np.array([1, 4, 9])], spectrum[chosen][[1, 4, 9]])
    rows = FeatureRows(path, [ids[i] for i in dense])
    streamed = fit_pca_basis(rows, 6, method="incremental", batch_size=256)
    in_memory = fit_pca_basis(spectrum[dense], 6, method="incremental", batch_size=256)
    assert np.allclose(streamed.components, in_memory.components, atol=1e-6)
    sampled = fit_pca_basis(rows, 6, seed=0, method="sample", batch_size=100, sample_size=400)
    assert np.allclose(
        sampled.components, fit_pca_basis(spectrum[dense], 6, method="sample", sample_size=400).components
    )
    assert np.allclose(fit_pca_basis(rows, 6).components, fit_pca_basis(spectrum[dense], 6).components, atol=1e-5)
    with pytest.raises(KeyError, match="not in"):
        FeatureRows(path, ["nope"])


@pytest.fixture(scope="module")
def classes() -> tuple[np.ndarray, np.ndarray]:
    """Two classes of 600 and 60 images, each made of three well separated groups."""
    rng = np.random.default_rng(1)
    features, labels = [], []
    for label, size in ((0, 600), (1, 60)):
        centres = rng.normal(0, 20, size=(3, 8))
        groups = np.repeat(np.arange(3), size // 3)
        features.append(centres[groups] + rng.normal(0, 0.5, size=(size, 8)))
        labels.append(np.full(size, label))
    return np.concatenate(features).astype(np.float32), np.concatenate(labels)


def _partition(assignments: np.ndarray) -> set[frozenset[int]]:
    return {frozenset(np.flatnonzero(assignments == a)) for a in np.unique(assignments)}


def test_minibatch_kmeans_for_large_classes_finds_the_same_clusters(classes, tmp_path: Path):
    features, labels = classes
    exact = fit_intra_class_kmeans(features, labels, 3, seed=0, n_init=3)
    assert exact.methods == {0: "exact", 1: "exact"}  # the default
    auto = fit_intra_class_kmeans(features, labels, 3, seed=0, n_init=3, method="auto", exact_max_images=100,
                                  batch_size=64)  # fmt: skip
    assert auto.methods == {0: "minibatch", 1: "exact"}
    assert _partition(auto.assignments) == _partition(exact.assignments)
    assert list(auto.centroid_labels) == [0, 0, 0, 1, 1, 1]
    for c, label in enumerate(auto.centroid_labels):  # centroids are their members' means
        members = features[auto.assignments == c]
        assert np.all(labels[auto.assignments == c] == label)
        assert np.allclose(auto.centroids[c], members.mean(axis=0), atol=0.5)
    everything = fit_intra_class_kmeans(features, labels, 3, method="minibatch", batch_size=64)
    assert set(everything.methods.values()) == {"minibatch"}
    save_clusters(tmp_path / "c.h5", auto, np.arange(len(labels)).astype(str), {"k": 3})
    assert load_clusters(tmp_path / "c.h5")[0].methods == auto.methods
    with pytest.raises(ValueError, match="unknown k-means method"):
        fit_intra_class_kmeans(features, labels, 3, method="elkan")


def test_requested_memory_and_time_follow_the_data(tmp_path: Path):
    exact_small = fit_pca_mem_mb(10_000, 25088, 400, PCA_OPTIONS | {"exact_max_images": 10**6})
    exact_large = fit_pca_mem_mb(100_000, 25088, 400, PCA_OPTIONS | {"exact_max_images": 10**6})
    assert exact_large > 9 * (exact_small - 1000)  # grows with the training set
    streamed = [fit_pca_mem_mb(n, 25088, 400, PCA_OPTIONS) for n in (10**5, 10**6)]
    assert streamed[0] == streamed[1] < exact_small  # does not grow
    assert extraction_runtime_min(1000, 0.06) == 11 and extraction_runtime_min(20000, 0.1) == 44
    assert train_fraction("80-20") == 0.8 and train_fraction("official") == 1.0
    (tmp_path / "a").write_bytes(b"x" * (3 << 20))
    assert file_mb([tmp_path / "a", tmp_path / "missing"]) == 3
