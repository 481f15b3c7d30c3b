"""Assemble a dataset's feature file, in manifest order, from the feature cache."""

from pathlib import Path

import _package  # noqa: F401  (makes cbir importable)

from cbir.data.manifest import read_manifest
from cbir.extraction.feature_cache import FeatureCache, assemble_features
from cbir.extraction.shards import read_shard_plan
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    plan = read_shard_plan(smk.input.plan)
    attrs = {
        "dataset": smk.wildcards.dataset,
        "backbone": smk.wildcards.backbone,
        "n_extracted": plan.n_extracted,
        "feature_cache": plan.cache,
    }
    assemble_features(
        FeatureCache(Path(plan.cache)), read_manifest(smk.input.manifest), smk.output.features, attrs=attrs
    )


run_step(snakemake, main)
