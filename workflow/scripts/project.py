"""Project one grid cell's training images with PCA(n) (or keep them: 'original')."""

import _package  # noqa: F401  (makes cbir importable)

from cbir.data.manifest import class_names, read_manifest
from cbir.data.split import split_ids
from cbir.fitting.pca import Projection, load_projection, save_projection
from cbir.io import load_features, save_arrays
from cbir.pipeline.steps import run_step
from cbir.search.cell import CellIdentity


def main(smk) -> None:
    wildcards = smk.wildcards
    train = load_features(smk.input.features, split_ids(smk.input.split, "train"))
    if wildcards.pca == "original":
        projection = Projection(mean=None, components=None)
    else:
        projection = load_projection(smk.input.basis).truncate(int(wildcards.pca))
    attrs = {
        # which grid cell, read back by cbir.search.cell.load_cell wherever the cell's folder is copied to
        **CellIdentity(wildcards.dataset, wildcards.backbone, wildcards.split, wildcards.pca).as_dict(),
        "seed": smk.params.seed,
        "backbone_attrs": train.attrs,
        "class_names": class_names(read_manifest(smk.input.manifest)),
        # False: a collection without labels (cbir.search.cell.load_cell then needs no classifier)
        "labelled": smk.params.labelled,
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
