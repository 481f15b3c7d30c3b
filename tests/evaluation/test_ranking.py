"""Bounded evaluation: ranks without a full sort, stratified query samples, intervals, shared neighbour searches."""

import numpy as np
import pytest

import cbir.fitting.rerank as rerank_module
from cbir.distances import squared_distances
from cbir.evaluation.metrics import average_precision, ranked_relevance
from cbir.evaluation.quality import class_average_precision
from cbir.evaluation.ranking import QuerySample, exact_rank_figures, relevant_ranks, stratified_sample
from cbir.fitting.rerank import Rerank, RerankVariants, augment_database, expand_queries, nearest_rows
from cbir.search.index import RetrievalIndex


def full_sort_figures(queries, gallery, relevant, top_k=5):
    """The figures from a full stable argsort of every query's distances, as the evaluation computed them before."""
    distances = squared_distances(queries, gallery, np.einsum("ij,ij->i", gallery, gallery))
    hits = ranked_relevance(np.argsort(distances, axis=1, kind="stable"), relevant)
    n_relevant = relevant.sum(axis=1)
    figures = {"ap": average_precision(hits, n_relevant), f"ap_at_{top_k}": average_precision(hits, n_relevant, top_k)}
    return figures | {f"precision_at_{k}": hits[:, :k].sum(axis=1) / k for k in (5, 10, 20)}


@pytest.mark.parametrize("integer_features", [False, True])
def test_ranks_of_the_relevant_images_give_the_full_sorts_figures(integer_features: bool):
    rng = np.random.default_rng(3)
    queries, gallery = rng.normal(size=(40, 6)), rng.normal(size=(300, 6))
    if integer_features:  # many equal distances: ties rank by gallery position, as a stable sort ranks them
        queries, gallery = np.round(queries), np.round(gallery)
    relevant = rng.random((40, 300)) < 0.15
    relevant[0] = False  # a query with nothing relevant scores 0
    expected = full_sort_figures(queries, gallery, relevant)
    found = exact_rank_figures(queries, gallery, relevant, top_k=5)
    assert set(found) == set(expected)
    for name, values in expected.items():
        np.testing.assert_allclose(found[name], values, atol=1e-12, err_msg=name)
    assert found["ap"][0] == 0.0


def test_relevant_ranks_follow_distance_then_gallery_position():
    distances = np.array([[0.5, 0.1, 0.5, 0.3, 0.5]])
    relevant = np.array([[False, False, True, False, True]])
    # order: 1 (0.1), 3 (0.3), 0, 2, 4 (0.5 each, by position): the relevant 2 and 4 are 4th and 5th
    assert relevant_ranks(distances, relevant)[0].tolist() == [4, 5]


@pytest.mark.parametrize("ties", ["none", "irrelevant only", "everywhere"])
def test_relevant_ranks_are_a_stable_sorts(ties: str):
    rng = np.random.default_rng(5)
    distances = rng.random((60, 500))
    relevant = rng.random((60, 500)) < 0.1
    if ties == "irrelevant only":  # as the simulated user's rankings: what was turned down shares one value
        distances[:, :40] = np.where(relevant[:, :40], distances[:, :40], np.inf)
    elif ties == "everywhere":
        distances = np.round(distances * 20)
    order = np.argsort(distances, axis=1, kind="stable")
    expected = [np.flatnonzero(np.take_along_axis(r, o, axis=0)) + 1 for r, o in zip(relevant, order, strict=True)]
    found = relevant_ranks(distances, relevant)
    assert all(np.array_equal(a, b) for a, b in zip(found, expected, strict=True))


