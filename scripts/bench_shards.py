"""What one extraction shard job costs on this machine: start-up (imports, network, device)
and time per image, from shard jobs of two sizes, each in a fresh process as on a cluster.

    python scripts/bench_shards.py                                   # VGG16, 224 px, the paper's codes
    python scripts/bench_shards.py --device cuda --images 4000 --shard-sizes 1000,4000 --num-workers 12

Prints (and with --out writes) JSON: wall time per shard job, the fitted start-up seconds and
seconds per image, and what 1,000,000 images would cost in shards of 1,000 and 20,000. The
images are generated JPEGs (320 x 240, smooth colour fields with noise); the network has random
weights, which cost what trained ones do. Use the seconds per image for
extraction.seconds_per_image (the wall time each shard job asks for).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

JOB = """
import json, sys, time
start = time.perf_counter()
sys.path.insert(0, {src!r})
import torch
from cbir.extraction.registry import BackboneSpec
from cbir.extraction.features import extract_shard
from cbir.extraction.shards import ShardPlan
imported = time.perf_counter()
extract_shard({manifest!r}, ShardPlan({n_images}, {shard_size}, None, {cache!r}), 0, BackboneSpec(*{spec!r}), {out!r},
              batch_size={batch_size}, num_workers={num_workers}, device={device!r}, precision={precision!r},
              progress=False)
done = time.perf_counter()
print(json.dumps({{"imports_s": imported - start, "extract_s": done - imported,
                  "device": "cuda" if torch.cuda.is_available() and {device!r} != "cpu" else "cpu"}}))
"""


def make_jpeg(args: tuple[int, str]) -> str:
    import numpy as np
    from PIL import Image

    index, path = args
    rng = np.random.default_rng(index)
    x = np.arange(320, dtype=np.float64)[None, :, None]
    base = rng.uniform(0, 255, size=3) + 60 * np.sin(x / rng.uniform(5, 40) + rng.uniform(0, 6, size=3))
    pixels = np.clip(base + rng.normal(0, 12, size=(240, 320, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path


def write_dataset(root: Path, n_images: int) -> Path:
    import pandas as pd

    (root / "images").mkdir(parents=True)
    paths = [str(root / "images" / f"{i:06d}.jpg") for i in range(n_images)]
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        list(pool.map(make_jpeg, enumerate(paths), chunksize=64))
    frame = pd.DataFrame(
        {
            "id": [Path(p).name for p in paths],
            "path": paths,
            "label": [i % 10 for i in range(n_images)],
            "class_name": [f"c{i % 10}" for i in range(n_images)],
            "width": 320,
            "height": 240,
            "bytes": [os.path.getsize(p) for p in paths],
            "sha256": "0" * 64,
        }
    )
    frame.to_csv(root / "manifest.csv", index=False)
    return root / "manifest.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--shard-sizes", default="500,2000", help="two or more, each at most --images")
    parser.add_argument("--arch", default="vgg16")
    parser.add_argument("--pooling", default="none")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--num-workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.shard_sizes.split(","))
    if len(sizes) < 2 or sizes[-1] > args.images:
        parser.error("give two or more shard sizes, each at most --images")

    import numpy as np

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        manifest = write_dataset(root, args.images)
        generated = time.perf_counter() - started
        # one import first, so that no job pays for a cold file cache
        warm_up = f"import sys; sys.path.insert(0, {str(REPO / 'src')!r}); import cbir.extraction.features"
        subprocess.run([sys.executable, "-c", warm_up], check=True)
        jobs = []
        for size in sizes:
            code = JOB.format(
                src=str(REPO / "src"), manifest=str(manifest), n_images=args.images, shard_size=size,
                spec=[args.arch, "random", args.pooling, args.image_size], out=str(root / f"shard{size}.json"),
                cache=str(root / f"cache{size}"),
                batch_size=args.batch_size, num_workers=args.num_workers, device=args.device,
                precision=args.precision,
            )  # fmt: skip
            started = time.perf_counter()
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
            wall = time.perf_counter() - started
            if result.returncode != 0:
                sys.exit(f"shard job of {size} images failed:\n{result.stderr[-3000:]}")
            phases = json.loads(result.stdout.strip().splitlines()[-1])
            jobs.append({"shard_size": size, "wall_s": round(wall, 2), **phases})
            shutil.rmtree(root / f"cache{size}")
    # time per image from the extraction phase alone (import times vary with the file cache);
    # start-up: the rest of each job's wall time, averaged
    per_image = float(np.polyfit([j["shard_size"] for j in jobs], [j["extract_s"] for j in jobs], 1)[0])
    startup = float(np.mean([j["wall_s"] - per_image * j["shard_size"] for j in jobs]))
    report = {
        "arch": args.arch,
        "pooling": args.pooling,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "num_workers": args.num_workers,
        "cpus": os.cpu_count(),
        "generated_images_s": round(generated, 1),
        "jobs": jobs,
        "startup_s": round(float(startup), 1),
        "seconds_per_image": round(float(per_image), 5),
        "images_per_second": round(1 / float(per_image), 1),
        "hours_for_1M": {
            f"shards_of_{size}": round((1_000_000 / size * startup + 1_000_000 * per_image) / 3600, 2)
            for size in (1000, 20000)
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
