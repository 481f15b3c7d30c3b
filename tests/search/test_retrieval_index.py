"""Each retrieval mode against a brute-force reference, including ties."""

import numpy as np
import pytest

from cbir.evaluation.metrics import overlap_at
from cbir.fitting.kmeans import fit_intra_class_kmeans
from cbir.search.index import FaissSearch, RetrievalIndex


def brute_force(query, gallery, candidates, top_k, metric):
    """Rank candidates by distance, then by gallery position."""
    if metric == "cosine":
        gallery = gallery / np.linalg.norm(gallery, axis=1, keepdims=True)
        query = query / np.linalg.norm(query)
        distance = 1 - gallery[candidates] @ query
    else:
        distance = np.linalg.norm(gallery[candidates] - query, axis=1)
    order = sorted(range(len(candidates)), key=lambda i: (round(float(distance[i]), 9), candidates[i]))
    chosen = [int(candidates[i]) for i in order[:top_k]]
    return chosen + [-1] * (top_k - len(chosen)), [float(distance[i]) for i in order[:top_k]]


@pytest.fixture
def index_and_queries(request):
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, size=200)
    gallery = rng.normal(size=(200, 12)) + labels[:, None]
    gallery[50] = gallery[10]  # exact duplicates: ties must resolve by gallery position
    gallery[120] = gallery[10]
    clusters = fit_intra_class_kmeans(gallery, labels, 3, seed=0, n_init=2)
    index = RetrievalIndex(gallery, labels, clusters.centroids, clusters.centroid_labels, clusters.assignments,
                           metric=request.param)  # fmt: skip
    queries = np.vstack([rng.normal(size=(30, 12)) + 1.5, gallery[10:11] + 1e-9])
    predicted = rng.integers(0, 4, size=len(queries))
    predicted[-1] = labels[10]
    return index, gallery, labels, clusters, queries, predicted, request.param


@pytest.mark.parametrize("index_and_queries", ["euclidean", "cosine"], indirect=True)
def test_every_mode_equals_brute_force(index_and_queries):
    index, gallery, labels, clusters, queries, predicted, metric = index_and_queries
    top_k = 5
    results = {mode: index.search(queries, mode, top_k, predicted) for mode in ("clustered", "class", "global")}
    for q, query in enumerate(queries):
        in_class = np.flatnonzero(labels == predicted[q])
        centroid_ids = np.flatnonzero(clusters.centroid_labels == predicted[q])
        centroids = clusters.centroids[centroid_ids]
        if metric == "cosine":
            unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)  # noqa: E731
            nearest = centroid_ids[np.argmin(np.linalg.norm(unit(centroids) - unit(query), axis=1))]
        else:
            nearest = centroid_ids[np.argmin(np.linalg.norm(centroids - query, axis=1))]
        members = np.flatnonzero(clusters.assignments == nearest)
        for mode, candidates in (("clustered", members), ("class", in_class), ("global", np.arange(len(gallery)))):
            expected, distances = brute_force(query, gallery, candidates, top_k, metric)
            assert list(results[mode][0][q]) == expected, (mode, q)
            assert np.allclose(results[mode][1][q][: len(distances)], distances, atol=1e-6)


@pytest.mark.parametrize("index_and_queries", ["euclidean"], indirect=True)
def test_ties_resolve_by_gallery_position(index_and_queries):
    index, *_, queries, _, _ = index_and_queries
    indices, _ = index.search(queries[-1:], "global", 3)
    assert list(indices[0]) == [10, 50, 120]


def test_small_cluster_pads_results():
    gallery = np.array([[0.0, 0.0], [1.0, 0.0], [10.0, 0.0]])
    index = RetrievalIndex(gallery, np.array([0, 0, 1]), gallery[[0, 2]], np.array([0, 1]), np.array([0, 0, 1]))
    indices, distances = index.search(np.array([[9.0, 0.0]]), "clustered", 3, np.array([1]))
    assert list(indices[0]) == [2, -1, -1]
    assert distances[0][0] == pytest.approx(1.0) and np.isinf(distances[0][1:]).all()


def test_unknown_mode_and_missing_prediction_are_errors():
    gallery = np.zeros((2, 2))
    index = RetrievalIndex(gallery, np.array([0, 1]), gallery, np.array([0, 1]), np.array([0, 1]))
    with pytest.raises(ValueError, match="not one of"):
        index.search(gallery, "fuzzy", 1)
    with pytest.raises(ValueError, match="needs the predicted class"):
        index.search(gallery, "class", 1)


