"""Index a dataset through its adapter (image folder, Corel, GHIM, CIFAR-10, VOC) into the manifest."""

import logging
from pathlib import Path

import _package  # noqa: F401  (makes cbir importable)

from cbir.data import write_manifest
from cbir.datasets import build_manifest
from cbir.runtime import run_step


def main(smk) -> None:
    manifest = build_manifest(smk.params.source, smk.params.entry, Path(smk.params.root), Path(smk.params.images))
    write_manifest(manifest, smk.output.manifest, smk.output.excluded)
    logging.getLogger("cbir.manifest").info(
        "%d images in %d classes, %d excluded", len(manifest.images), len(manifest.classes), len(manifest.excluded)
    )


run_step(snakemake, main)
