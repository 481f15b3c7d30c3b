"""Plan the extraction of a dataset's images whose features the cache lacks (the checkpoint of the fan-out)."""

import logging

import _package  # noqa: F401  (makes cbir importable)

from cbir.extraction.feature_cache import FeatureCache, network_fingerprint
from cbir.extraction.shards import write_shard_plan
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    fingerprint = network_fingerprint(
        smk.params.backbone, smk.params.extraction, smk.params.seed, smk.input.engine or None
    )
    cache = FeatureCache.open(smk.params.cache, fingerprint)
    plan = write_shard_plan(smk.input.manifest, smk.output.plan, smk.params.shard_size, cache)
    logging.getLogger("cbir.plan_shards").info(
        "%d images: %d to extract in %d shard(s) of at most %d, the others' features are in the cache %s",
        plan.n_images,
        plan.n_extracted,
        plan.n_shards,
        plan.shard_size,
        cache.folder,
    )


run_step(snakemake, main)
