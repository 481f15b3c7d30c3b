"""Embedding spaces: what each fitted space computes, storage, re-ranking, and a cell searched in a space."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbir.fitting.mlp import train_mlp
from cbir.fitting.rerank import augment_database, expand_queries
from cbir.fitting.spaces import (
    SPACES,
    Embedding,
    fit_embedding,
    l2_normalise,
    load_embedding,
    principal_axes,
    save_embedding,
)

OPTIONS = {"whiten": {"power": 0.5}, "lda": {"shrinkage": "auto"}}


@pytest.fixture(scope="module")
def blobs() -> tuple[np.ndarray, np.ndarray]:
    """Four classes in 12 dimensions, separable along a few axes and noisy along the rest."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=3.0, size=(4, 12))
    labels = np.repeat(np.arange(4), 30)
    return (centres[labels] + rng.normal(size=(120, 12))).astype(np.float32), labels


@pytest.fixture(scope="module")
def mlp(blobs):
    features, labels = blobs
    return train_mlp(features, labels, hidden_layers=[16], max_iter=300, seed=0)


def test_every_registered_space_fits_and_maps_every_row(blobs, mlp):
    features, labels = blobs
    dims = {"raw": 12, "l2": 12, "whiten": 12, "lda": 3, "mlp": 16}
    for name in SPACES:
        embedding = fit_embedding(name, features, labels, mlp, OPTIONS)
        vectors = embedding.transform(features)
        assert vectors.shape == (120, dims[name]), name
        assert np.isfinite(vectors).all(), name
        if name != "raw":
            assert embedding.normalised and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5), name


def test_raw_is_the_identity_and_l2_is_cosine(blobs, mlp):
    features, labels = blobs
    assert np.array_equal(fit_embedding("raw", features, labels, mlp, OPTIONS).transform(features), features)
    unit = fit_embedding("l2", features, labels, mlp, OPTIONS).transform(features)
    assert np.allclose(unit, features / np.linalg.norm(features, axis=1, keepdims=True), atol=1e-6)


def test_full_whitening_decorrelates_the_training_vectors(blobs, mlp):
    features, labels = blobs
    embedding = fit_embedding("whiten", features, labels, mlp, {"whiten": {"power": 0.5}})
    before_last_l2 = l2_normalise(features)
    for step in embedding.steps[1:-1]:
        before_last_l2 = step.apply(before_last_l2)
    covariance = np.cov(before_last_l2, rowvar=False)
    assert np.allclose(covariance, np.eye(len(covariance)), atol=1e-3)
    # power 0 is a rotation: distances between the L2-normalised vectors are kept before the last L2
    rotation = fit_embedding("whiten", features, labels, mlp, {"whiten": {"power": 0.0}})
    affine = rotation.steps[1]
    unit = l2_normalise(features)
    rotated = unit @ affine.weight + affine.bias
    assert np.allclose(np.linalg.norm(rotated[0] - rotated[1]), np.linalg.norm(unit[0] - unit[1]), atol=1e-5)


def test_principal_axes_from_the_covariance_are_the_svds_up_to_sign():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(400, 30)) @ rng.normal(size=(30, 30))  # more rows than dimensions: the covariance's
    variance, axes = principal_axes(x)
    _, singular, vt = np.linalg.svd(x - x.mean(axis=0), full_matrices=False)
    np.testing.assert_allclose(variance, singular**2 / 399, rtol=1e-9)
    np.testing.assert_allclose(np.abs(np.sum(axes * vt, axis=1)), 1.0, atol=1e-8)  # the same axes, up to sign
    few_variance, few_axes = principal_axes(x[:20])  # fewer rows: the SVD's, as many axes as rows
    assert few_axes.shape == (20, 30) and np.all(np.diff(few_variance) <= 1e-12)


def test_lda_separates_the_classes_better_than_raw(blobs, mlp):
    features, labels = blobs
    lda = fit_embedding("lda", features, labels, mlp, OPTIONS).transform(features)

    def separation(x: np.ndarray) -> float:
        x = l2_normalise(x)
        means = np.stack([x[labels == c].mean(axis=0) for c in range(4)])
        within = np.mean([np.linalg.norm(x[labels == c] - means[c], axis=1).mean() for c in range(4)])
        between = np.mean([np.linalg.norm(a - b) for i, a in enumerate(means) for b in means[i + 1 :]])
        return between / within

    assert separation(lda) > 2 * separation(features)


