"""Gather every grid cell's metrics into the summary tables and plots."""

import _package  # noqa: F401  (makes cbir importable)

from cbir.report import write_summary
from cbir.runtime import run_step


def main(smk) -> None:
    write_summary(smk.input.metrics, smk.output.metrics, smk.params.splits, smk.params.out_dir)


run_step(snakemake, main)
