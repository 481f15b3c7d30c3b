"""Prepare the engine a dataset's features are extracted with: choose the input size of small images, then
convert, quantize, check, time, choose."""

import logging

import torch

import _package  # noqa: F401  (makes cbir importable)

from cbir.data.manifest import read_manifest
from cbir.extraction.engines import calibration_pool, calibration_sample, prepare_engine
from cbir.extraction.input_size import SizeTrial, trial_problem, trial_sample
from cbir.extraction.network import resolve_device
from cbir.extraction.registry import BackboneSpec
from cbir.pipeline.steps import run_step


def size_trial(spec, manifest, settings, splits, seed):
    """The training images the input size is chosen on, or None (the reason logged)."""
    log = logging.getLogger("cbir.prepare_engine")
    if problem := trial_problem(spec, manifest, settings):
        log.info("input size %d px as configured: %s", spec.image_size, problem)
        return None
    sample = trial_sample(manifest, calibration_pool(manifest, splits, seed), settings, seed)
    if sample is None:
        log.info("input size %d px as configured: too few labelled training images to choose it on", spec.image_size)
        return None
    return SizeTrial(*sample, tolerance=float(settings["tolerance"]))


def main(smk) -> None:
    torch.set_num_threads(smk.threads)
    options = smk.params.extraction
    manifest = read_manifest(smk.input.manifest)
    spec = BackboneSpec.from_config(smk.params.backbone)
    calibration, holdout = calibration_sample(
        manifest, smk.params.splits, smk.params.seed, options["calibration_images"]
    )
    prepare_engine(
        spec,
        smk.output.engine,
        # OpenVINO runs on the CPU: where extraction runs on CUDA, torch does
        engine=options["engine"] if resolve_device(options["device"]).type == "cpu" else "torch",
        precision=options["precision"],
        calibration_paths=calibration,
        holdout_paths=holdout,
        seed=smk.params.seed,
        threads=smk.threads,
        n_images=len(manifest),
        size_trial=size_trial(spec, manifest, smk.params.input_size, smk.params.splits, smk.params.seed),
    )


run_step(snakemake, main)
