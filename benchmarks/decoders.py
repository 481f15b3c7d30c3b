"""JPEG decoders, measured: is a faster decoder than Pillow worth a dependency?

Each decoder turns the same JPEG files into an RGB image at least twice the network's input
side (so the reduced-DCT-scale decoders may scale, as Pillow's draft mode does in extraction),
then every result is resized to the input the same way (Pillow, bilinear with antialias), so the
rows differ only by the decoder. One thread, the images in the OS page cache: images/s of one
core, and the largest pixel difference to Pillow's decoding at the same scale.

    python benchmarks/decoders.py                        # Corel-1K photos and 4000 x 3000 JPEGs
    python benchmarks/decoders.py --turbojpeg-lib /path/to/libturbojpeg.so.0

Decoders: Pillow (full, and draft = the extraction's reduced DCT scale), simplejpeg (full and
scaled with min_width/min_height), PyTurboJPEG 1.x (full and scaled; needs libjpeg-turbo's
TurboJPEG library), torchvision.io.decode_jpeg on the CPU (full). A decoder that is not installed
is reported as such.
"""

from __future__ import annotations

import argparse
import io
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from _common import COREL, print_table, record
from PIL import Image

Decoder = Callable[[bytes], np.ndarray]


def pillow(draft_to: int | None) -> Decoder:
    def decode(data: bytes) -> np.ndarray:
        with Image.open(io.BytesIO(data)) as image:
            if draft_to and min(image.size) >= 2 * draft_to:
                image.draft("RGB", (2 * draft_to, 2 * draft_to))
            return np.asarray(image.convert("RGB"))

    return decode


def simplejpeg_decoder(draft_to: int | None) -> Decoder:
    import simplejpeg

    def decode(data: bytes) -> np.ndarray:
        if not draft_to:
            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        width, height, _, _ = simplejpeg.decode_jpeg_header(data)
        side = 2 * draft_to if min(width, height) >= 2 * draft_to else 0
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=side, min_height=side)

    return decode


def turbojpeg_decoder(library: str | None, draft_to: int | None) -> Decoder:
    from turbojpeg import TJPF_RGB, TurboJPEG

    jpeg = TurboJPEG(library)
    factors = sorted(jpeg.scaling_factors, key=lambda f: f[0] / f[1])  # smallest first

    def decode(data: bytes) -> np.ndarray:
        if not draft_to:
            return jpeg.decode(data, pixel_format=TJPF_RGB)
        width, height, _, _ = jpeg.decode_header(data)
        # the smallest DCT scale keeping both sides at least twice the input, as Pillow's draft picks
        scale = next(
            (f for f in factors if f[0] / f[1] <= 1 and min(width, height) * f[0] / f[1] >= 2 * draft_to), (1, 1)
        )
        return jpeg.decode(data, pixel_format=TJPF_RGB, scaling_factor=scale)

    return decode


def torchvision_decoder() -> Decoder:
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    def decode(data: bytes) -> np.ndarray:
        tensor = decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        return tensor.permute(1, 2, 0).numpy()

    return decode


def decoders(args: argparse.Namespace, draft_to: int) -> dict[str, Callable[[], Decoder]]:
    return {
        "pillow": lambda: pillow(None),
        "pillow-draft": lambda: pillow(draft_to),
        "simplejpeg": lambda: simplejpeg_decoder(None),
        "simplejpeg-scaled": lambda: simplejpeg_decoder(draft_to),
        "turbojpeg": lambda: turbojpeg_decoder(args.turbojpeg_lib, None),
        "turbojpeg-scaled": lambda: turbojpeg_decoder(args.turbojpeg_lib, draft_to),
        "torchvision-cpu": torchvision_decoder,
    }


def to_input(pixels: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR))


def pixel_difference(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.int16) - b.astype(np.int16)).max())


def measure(decode: Decoder, files: list[bytes], size: int, repeats: int) -> tuple[float, list[np.ndarray]]:
    inputs = [to_input(decode(data), size) for data in files]  # warm-up, and the results compared
    start = time.perf_counter()
    for _ in range(repeats):
        for data in files:
            to_input(decode(data), size)
    return repeats * len(files) / (time.perf_counter() - start), inputs


def large_photos(folder: Path, n: int, sources: list[Path]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, source in enumerate(sources[:n]):
        path = folder / f"{i:04d}.jpg"
        if not path.exists():
            Image.open(source).convert("RGB").resize((4000, 3000), Image.BICUBIC).save(path, quality=90)
        paths.append(path)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folder", type=Path, default=COREL, help="real JPEGs (default: ../shared/data/corel1k)")
    parser.add_argument("--images", type=int, default=200, help="photos from the folder")
    parser.add_argument("--large", type=int, default=16, help="4000 x 3000 JPEGs made from them")
    parser.add_argument("--image-size", type=int, default=224, help="the network's input side")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/cbir-bench"))
    parser.add_argument("--turbojpeg-lib", help="path of libturbojpeg.so (PyTurboJPEG 1.x)")
    args = parser.parse_args()

    photos = sorted(args.folder.rglob("*.jpg"))
    if not photos:
        raise SystemExit(f"no JPEG below '{args.folder}'")
    sets = {
        f"{args.folder.name} photos": photos[:: max(1, len(photos) // args.images)][: args.images],
        "4000 x 3000 JPEGs": large_photos(args.cache / "large", args.large, photos[:: max(1, len(photos) // 50)]),
    }
    rows = []
    for set_name, paths in sets.items():
        files = [path.read_bytes() for path in paths]
        reference: dict[bool, list[np.ndarray]] = {}
        baseline = None
        for name, make in decoders(args, args.image_size).items():
            row = {"images": set_name, "decoder": name}
            try:
                decode = make()
            except (ImportError, OSError, RuntimeError) as error:
                rows.append({**row, "note": f"not available: {str(error).splitlines()[0][:60]}"})
                continue
            rate, inputs = measure(decode, files, args.image_size, args.repeats)
            scaled = name.endswith(("draft", "scaled"))
            reference.setdefault(scaled, inputs)  # Pillow's own result at the same scale
            diff = max(pixel_difference(a, b) for a, b in zip(inputs, reference[scaled], strict=True))
            baseline = baseline or rate
            rows.append({**row, "images_per_s": rate, "x_pillow": rate / baseline, "max_pixel_diff_vs_pillow": diff})
    print_table(rows, ["images", "decoder", "images_per_s", "x_pillow", "max_pixel_diff_vs_pillow", "note"])
    print(f"\nrecorded in {record('decoders', rows, image_size=args.image_size, repeats=args.repeats)}")


if __name__ == "__main__":
    main()
