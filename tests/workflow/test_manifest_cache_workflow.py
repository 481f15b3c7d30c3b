"""The manifest's file record cache: only new or changed files are inspected, and the manifest
is the one a build from scratch gives; inspection in a process pool gives the same manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.data.manifest import read_manifest
from cbir.data.sources import build_manifest

from helpers import make_image_folder, run_snakemake, tiny_config, write_config

FOLDER = {"source": "folder"}


def write_png(path: Path, size: int, seed: int = 1) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.workflow
def test_the_manifest_rule_reuses_its_cache(tmp_path: Path):
    data = make_image_folder(tmp_path / "data" / "tiny", per_class=4)
    config = write_config(tmp_path / "config.yaml", tiny_config(data))
    first = run_snakemake(tmp_path, config, "results/tiny/manifest.csv")
    assert first.returncode == 0, first.stderr[-3000:]
    cache = tmp_path / "results" / "tiny" / "cache" / "file_records.csv"
    assert cache.is_file()
    write_png(data / "red" / "extra.png", 20)
    second = run_snakemake(tmp_path, config, "results/tiny/manifest.csv", "--forcerun", "manifest")
    assert second.returncode == 0, second.stderr[-3000:]
    log = (tmp_path / "results" / "logs" / "manifest" / "tiny.log").read_text()
    assert "manifest: 1 inspected, 12 reused from results/tiny/cache/file_records.csv" in log
    assert len(read_manifest(tmp_path / "results" / "tiny" / "manifest.csv")) == 13


@pytest.mark.workflow
def test_a_large_folder_is_inspected_by_scan_jobs(tmp_path: Path):
    data = make_image_folder(tmp_path / "data" / "tiny", per_class=4)
    config = tiny_config(data)
    config["data"] = {"scan_shard_size": 5}
    config_path = write_config(tmp_path / "config.yaml", config)
    first = run_snakemake(tmp_path, config_path, "results/tiny/manifest.csv")
    assert first.returncode == 0, first.stderr[-3000:]
    logs = tmp_path / "results" / "logs"
    assert sorted(path.name for path in (logs / "scan_files").iterdir()) == [f"tiny_{i}-of-3.log" for i in range(3)]
    assert "4 inspected, 0 reused" in (logs / "scan_files" / "tiny_0-of-3.log").read_text()
    log = (logs / "manifest" / "tiny.log").read_text()
    assert "manifest: 0 inspected, 12 reused from results/tiny/cache/file_records.csv and 3 scan shards" in log
    assert not (tmp_path / "results" / "tiny" / "scan").exists() or not any((tmp_path / "results/tiny/scan").iterdir())
    expected = build_manifest("folder", FOLDER, data)
    manifest = read_manifest(tmp_path / "results" / "tiny" / "manifest.csv")
    assert sorted(manifest["sha256"]) == sorted(expected.images["sha256"])
    # an added file: the folder's listing changed, so the scan jobs run again and inspect it alone
    write_png(data / "red" / "extra.png", 20)
    second = run_snakemake(tmp_path, config_path, "results/tiny/manifest.csv")
    assert second.returncode == 0, second.stderr[-3000:]
    scans = [(logs / "scan_files" / f"tiny_{i}-of-3.log").read_text() for i in range(3)]
    assert sum("1 inspected" in text for text in scans) == 1
    assert len(read_manifest(tmp_path / "results" / "tiny" / "manifest.csv")) == 13
