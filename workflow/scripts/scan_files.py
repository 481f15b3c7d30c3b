"""Inspect one shard of a large folder dataset's files into the records its manifest job reads."""

import logging

import _package  # noqa: F401  (makes cbir importable)

from cbir.data.inspection import scan_shard
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    shard, n_shards = int(smk.wildcards.shard), int(smk.wildcards.n)
    records = scan_shard(
        smk.params.folder,
        shard,
        n_shards,
        smk.params.file_records,
        smk.output.records,
        workers=smk.threads,
        ignore=smk.params.ignore,
    )
    where = smk.params.file_records
    logging.getLogger("cbir.scan").info("shard %d of %d: %s", shard + 1, n_shards, records.summary(where))


run_step(snakemake, main)
