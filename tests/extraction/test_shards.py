"""Sharded extraction through the feature cache: planning what the cache lacks, one shard into a pack,
and the feature file assembled from the cache equal to a single extraction, bit for bit."""

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from cbir.data.manifest import read_manifest, write_manifest
from cbir.data.scan import scan_image_folder
from cbir.extraction.feature_cache import CacheError, FeatureCache, assemble_features, network_fingerprint
from cbir.extraction.features import extract_shard, extract_to_hdf5
from cbir.extraction.registry import BackboneSpec
from cbir.extraction.shards import ShardPlan, read_manifest_rows, read_shard_plan, write_shard_plan
from cbir.io import read_attrs, write_attrs

SPEC = BackboneSpec("efficientnet_lite0", "random", "avg", 32)
OPTIONS = {"batch_size": 4, "num_workers": 0, "device": "cpu", "precision": "fp32", "progress": False}
BACKBONE = {"arch": "efficientnet_lite0", "weights": "random", "pooling": "avg", "image_size": 32}
EXTRACTION = {"device": "cpu", "precision": "fp32", "feature_dtype": "float32", "engine": "torch"}


@pytest.fixture
def manifest(image_folder: Path, tmp_path: Path) -> Path:
    path = tmp_path / "manifest.csv"
    write_manifest(scan_image_folder(image_folder), path, tmp_path / "excluded.csv")
    return path


@pytest.fixture
def cache(tmp_path: Path) -> FeatureCache:
    return FeatureCache.open(tmp_path / "cache", network_fingerprint(BACKBONE, EXTRACTION, seed=0))


def test_plan_cuts_the_rows_to_extract_into_shards():
    plan = ShardPlan(n_images=30, shard_size=8)
    assert plan.n_shards == 4 and plan.n_extracted == 30
    assert plan.names == ["00000", "00001", "00002", "00003"]
    assert [plan.rows(name) for name in plan.names] == [
        list(range(0, 8)), list(range(8, 16)), list(range(16, 24)), list(range(24, 30))
    ]  # fmt: skip
    some = ShardPlan(30, 2, extract=(3, 7, 29))
    assert some.n_shards == 2 and some.rows(1) == [29]
    assert ShardPlan(30, 8, extract=()).n_shards == 0  # everything cached: nothing to extract
    with pytest.raises(ValueError, match="shard 4 does not exist"):
        plan.rows(4)
    with pytest.raises(ValueError, match="at least 1"):
        ShardPlan(30, 0)
    with pytest.raises(ValueError, match="outside the manifest"):
        ShardPlan(30, 8, extract=(30,))


def test_plan_file_round_trip_and_an_empty_manifest_is_an_error(manifest: Path, cache: FeatureCache, tmp_path: Path):
    plan = write_shard_plan(manifest, tmp_path / "plan.json", 8, cache)
    assert read_shard_plan(tmp_path / "plan.json") == plan == ShardPlan(30, 8, tuple(range(30)), str(cache.folder))
    empty = tmp_path / "empty.csv"
    read_manifest(manifest).iloc[:0].to_csv(empty, index=False)
    with pytest.raises(ValueError, match="lists no images"):
        write_shard_plan(empty, tmp_path / "none.json", 8, cache)


def test_manifest_rows_are_those_of_the_whole_manifest(manifest: Path):
    whole = read_manifest(manifest)
    part = read_manifest_rows(manifest, [8, 9, 20], 30)
    pd.testing.assert_frame_equal(part, whole.iloc[[8, 9, 20]].reset_index(drop=True))
    with pytest.raises(ValueError, match="changed after the shards were planned"):
        read_manifest_rows(manifest, [8], 31)


