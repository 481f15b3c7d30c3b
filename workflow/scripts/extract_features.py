"""Run one shard of a dataset's images through a backbone and stream the CNN codes into a pack of the feature cache."""

import torch

import _package  # noqa: F401  (makes cbir importable)

from cbir.extraction.engines import read_engine
from cbir.extraction.features import extract_shard
from cbir.extraction.registry import BackboneSpec
from cbir.extraction.shards import read_shard_plan
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    torch.set_num_threads(smk.threads)
    options = {**smk.config["extraction"], **smk.params.extraction}
    extract_shard(
        smk.input.manifest,
        read_shard_plan(smk.input.plan),
        smk.wildcards.shard,
        BackboneSpec.from_config(smk.params.backbone),
        smk.output.receipt,
        batch_size=options["batch_size"],
        num_workers=options["num_workers"],
        device=options["device"],
        precision=options["precision"],
        feature_dtype=options["feature_dtype"],
        seed=smk.params.seed,
        engine=read_engine(smk.input.engine) if smk.input.engine else None,
        decode=options["decode"],
    )


run_step(snakemake, main)
