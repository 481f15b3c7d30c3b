"""k-means with k clusters inside each class of the training images."""

import numpy as np

import _package  # noqa: F401  (makes cbir importable)

from cbir.fitting.kmeans import fit_intra_class_kmeans, save_clusters
from cbir.io import load_arrays
from cbir.pipeline.steps import run_step


def main(smk) -> None:
    gallery, _ = load_arrays(smk.input.gallery)
    options = smk.params.kmeans
    clusters = fit_intra_class_kmeans(
        gallery["features"],
        gallery["labels"],
        int(smk.wildcards.k),
        seed=smk.params.seed,
        n_init=options["n_init"],
        max_iter=options["max_iter"],
        # exact k-means, or MiniBatchKMeans for classes above kmeans.exact_max_images
        method="auto",
        exact_max_images=options["exact_max_images"],
        batch_size=options["batch_size"],
    )
    attrs = {
        "k": int(smk.wildcards.k),
        "seed": smk.params.seed,
        # what they were fitted on (cbir.fitting.refit), and whether images added later may join them when loaded
        "n_train": len(gallery["ids"]),
        "n_classes": len(np.unique(gallery["labels"])),
        "refit": smk.params.refit,
    }
    save_clusters(smk.output.clusters, clusters, gallery["ids"], attrs)


run_step(snakemake, main)
