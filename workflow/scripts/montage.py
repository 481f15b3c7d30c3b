"""Draw the retrieval montage of a few fixed test queries of one dataset."""

import _package  # noqa: F401  (makes cbir importable)

from cbir.pipeline.steps import run_step
from cbir.report.montage import montage_for_cell


def main(smk) -> None:
    montage_for_cell(
        smk.params.cell,
        smk.input.features,
        smk.input.split,
        smk.output.montage,
        k=smk.params.k,
        n_queries=smk.params.n_queries,
        top_k=smk.params.retrieval["top_k"],
        metric=smk.params.retrieval["metric"],
    )


run_step(snakemake, main)
