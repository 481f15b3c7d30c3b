"""Image-level incremental extraction: after adding, removing, changing or renaming files, only the new
contents are extracted, and the feature file equals a from-scratch extraction bit for bit (fp32)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from cbir.data.manifest import read_manifest, write_manifest
from cbir.data.scan import scan_image_folder
from cbir.extraction.feature_cache import FeatureCache, assemble_features, network_fingerprint
from cbir.extraction.features import extract_shard, extract_to_hdf5
from cbir.extraction.registry import BackboneSpec
from cbir.extraction.shards import write_shard_plan

from helpers import add, change, make_image_folder, mixed, remove, rename

SPEC = BackboneSpec("efficientnet_lite0", "random", "avg", 32)
OPTIONS = {"batch_size": 4, "num_workers": 0, "device": "cpu", "precision": "fp32", "progress": False}
BACKBONE = {"arch": "efficientnet_lite0", "weights": "random", "pooling": "avg", "image_size": 32}
EXTRACTION = {"device": "cpu", "precision": "fp32", "feature_dtype": "float32", "engine": "torch"}
SHARD_SIZE = 7  # shards that do not line up with the batches


def index_folder(folder: Path, cache: FeatureCache, work: Path) -> tuple[int, Path]:
    """Manifest, plan, shards into the cache, feature file: the workflow's steps in one call.
    Returns the number of images extracted and the feature file."""
    work.mkdir(parents=True, exist_ok=True)
    write_manifest(scan_image_folder(folder), work / "manifest.csv", work / "excluded.csv")
    plan = write_shard_plan(work / "manifest.csv", work / "plan.json", SHARD_SIZE, cache)
    for name in plan.names:
        extract_shard(work / "manifest.csv", plan, name, SPEC, work / f"{name}.json", **OPTIONS)
    assemble_features(cache, read_manifest(work / "manifest.csv"), work / "features.h5")
    return plan.n_extracted, work / "features.h5"


@pytest.mark.parametrize("edit", [add, remove, change, rename, mixed], ids=lambda edit: edit.__name__)
def test_only_new_contents_are_extracted_and_the_features_equal_a_fresh_run(tmp_path: Path, edit: Callable):
    folder = make_image_folder(tmp_path / "images", per_class=6)
    cache = FeatureCache.open(tmp_path / "cache", network_fingerprint(BACKBONE, EXTRACTION, seed=0))
    extracted, _ = index_folder(folder, cache, tmp_path / "first")
    assert extracted == 18

    expected_new = edit(folder)
    extracted, incremental = index_folder(folder, cache, tmp_path / "second")
    assert extracted == expected_new

    rows = read_manifest(tmp_path / "second" / "manifest.csv")
    fresh = extract_to_hdf5(rows["path"], rows["id"], rows["label"], SPEC, tmp_path / "fresh.h5", **OPTIONS)
    with h5py.File(incremental) as a, h5py.File(fresh) as b:
        for name in ("ids", "paths"):
            assert list(a[name].asstr()[()]) == list(b[name].asstr()[()])
        assert np.array_equal(a["labels"][()], b["labels"][()])
        assert np.array_equal(a["features"][()], b["features"][()])  # bit for bit
