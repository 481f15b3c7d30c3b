"""Scale run: ``cbir index`` with its defaults on Fashion-MNIST's 70,000 images, measured per stage, with a 1M estimate.

The four gzipped IDX files (Debian's ``dataset-fashion-mnist``, /usr/share/datasets/fashion-mnist) are
exported once with the dataset source's own export (:func:`cbir.data.sources.export_fashion_mnist_png`:
``<class>/<train|test>_<index>.png``, 28 x 28 unless ``--image-size``) into ``--work``/export/ and reused
by later runs; ``cbir index`` reads the class folders as labels (split 80-20 measured, split ``all``
searched). ``cbir index`` then runs as a subprocess with ``--workdir`` ``--work``/runs/<export>[-<extra>]
(deleted first unless ``--keep``), timed as a whole; its process tree's memory is polled from /proc every
0.5 s (the sum of its processes' RSS, shared pages counted in each, and the largest process). Each
Snakemake job's ``s`` and ``max_rss`` come from ``results/benchmarks/<rule>/*.tsv``; the rules are grouped
into stages (:data:`STAGE_OF_RULE`), and each job's seconds are extrapolated to 1,000,000 images by the
exponent of N in :data:`SCALING` (extrapolate from the full run: at small N the jobs' fixed start-up cost,
scaled with N, inflates it).

    python benchmarks/scale_run.py                                # all 70,000 images (the measured run)
    python benchmarks/scale_run.py --max-per-class 100            # 1,000 images: a quick check
    python benchmarks/scale_run.py --max-per-class 100 --extra "--backbone efficientnet_lite0"
    python benchmarks/scale_run.py --keep --json /tmp/run.json    # the table of the last run again

The targets (printed beside the figures, not asserted): the whole run within 15 minutes on 2 cores, and
evaluation at most 20% of the summed job time.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import REPO, machine, print_table, record

RAW = Path("/usr/share/datasets/fashion-mnist")  # apt-get install -y dataset-fashion-mnist
STAGE_OF_RULE = {
    **dict.fromkeys(["prepare_digits", "download_dataset", "cifar10_images", "fashion_mnist_images", "scan_files",
                     "manifest", "duplicates", "split"], "data"),
    **dict.fromkeys(["plan_shards", "prepare_engine", "extract_features", "gather_features", "changed_copies",
                     "time_extraction"], "extraction"),
    **dict.fromkeys(["fit_pca", "project", "cluster", "train_mlp", "select_settings", "choose_pca", "fit_spaces"],
                    "models"),
    **dict.fromkeys(["evaluate", "evaluate_spaces"], "evaluation"),
    **dict.fromkeys(["summarize", "montage"], "report"),
}  # fmt: skip
STAGES = ["data", "extraction", "models", "evaluation", "report", "other"]
# job seconds ~ N ** exponent, and why, per stage or per rule (a rule's entry wins): the one place to correct
SCALING = {
    "data": (1.0, "linear: every file decoded and hashed"),
    "extraction": (1.0, "linear: every image through the backbone, in shards"),
    "prepare_engine": (0.0, "constant: the engine trial on a fixed sample (plus int8 calibration, once)"),
    "time_extraction": (0.0, "constant: retrieval.timing_images queries"),
    "models": (1.0, "~linear: PCA, k-means, MLP linear per pass; projection; validation's bounded queries x N"),
    "evaluation": (1.0, "linear: bounded queries (retrieval.eval_queries) x gallery N"),
    "report": (0.0, "constant: tables and montages"),
    "other": (0.0, "constant"),
}
TARGET_N = 1_000_000
TARGET_WALL_S = 15 * 60  # on 2 cores
TARGET_EVAL_SHARE = 0.20


def export(work: Path, max_per_class: int | None, image_size: int | None, seed: int) -> tuple[Path, int, float]:
    """The exported PNG folder (written once, reused), its image count and the seconds the export took now."""
    from cbir.data.sources import export_fashion_mnist_png, fashion_mnist_paths

    folder = work / "export" / f"fashion_{max_per_class or 'all'}_{image_size or 28}"
    report_file = folder / "export.json"
    start = time.perf_counter()
    if not report_file.is_file():
        missing = [path.name for path in fashion_mnist_paths(RAW) if not path.is_file()]
        if missing:
            sys.exit(f"{RAW} lacks {', '.join(missing)}: apt-get install -y dataset-fashion-mnist")
        partial = folder.with_name(folder.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        print(f"exporting Fashion-MNIST to {folder} ...", file=sys.stderr)
        export_fashion_mnist_png(RAW, partial, max_per_class=max_per_class, image_size=image_size, seed=seed)
        partial.rename(folder)
    images = json.loads(report_file.read_text())["images"]
    return folder, sum(images.values()), time.perf_counter() - start


def process_tree(root: int) -> list[int]:
    """``root`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                stat = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def rss_mb(pid: int) -> float:
    try:
        return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, IndexError, ValueError):
        return 0.0


def run_index(folder: Path, workdir: Path, cores: int, extra: list[str]) -> dict:
    """``cbir index`` as a subprocess: its exit code, wall seconds, and the peak memory of its process tree."""
    command = [sys.executable, "-m", "cbir.cli", "index", str(folder), "--workdir", str(workdir),
               "--cores", str(cores), *extra]  # fmt: skip
    print("$ " + shlex.join(command), file=sys.stderr)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    start = time.monotonic()
    process = subprocess.Popen(command, env=env, stdout=sys.stderr)  # the table alone on stdout
    peak_tree = peak_one = 0.0
    try:
        while process.poll() is None:
            sizes = [rss_mb(pid) for pid in process_tree(process.pid)]
            peak_tree, peak_one = max(peak_tree, sum(sizes)), max(peak_one, *sizes, 0.0)
            time.sleep(0.5)
    finally:
        if process.poll() is None:  # interrupted: cbir index stops its jobs on SIGINT
            process.send_signal(2)
            process.wait()
    wall = time.monotonic() - start
    largest = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # the largest process waited for
    return {"returncode": process.returncode, "wall_s": wall, "peak_tree_rss_mb": peak_tree,
            "peak_process_rss_mb": max(peak_one, largest)}  # fmt: skip


def number(text: str) -> float:
    try:
        return float(text)
    except ValueError:  # '-' or 'NA': a job too short to sample
        return 0.0


def read_jobs(workdir: Path, since: float) -> list[dict]:
    """Every Snakemake benchmark file of the run: rule, stage, seconds, max_rss, whether it ran this time."""
    jobs = []
    for path in sorted((workdir / "results" / "benchmarks").glob("**/*.tsv")):
        with path.open() as f:
            rows = list(csv.DictReader(f, delimiter="\t"))
        parts = path.relative_to(workdir / "results" / "benchmarks").parts
        rule = parts[0] if len(parts) > 1 else path.stem  # a rule without wildcards: benchmarks/<rule>.tsv
        for row in rows[-1:]:  # the last repeat
            jobs.append({"rule": rule, "job": path.stem, "stage": STAGE_OF_RULE.get(rule, "other"),
                         "s": number(row.get("s", "")), "max_rss": number(row.get("max_rss", "")),
                         "now": path.stat().st_mtime >= since})  # fmt: skip
    return jobs


def exponent(job: dict) -> float:
    return SCALING.get(job["rule"], SCALING[job["stage"]])[0]


def stage_rows(jobs: list[dict], n_images: int) -> list[dict]:
    total = sum(job["s"] for job in jobs) or 1.0
    rows = []
    for stage in STAGES:
        mine = [job for job in jobs if job["stage"] == stage]
        if not mine and stage == "other":
            continue
        seconds = sum(job["s"] for job in mine)
        exponents = sorted({exponent(job) for job in mine} or {SCALING[stage][0]}, reverse=True)
        rows.append({"stage": stage, "jobs": len(mine), "job_s": seconds, "share": seconds / total,
                     "max_rss_mb": max((job["max_rss"] for job in mine), default=0.0),
                     "est_1M_s": sum(job["s"] * (TARGET_N / n_images) ** exponent(job) for job in mine),
                     "scaling": ", ".join(f"N^{e:g}" for e in exponents),
                     "rules": ",".join(sorted({job["rule"] for job in mine}))})  # fmt: skip
    return rows


def verdict(ok: bool) -> str:
    return "meets" if ok else "MISSES"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/cbir-scale-run"), help="exports and runs")
    parser.add_argument("--max-per-class", type=int, help="images per class (default: all 7,000)")
    parser.add_argument("--image-size", type=int, help="side of the exported PNGs (default: 28, as in the files)")
    parser.add_argument("--seed", type=int, default=0, help="of the class-balanced subset (the config's seed)")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--extra", default="", help='more cbir index arguments: "--backbone efficientnet_lite0"')
    parser.add_argument("--keep", action="store_true", help="reuse the run folder (its feature cache and results)")
    parser.add_argument("--json", type=Path, help="write the results here too")
    parser.add_argument("--no-record", action="store_true", help="do not append to benchmarks/results/scale_run.jsonl")
    args = parser.parse_args()

    extra = shlex.split(args.extra)
    folder, n_images, export_s = export(args.work, args.max_per_class, args.image_size, args.seed)
    slug = re.sub(r"[^A-Za-z0-9_.]+", "_", " ".join(extra)).strip("_")
    workdir = args.work / "runs" / (folder.name + (f"-{slug}" if slug else ""))
    if workdir.exists() and not args.keep:
        shutil.rmtree(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    since = time.time()
    run = run_index(folder, workdir, args.cores, extra)
    jobs = read_jobs(workdir, since)
    if run["returncode"] != 0:
        sys.exit(f"cbir index exited with {run['returncode']} after {run['wall_s']:.0f} s (log: {workdir}/results)")
    if not jobs:
        sys.exit(f"no benchmark files under {workdir}/results/benchmarks")
    rows = stage_rows(jobs, n_images)
    job_s = sum(row["job_s"] for row in rows)
    eval_share = sum(row["share"] for row in rows if row["stage"] == "evaluation")
    extract = [job for job in jobs if job["rule"] == "extract_features"]
    extract_s = sum(job["s"] for job in extract)
    estimate_s = sum(row["est_1M_s"] for row in rows)
    info = machine()

    print(f"cbir index on {n_images} Fashion-MNIST images ({folder}; {' '.join(extra) or 'defaults'}), "
          f"--cores {args.cores}; {info['cpu']}, {info['cores']} cores, torch {info.get('torch')}")  # fmt: skip
    print_table(rows, ["stage", "jobs", "job_s", "share", "max_rss_mb", "est_1M_s", "scaling", "rules"])
    print("\n".join(f"  scaling of {name}: N^{e:g}, {why}" for name, (e, why) in SCALING.items()))
    ran = sum(job["now"] for job in jobs)
    print(f"jobs: {len(jobs)} ({ran} run now{', the rest kept from before' if ran < len(jobs) else ''}); "
          f"export {export_s:.1f} s (0 when cached)")  # fmt: skip
    print(f"wall: {run['wall_s']:.0f} s for cbir index; target <= {TARGET_WALL_S} s on 2 cores: "
          f"{verdict(run['wall_s'] <= TARGET_WALL_S) if ran == len(jobs) else 'n/a (jobs kept)'}; "
          f"summed job time {job_s:.0f} s")  # fmt: skip
    print(f"evaluation: {eval_share:.1%} of the job time; target <= {TARGET_EVAL_SHARE:.0%}: "
          f"{verdict(eval_share <= TARGET_EVAL_SHARE)}")  # fmt: skip
    largest_job = max(job["max_rss"] for job in jobs)
    print(f"memory: process tree {run['peak_tree_rss_mb']:.0f} MB at its peak, largest process "
          f"{run['peak_process_rss_mb']:.0f} MB; largest job max_rss {largest_job:.0f} MB")  # fmt: skip
    if extract_s:
        print(f"extract_features: {n_images} images in {extract_s:.1f} s over {len(extract)} job(s): "
              f"{n_images / extract_s:.1f} images/s (model loading included)")  # fmt: skip
    # the wall time scaled as the job time: this run's parallelism kept (only when every job ran now)
    wall_1m = run["wall_s"] * estimate_s / max(job_s, 1e-9) if ran == len(jobs) else None
    wall_text = f"~{wall_1m / 3600:.1f} h wall at this run's parallelism" if wall_1m else "no wall (jobs kept)"
    print(f"estimate for {TARGET_N:,} images: {estimate_s:.0f} job-s, {wall_text} (extrapolate from the full run: "
          f"from a small one the jobs' start-up is scaled too)")  # fmt: skip

    result = {"n_images": n_images, "folder": str(folder), "workdir": str(workdir), "extra": extra,
              "cores": args.cores, "export_s": export_s, **run, "job_s": job_s, "evaluation_share": eval_share,
              "extract_images_per_s": n_images / extract_s if extract_s else None, "estimate_1m_job_s": estimate_s,
              "estimate_1m_wall_s": wall_1m, "jobs": jobs}  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"machine": info, **result, "stages": rows}, indent=2) + "\n")
    if not args.no_record:
        record("scale_run", rows, **{k: v for k, v in result.items() if k != "jobs"})


if __name__ == "__main__":
    main()