def test_lda_with_two_images_per_class_falls_back_to_the_svd_solver(caplog):
    # the eigen solver's within-class scatter is singular here (a small labelled folder split 80-20)
    rng = np.random.default_rng(0)
    labels = np.repeat([0, 1, 2], 2)
    centres = rng.normal(size=(3, 1280))
    features = centres[labels] + 0.1 * rng.normal(size=(6, 1280))
    embedding = fit_embedding("lda", features, labels, None, {"lda": {"shrinkage": "auto"}})
    mapped = embedding.transform(features)
    assert mapped.shape == (6, 2) and np.isfinite(mapped).all()
    assert "fitting with the SVD solver instead" in caplog.text  # the run goes on; LDA on 6 images means little


def test_mlp_space_is_the_classifiers_last_hidden_layer(blobs, mlp):
    features, labels = blobs
    vectors = fit_embedding("mlp", features, labels, mlp, OPTIONS).transform(features)
    hidden = np.maximum(((features - mlp.scaler_mean) / mlp.scaler_scale) @ mlp.weights[0] + mlp.biases[0], 0)
    assert np.allclose(vectors, l2_normalise(hidden), atol=1e-5)


def test_a_fitted_space_reads_back_from_hdf5_and_refuses_unknown_steps(blobs, mlp, tmp_path: Path):
    features, labels = blobs
    for name in SPACES:
        embedding = fit_embedding(name, features, labels, mlp, OPTIONS)
        save_embedding(tmp_path / f"{name}.h5", embedding, {"pca": "8"})
        again = load_embedding(tmp_path / f"{name}.h5")
        assert again.space == name and [s.kind for s in again.steps] == [s.kind for s in embedding.steps]
        assert np.array_equal(again.transform(features), embedding.transform(features)), name
    import h5py

    with h5py.File(tmp_path / "lda.h5", "r+") as f:
        f.attrs["steps"] = json.dumps(["l2", "sigmoid"])
    with pytest.raises(ValueError, match="sigmoid"):
        load_embedding(tmp_path / "lda.h5")


def test_query_expansion_and_dba_average_with_the_nearest_neighbours():
    gallery = l2_normalise(np.array([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]], dtype=np.float32))
    query = l2_normalise(np.array([[1.0, 0.1]], dtype=np.float32))
    expanded = expand_queries(query, gallery, np.array([[0, 1]]), n=2, alpha=0.0, normalised=True)
    assert np.allclose(expanded, l2_normalise(query + gallery[0] + gallery[1]), atol=1e-6)
    # alpha weights neighbours by cos^alpha: a large alpha keeps only the most similar
    sharp = expand_queries(query, gallery, np.array([[0, 2]]), n=2, alpha=50.0, normalised=True)
    weights = (query @ gallery[[0, 2]].T)[0] ** 50
    assert weights[0] > 0.5 and weights[1] < 1e-40
    assert np.allclose(sharp, l2_normalise(query + weights[0] * gallery[0] + weights[1] * gallery[2]), atol=1e-6)
    augmented = augment_database(gallery, k=1, alpha=0.0, normalised=True)
    # each vector with its nearest other one, weighted by cos^alpha
    assert np.allclose(augmented[0], l2_normalise((gallery[0] + gallery[1])[None])[0], atol=1e-6)
    # (-1, 0)'s nearest other is (0, 1), orthogonal: weight 0 with alpha 1, so it stays as it was
    assert np.allclose(augment_database(gallery, k=1, alpha=1.0, normalised=True)[3], gallery[3], atol=1e-6)
    # in an unnormalised space the result is a weighted mean, on the data's scale
    raw = np.array([[0.0, 10.0], [0.0, 12.0], [5.0, 0.0]])
    mean = augment_database(raw, k=1, alpha=0.0, normalised=False)
    assert np.allclose(mean[0], [0.0, 11.0])


def test_an_embedding_applies_its_steps_in_order():
    from cbir.fitting.spaces import Step

    embedding = Embedding("t", [Step("scale", np.array([2.0, -1.0]), np.array([0.0, 0.0])), Step("relu")])
    assert np.array_equal(embedding.transform(np.array([[1.0, 1.0]])), [[2.0, 0.0]])
    assert not embedding.normalised
