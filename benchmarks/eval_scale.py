"""The evaluation at the 70,000-image scale: exact ranking figures of every test query vs a bounded sample, CPU vs CUDA.

Synthetic labelled features of the size of Fashion-MNIST's run: ``--n`` images (70,000) in ``--classes``
(10) equal classes, ``--dim``-D (256) seeded Gaussian blobs (class centres drawn with ``--separation``
times unit noise, so that the classes overlap and mAP is neither 0 nor 1), split 80-20 stratified
(``cbir.data.split.make_split``: a gallery of 56,000 and 14,000 test queries). Each row ranks the whole
gallery for each of its queries with ``cbir.evaluation.ranking.exact_rank_figures`` (float64, same label
= relevant) and gives its seconds, queries per second, mAP with its 95 % interval (``QuerySample``) and
P@10:

- ``cpu bounded``: ``--eval-queries`` (2,000) stratified queries (``stratified_sample``) on the CPU, the
  baseline: every row's ``time_vs_cpu_bounded`` is its seconds over this row's, same run;
- ``cpu full``: every test query on the CPU, only with ``--full-cpu`` (minutes on a few cores);
- ``cuda full`` / ``cuda bounded``: the same on the GPU (``device="cuda"``), when
  ``evaluation_device("auto")`` finds one, each timed after a warm-up (CUDA context, kernels).

``map_diff_vs_full``: a bounded row's mAP minus the full mAP (where a full row ran); ``ap_max_diff_vs_cpu``:
the largest per-query AP difference of a CUDA row from the CPU's on the same queries (0: the same ranks).

    python benchmarks/eval_scale.py                      # 70,000 images: CPU bounded, and CUDA where present
    python benchmarks/eval_scale.py --n 10000            # a quick check
    python benchmarks/eval_scale.py --full-cpu           # also every query on the CPU (slow)
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import print_table, record

WARMUP_QUERIES = 256


def synthetic(n: int, dim: int, n_classes: int, separation: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` float32 features in equal, seeded Gaussian blobs (unit noise around centres of scale ``separation``)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, separation, size=(n_classes, dim))
    labels = rng.permutation(np.arange(n) % n_classes)
    features = centres[labels] + rng.normal(size=(n, dim))
    return features.astype(np.float32), labels


def measure(queries, query_labels, gallery, gallery_labels, device: str) -> tuple[dict, float]:
    """The figures of ``queries`` against the whole gallery on ``device``, and the seconds (relevance included)."""
    from cbir.evaluation.ranking import exact_rank_figures

    start = time.perf_counter()
    relevant = query_labels[:, None] == gallery_labels[None, :]
    figures = exact_rank_figures(queries, gallery, relevant, device=device)
    return figures, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=70_000, help="images in all (gallery + test queries)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--separation", type=float, default=0.4, help="scale of the class centres (noise: 1)")
    parser.add_argument("--train-fraction", type=float, default=0.8)
    parser.add_argument("--eval-queries", type=int, default=2000, help="queries of the bounded rows")
    parser.add_argument("--full-cpu", action="store_true", help="also every test query on the CPU (slow)")
    parser.add_argument("--device", default="auto", help="auto (CUDA rows where a GPU is found), cpu or cuda")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from cbir.data.split import make_split
    from cbir.evaluation.ranking import QuerySample, evaluation_device, stratified_sample

    features, labels = synthetic(args.n, args.dim, args.classes, args.separation, args.seed)
    is_train = make_split(labels, args.train_fraction, args.seed)
    gallery, gallery_labels = features[is_train].astype(np.float64), labels[is_train]
    test, test_labels = features[~is_train].astype(np.float64), labels[~is_train]
    bounded = stratified_sample(test_labels, args.eval_queries, args.seed)
    everything = np.arange(len(test))
    cuda = evaluation_device(args.device) == "cuda"

    plan = [("cpu", "bounded", bounded)]
    if args.full_cpu:
        plan.append(("cpu", "full", everything))
    if cuda:
        plan += [("cuda", "full", everything), ("cuda", "bounded", bounded)]
    rows, per_query = [], {}
    for device, name, chosen in plan:
        if device == "cuda" and not any(r["device"] == "cuda" for r in rows):  # warm-up, outside the timings
            measure(test[:WARMUP_QUERIES], test_labels[:WARMUP_QUERIES], gallery, gallery_labels, "cuda")
        figures, seconds = measure(test[chosen], test_labels[chosen], gallery, gallery_labels, device)
        sample = QuerySample.of(test_labels, chosen)
        mean_ap, ap_ci = sample.mean_and_interval(figures["ap"])
        p10, p10_ci = sample.mean_and_interval(figures["precision_at_10"])
        per_query[(device, name)] = figures["ap"]
        rows.append({"row": f"{device} {name}", "device": device, "queries": len(chosen), "gallery": len(gallery),
                     "seconds": seconds, "queries_per_s": len(chosen) / seconds, "map": mean_ap, "map_ci95": ap_ci,
                     "precision_at_10": p10, "precision_at_10_ci95": p10_ci})  # fmt: skip
        print(f"{device} {name}: {len(chosen)} queries in {seconds:.2f} s", flush=True)
    baseline = rows[0]["seconds"]
    full = next((r for r in rows if r["row"].endswith(" full")), None)
    for row in rows:
        device, name = row["row"].split()
        row["time_vs_cpu_bounded"] = row["seconds"] / baseline
        if name == "bounded" and full is not None:
            row["map_diff_vs_full"] = row["map"] - full["map"]
        if device == "cuda" and ("cpu", name) in per_query:
            row["ap_max_diff_vs_cpu"] = float(np.abs(per_query[("cuda", name)] - per_query[("cpu", name)]).max())
    print(f"eval_scale: {args.n} synthetic {args.dim}-D features, {args.classes} classes (separation "
          f"{args.separation}), split {args.train_fraction:.0%}: gallery {len(gallery)}, {len(test)} test queries; "
          f"bounded: {len(bounded)} stratified; evaluation device found: {'cuda' if cuda else 'cpu only'}")  # fmt: skip
    columns = ["row", "queries", "gallery", "seconds", "queries_per_s", "time_vs_cpu_bounded", "map", "map_ci95",
               "precision_at_10"]  # fmt: skip
    optional = ["map_diff_vs_full", "ap_max_diff_vs_cpu"]
    print_table(rows, columns + [c for c in optional if any(c in r for r in rows)])
    path = record("eval_scale", rows, settings=vars(args))
    print(f"result appended to {path}")


if __name__ == "__main__":
    main()
