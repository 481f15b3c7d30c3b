"""Prepare the engine a dataset's features are extracted with: convert, quantize, check, time, choose."""

import torch

import _package  # noqa: F401  (makes cbir importable)

from cbir.data.manifest import read_manifest
from cbir.extraction.engines import calibration_sample, prepare_engine
from cbir.extraction.network import resolve_device
from cbir.extraction.registry import BackboneSpec
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    torch.set_num_threads(smk.threads)
    options = smk.params.extraction
    manifest = read_manifest(smk.input.manifest)
    calibration, holdout = calibration_sample(
        manifest, smk.params.splits, smk.params.seed, options["calibration_images"]
    )
    prepare_engine(
        BackboneSpec.from_config(smk.params.backbone),
        smk.output.engine,
        # OpenVINO runs on the CPU: where extraction runs on CUDA, torch does
        engine=options["engine"] if resolve_device(options["device"]).type == "cpu" else "torch",
        precision=options["precision"],
        calibration_paths=calibration,
        holdout_paths=holdout,
        seed=smk.params.seed,
        threads=smk.threads,
        n_images=len(manifest),
    )


run_step(snakemake, main)
