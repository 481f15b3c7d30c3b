"""Draw the retrieval montage of a few fixed test queries of one dataset."""

import _package  # noqa: F401  (makes cbir importable)

from cbir.query import montage_for_cell
from cbir.runtime import run_step


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
