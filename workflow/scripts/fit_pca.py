"""Fit one exact PCA basis per training split, at the largest PCA size of the grid."""

import _package  # noqa: F401  (makes cbir importable)

from cbir.data import split_ids
from cbir.io import load_features
from cbir.reduce import fit_pca_basis, save_projection
from cbir.runtime import run_step


def main(smk) -> None:
    train = load_features(smk.input.features, split_ids(smk.input.split, "train"))
    basis = fit_pca_basis(train.features, smk.params.n_components, seed=smk.params.seed)
    save_projection(smk.output.basis, basis, {"seed": smk.params.seed, "fitted_on": "train", "n_train": len(train.ids)})


run_step(snakemake, main)
