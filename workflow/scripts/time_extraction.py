"""Time query images through the network the features were extracted with, one at a time and batched."""

import logging

import h5py
import torch

import _package  # noqa: F401  (makes cbir importable)

from cbir.data.manifest import read_manifest
from cbir.extraction.latency import time_query_extraction
from cbir.extraction.network import prepare_from_record
from cbir.io import library_versions, read_attrs, write_json
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    torch.set_num_threads(smk.threads)
    manifest = read_manifest(smk.input.manifest)
    # a fixed, spread-out sample: every n-th image
    step = max(1, len(manifest) // smk.params.n_images)
    paths = manifest["path"].iloc[::step].head(smk.params.n_images).tolist()
    with h5py.File(smk.input.features, "r") as f:
        record = read_attrs(f)
    # the network a query runs through: the one recorded in the feature file, not `auto` resolved again
    prepared = prepare_from_record(record, smk.params.extraction["device"])
    if prepared.notice:
        logging.getLogger("cbir.time_extraction").warning("%s", prepared.notice)
    timing = time_query_extraction(paths, prepared, batch_size=smk.params.extraction["batch_size"])
    # provenance, as in every artifact: the seed and the versions of the libraries that shaped the numbers
    write_json(smk.output.timing, {**timing, "seed": prepared.seed, "library_versions": library_versions()})


run_step(snakemake, main)
