"""Gather a dataset's feature shards, in manifest order, into its single feature file."""

import _package  # noqa: F401  (makes cbir importable)

from cbir.runtime import run_step
from cbir.shards import gather_shards


def main(smk) -> None:
    gather_shards(list(smk.input.shards), smk.output.features)


run_step(snakemake, main)
