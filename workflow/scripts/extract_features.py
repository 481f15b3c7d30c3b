"""Run every image of a dataset once through a backbone and stream the CNN codes to HDF5."""

import torch

import _package  # noqa: F401  (makes cbir importable)

from cbir.data import read_manifest
from cbir.features import BackboneSpec, extract_to_hdf5
from cbir.runtime import run_step


def main(smk) -> None:
    torch.set_num_threads(smk.threads)
    manifest = read_manifest(smk.input.manifest)
    options = smk.params.extraction
    extract_to_hdf5(
        manifest["path"].tolist(),
        manifest["id"].tolist(),
        manifest["label"].tolist(),
        BackboneSpec.from_config(smk.params.backbone),
        smk.output.features,
        batch_size=options["batch_size"],
        num_workers=options["num_workers"],
        device=options["device"],
        precision=options["precision"],
        feature_dtype=options["feature_dtype"],
        seed=smk.params.seed,
        attrs={"dataset": smk.wildcards.dataset, "backbone": smk.wildcards.backbone},
    )


run_step(snakemake, main)
