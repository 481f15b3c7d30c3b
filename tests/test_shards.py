"""Sharded extraction: planning, one shard's rows, and gathering equal to a single extraction."""

from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from cbir.backbones import BackboneSpec
from cbir.features import extract_shard, extract_to_hdf5
from cbir.io import read_attrs
from cbir.manifest import read_manifest, scan_image_folder, write_manifest
from cbir.shards import ShardPlan, gather_shards, read_manifest_rows, read_shard_plan, write_shard_plan

SPEC = BackboneSpec("efficientnet_lite0", "random", "avg", 32)
OPTIONS = {"batch_size": 4, "num_workers": 0, "device": "cpu", "precision": "fp32", "progress": False}


@pytest.fixture
def manifest(image_folder: Path, tmp_path: Path) -> Path:
    path = tmp_path / "manifest.csv"
    write_manifest(scan_image_folder(image_folder), path, tmp_path / "excluded.csv")
    return path


def test_plan_cuts_rows_into_consecutive_shards():
    plan = ShardPlan(n_images=30, shard_size=8)
    assert plan.n_shards == 4
    assert plan.names == ["00000", "00001", "00002", "00003"]
    assert [plan.rows(name) for name in plan.names] == [(0, 8), (8, 16), (16, 24), (24, 30)]
    assert ShardPlan(30, 30).n_shards == 1 and ShardPlan(30, 1000).rows(0) == (0, 30)
    with pytest.raises(ValueError, match="shard 4 does not exist"):
        plan.rows(4)
    with pytest.raises(ValueError, match="at least 1"):
        ShardPlan(30, 0)


def test_plan_file_round_trip_and_an_empty_manifest_is_an_error(manifest: Path, tmp_path: Path):
    plan = write_shard_plan(manifest, tmp_path / "plan.json", 8)
    assert read_shard_plan(tmp_path / "plan.json") == plan == ShardPlan(30, 8)
    empty = tmp_path / "empty.csv"
    read_manifest(manifest).iloc[:0].to_csv(empty, index=False)
    with pytest.raises(ValueError, match="lists no images"):
        write_shard_plan(empty, tmp_path / "none.json", 8)


def test_manifest_rows_are_the_slice_of_the_whole_manifest(manifest: Path):
    whole = read_manifest(manifest)
    part = read_manifest_rows(manifest, 8, 16)
    pd.testing.assert_frame_equal(part, whole.iloc[8:16].reset_index(drop=True))
    with pytest.raises(ValueError, match="changed after the shards were planned"):
        read_manifest_rows(manifest, 24, 40)


def test_sharded_extraction_gathers_into_the_single_extraction(manifest: Path, tmp_path: Path):
    rows = read_manifest(manifest)
    whole = extract_to_hdf5(rows["path"], rows["id"], rows["label"], SPEC, tmp_path / "whole.h5", **OPTIONS)
    plan = ShardPlan(len(rows), 8)
    shards = [
        extract_shard(manifest, plan, name, SPEC, tmp_path / f"shard{name}.h5", attrs={"dataset": "tiny"}, **OPTIONS)
        for name in plan.names
    ]
    # copied a few rows at a time: the block size only bounds memory
    gathered = gather_shards(shards, tmp_path / "features.h5", block_bytes=1)

    with h5py.File(whole) as a, h5py.File(gathered) as b:
        assert set(a) == set(b) == {"features", "ids", "paths", "labels"}
        for name in ("ids", "paths"):
            assert list(a[name].asstr()[()]) == list(b[name].asstr()[()])
        assert np.array_equal(a["labels"][()], b["labels"][()])
        assert b["features"].shape == a["features"].shape == (30, 1280)
        assert b["features"].chunks == a["features"].chunks
        assert np.allclose(a["features"][()], b["features"][()], atol=1e-5)
        expected, attrs = read_attrs(a), read_attrs(b)
    for key in ("arch", "weights", "pooling", "image_size", "layer", "feature_dim", "preprocessing", "precision",
                "device", "seed", "library_versions", "complete"):  # fmt: skip
        assert attrs[key] == expected[key], key
    assert attrs["n_shards"] == 4 and attrs["dataset"] == "tiny"
    assert "row_start" not in attrs and "shard" not in attrs
    assert not list(tmp_path.glob(".*partial*"))


def _fake_shard(path: Path, index: int, rows: int, *, pooling: str = "avg", complete: bool = True) -> Path:
    with h5py.File(path, "w") as f:
        f["features"] = np.full((rows, 3), index, dtype=np.float32)
        f["ids"] = np.array([f"{index}-{i}" for i in range(rows)], dtype=object).astype("S")
        f["paths"] = np.array([f"/x/{index}-{i}" for i in range(rows)], dtype=object).astype("S")
        f["labels"] = np.full(rows, index, dtype=np.int64)
        f.attrs.update({"arch": "vgg16", "pooling": pooling, "shard": index, "device": "cpu", "precision": "fp32"})
        f.attrs["device"] = "cuda" if index == 1 else "cpu"
        if complete:
            f.attrs["complete"] = True
    return path


def test_gather_keeps_order_records_mixed_devices_and_refuses_bad_shards(tmp_path: Path):
    shards = [_fake_shard(tmp_path / f"{i}.h5", i, rows) for i, rows in enumerate([3, 2, 4])]
    out = gather_shards(shards, tmp_path / "all.h5")
    with h5py.File(out) as f:
        assert list(f["labels"][()]) == [0, 0, 0, 1, 1, 2, 2, 2, 2]
        assert f["features"][:, 0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
        assert list(f["ids"].asstr()[()])[3:5] == ["1-0", "1-1"]
        attrs = read_attrs(f)
    assert attrs["device"] == ["cpu", "cuda"] and attrs["precision"] == "fp32"

    with pytest.raises(ValueError, match="expected 0 at this position"):
        gather_shards(shards[::-1], tmp_path / "reversed.h5")
    with pytest.raises(ValueError, match=r"differs .* in pooling"):
        gather_shards([shards[0], _fake_shard(tmp_path / "gem.h5", 1, 2, pooling="gem")], tmp_path / "mixed.h5")
    with pytest.raises(ValueError, match="incomplete"):
        gather_shards([shards[0], _fake_shard(tmp_path / "half.h5", 1, 2, complete=False)], tmp_path / "half-all.h5")
    assert not (tmp_path / "reversed.h5").exists() and not (tmp_path / "mixed.h5").exists()
