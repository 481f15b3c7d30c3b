"""Write CIFAR-10's python batches (read with a restricted unpickler) as PNGs, one folder per class."""

import logging
from pathlib import Path

import _package  # noqa: F401  (makes cbir importable)

from cbir.data.sources import data_dir, export_cifar10_png
from cbir.io import atomic_path
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    with atomic_path(smk.output.folder) as tmp:
        report = export_cifar10_png(data_dir(Path(smk.params.root), smk.params.entry), tmp)
    logging.getLogger("cbir.cifar10_images").info(
        "wrote %d images from %s; %d batch(es) unreadable",
        sum(report["images"].values()),
        report["batches"],
        len(report["problems"]),
    )


run_step(snakemake, main)
