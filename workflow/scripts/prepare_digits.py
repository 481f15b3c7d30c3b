"""Write scikit-learn's bundled digits as an image folder (one sub-folder per digit)."""

import logging

import _package  # noqa: F401  (makes cbir importable)

from cbir.data.sources.digits import write_sklearn_digits
from cbir.io import atomic_path
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    with atomic_path(smk.output.folder) as tmp:
        count = write_sklearn_digits(tmp, image_size=smk.params.image_size)
    logging.getLogger("cbir.prepare_digits").info("wrote %d images to %s", count, smk.output.folder)


run_step(snakemake, main)