def test_a_stratified_sample_keeps_each_class_share():
    labels = np.repeat(np.arange(6), [500, 300, 100, 60, 30, 10])
    rows = stratified_sample(labels, 100, seed=1)
    assert len(rows) == 100 and len(np.unique(rows)) == 100 and np.all(np.diff(rows) > 0)
    counts = np.bincount(labels[rows], minlength=6)
    assert np.all(np.abs(counts - np.array([500, 300, 100, 60, 30, 10]) / 10) <= 1)
    assert np.array_equal(rows, stratified_sample(labels, 100, seed=1))
    assert not np.array_equal(rows, stratified_sample(labels, 100, seed=2))
    # a class too small for its share still gets a query when there are enough to go round
    few = stratified_sample(np.repeat(np.arange(3), [1000, 1000, 2]), 10, seed=0)
    assert len(few) == 10 and set(np.repeat(np.arange(3), [1000, 1000, 2])[few]) == {0, 1, 2}
    # all of them: when there are fewer than asked, and for 0
    assert np.array_equal(stratified_sample(labels, 5000, seed=0), np.arange(1000))
    assert np.array_equal(stratified_sample(labels, 0, seed=0), np.arange(1000))


def test_the_stratified_mean_weights_each_class_by_its_share_of_all_queries():
    strata = np.repeat([0, 1], [900, 100])
    values = np.where(strata == 0, 1.0, 0.0)
    rows = np.concatenate([np.arange(10), np.arange(900, 1000)])  # class 1 over-represented in the sample
    mean, half_width = QuerySample.of(strata, rows).mean_and_interval(values[rows])
    assert mean == pytest.approx(0.9)  # not the sample's 10 / 110
    assert half_width == 0.0  # no spread inside either class
    # one stratum, every query: the plain mean and the normal interval 1.96 s / sqrt(n)
    data = np.random.default_rng(0).random(400)
    mean, half_width = QuerySample.of(np.zeros(400), np.arange(400)).mean_and_interval(data)
    assert mean == pytest.approx(data.mean())
    assert half_width == pytest.approx(1.959964 * data.std(ddof=1) / 20, rel=1e-6)


def test_the_interval_covers_the_population_figure_about_95_times_in_100():
    rng = np.random.default_rng(7)
    strata = rng.integers(0, 5, size=20000)
    values = rng.beta(2 + strata, 3, size=20000)  # per-query APs, differing by class
    truth = values.mean()
    covered = []
    for seed in range(300):
        rows = stratified_sample(strata, 200, seed)
        mean, half_width = QuerySample.of(strata, rows).mean_and_interval(values[rows])
        covered.append(abs(mean - truth) <= half_width)
    assert 0.90 <= np.mean(covered) <= 0.99


def test_the_class_searchs_average_precision_ranks_only_the_predicted_class():
    rng = np.random.default_rng(5)
    gallery, labels = rng.normal(size=(120, 4)), rng.integers(0, 3, size=120)
    index = RetrievalIndex(gallery, labels, gallery[:3], np.arange(3), np.zeros(120, dtype=np.int64) + labels)
    queries, predicted = rng.normal(size=(15, 4)), rng.integers(0, 3, size=15)
    relevant = rng.random((15, 120)) < 0.3
    found = class_average_precision(index, queries, predicted, relevant)
    for row in range(15):  # the class's images in their exact order; the other classes' never come
        members = np.flatnonzero(labels == predicted[row])
        order = members[np.argsort(((gallery[members] - queries[row]) ** 2).sum(axis=1), kind="stable")]
        hits = relevant[row, order]
        expected = (np.cumsum(hits) / np.arange(1, len(hits) + 1))[hits].sum() / relevant[row].sum()
        assert found[row] == pytest.approx(expected)


