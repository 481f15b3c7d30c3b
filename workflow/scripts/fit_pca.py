"""Fit one PCA basis per training split, at the largest PCA size of the grid.

Exact (the paper's) up to pca_fit.exact_max_images training images; beyond that
pca_fit.large_method, reading the training rows from the feature file batch by batch.
"""

import logging

import _package  # noqa: F401  (makes cbir importable)

from cbir.data.split import split_ids
from cbir.fitting.pca import FeatureRows, choose_pca_method, fit_pca_basis, save_projection
from cbir.io import load_features
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    ids = split_ids(smk.input.split, "train")
    options = smk.params.pca_fit
    method = choose_pca_method(len(ids), options)
    logging.getLogger("cbir.fit_pca").info("%s PCA of %d training images", method, len(ids))
    if method == "exact":
        train = load_features(smk.input.features, ids).features
    else:  # never the whole training set in memory
        train = FeatureRows(smk.input.features, ids)
    basis = fit_pca_basis(
        train,
        smk.params.n_components,
        seed=smk.params.seed,
        method=method,
        batch_size=options["batch_size"],
        sample_size=options["sample_size"],
    )
    save_projection(
        smk.output.basis,
        basis,
        {"seed": smk.params.seed, "fitted_on": "train", "n_train": len(ids), "method": method},
    )


run_step(snakemake, main)
