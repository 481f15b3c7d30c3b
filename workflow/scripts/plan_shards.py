"""Cut a dataset's manifest into shards of extraction.shard_size images (the checkpoint of the fan-out)."""

import logging

import _package  # noqa: F401  (makes cbir importable)

from cbir.runtime import run_step
from cbir.shards import write_shard_plan


def main(smk) -> None:
    plan = write_shard_plan(smk.input.manifest, smk.output.plan, smk.params.shard_size)
    logging.getLogger("cbir.plan_shards").info(
        "%d images in %d shard(s) of at most %d", plan.n_images, plan.n_shards, plan.shard_size
    )


run_step(snakemake, main)