def test_shards_into_the_cache_assemble_into_the_single_extraction_bit_for_bit(
    manifest: Path, cache: FeatureCache, tmp_path: Path
):
    rows = read_manifest(manifest)
    whole = extract_to_hdf5(rows["path"], rows["id"], rows["label"], SPEC, tmp_path / "whole.h5", **OPTIONS)
    # shards of 7: the last shard holds 2 images, and a duplicate content is planned once
    rows.loc[29, "sha256"] = rows.loc[0, "sha256"]
    rows.to_csv(manifest, index=False)
    plan = write_shard_plan(manifest, tmp_path / "plan.json", 7, cache)
    assert plan.n_extracted == 29 and plan.n_shards == 5
    receipts = [extract_shard(manifest, plan, name, SPEC, tmp_path / f"{name}.json", **OPTIONS) for name in plan.names]
    assert len(cache.packs()) == 5 and all(path.is_file() for path in receipts)
    assemble_features(cache, rows, tmp_path / "features.h5", attrs={"dataset": "tiny"}, block_rows=3)

    with h5py.File(whole) as a, h5py.File(tmp_path / "features.h5") as b:
        assert set(a) == set(b) == {"features", "ids", "paths", "labels"}
        for name in ("ids", "paths"):
            assert list(a[name].asstr()[()]) == list(b[name].asstr()[()])
        assert np.array_equal(a["labels"][()], b["labels"][()])
        assert b["features"].shape == a["features"].shape == (30, 1280)
        assert b["features"].chunks == a["features"].chunks
        assert np.array_equal(a["features"][:29], b["features"][:29])
        assert np.array_equal(b["features"][29], a["features"][0])  # the duplicate content's features
        expected, attrs = read_attrs(a), read_attrs(b)
    for key in ("arch", "weights", "pooling", "image_size", "layer", "feature_dim", "preprocessing", "precision",
                "device", "seed", "library_versions", "complete"):  # fmt: skip
        assert attrs[key] == expected[key], key
    assert attrs["n_shards"] == 5 and attrs["dataset"] == "tiny"
    assert "shard" not in attrs
    assert not list(tmp_path.rglob(".*partial*"))

    # planned again: every content is cached, nothing is extracted
    assert write_shard_plan(manifest, tmp_path / "again.json", 7, cache).n_shards == 0
    # a shard whose pack exists is not extracted again (its receipt names the pack)
    before = {path: path.stat().st_mtime_ns for path in cache.packs()}
    extract_shard(manifest, plan, "00000", SPEC, tmp_path / "again.json", **OPTIONS)
    assert {path: path.stat().st_mtime_ns for path in cache.packs()} == before


def test_assembling_refuses_missing_contents_and_packs_that_disagree(
    manifest: Path, cache: FeatureCache, tmp_path: Path
):
    rows = read_manifest(manifest)
    plan = write_shard_plan(manifest, tmp_path / "plan.json", 30, cache)
    extract_shard(manifest, plan, "00000", SPEC, tmp_path / "00000.json", **OPTIONS)
    unknown = rows.assign(sha256=["f" * 64, *rows["sha256"].tolist()[1:]])
    with pytest.raises(CacheError, match=r"features of 1 image\(s\) are not in the feature cache .* --forcerun"):
        assemble_features(cache, unknown, tmp_path / "x.h5")
    # a pack of another pooling in the same folder (a hand-copied file) is refused
    with h5py.File(cache.packs()[0]) as f:
        attrs = read_attrs(f)
    with h5py.File(cache.folder / "other.h5", "w") as f:
        f["sha256"] = np.array(["e" * 64], dtype="S64")
        f["features"] = np.zeros((1, 1280), dtype=np.float32)
        write_attrs(f, {**attrs, "pooling": "gem"})
    mixed = rows.assign(sha256=["e" * 64, *rows["sha256"].tolist()[1:]])
    with pytest.raises(CacheError, match=r"differs .* in pooling"):
        assemble_features(cache, mixed, tmp_path / "y.h5")
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "y.h5").exists()


def test_the_fingerprint_follows_what_changes_features_and_nothing_else(tmp_path: Path):
    base = network_fingerprint(BACKBONE, EXTRACTION, seed=0)
    same = network_fingerprint(dict(reversed(BACKBONE.items())), {**EXTRACTION, "batch_size": 64}, seed=0)
    assert FeatureCache.open(tmp_path, base).folder == FeatureCache.open(tmp_path, same).folder
    weights = tmp_path / "weights.pt"
    weights.write_bytes(b"one")
    local = network_fingerprint({**BACKBONE, "weights": str(weights)}, EXTRACTION, seed=0)
    changes = [
        network_fingerprint({**BACKBONE, "pooling": "gem"}, EXTRACTION, seed=0),
        network_fingerprint({**BACKBONE, "image_size": 64}, EXTRACTION, seed=0),
        network_fingerprint(BACKBONE, {**EXTRACTION, "precision": "bf16"}, seed=0),
        network_fingerprint(BACKBONE, EXTRACTION, seed=1),
        local,
    ]
    folders = {FeatureCache.open(tmp_path, fingerprint).folder for fingerprint in [base, *changes]}
    assert len(folders) == 1 + len(changes)
    weights.write_bytes(b"two")  # the same file name, other weights: another network
    changed = network_fingerprint({**BACKBONE, "weights": str(weights)}, EXTRACTION, seed=0)
    assert FeatureCache.open(tmp_path, changed).folder != FeatureCache.open(tmp_path, local).folder
