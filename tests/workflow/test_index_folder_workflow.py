"""``cbir index FOLDER``: checks the folder, writes a config, runs the workflow, and updates incrementally."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import make_image_folder, run_cbir


@pytest.mark.workflow
def test_a_folder_is_indexed_queried_and_updated_with_only_the_new_photos_extracted(tmp_path: Path):
    folder = make_image_folder(tmp_path / "photos", per_class=6)
    for path in sorted((folder / "red").iterdir()):  # no class layout: photos at the top as well
        path.rename(folder / f"top_{path.name}")
    (folder / "red").rmdir()
    (folder / "notes.txt").write_text("not a photo")
    options = ["--cores", "2", "--engine", "torch", "--precision", "fp32"]
    first = run_cbir("index", "photos", *options, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "steps (100%) done" in first.stderr
    assert "indexed 18 image(s)" in first.stdout and "(without labels)" in first.stdout
    assert "1 file(s) left out" in first.stdout  # notes.txt
    cell = tmp_path / "results/photos/efficientnet_lite0/all/original"
    assert f"cbir query PHOTO --model {cell}" in first.stdout

    query = run_cbir("query", str(folder / "top_000.png"), "--model", str(cell), "--json", cwd=tmp_path)
    assert query.returncode == 0, query.stderr[-3000:]
    assert json.loads(query.stdout)[0]["results"]

    for i in range(2):
        pixels = np.random.default_rng(100 + i).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / "green" / f"new_{i}.png")
    second = run_cbir("index", "photos", *options, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "2 inspected, 19 reused" in second.stderr and "extracting 2 images" in second.stderr
    plan = json.loads((tmp_path / "results/photos/shards/efficientnet_lite0/plan.json").read_text())
    assert (plan["n_images"], plan["n_extracted"]) == (20, 2)

    duplicates = run_cbir("duplicates", str(tmp_path / "results/photos/features/efficientnet_lite0.h5"), cwd=tmp_path)
    assert duplicates.returncode == 0, duplicates.stderr[-3000:]
