"""Choose each space's settings and re-ranking, and the space searched, on a validation part of a cell's
training images."""

import _package  # noqa: F401  (makes cbir importable)

from cbir.evaluation.validation import validate_cell
from cbir.extraction.copies import load_copies
from cbir.fitting.pca import load_projection
from cbir.io import load_arrays
from cbir.pipeline.steps import run_step

MLP_SETTINGS = ("hidden_layers", "alpha", "learning_rate", "max_iter", "early_stopping")


def main(smk) -> None:
    gallery, _ = load_arrays(smk.input.gallery)
    inputs = dict(smk.input.items())
    copies = None
    if "copies" in inputs:  # a collection without labels: changed copies of its photos, in the cell's space
        features, originals = load_copies(inputs["copies"])
        copies = (load_projection(inputs["projection"]).transform(features), originals, gallery["ids"])
    selection = validate_cell(
        gallery["features"],
        gallery["labels"],
        smk.params.spaces,
        smk.params.options,
        smk.params.validation,
        {key: smk.params.mlp[key] for key in MLP_SETTINGS if key in smk.params.mlp},
        smk.params.seed,
        metric=smk.params.metric,
        labelled=smk.params.labelled,
        copies=copies,
    )
    selection.save(smk.output.selection)
    print(f"chosen: {selection.describe()}")


run_step(snakemake, main)
