"""Peak memory of extraction over 2k vs 20k small synthetic images: streaming keeps it flat.

Each size runs in its own process (peak RSS is per process). The baseline keeps every feature in
memory and stacks them at the end, as a plain loop does; the engine streams them into HDF5.

    python benchmarks/memory.py                  # 2000 and 20000 images, EfficientNet-Lite0, 64 px
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import add_backbone_arguments, make_jpegs, peak_rss_mb, print_table, record


def child(method: str, paths: list[str], args: argparse.Namespace) -> dict:
    import numpy as np
    import torch

    from cbir.extraction.build import build_backbone
    from cbir.extraction.features import extract_to_hdf5
    from cbir.extraction.preprocess import preprocessing
    from cbir.extraction.registry import BackboneSpec

    torch.set_num_threads(2)
    spec = BackboneSpec(args.arch, "random", "none", args.image_size)
    start = time.perf_counter()
    if method == "engine":
        with tempfile.TemporaryDirectory() as tmp:
            extract_to_hdf5(paths, [str(i) for i in range(len(paths))], [0] * len(paths), spec, Path(tmp) / "f.h5",
                            batch_size=64, num_workers=1, device="cpu", precision="fp32", progress=False)  # fmt: skip
    else:
        from torch.utils.data import DataLoader

        from cbir.extraction.features import ImageFiles

        network = build_backbone(spec)
        loader = DataLoader(ImageFiles(paths, preprocessing(spec, network)), batch_size=64, num_workers=1)
        with torch.inference_mode():
            features = np.concatenate([network(batch).numpy() for batch in loader])
        assert len(features) == len(paths)
    return {
        "method": method,
        "images": len(paths),
        "seconds": time.perf_counter() - start,
        "peak_rss_mb": peak_rss_mb(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="2000,20000")
    add_backbone_arguments(parser, "efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--methods", default="engine,in-memory")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "cbir-bench"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        paths = make_jpegs(Path(args.cache) / "small", args.n, size=args.image_size)
        print(json.dumps(child(args.child, paths, args)))
        return
    rows = []
    for size in (int(s) for s in args.sizes.split(",")):
        make_jpegs(Path(args.cache) / "small", size, size=args.image_size)
        for method in args.methods.split(","):
            command = [sys.executable, __file__, "--child", method, "--n", str(size), *sys.argv[1:]]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                print(f"{method} at {size} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    for row in rows:
        first = next(r for r in rows if r["method"] == row["method"])
        row["rss_growth_mb"] = row["peak_rss_mb"] - first["peak_rss_mb"]
    print(f"extraction memory: {args.arch} (random weights, no pooling) at {args.image_size} px")
    print_table(rows, ["method", "images", "seconds", "peak_rss_mb", "rss_growth_mb"])
    record("memory", rows, settings={k: v for k, v in vars(args).items() if k not in ("child", "n")})


if __name__ == "__main__":
    main()
