"""Choose each space's settings and re-ranking, and the space searched, on a validation part of a cell's
training images."""

import _package  # noqa: F401  (makes cbir importable)

from cbir.evaluation.validation import validate_cell
from cbir.io import load_arrays
from cbir.pipeline.steps import run_step

MLP_SETTINGS = ("hidden_layers", "alpha", "learning_rate", "max_iter")


def main(smk) -> None:
    gallery, _ = load_arrays(smk.input.gallery)
    selection = validate_cell(
        gallery["features"],
        gallery["labels"],
        smk.params.spaces,
        smk.params.options,
        smk.params.validation,
        {key: smk.params.mlp[key] for key in MLP_SETTINGS},
        smk.params.seed,
        metric=smk.params.metric,
        labelled=smk.params.labelled,
    )
    selection.save(smk.output.selection)
    print(f"chosen: {selection.describe()}")


run_step(snakemake, main)
