"""Download a dataset's archive, check its size and SHA-256, and unpack it safely (only once)."""

import json
import logging
from pathlib import Path

import _package  # noqa: F401  (makes cbir importable)

from cbir.data.sources import fetch_dataset
from cbir.io import atomic_path
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    entry = smk.params.entry
    record = fetch_dataset(smk.params.name, entry["source"], entry, Path(smk.params.root), Path(smk.params.downloads))
    with atomic_path(smk.output.record) as tmp:
        tmp.write_text(json.dumps(record, indent=2) + "\n")
    logging.getLogger("cbir.download_dataset").info("%s: %s", smk.params.name, record["status"])


run_step(snakemake, main)
