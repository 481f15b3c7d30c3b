"""Time query images through the backbone, one at a time and batched."""

import torch

import _package  # noqa: F401  (makes cbir importable)

from cbir.data import read_manifest
from cbir.io import library_versions, write_json
from cbir.runtime import run_step
from cbir.timing import time_query_extraction


def main(smk) -> None:
    torch.set_num_threads(smk.threads)
    manifest = read_manifest(smk.input.manifest)
    # a fixed, spread-out sample: every n-th image
    step = max(1, len(manifest) // smk.params.n_images)
    paths = manifest["path"].iloc[::step].head(smk.params.n_images).tolist()
    options = smk.params.extraction
    timing = time_query_extraction(
        paths,
        smk.params.backbone,
        batch_size=options["batch_size"],
        device=options["device"],
        precision=options["precision"],
        seed=smk.params.seed,
    )
    # provenance, as in every artifact: the seed and the versions of the libraries that shaped the numbers
    write_json(smk.output.timing, {**timing, "seed": smk.params.seed, "library_versions": library_versions()})


run_step(snakemake, main)
