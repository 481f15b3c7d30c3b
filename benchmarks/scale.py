"""Scale: cbir's model and index stages on N synthetic images (default 1,000,000), with a 10M estimate.

Synthetic 512-D float32 features (seeded): one Gaussian blob per class around a random centre,
a per-class spread, a decaying spectrum (axis i scaled by (1 + i)^-0.75, so that PCA to 128 keeps
most of the variance, as with CNN codes) and Zipf class sizes (class c gets a share proportional
to 1 / (c + 1): with 300 classes the largest holds ~16 % of the images, so at 1M it exceeds
kmeans.exact_max_images and takes the MiniBatchKMeans path). They are written to a feature file
in the layout of the extraction stage (``features``, ``ids``, ``paths``, ``labels``), then every
stage runs in its own child process (its wall time and peak RSS its own), reading the previous
stage's files from the work folder:

- ``generate``: the feature file and the held-out query features with their labels (max(``--queries``,
  ``--eval-queries``) of them; the query stages use the first ``--queries``), in blocks;
- ``pca-incremental`` / ``pca-sample``: ``cbir.fitting.pca.fit_pca_basis`` on ``FeatureRows`` (the
  workflow's large-data methods), to ``--components``; the incremental basis is the one used on;
- ``project``: every row through the basis in blocks, into a gallery file;
- ``kmeans-class``: ``cbir.fitting.kmeans.fit_intra_class_kmeans`` (k = ``--k`` per class,
  ``method="auto"``, the workflow's call) on the whole projected gallery in memory;
- ``kmeans-global``: faiss k-means with k = sqrt(N) over the collection (no labels: the coarse
  quantiser of an inverted file), trained on 256 points per centroid, then every row assigned;
- ``ivf16``: ``cbir.search.index.FaissSearch`` IVF with the workflow's default nlist 16 / nprobe 4;
- ``ivf``: ``FaissSearch`` IVF with nlist = sqrt(N) and ``--nprobe``;
- ``ivfpq``: ``faiss.IndexIVFPQ`` (cbir has none), nlist = sqrt(N), ``--pq-m`` sub-quantisers of
  8 bits, trained on ``--train-sample`` rows, filled in blocks;
- ``query-flat``: exact ``IndexFlatL2`` filled in blocks: the ground truth of ``--queries``
  queries, batched and single latency;
- ``query-ivf16`` / ``query-ivf`` / ``query-ivfpq``: the same queries, recall@10 against flat;
- ``evaluate``: the workflow's bounded evaluation of a labelled cell (``evaluate_cell``, ``retrieval_quality``)
  on the projected gallery: at most ``--eval-queries`` (retrieval.eval_queries, 2,000) held-out queries drawn
  by ``stratified_sample``, P@10 from ``RetrievalIndex`` global top-20 search (one centroid per class),
  mAP over the whole ranking from ``exact_rank_figures`` (relevant: same label), each with its 95 % interval
  (``QuerySample``); seconds of the search, of the ranks and in all.

    python benchmarks/scale.py                                   # 1,000,000 images (hours on 2 cores)
    python benchmarks/scale.py --n 20000 --queries 200           # a quick check
    python benchmarks/scale.py --n 1000000 --keep /data/scale --stages ivfpq,query-ivfpq

Children run with OMP_WAIT_POLICY=PASSIVE unless it is set (spinning OpenMP threads are many times
slower on a busy machine); timings are of the stage's work, after its libraries are imported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import cpu_model, print_table, record

BLOCK = 65_536  # rows per block read or written
TARGET = 10_000_000  # the size every stage is extrapolated to
TOP_K = 10
SINGLE_QUERIES = 100  # queries timed one at a time


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- the stages (each runs in a child process) -------------------------------------------------


def n_lists(n: int) -> int:
    """nlist ~ sqrt(N): the usual inverted-file size (faiss's guide: 4 sqrt(N) to 16 sqrt(N) at most)."""
    return max(1, round(math.sqrt(n)))


def components(args: argparse.Namespace) -> int:
    return min(args.components, args.dim)


def pq_m(args: argparse.Namespace) -> int:
    m = args.pq_m
    while components(args) % m:
        m //= 2
    return m


def stage_generate(work: Path, args: argparse.Namespace) -> dict:
    import h5py
    import numpy as np

    from cbir.io import STRING_DTYPE, save_arrays, write_attrs

    rng = np.random.default_rng(args.seed)
    share = 1.0 / np.arange(1, args.classes + 1)
    share /= share.sum()
    centres = rng.standard_normal((args.classes, args.dim), dtype=np.float32)
    spread = rng.uniform(0.35, 0.7, args.classes).astype(np.float32)
    spectrum = ((1.0 + np.arange(args.dim)) ** -0.75).astype(np.float32)

    def rows(labels: np.ndarray) -> np.ndarray:
        noise = rng.standard_normal((len(labels), args.dim), dtype=np.float32)
        return (centres[labels] + spread[labels, None] * noise) * spectrum

    labels = rng.choice(args.classes, size=args.n, p=share).astype(np.int64)
    chunk = max(1, min(args.n, (1 << 20) // (args.dim * 4)))  # as cbir.extraction.features.extract_to_hdf5
    with h5py.File(work / "features.h5", "w") as f:
        features = f.create_dataset("features", shape=(args.n, args.dim), dtype=np.float32, chunks=(chunk, args.dim))
        ids = f.create_dataset("ids", shape=(args.n,), dtype=STRING_DTYPE, chunks=True)
        paths = f.create_dataset("paths", shape=(args.n,), dtype=STRING_DTYPE, chunks=True)
        f.create_dataset("labels", data=labels)
        write_attrs(f, {"synthetic": True, "seed": args.seed, "classes": args.classes, "complete": True})
        for start in range(0, args.n, BLOCK):
            block = labels[start : start + BLOCK]
            features[start : start + len(block)] = rows(block)
            names = [f"{i:08d}" for i in range(start, start + len(block))]
            ids[start : start + len(block)] = names
            paths[start : start + len(block)] = [f"synthetic/{c}/{i}.jpg" for c, i in zip(block, names, strict=True)]
    query_labels = rng.choice(args.classes, size=args.queries, p=share).astype(np.int64)
    queries = rows(query_labels)
    extra = max(0, args.eval_queries - args.queries)  # drawn after, so that the first --queries stay as they were
    if extra:
        extra_labels = rng.choice(args.classes, size=extra, p=share).astype(np.int64)
        query_labels, queries = (
            np.concatenate([query_labels, extra_labels]),
            np.concatenate([queries, rows(extra_labels)]),
        )
    save_arrays(work / "queries.h5", {"features": queries, "labels": query_labels})
    largest = int(np.bincount(labels).max())
    size_mb = (work / "features.h5").stat().st_size / 2**20
    return {"note": f"{len(np.unique(labels))} classes, largest {largest}, {size_mb:.0f} MB file"}


def stage_pca(work: Path, args: argparse.Namespace, method: str) -> dict:
    from cbir.fitting.pca import FeatureRows, fit_pca_basis, save_projection

    rows = FeatureRows(work / "features.h5")
    basis = fit_pca_basis(rows, components(args), seed=args.seed, method=method, batch_size=4096,
                          sample_size=args.pca_sample)  # fmt: skip
    save_projection(work / f"basis-{method}.h5", basis, {"method": method, "n_train": len(rows)})
    kept = float(basis.explained_variance_ratio.sum())
    return {"note": f"{components(args)} components keep {kept:.3f} of the variance"}


def stage_project(work: Path, args: argparse.Namespace) -> dict:
    import h5py
    import numpy as np

    from cbir.fitting.pca import FeatureRows, load_projection
    from cbir.io import STRING_DTYPE

    projection = load_projection(work / "basis-incremental.h5")
    rows = FeatureRows(work / "features.h5")
    dim = components(args)
    with h5py.File(work / "features.h5", "r") as source, h5py.File(work / "gallery.h5", "w") as f:
        out = f.create_dataset("features", shape=(len(rows), dim), dtype=np.float32,
                               chunks=(max(1, min(len(rows), (1 << 20) // (dim * 4))), dim))  # fmt: skip
        ids = f.create_dataset("ids", shape=(len(rows),), dtype=STRING_DTYPE, chunks=True)
        f.create_dataset("labels", data=source["labels"][()])
        for start in range(0, len(rows), BLOCK):
            out[start : start + BLOCK] = projection.transform(rows[start : start + BLOCK])
            ids[start : start + BLOCK] = source["ids"][start : start + BLOCK]
    return {}


def read_gallery(work: Path):
    """The projected gallery, whole (what cbir's in-memory stages take)."""
    import h5py

    with h5py.File(work / "gallery.h5", "r") as f:
        return f["features"][()], f["labels"][()]


def gallery_blocks(work: Path):
    import h5py

    with h5py.File(work / "gallery.h5", "r") as f:
        n = f["features"].shape[0]
        for start in range(0, n, BLOCK):
            yield f["features"][start : start + BLOCK]


def stage_kmeans_class(work: Path, args: argparse.Namespace) -> dict:
    import warnings
    from collections import Counter

    from cbir.fitting.kmeans import fit_intra_class_kmeans

    features, labels = read_gallery(work)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # classes smaller than k (tiny runs)
        clusters = fit_intra_class_kmeans(features, labels, args.k, seed=args.seed, n_init=10, max_iter=300,
                                          method="auto", exact_max_images=args.kmeans_exact_max,
                                          batch_size=4096)  # fmt: skip
    used = Counter(clusters.methods.values())
    return {"note": f"{len(clusters.centroids)} centroids; " + ", ".join(f"{m} x{c}" for m, c in sorted(used.items()))}


def stage_kmeans_global(work: Path, args: argparse.Namespace) -> dict:
    import faiss
    import numpy as np

    from cbir.fitting.pca import FeatureRows

    k = n_lists(args.n)
    rows = FeatureRows(work / "gallery.h5")
    size = min(len(rows), 256 * k)
    chosen = np.sort(np.random.default_rng(args.seed).choice(len(rows), size=size, replace=False))
    sample = np.concatenate([rows[chosen[i : i + BLOCK]] for i in range(0, size, BLOCK)])
    start = time.perf_counter()
    kmeans = faiss.Kmeans(rows.dim, k, niter=20, seed=args.seed, max_points_per_centroid=256)
    kmeans.train(sample)
    trained = time.perf_counter() - start
    counts = np.zeros(k, dtype=np.int64)
    for block in gallery_blocks(work):
        _, assigned = kmeans.index.search(np.ascontiguousarray(block), 1)
        counts += np.bincount(assigned[:, 0], minlength=k)
    empty = int((counts == 0).sum())
    return {"note": f"k={k}, train {trained:.1f} s on {size}, largest cluster {counts.max()}, empty {empty}"}


def write_search(work: Path, name: str, search) -> None:
    import faiss

    faiss.write_index(search.index, str(work / f"{name}.faiss"))


def stage_ivf(work: Path, args: argparse.Namespace, nlist: int, nprobe: int, name: str) -> dict:
    from cbir.search.index import FaissSearch

    features, _ = read_gallery(work)
    search = FaissSearch(features, "ivf", "euclidean", nlist=nlist, nprobe=nprobe, seed=args.seed)
    write_search(work, name, search)
    return {"note": f"nlist {search.nlist}, nprobe {search.index.nprobe}"}


def stage_ivfpq(work: Path, args: argparse.Namespace) -> dict:
    import faiss
    import numpy as np

    from cbir.fitting.pca import FeatureRows

    rows = FeatureRows(work / "gallery.h5")
    nlist, m = n_lists(args.n), pq_m(args)
    size = min(len(rows), args.train_sample)
    chosen = np.sort(np.random.default_rng(args.seed).choice(len(rows), size=size, replace=False))
    sample = np.concatenate([rows[chosen[i : i + BLOCK]] for i in range(0, size, BLOCK)])
    index = faiss.IndexIVFPQ(faiss.IndexFlatL2(rows.dim), rows.dim, nlist, m, 8)
    index.cp.seed = args.seed
    start = time.perf_counter()
    index.train(sample)
    trained = time.perf_counter() - start
    del sample
    for block in gallery_blocks(work):
        index.add(np.ascontiguousarray(block))
    index.nprobe = min(args.nprobe, nlist)
    faiss.write_index(index, str(work / "ivfpq.faiss"))
    return {"note": f"nlist {nlist}, m {m} x 8 bits, nprobe {index.nprobe}, train {trained:.1f} s on {size}"}


def load_queries(work: Path, n: int):
    """The first ``n`` held-out queries, projected through the incremental basis, and their labels."""
    from cbir.fitting.pca import load_projection
    from cbir.io import load_arrays

    arrays, _ = load_arrays(work / "queries.h5")
    projected = load_projection(work / "basis-incremental.h5").transform(arrays["features"][:n])
    return projected, arrays["labels"][:n]


def latency(search, queries) -> tuple:
    """(indices of the batched search, ms per query batched, median ms of single queries)."""
    import numpy as np

    start = time.perf_counter()
    indices = search(queries)
    batched = (time.perf_counter() - start) * 1000 / len(queries)
    single = []
    for query in queries[:SINGLE_QUERIES]:
        start = time.perf_counter()
        search(query[None, :])
        single.append((time.perf_counter() - start) * 1000)
    return indices, batched, float(np.median(single))


def stage_query_flat(work: Path, args: argparse.Namespace) -> dict:
    import faiss
    import numpy as np

    queries, _ = load_queries(work, args.queries)
    index = faiss.IndexFlatL2(queries.shape[1])
    for block in gallery_blocks(work):
        index.add(np.ascontiguousarray(block))
    indices, batched, single = latency(lambda q: index.search(q, TOP_K)[1], queries)
    np.save(work / "truth.npy", indices)
    return {"ms_batched": batched, "ms_single": single, "recall_at_10": 1.0}


def stage_query(work: Path, args: argparse.Namespace, name: str) -> dict:
    import faiss
    import numpy as np

    from cbir.search.index import FaissSearch

    queries, _ = load_queries(work, args.queries)
    truth = np.load(work / "truth.npy")
    index = faiss.read_index(str(work / f"{name}.faiss"))
    if name.startswith("ivf") and not name.startswith("ivfpq"):  # cbir's search on the stored index
        search = FaissSearch.__new__(FaissSearch)
        search.index, search.metric, search.kind, search.nlist = index, "euclidean", "ivf", index.nlist
        run = lambda q: search.search(q, TOP_K)[0]  # noqa: E731
    else:
        run = lambda q: index.search(q, TOP_K)[1]  # noqa: E731
    indices, batched, single = latency(run, queries)
    hits = [len(set(a) & set(b)) for a, b in zip(indices.tolist(), truth.tolist(), strict=True)]
    return {"ms_batched": batched, "ms_single": single, "recall_at_10": float(np.mean(hits)) / TOP_K,
            "note": f"nlist {index.nlist}, nprobe {index.nprobe}"}  # fmt: skip


def stage_evaluate(work: Path, args: argparse.Namespace) -> dict:
    """evaluate_cell's labelled figures of the global search, as the workflow computes them (on the CPU)."""
    import numpy as np

    from cbir.evaluation.ranking import QuerySample, exact_rank_figures, stratified_sample
    from cbir.search.index import RetrievalIndex

    features, labels = read_gallery(work)
    classes = np.unique(labels)
    centroids = np.stack([features[labels == c].mean(axis=0) for c in classes])  # one per class
    index = RetrievalIndex(features, labels, centroids, classes, labels)
    del features  # the index holds its own float64 and float32 copies
    all_queries, all_labels = load_queries(work, max(args.queries, args.eval_queries))
    start = time.perf_counter()
    rows = stratified_sample(all_labels, args.eval_queries, args.seed)
    queries, query_labels = index.prepare(all_queries[rows]), all_labels[rows]
    relevant = query_labels[:, None] == labels[None, :]  # (queries, gallery) bytes
    share = float(np.bincount(labels)[query_labels].sum() / relevant.size)  # of the matrix that is relevant
    sample = QuerySample.of(all_labels, rows)
    searched = time.perf_counter()
    indices, _ = index.search(queries, "global", 20)
    hits = np.take_along_axis(relevant, indices, axis=1) & (indices >= 0)
    precision = hits[:, :TOP_K].sum(axis=1) / TOP_K
    ranked = time.perf_counter()
    figures = exact_rank_figures(queries, index.gallery, relevant, precision_at=(TOP_K,))
    done = time.perf_counter()
    map_mean, map_ci = sample.mean_and_interval(figures["ap"])
    p10_mean, p10_ci = sample.mean_and_interval(precision)
    agree = bool(np.array_equal(precision, figures[f"precision_at_{TOP_K}"]))  # the search is exact: same P@10
    end = time.perf_counter()
    result = {"queries": len(rows), "search_s": ranked - searched, "ranks_s": done - ranked, "eval_s": end - start,
              "map": map_mean, "map_ci95": map_ci, "precision_at_10": p10_mean, "precision_at_10_ci95": p10_ci,
              "relevance_mb": relevant.nbytes / 2**20, "relevant_share": share,
              "p10_search_equals_ranks": agree}  # fmt: skip
    result["note"] = (
        f"{len(rows)} of {len(all_labels)} queries: search {result['search_s']:.1f} s, "
        f"ranks {result['ranks_s']:.1f} s, eval {result['eval_s']:.1f} s; "
        f"mAP {map_mean:.3f} ± {map_ci:.3f}, P@10 {p10_mean:.3f} ± {p10_ci:.3f}"
        + ("" if agree else "; P@10 of search and ranks DIFFER")
    )
    return result


# stage: (run, time exponent in N, memory exponent in N (of what the stage adds), assumption, what to do at 10M)
STAGES = {
    "generate": (
        stage_generate,
        1.0,
        0.0,
        "time ~N; memory: one block (labels ~N, small)",
        "none needed: written in blocks",
    ),
    "pca-incremental": (
        lambda w, a: stage_pca(w, a, "incremental"),
        1.0,
        0.0,
        "time ~N (one IncrementalPCA step per 4096 rows); memory: one batch",
        "none needed: streamed",
    ),
    "pca-sample": (
        lambda w, a: stage_pca(w, a, "sample"),
        1.0,
        0.0,
        "time: reading the sample ~N (rows spread over the file), the fit constant; memory: the sample",
        "none needed: sampled",
    ),
    "project": (
        stage_project,
        1.0,
        0.0,
        "time ~N; memory: one block",
        "none needed here; the workflow's project.py loads the whole split (see report)",
    ),
    "kmeans-class": (
        stage_kmeans_class,
        1.0,
        1.0,
        "time ~N (Lloyd per class; MiniBatch steps ~ class size); memory ~N: the whole gallery",
        "fit on a sample per class and assign in blocks (MiniBatchKMeans partial_fit), or memory-map the gallery",
    ),
    "kmeans-global": (
        stage_kmeans_global,
        1.5,
        0.5,
        "k = sqrt(N): training on 256 k points ~N, assigning N rows to k centroids ~N^1.5; memory: the sample ~sqrt(N)",
        "none needed: sampled training, blocked assignment",
    ),
    "ivf16": (
        lambda w, a: stage_ivf(w, a, 16, 4, "ivf16"),
        1.0,
        1.0,
        "nlist fixed: time ~N; memory ~N: the gallery and the index (2 copies)",
        "use IVF-PQ (codes, not vectors) or add in blocks",
    ),
    "ivf": (
        lambda w, a: stage_ivf(w, a, n_lists(a.n), a.nprobe, "ivf"),
        1.5,
        1.0,
        "nlist = sqrt(N): adding ~N^1.5; memory ~N: the gallery and the index (2 copies)",
        "use IVF-PQ (codes, not vectors), add in blocks",
    ),
    "ivfpq": (
        stage_ivfpq,
        1.5,
        None,
        "nlist = sqrt(N): adding ~N^1.5; memory: the training sample (constant), "
        "plus m + 8 bytes per image (code and id; x1.5 for the lists' spare capacity)",
        "none needed: codes are small; on-disk inverted lists beyond",
    ),
    "query-flat": (
        stage_query_flat,
        1.0,
        1.0,
        "per query ~N; memory ~N: every vector",
        "search the gallery in blocks (exact, slow) or use IVF/IVF-PQ",
    ),
    "query-ivf16": (
        lambda w, a: stage_query(w, a, "ivf16"),
        1.0,
        1.0,
        "nlist fixed: per query ~N (nprobe/16 of the gallery); memory ~N: the index",
        "raise nlist with N (retrieval.faiss.nlist ~ sqrt(N))",
    ),
    "query-ivf": (
        lambda w, a: stage_query(w, a, "ivf"),
        0.5,
        1.0,
        "nlist = sqrt(N): per query ~sqrt(N); memory ~N: the index",
        "use IVF-PQ",
    ),
    "query-ivfpq": (
        lambda w, a: stage_query(w, a, "ivfpq"),
        0.5,
        1.0,
        "nlist = sqrt(N): per query ~sqrt(N); memory ~N: the codes",
        "none needed",
    ),
    "evaluate": (
        stage_evaluate,
        1.0,
        None,
        "queries fixed: time ~N (a top-k search and a sort of N distances per query); memory: the peak plus, per "
        "further image, its column of the relevance matrix (queries bytes) and the gallery in RetrievalIndex "
        "(float64 and float32 copies: 12 x components bytes, and ~40 of norms, labels and members), and the ranks "
        "of its relevant images (8 bytes x queries x the share of the matrix that is relevant; the same classes)",
        "rank against the gallery in blocks, relevance from the labels per block (no queries x N matrix)",
    ),
}


def child(stage: str, work: Path, args: argparse.Namespace) -> dict:
    # the libraries first: their import is neither in the stage's time nor in what it adds to memory
    import faiss  # noqa: F401
    import h5py  # noqa: F401
    import numpy  # noqa: F401

    import cbir.io  # noqa: F401

    if stage.startswith("pca"):
        import sklearn.decomposition
    if stage == "kmeans-class":
        import sklearn.cluster  # noqa: F401
    if stage == "evaluate":
        from cbir.evaluation import ranking  # noqa: F401
        from cbir.search import index  # noqa: F401
    base = rss_mb()
    start = time.perf_counter()
    result = STAGES[stage][0](work, args)
    return {"stage": stage, "wall_s": time.perf_counter() - start, "peak_rss_mb": rss_mb(), "base_rss_mb": base,
            **result}  # fmt: skip


# --- the parent ---------------------------------------------------------------------------------


def total_ram_mb() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def estimate(row: dict, args: argparse.Namespace, ram_mb: float) -> None:
    n = args.n
    _, time_exp, mem_exp, _, _ = STAGES[row["stage"]]
    factor = TARGET / n
    row["est_10m_s"] = row["wall_s"] * factor**time_exp
    grown = max(0.0, row["peak_rss_mb"] - row["base_rss_mb"])
    if row["stage"] == "evaluate":  # what grows: the relevance matrix (queries x N bytes) and the gallery
        per_image = row["queries"] * (1 + 8 * row["relevant_share"]) + 12 * components(args) + 40
        row["est_10m_mb"] = row["peak_rss_mb"] + per_image * (TARGET - n) / 2**20
    elif mem_exp is None:  # ivfpq: what grows is the codes and ids
        row["est_10m_mb"] = row["peak_rss_mb"] + 1.5 * (pq_m(args) + 8) * (TARGET - n) / 2**20
    else:
        row["est_10m_mb"] = row["base_rss_mb"] + grown * factor**mem_exp
    row["fits_10m"] = "yes" if row["est_10m_mb"] < 0.8 * ram_mb else "NO"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000, help="gallery images")
    parser.add_argument("--dim", type=int, default=512, help="feature dimension")
    parser.add_argument("--classes", type=int, help="default: N / 1000, between 10 and 300")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--eval-queries", type=int, default=2000, help="retrieval.eval_queries (evaluate)")
    parser.add_argument("--components", type=int, default=128, help="PCA size (at most --dim)")
    parser.add_argument("--k", type=int, default=3, help="clusters per class")
    parser.add_argument("--kmeans-exact-max", type=int, default=100_000, help="kmeans.exact_max_images")
    parser.add_argument("--pca-sample", type=int, default=100_000, help="pca_fit.sample_size")
    parser.add_argument("--nprobe", type=int, default=16, help="lists visited by ivf and ivfpq")
    parser.add_argument("--pq-m", type=int, default=16, help="IVF-PQ sub-quantisers (8 bits each)")
    parser.add_argument("--train-sample", type=int, default=100_000, help="IVF-PQ training rows")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", help="work folder, kept (default: a temporary one, removed)")
    parser.add_argument("--stages", default=",".join(STAGES), help="comma-separated, from: " + ", ".join(STAGES))
    parser.add_argument("--stage", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.classes is None:  # a few hundred blobs at scale; fewer on small runs, where each class is a fit
        args.classes = min(300, max(10, args.n // 1000))
    if args.stage:
        print(json.dumps(child(args.stage, Path(args.work), args)))
        return

    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {', '.join(unknown)} (from: {', '.join(STAGES)})")
    # OpenMP threads that sleep while waiting: spinning ones slow faiss and k-means many times over on a
    # machine that is running anything else; set OMP_WAIT_POLICY=ACTIVE to measure the default
    env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    with tempfile.TemporaryDirectory(prefix="cbir-scale-") as tmp:
        work = Path(args.keep) if args.keep else Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        rows = []
        for stage in stages:
            command = [sys.executable, __file__, *sys.argv[1:], "--stage", stage, "--work", str(work)]
            done = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
            if done.returncode != 0:
                print(f"{stage} failed:\n{done.stderr[-3000:]}", file=sys.stderr)
                rows.append({"stage": stage, "note": "FAILED"})
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(f"{stage}: {rows[-1]['wall_s']:.1f} s", file=sys.stderr, flush=True)

    ram = total_ram_mb()
    for row in rows:
        if "wall_s" in row:
            estimate(row, args, ram)
    print(f"scale: {args.n} images, {args.dim}-D, {args.classes} classes, PCA {components(args)}, "
          f"{args.queries} queries, top {TOP_K}; CPU {cpu_model()}; RAM {ram / 1024:.1f} GB")  # fmt: skip
    columns = ["stage", "wall_s", "peak_rss_mb", "est_10m_s", "est_10m_mb", "fits_10m", "recall_at_10",
               "ms_batched", "ms_single", "note"]  # fmt: skip
    print_table(rows, columns)
    print(
        f"\nestimates for {TARGET:,} images (wall x (10M/N)^a; memory: the import baseline plus what the "
        "stage added, x (10M/N)^b); fits_10m: under 80 % of RAM"
    )
    for stage in stages:
        _, time_exp, mem_exp, assumption, _ = STAGES[stage]
        print(f"  {stage}: a={time_exp:g}, b={'-' if mem_exp is None else f'{mem_exp:g}'}: {assumption}")
    if args.n < 100_000:
        print(f"  (from {args.n} images the estimates are rough: fixed costs dominate; run 1M for the real ones)")
    for row in rows:
        if row.get("fits_10m") == "NO":
            print(
                f"DOES NOT FIT at 10M: {row['stage']} (~{row['est_10m_mb'] / 1024:.0f} GB): {STAGES[row['stage']][4]}"
            )
    settings = {k: v for k, v in vars(args).items() if k not in ("stage", "work")}
    path = record("scale", rows, settings=settings, ram_mb=ram, cpu=cpu_model())
    print(f"result appended to {path}")


if __name__ == "__main__":
    main()
