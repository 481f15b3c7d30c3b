"""Run one shard of a dataset's images through a backbone and stream the CNN codes into a pack of the feature cache."""

import torch

import _package  # noqa: F401  (makes cbir importable)

from cbir.backbones import BackboneSpec
from cbir.engines import read_engine
from cbir.features import extract_shard
from cbir.runtime import run_step
from cbir.shards import read_shard_plan


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
