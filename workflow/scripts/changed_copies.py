"""Changed copies of a sample of a collection's photos, through the network its features were extracted with."""

import torch

import _package  # noqa: F401  (makes cbir importable)

from cbir.extraction.copies import extract_copies
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    torch.set_num_threads(smk.threads)
    n = extract_copies(smk.input.features, smk.output.copies, smk.params.n_copies, smk.params.seed, smk.params.device)
    print(f"{n} changed copies")


run_step(snakemake, main)
