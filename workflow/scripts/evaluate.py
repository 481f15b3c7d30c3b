"""Evaluate one grid cell on its test images, in each space the rule names: accuracy, retrieval quality, timings."""

import os

import _package  # noqa: F401  (makes cbir importable)

from cbir.evaluation.evaluate import cell_metrics
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    # one metrics file per space, in the order of params.spaces (rule evaluate: raw; evaluate_spaces: the others),
    # which share what was read once
    loaded = {}
    for space, out_path in zip(smk.params.spaces, smk.output.metrics, strict=True):
        cell_metrics(
            features=smk.input.features,
            manifest=smk.input.manifest,
            split=smk.input.split,
            # the cell's artifacts are the rule's inputs, so that Snakemake tracks them; they are read from its folder
            cell_folder=os.path.dirname(smk.input.gallery),
            k=int(smk.wildcards.k),
            extraction_timing=smk.input.timing,
            out_path=out_path,
            retrieval=smk.params.retrieval,
            seed=smk.params.seed,
            space=space,
            rerank=smk.params.rerank,
            feedback=smk.params.feedback,
            selection_path=smk.input.selection,
            loaded=loaded,
        )


run_step(snakemake, main)
