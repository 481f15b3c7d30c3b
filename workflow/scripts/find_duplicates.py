"""List the images of a dataset whose content (sha256) occurs more than once, across classes or not."""

import logging

import _package  # noqa: F401  (makes cbir importable)

from cbir.data.manifest import find_duplicates, read_manifest, write_csv_table
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    duplicates = find_duplicates(read_manifest(smk.input.manifest))
    write_csv_table(duplicates, smk.output.duplicates)
    across = duplicates[duplicates["across_classes"]]
    if len(across):
        logging.getLogger("cbir.search.duplicates").warning(
            "%d image(s) have the same content as an image of another class, e.g. '%s' (%s); listed in %s",
            len(across),
            across["id"].iloc[0],
            across["class_name"].iloc[0],
            smk.output.duplicates,
        )


run_step(snakemake, main)