def test_rerank_variants_share_one_neighbour_search_per_gallery(monkeypatch):
    rng = np.random.default_rng(2)
    queries, gallery = rng.normal(size=(30, 8)), rng.normal(size=(200, 8))
    calls = []
    original = rerank_module.nearest_rows
    monkeypatch.setattr(rerank_module, "nearest_rows", lambda *a, **kw: calls.append(a[2]) or original(*a, **kw))
    variants = RerankVariants(queries, gallery, normalised=False, depth=10)
    settings = [Rerank(method, k, alpha) for method in ("qe", "dba", "dba_qe") for k in (3, 10) for alpha in (1.0, 3.0)]
    vectors = {rerank: variants.vectors(rerank) for rerank in settings}
    # the gallery's own neighbours once; the queries' in the plain gallery once and in each augmented gallery once
    assert len(calls) == 1 + 1 + 4 and all(depth == 10 for depth in calls)
    for rerank, (expanded, searched) in vectors.items():  # each variant as computed on its own
        own = augment_database(gallery, rerank.k, rerank.alpha, False) if rerank.augments_database else gallery
        np.testing.assert_allclose(searched, own, atol=1e-6)
        if rerank.expands_queries:
            top = original(queries, own, rerank.k)
            np.testing.assert_allclose(expanded, expand_queries(queries, own, top, rerank.k, rerank.alpha, False),
                                       atol=1e-6)  # fmt: skip
        else:
            np.testing.assert_array_equal(expanded, queries)
    # a search already made (the evaluation's global top-k) is reused: no query search in the plain gallery
    calls.clear()
    known = nearest_rows(queries, gallery, 20)
    RerankVariants(queries, gallery, False, 20, known).vectors(Rerank("qe", 5, 3.0))
    assert calls == []


@pytest.mark.parametrize("normalised", [False, True])
def test_augmentations_share_the_cosines_and_running_sums_bit_for_bit(normalised):
    rng = np.random.default_rng(5)
    queries, gallery = rng.normal(size=(4, 6)), rng.normal(size=(120, 6))
    variants = RerankVariants(queries, gallery, normalised=normalised, depth=20)
    # k growing, then falling (the running sum starts again), α alternating, one k asked twice
    for k, alpha in [(3, 1.0), (5, 3.0), (10, 1.0), (20, 3.0), (5, 1.0), (20, 1.0), (3, 3.0), (10, 1.0)]:
        alone = augment_database(gallery, k, alpha, normalised).astype(np.float64)
        np.testing.assert_array_equal(variants.augmented(k, alpha), alone)


def _clustered_gallery(dims: int, seed: int = 4) -> np.ndarray:
    """4,000 vectors around 40 centres in a 6-dimensional subspace of ``dims`` dimensions, with a little noise."""
    rng = np.random.default_rng(seed)
    subspace = np.linalg.qr(rng.normal(size=(dims, 6)))[0].T
    centres = rng.normal(scale=4.0, size=(40, 6)) @ subspace
    points = centres[rng.integers(0, 40, size=4000)] + rng.normal(size=(4000, 6)) @ subspace
    return (points + rng.normal(scale=0.05, size=(4000, dims))).astype(np.float32)


@pytest.mark.parametrize("candidates", [False, True], ids=["whole-vectors", "leading-components"])
def test_a_large_galleries_own_neighbours_come_from_an_inverted_file(monkeypatch, candidates):
    gallery = _clustered_gallery(40)
    exact = nearest_rows(gallery, gallery, 10, exclude_self=True)  # 16 million pairs: exact below the bound
    monkeypatch.setattr(rerank_module, "EXACT_NEIGHBOUR_PAIRS", 1000**2)
    # leading-components: 40 dimensions are more than twice 8, so candidates come from the 8 leading components
    monkeypatch.setattr(rerank_module, "CANDIDATE_DIMENSIONS", 8 if candidates else 256)
    used, ranked = [], []
    inverted, rank = rerank_module.inverted_file_nearest_rows, rerank_module.rank_candidates
    monkeypatch.setattr(rerank_module, "inverted_file_nearest_rows", lambda *a: used.append(1) or inverted(*a))
    monkeypatch.setattr(rerank_module, "rank_candidates", lambda *a: ranked.append(a[2].shape) or rank(*a))
    approximate = nearest_rows(gallery, gallery, 10, exclude_self=True)
    assert used
    assert ranked == ([(4000, 30)] if candidates else [])  # 3 candidates per neighbour, ranked in all 40
    assert approximate.shape == (4000, 10) and approximate.min() >= 0
    assert not (approximate == np.arange(4000)[:, None]).any()  # never a row's own
    assert all(len(set(row)) == 10 for row in approximate)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(approximate, exact, strict=True)])
    assert recall >= 0.9  # approximate, and close


