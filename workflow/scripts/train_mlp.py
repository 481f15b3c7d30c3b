"""Train the MLP classifier on one grid cell's reduced training features."""

import numpy as np

import _package  # noqa: F401  (makes cbir importable)

from cbir.fitting.mlp import save_mlp, train_mlp
from cbir.io import load_arrays
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    gallery, _ = load_arrays(smk.input.gallery)
    options = smk.params.mlp
    model = train_mlp(
        gallery["features"],
        gallery["labels"],
        hidden_layers=options["hidden_layers"],
        alpha=options["alpha"],
        learning_rate=options["learning_rate"],
        max_iter=options["max_iter"],
        early_stopping=options.get("early_stopping", "auto"),
        seed=smk.params.seed,
    )
    # what it was fitted on: update.refit when_due refits when that has changed enough (cbir.fitting.refit)
    fitted_on = {"n_train": len(gallery["labels"]), "n_classes": len(np.unique(gallery["labels"]))}
    save_mlp(smk.output.classifier, model, {"seed": smk.params.seed, "classes_from": "train", **fitted_on})


run_step(snakemake, main)
