"""A gallery's own nearest neighbours (what database-side augmentation needs) by the inverted file of
:func:`cbir.fitting.rerank.inverted_file_nearest_rows`: wide vectors searched in their leading principal components
for candidates, ranked in all dimensions after, against the same inverted file over the whole vectors (the
baseline, in the same run); time, the ratio, and recall@k against the exact neighbours of a seeded sample of rows.

A cell folder of a run (each space's gallery as the cell searches it), e.g. of ``benchmarks/scale_run.py``'s
Fashion-MNIST run, or a synthetic gallery:

    python benchmarks/neighbours.py --cell RUN/results/fashion_all_28/efficientnet_lite2/80-20/original \\
        --spaces raw,whiten
    python benchmarks/neighbours.py --synthetic 20000,1280
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import cpu_model, print_table, record
from threadpoolctl import threadpool_limits

import cbir.fitting.rerank as rerank


def synthetic_gallery(n: int, dims: int, seed: int = 0) -> np.ndarray:
    """``n`` vectors around 100 centres in a 32-dimensional subspace, with noise in every dimension."""
    rng = np.random.default_rng(seed)
    subspace = np.linalg.qr(rng.normal(size=(dims, 32)))[0].T
    centres = rng.normal(scale=3.0, size=(100, 32))
    points = (centres[rng.integers(0, 100, size=n)] + rng.normal(size=(n, 32))) @ subspace
    return (points + rng.normal(scale=0.1, size=(n, dims))).astype(np.float32)


def galleries(args: argparse.Namespace) -> dict[str, np.ndarray]:
    if args.synthetic:
        n, dims = (int(x) for x in args.synthetic.split(","))
        return {"synthetic": synthetic_gallery(n, dims)}
    from cbir.search.cell import load_cell

    out = {}
    for space in args.spaces.split(","):
        cell = load_cell(args.cell, args.clusters, "euclidean", None, 0, space=space, rerank=False)
        out[space] = np.asarray(cell.models.index.gallery, dtype=np.float64)
    return out


def timed(gallery: np.ndarray, k: int, candidate_dimensions: int) -> tuple[np.ndarray, float]:
    """The gallery's own k neighbours with rerank.CANDIDATE_DIMENSIONS set to ``candidate_dimensions``."""
    kept = rerank.CANDIDATE_DIMENSIONS
    rerank.CANDIDATE_DIMENSIONS = candidate_dimensions
    try:
        start = time.perf_counter()
        found = rerank.inverted_file_nearest_rows(gallery, gallery, k, exclude_self=True)
        return found, time.perf_counter() - start
    finally:
        rerank.CANDIDATE_DIMENSIONS = kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--cell", help="a cell folder: results/<dataset>/<backbone>/<split>/<pca>")
    source.add_argument("--synthetic", help="N,D: a synthetic gallery of N vectors of D dimensions")
    parser.add_argument("--spaces", default="raw", help="the cell's spaces, comma-separated")
    parser.add_argument("--clusters", type=int, default=3, help="the cell's k (which clusters file is read)")
    parser.add_argument("--k", type=int, default=20, help="neighbours per row (validation's largest k)")
    parser.add_argument("--probe", type=int, default=500, help="rows whose exact neighbours judge recall")
    parser.add_argument("--threads", type=int, default=1, help="as an evaluation job runs (threads: 1)")
    args = parser.parse_args()

    import faiss

    faiss.omp_set_num_threads(args.threads)
    rows = []
    with threadpool_limits(args.threads):
        for name, gallery in galleries(args).items():
            probe = np.sort(np.random.default_rng(1).choice(len(gallery), min(args.probe, len(gallery)), replace=False))
            truth = rerank.nearest_rows_exact(gallery[probe], gallery, args.k, probe)

            def recall(found: np.ndarray, probe: np.ndarray = probe, truth: np.ndarray = truth) -> float:
                pairs = zip(probe, truth, strict=True)
                return float(np.mean([len(set(found[row]) & set(t)) / args.k for row, t in pairs]))

            whole, whole_s = timed(gallery, args.k, gallery.shape[1])  # the baseline: no projection
            components, components_s = timed(gallery, args.k, rerank.CANDIDATE_DIMENSIONS)
            rows.append({
                "gallery": name, "n": len(gallery), "dims": gallery.shape[1], "k": args.k,
                "whole_s": whole_s, "whole_recall": recall(whole),
                "components_s": components_s, "components_recall": recall(components),
                "speed_ratio": whole_s / components_s,
            })  # fmt: skip
    dims = rerank.CANDIDATE_DIMENSIONS
    print(f"{cpu_model()}, {args.threads} thread(s); recall@{args.k} against exact on {args.probe} rows; "
          f"components: the {dims} leading ones of vectors of more than {2 * dims} dimensions")  # fmt: skip
    print_table(rows, list(rows[0]))
    record("neighbours", rows, cell=args.cell, synthetic=args.synthetic, threads=args.threads)


if __name__ == "__main__":
    main()