def test_faiss_flat_equals_exact_search_and_ivf_is_judged_by_recall():
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(800, 16)).astype(np.float32)
    queries = rng.normal(size=(50, 16)).astype(np.float32)
    labels = np.zeros(800, dtype=int)
    index = RetrievalIndex(gallery, labels, gallery[:1], np.array([0]), np.zeros(800, dtype=int))
    exact, exact_distances = index.search(queries, "global", 10)
    flat, flat_distances = FaissSearch(gallery, "flat").search(queries, 10)
    assert np.array_equal(flat, exact)
    assert np.allclose(flat_distances, exact_distances, atol=1e-4)
    ivf = FaissSearch(gallery, "ivf", nlist=16, nprobe=16)  # visiting every list is exact
    assert ivf.nlist == 16
    assert overlap_at(ivf.search(queries, 10)[0], exact, 10) == pytest.approx(1.0)
    coarse = FaissSearch(gallery, "ivf", nlist=16, nprobe=1)
    assert 0.2 < overlap_at(coarse.search(queries, 10)[0], exact, 10) < 1.0
    assert FaissSearch(gallery[:100], "ivf", nlist=16).nlist == 2  # >= 39 training points per list


def test_partial_top_k_equals_a_full_stable_sort_even_with_many_ties():
    from cbir.search.index import smallest_columns

    rng = np.random.default_rng(0)
    for _ in range(20):
        distances = rng.integers(0, 4, size=(7, 30)).astype(float)  # heavy ties
        for k in (1, 3, 10, 30, 40):
            expected = np.argsort(distances, axis=1, kind="stable")[:, :k]
            assert np.array_equal(smallest_columns(distances, k)[:, :k], expected)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_float32_screening_returns_the_float64_ranking(metric, dtype, monkeypatch):
    """Large groups are screened in float32 and re-ranked in float64: the answer must not change,
    even for distances that differ below float32's resolution and for exact duplicates."""
    import cbir.search.index as retrieve

    rng = np.random.default_rng(7)
    n, dim = 3000, 40
    labels = rng.integers(0, 3, size=n)
    gallery = (rng.normal(size=(n, dim)) * 5 + labels[:, None]).astype(dtype)
    base = gallery[0].astype(np.float64)
    for j, position in enumerate(range(100, 140)):  # near-ties: 1e-9 apart, invisible in float32
        gallery[position] = base + 1e-9 * (40 - j) * np.eye(dim)[0]
    gallery[2000] = gallery[100]  # an exact duplicate of a near-tie
    # a shell of images around a far query, radii 1e-7 apart: float32 ranks them almost at random
    far = np.full(dim, 30.0)
    directions = rng.normal(size=(600, dim))
    radii = 1.0 + 1e-7 * rng.permutation(600)
    gallery[2200:2800] = far + directions / np.linalg.norm(directions, axis=1, keepdims=True) * radii[:, None]
    queries = np.vstack([rng.normal(size=(25, dim)) * 5, far[None], base[None] + 1e-3])
    predicted = rng.integers(0, 3, size=len(queries))
    clusters = fit_intra_class_kmeans(gallery, labels, 2, seed=0, n_init=1)
    index = RetrievalIndex(gallery, labels, clusters.centroids, clusters.centroid_labels, clusters.assignments,
                           metric=metric)  # fmt: skip
    screened = {mode: index.search(queries, mode, 10, predicted) for mode in ("class", "global")}
    import cbir.distances

    monkeypatch.setattr(cbir.distances, "SCREEN_BLOCK_ELEMENTS", 7000)  # a few queries per block: the same answers
    for mode, (indices, distances) in screened.items():
        blocked_indices, blocked_distances = index.search(queries, mode, 10, predicted)
        assert np.array_equal(indices, blocked_indices), mode
        assert np.allclose(distances, blocked_distances, rtol=1e-9, atol=1e-9), mode
    monkeypatch.setattr(retrieve, "FLOAT32_SCREEN_MIN_MEMBERS", n + 1)  # plain float64 everywhere
    for mode, (indices, distances) in screened.items():
        plain_indices, plain_distances = index.search(queries, mode, 10, predicted)
        assert np.array_equal(indices, plain_indices), mode
        # both are float64 values of the same expansion, summed in another order
        assert np.allclose(distances, plain_distances, rtol=1e-9, atol=1e-9), mode
    if metric == "euclidean":
        # float64: the near-ties in distance order, the duplicate right after its twin; float32 rounds
        # them all onto image 0, so they tie and come in gallery order
        expected = [100, 2000, 101, 102] if dtype == np.float64 else [0, 100, 101, 102]
        assert list(screened["global"][0][-1][:4]) == expected
    if metric == "euclidean" and dtype == np.float64:  # the shell's smallest radii, in order
        assert list(screened["global"][0][-2]) == list(2200 + np.argsort(radii)[:10])


def test_auto_ivf_lists_follow_the_square_root_of_the_gallery():
    from cbir.search.index import ivf_lists

    assert ivf_lists(16, 1_000_000) == 16
    assert ivf_lists("auto", 1_000_000) == 4000
    assert ivf_lists("auto", 10_000) == 400
    gallery = np.random.default_rng(0).normal(size=(2000, 8)).astype(np.float32)
    # 4 * sqrt(2000) = 179 lists, clamped to 2000 // 39 = 51 so that every list has 39 training points
    assert FaissSearch(gallery, "ivf", nlist="auto", nprobe=4).nlist == 51