def test_a_few_queries_of_a_large_gallery_are_searched_exactly(monkeypatch):
    # an inverted file's training costs more than an exact search of fewer than 40 x sqrt(N) queries
    gallery = _clustered_gallery(16)
    queries = gallery[:200] + 0.01
    monkeypatch.setattr(rerank_module, "EXACT_NEIGHBOUR_PAIRS", 1000)
    monkeypatch.setattr(rerank_module, "inverted_file_nearest_rows", lambda *a: pytest.fail("searched approximately"))
    found = nearest_rows(queries, gallery, 10)
    distances = squared_distances(queries, gallery, np.einsum("ij,ij->i", gallery, gallery))
    np.testing.assert_array_equal(found, np.argsort(distances, axis=1, kind="stable")[:, :10])


def test_exact_neighbours_screened_in_float32_are_the_float64_ones_ties_and_own_rows_included():
    # above 512 rows the exact search screens in float32: distances apart by less than float32 resolves (but
    # more than float64 rounding) must still come in float64 order, and a row's own entry is never its neighbour
    rng = np.random.default_rng(3)
    gallery = rng.normal(size=(1500, 24)) * 3
    for j, row in enumerate(range(10, 30)):  # near-ties, 1e-9 apart
        gallery[row] = gallery[0] + 1e-9 * (20 - j) * np.eye(24)[0]
    queries = gallery[:40] + 1e-3
    distances = squared_distances(queries, gallery, np.einsum("ij,ij->i", gallery, gallery))
    expected = np.argsort(distances, axis=1, kind="stable")[:, :12]
    found = rerank_module.nearest_rows_exact(queries, gallery, 12)
    np.testing.assert_array_equal(found, expected)
    assert found[0].tolist() == list(range(10, 22))  # the near-ties, the farthest from row 0 nearest

    gallery = rng.normal(size=(1500, 24)) * 3
    gallery[700] = gallery[0]  # a duplicate
    distances = squared_distances(gallery, gallery, np.einsum("ij,ij->i", gallery, gallery))
    np.fill_diagonal(distances, np.inf)
    found = rerank_module.nearest_rows_exact(gallery, gallery, 12, own=np.arange(len(gallery)))
    np.testing.assert_array_equal(found, np.argsort(distances, axis=1, kind="stable")[:, :12])
    assert found[0][0] == 700 and found[700][0] == 0


def test_candidates_are_ranked_by_their_distance_in_all_dimensions():
    gallery = np.array([[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [0.0, 1.0], [5.0, 5.0]], dtype=np.float32)
    queries = np.array([[0.0, 0.0], [1.0, 0.0]], dtype=np.float32)
    candidates = np.array([[4, 1, 3, 2], [3, 2, -1, -1]])
    ranked = rerank_module.rank_candidates(queries, gallery, candidates, 3)
    # query 0: rows 2 and 3 tie at distance 1, the lower first; query 1: two candidates for three places
    np.testing.assert_array_equal(ranked, [[2, 3, 1], [2, 3, -1]])


def test_the_gpu_ranking_gives_the_cpu_ranks_ties_included():
    pytest.importorskip("torch")
    from cbir.evaluation.ranking import cuda_relevant_ranks, evaluation_device

    rng = np.random.default_rng(8)
    queries, gallery = np.round(rng.normal(size=(30, 4))), np.round(rng.normal(size=(250, 4)))
    relevant = rng.random((30, 250)) < 0.2
    on_cpu = relevant_ranks(squared_distances(queries, gallery, np.einsum("ij,ij->i", gallery, gallery)), relevant)
    # torch's code path, on whatever device this machine has (the CPU here; CUDA on a GPU machine)
    device = "cuda" if evaluation_device("auto") == "cuda" else "cpu"
    on_torch = cuda_relevant_ranks(queries, gallery, relevant, device)
    assert all(np.array_equal(a, b) for a, b in zip(on_cpu, on_torch, strict=True))
    assert evaluation_device("cpu") == "cpu"
