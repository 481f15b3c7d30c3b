"""Index an image folder (one sub-folder per class) into the dataset manifest."""

import logging

import _package  # noqa: F401  (makes cbir importable)

from cbir.data import scan_image_folder, write_manifest
from cbir.runtime import run_step


def main(smk) -> None:
    manifest = scan_image_folder(smk.params.root)
    write_manifest(manifest, smk.output.manifest, smk.output.excluded)
    logging.getLogger("cbir.manifest").info(
        "%d images in %d classes, %d excluded", len(manifest.images), len(manifest.classes), len(manifest.excluded)
    )


run_step(snakemake, main)
