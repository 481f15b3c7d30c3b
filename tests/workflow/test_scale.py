"""Sharded extraction in the workflow: shards gather into the single-job features, a failed
shard reruns alone, and a dataset of 100,000 images in 100 shards plans quickly enough to test."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from cbir.data.manifest import MANIFEST_COLUMNS
from cbir.extraction.feature_cache import FeatureCache
from cbir.extraction.shards import write_shard_plan

from helpers import make_image_folder, planned_jobs, run_snakemake, session_config, tiny_config, write_config

pytestmark = pytest.mark.workflow
FEATURES = "results/tiny/features/lite.h5"


def _sharded_config(data: Path, shard_size: int) -> dict:
    config = tiny_config(data)
    config["extraction"] = {**config["extraction"], "shard_size": shard_size}
    return config


def test_default_run_extracts_one_shard_per_dataset(finished_run):
    root, _ = finished_run
    plan = json.loads((root / "results/tiny/shards/lite/plan.json").read_text())
    assert {key: plan[key] for key in ("n_images", "shard_size", "n_shards", "n_extracted")} == {
        "n_images": 30, "shard_size": 20000, "n_shards": 1, "n_extracted": 30
    }  # fmt: skip
    assert sorted(p.name for p in (root / "results/logs/extract_features").iterdir()) == ["tiny_lite_00000.log"]
    # the shards' receipts are temporary: gathered, then removed; the features stay in the cache
    assert sorted(p.name for p in (root / "results/tiny/shards/lite").iterdir()) == ["plan.json"]
    assert len(list((root / plan["cache"]).glob("*.h5"))) == 1


def test_a_backbone_change_re_extracts_the_temporary_shards_and_a_scheduling_hint_does_not(finished_run):
    root, config = finished_run
    gem = {**config, "backbones": {"lite": {**config["backbones"]["lite"], "pooling": "gem"}}}
    jobs = planned_jobs(run_snakemake(root, write_config(root / "gem.yaml", gem), "-n"))
    # another network: planned again (its shards are known once the plan has run), gathered, refitted
    assert jobs["plan_shards"] == 1 and jobs["gather_features"] == 1 and jobs["fit_pca"] == 1
    hint = {**config, "extraction": {**config["extraction"], "seconds_per_image": 0.002}}
    jobs = planned_jobs(run_snakemake(root, write_config(root / "hint.yaml", hint), "-n"))
    assert not {"plan_shards", "extract_features", "gather_features", "fit_pca", "project"} & set(jobs)


def test_shards_gather_into_the_single_shard_features_and_a_failed_shard_reruns_alone(finished_run, tmp_path: Path):
    reference, _ = finished_run
    data = make_image_folder(tmp_path / "data" / "tiny", per_class=10)
    sharded = session_config(data)  # the reference run's settings, in 4 shards
    sharded["extraction"]["shard_size"] = 8
    config = write_config(tmp_path / "config.yaml", sharded)
    assert run_snakemake(tmp_path, config, "results/tiny/manifest.csv").returncode == 0

    # an image of the third shard (manifest rows 16..23) becomes unreadable after indexing, damaged
    # in place with its size and mtime kept (so the manifest, which watches those, is not rebuilt)
    manifest = pd.read_csv(tmp_path / "results/tiny/manifest.csv")
    broken = Path(manifest["path"][20])
    original, stat = broken.read_bytes(), broken.stat()
    broken.write_bytes(b"x" * len(original))
    os.utime(broken, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    failed = run_snakemake(tmp_path, config, FEATURES, "--keep-going")
    assert failed.returncode != 0
    assert "Error in rule extract_features" in failed.stdout + failed.stderr
    assert "shard=00002" in failed.stdout + failed.stderr
    kept = sorted(p.name for p in (tmp_path / "results/tiny/shards/lite").glob("0*.json"))
    assert kept == ["00000.json", "00001.json", "00003.json"]  # the others completed and are kept
    assert not (tmp_path / FEATURES).exists()

    broken.write_bytes(original)
    os.utime(broken, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    plan = run_snakemake(tmp_path, config, FEATURES, "-n")
    assert planned_jobs(plan) == {"extract_features": 1, "gather_features": 1}
    assert "results/tiny/shards/lite/00002.json" in plan.stdout
    result = run_snakemake(tmp_path, config, FEATURES)
    assert result.returncode == 0, result.stderr[-3000:]

    with h5py.File(reference / FEATURES) as one, h5py.File(tmp_path / FEATURES) as four:
        assert four.attrs["n_shards"] == 4 and one.attrs["n_shards"] == 1
        assert list(four["ids"].asstr()[()]) == list(one["ids"].asstr()[()])
        assert np.array_equal(four["labels"][()], one["labels"][()])
        assert np.allclose(four["features"][()], one["features"][()], atol=1e-4)
    assert not list((tmp_path / "results/tiny/shards").rglob("0*.json"))


def write_large_manifest(root: Path, n_images: int, n_classes: int = 100) -> Path:
    """A manifest of ``n_images`` (paths that need not exist: a dry run reads no image)."""
    index = np.arange(n_images)
    labels = index % n_classes
    frame = pd.DataFrame(
        {
            "id": [f"c{label:03d}/{i:07d}.jpg" for i, label in zip(index, labels, strict=True)],
            "path": [f"{root}/images/c{label:03d}/{i:07d}.jpg" for i, label in zip(index, labels, strict=True)],
            "label": labels,
            "class_name": [f"c{label:03d}" for label in labels],
            "width": 256,
            "height": 256,
            "bytes": 30000,
            "sha256": [f"{i:064x}" for i in index],  # distinct contents: each is extracted
        }
    )[MANIFEST_COLUMNS]
    out = root / "results/large/manifest.csv"
    out.parent.mkdir(parents=True)
    frame.to_csv(out, index=False)
    frame.iloc[:0].to_csv(root / "results/large/excluded.csv", index=False)
    return out


def large_dataset_config(root: Path, shard_size: int) -> dict:
    (root / "images").mkdir(exist_ok=True)  # the dataset's folder must exist
    config = tiny_config(root / "images")
    config["grid"] = {**config["grid"], "datasets": ["large"], "pca": [50, 100, "original"]}
    config["datasets"] = {"large": {"source": "folder", "path": str(root / "images")}}
    config["extraction"] = {**config["extraction"], "shard_size": shard_size}
    return config


def test_a_dataset_of_100k_images_in_100_shards_plans(tmp_path: Path):
    config = write_config(tmp_path / "config.yaml", large_dataset_config(tmp_path, 1000))
    manifest = write_large_manifest(tmp_path, 100_000)
    # before the checkpoint has run, the shards are not known yet: the plan comes first
    before = planned_jobs(run_snakemake(tmp_path, config, "-n"))
    assert before["plan_shards"] == 1 and "extract_features" not in before and "manifest" not in before
    # once it has run (here: written as it would), every shard is a job of the plan
    cache = FeatureCache.open(tmp_path / "results/cache/features", {"any": "network"})
    write_shard_plan(manifest, tmp_path / "results/large/shards/lite/plan.json", 1000, cache)
    result = run_snakemake(tmp_path, config, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result)
    assert jobs["extract_features"] == 100 and jobs["gather_features"] == 1
    assert "plan_shards" not in jobs and jobs["evaluate"] == 3
    assert "results/large/shards/lite/00099.json" in result.stdout
