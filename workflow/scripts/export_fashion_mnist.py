"""Write Fashion-MNIST's gzipped IDX files (strict reader) as PNGs, one folder per class, official split kept."""

import logging
from pathlib import Path

import _package  # noqa: F401  (makes cbir importable)

from cbir.data.sources import data_dir, export_fashion_mnist_png
from cbir.io import atomic_path
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    entry = smk.params.entry
    with atomic_path(smk.output.folder) as tmp:
        report = export_fashion_mnist_png(
            data_dir(Path(smk.params.root), entry),
            tmp,
            max_per_class=entry.get("max_per_class"),
            image_size=entry.get("image_size"),
            seed=smk.params.seed or 0,
        )
    log = logging.getLogger("cbir.fashion_mnist_images")
    log.info(
        "wrote %d train and %d test images (of %d and %d in the files) from %s",
        report["images"]["train"],
        report["images"]["test"],
        report["in_files"]["train"],
        report["in_files"]["test"],
        report["folder"],
    )
    if not report["official_content"]:
        log.warning(
            "the files' content is not the official Fashion-MNIST release (MD5 of the unpacked files): %s",
            report["content_md5"],
        )


run_step(snakemake, main)
