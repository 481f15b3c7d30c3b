"""The cell's further embedding spaces, fitted on its training images, each with its intra-class clusters."""

import _package  # noqa: F401  (makes cbir importable)

from cbir.fitting.chosen import Selection
from cbir.fitting.spaces import fit_cell_spaces
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    spaces, ks = smk.params.spaces, smk.params.ks
    selection = Selection.load(smk.input.selection)
    fit_cell_spaces(
        smk.input.gallery,
        dict(smk.input.items()).get("classifier"),  # a collection without labels has none
        spaces,
        ks,
        {space: selection.choice(space).settings for space in spaces},
        smk.params.kmeans,
        smk.params.seed,
        # the rule lists its outputs in the order of its params: spaces, then (space, k)
        embedding_paths=dict(zip(spaces, smk.output.embeddings, strict=True)),
        clusters_paths=dict(zip([(s, k) for s in spaces for k in ks], smk.output.clusters, strict=True)),
        refit=smk.params.refit,
    )


run_step(snakemake, main)
