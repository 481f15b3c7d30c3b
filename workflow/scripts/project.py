"""Project one grid cell's training images with PCA(n) (or keep them: 'original')."""

import _package  # noqa: F401  (makes cbir importable)

from cbir.data import class_names, read_manifest, split_ids
from cbir.io import load_features, save_arrays
from cbir.reduce import Projection, load_projection, save_projection
from cbir.runtime import run_step


def main(smk) -> None:
    train = load_features(smk.input.features, split_ids(smk.input.split, "train"))
    if smk.wildcards.pca == "original":
        projection = Projection(mean=None, components=None)
    else:
        projection = load_projection(smk.input.basis).truncate(int(smk.wildcards.pca))
    attrs = {
        "pca": smk.wildcards.pca,
        "seed": smk.params.seed,
        "backbone_attrs": train.attrs,
        "class_names": class_names(read_manifest(smk.input.manifest)),
    }
    save_projection(smk.output.projection, projection, attrs)
    save_arrays(
        smk.output.gallery,
        {
            "features": projection.transform(train.features),
            "ids": train.ids,
            "labels": train.labels,
            "paths": train.paths,
        },
        {**attrs, "subset": "train"},
    )


run_step(snakemake, main)
