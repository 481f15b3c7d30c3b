"""Evaluate one grid cell on its test images: accuracy, retrieval quality, timings."""

import _package  # noqa: F401  (makes cbir importable)

from cbir.evaluate import cell_metrics
from cbir.runtime import run_step


def main(smk) -> None:
    cell_metrics(
        features=smk.input.features,
        manifest=smk.input.manifest,
        split=smk.input.split,
        projection=smk.input.projection,
        gallery=smk.input.gallery,
        classifier=smk.input.classifier,
        clusters=smk.input.clusters,
        extraction_timing=smk.input.timing,
        out_path=smk.output.metrics,
        cell=dict(smk.wildcards.items()),
        retrieval=smk.params.retrieval,
        seed=smk.params.seed,
    )


run_step(snakemake, main)
