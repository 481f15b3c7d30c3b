"""Search latency: every retrieval mode vs scikit-learn NearestNeighbors(algorithm="brute").

Synthetic clustered features (PCA-sized, 100-D by default) at several gallery sizes; per-query
median/p95 latency one query at a time, and batched queries per second. The ratio compares each
mode's batched throughput with scikit-learn's exact brute-force search on the same features.

    python benchmarks/search.py                    # 1k, 10k, 100k gallery images
    python benchmarks/search.py --sizes 1000,10000 --dim 50 --queries 500
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import print_table, record


def synthetic(n: int, dim: int, n_classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, size=(n_classes, dim))
    labels = rng.integers(0, n_classes, size=n)
    return (centres[labels] + rng.normal(size=(n, dim))).astype(np.float32), labels


def timed_single(search, queries: np.ndarray, predicted: np.ndarray) -> tuple[float, float]:
    from cbir.extraction.latency import clock, latency_summary

    samples = []
    for row in range(len(queries)):
        start = clock()
        search(queries[row : row + 1], predicted[row : row + 1])
        samples.append(clock() - start)
    summary = latency_summary(samples)
    return summary["median_us"], summary["p95_us"]


def timed_batch(search, queries: np.ndarray, predicted: np.ndarray, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        search(queries, predicted)
        best = min(best, time.perf_counter() - start)
    return len(queries) / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--k", type=int, default=3, help="clusters per class")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--single", type=int, default=200, help="queries timed one at a time")
    parser.add_argument("--faiss", action=argparse.BooleanOptionalAction, default=True)
    args = parser.parse_args()

    from sklearn.neighbors import NearestNeighbors

    from cbir.fitting.kmeans import fit_intra_class_kmeans
    from cbir.search.index import FaissSearch, RetrievalIndex

    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        gallery, labels = synthetic(size, args.dim, args.classes, seed=0)
        queries, query_labels = synthetic(args.queries, args.dim, args.classes, seed=1)
        clusters = fit_intra_class_kmeans(gallery, labels, args.k, n_init=1, max_iter=50)
        index = RetrievalIndex(gallery, labels, clusters.centroids, clusters.centroid_labels, clusters.assignments)
        sklearn = NearestNeighbors(n_neighbors=args.top_k, algorithm="brute").fit(gallery)
        searches = {"sklearn brute (baseline)": lambda q, p, nn=sklearn: nn.kneighbors(q, args.top_k)}
        for mode in ("clustered", "class", "global"):
            searches[mode] = lambda q, p, mode=mode, index=index: index.search(q, mode, args.top_k, p)
        if args.faiss:
            for kind in ("flat", "ivf"):
                faiss_index = FaissSearch(gallery, kind, nlist=max(16, int(np.sqrt(size))), nprobe=8)
                searches[f"faiss {kind}"] = lambda q, p, s=faiss_index: s.search(q, args.top_k)
        baseline_qps = None
        for name, search in searches.items():
            median, p95 = timed_single(search, queries[: args.single], query_labels[: args.single])
            qps = timed_batch(search, queries, query_labels)
            baseline_qps = baseline_qps or qps
            rows.append({"gallery": size, "mode": name, "single_median_us": median, "single_p95_us": p95,
                         "batched_qps": qps, "batched_us_per_query": 1e6 / qps,
                         "speedup_vs_sklearn": qps / baseline_qps})  # fmt: skip
    print(f"search: {args.dim}-D synthetic features, {args.classes} classes, k = {args.k}, top-{args.top_k}, "
          f"{args.queries} batched queries, {args.single} single")  # fmt: skip
    print_table(rows, ["gallery", "mode", "single_median_us", "single_p95_us", "batched_qps", "batched_us_per_query",
                       "speedup_vs_sklearn"])  # fmt: skip
    record("search", rows, settings=vars(args))


if __name__ == "__main__":
    main()
