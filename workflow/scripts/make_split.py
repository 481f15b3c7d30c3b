"""Stratified, seeded train/test split of a manifest (its official one, or all in the gallery), as image ids."""

import _package  # noqa: F401  (makes cbir importable)

from cbir.data.manifest import read_manifest
from cbir.data.sources import official_split_table
from cbir.data.split import ALL, OFFICIAL, gallery_only_table, parse_split, split_table
from cbir.io import atomic_path
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    manifest = read_manifest(smk.input.manifest)
    if smk.wildcards.split == OFFICIAL:
        table = official_split_table(manifest)
    elif smk.wildcards.split == ALL:
        table = gallery_only_table(manifest)
    else:
        table = split_table(manifest, parse_split(smk.wildcards.split), seed=smk.params.seed)
    with atomic_path(smk.output.split) as tmp:
        table.to_csv(tmp, index=False)


run_step(snakemake, main)
