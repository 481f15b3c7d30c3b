"""Image-level incremental extraction: after adding, removing, changing or renaming files, only the new
contents are extracted, and the feature file equals a from-scratch extraction bit for bit (fp32)."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest

from cbir.data.manifest import read_manifest
from cbir.extraction.features import extract_to_hdf5
from cbir.extraction.registry import BackboneSpec
from cbir.extraction.shards import read_shard_plan

from helpers import make_image_folder, mixed

OPTIONS = {"batch_size": 4, "num_workers": 0, "device": "cpu", "precision": "fp32", "progress": False}
SHARD_SIZE = 7  # shards that do not line up with the batches


@pytest.mark.workflow
def test_the_workflow_notices_changed_files_and_extracts_only_their_contents(tmp_path: Path):
    """Through Snakemake, without --forcerun: the manifest follows the folder (names, sizes, mtimes), and the
    rerun extracts the three new contents of a mixed change, giving a fresh extraction's features."""
    import torch

    from helpers import planned_jobs, run_snakemake, tiny_config, write_config

    folder = make_image_folder(tmp_path / "data" / "tiny", per_class=6)
    config = tiny_config(folder)
    config["extraction"] = {**config["extraction"], "shard_size": SHARD_SIZE, "batch_size": 4}
    config_path = write_config(tmp_path / "config.yaml", config)
    target = "results/tiny/features/lite.h5"
    first = run_snakemake(tmp_path, config_path, target)
    assert first.returncode == 0, first.stderr[-3000:]
    assert planned_jobs(run_snakemake(tmp_path, config_path, target, "-n")) == {}  # nothing changed

    assert mixed(folder) == 3
    assert planned_jobs(run_snakemake(tmp_path, config_path, target, "-n"))["manifest"] == 1
    second = run_snakemake(tmp_path, config_path, target)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "extracting 3 images" in second.stderr
    plan = read_shard_plan(tmp_path / "results/tiny/shards/lite/plan.json")
    assert plan.n_extracted == 3 and plan.n_images == 18 + 3 - 2  # added, changed, copied; removed

    rows = read_manifest(tmp_path / "results/tiny/manifest.csv")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the extraction jobs (extraction.threads: 1)
    try:
        spec = BackboneSpec("efficientnet_lite0", "pypi", "avg", 64)
        fresh = extract_to_hdf5(rows["path"], rows["id"], rows["label"], spec, tmp_path / "fresh.h5", **OPTIONS)
    finally:
        torch.set_num_threads(threads)
    with h5py.File(tmp_path / target) as a, h5py.File(fresh) as b:
        assert list(a["ids"].asstr()[()]) == list(b["ids"].asstr()[()])
        assert np.array_equal(a["features"][()], b["features"][()])
