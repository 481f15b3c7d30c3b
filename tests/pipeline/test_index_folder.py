"""``cbir index FOLDER``: checks the folder, writes a config, runs the workflow, and updates incrementally."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.cli import main
from cbir.pipeline.index_folder import class_folders, dataset_name, detect_labels, index_config, plan_index

from helpers import make_image_folder, run_cbir


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda root: root / "missing", "does not exist"),
        (lambda root: _write(root / "a.png", b"x"), "is not a folder"),
        (lambda root: _mkdir(root / "empty"), "holds no files"),
        (lambda root: _write(_mkdir(root / "docs") / "notes.txt", b"hello").parent, "1 file(s), none of them an image"),
    ],
    ids=["missing", "a file", "empty", "no images"],
)
def test_a_folder_that_cannot_be_indexed_is_refused_with_the_reason(tmp_path: Path, capsys, make, message: str):
    assert main(["index", str(make(tmp_path)), "--workdir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("cbir index: error:") and message in error
    assert not (tmp_path / "results").exists()  # nothing was run


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _mkdir(path: Path) -> Path:
    path.mkdir()
    return path


def test_labels_are_detected_from_the_layout_and_checked(tmp_path: Path):
    classes = make_image_folder(tmp_path / "sorted", per_class=3)
    assert detect_labels(classes, class_folders(classes)) == "folders"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(classes / "loose.png")
    assert detect_labels(classes, class_folders(classes)) == "none"  # a photo at the top: not a class layout
    one = make_image_folder(tmp_path / "one", per_class=3)
    for name in ("green", "blue"):
        for path in (one / name).iterdir():
            path.rename(one / "red" / f"{name}_{path.name}")
        (one / name).rmdir()
    assert detect_labels(one, class_folders(one)) == "none"
    with pytest.raises(ValueError, match="two or more sub-folders of images"):
        plan_index(one, name=None, labels="folders", backbone="efficientnet_lite0")
    with pytest.raises(ValueError, match="letters, digits and underscores"):
        plan_index(one, name="my photos", labels="auto", backbone="efficientnet_lite0")
    assert dataset_name(tmp_path / "Holiday 2026!") == "Holiday_2026"


def test_the_config_is_one_cell_of_the_folder(tmp_path: Path):
    folder = make_image_folder(tmp_path / "trip", per_class=50)
    base = {"backbones": {"efficientnet_lite0": {}}, "grid": {"k": [3]}}
    unlabelled = plan_index(folder, name=None, labels="none", backbone="efficientnet_lite0")
    config = index_config(unlabelled, base, {"engine": "torch"})
    assert config["datasets"] == {"trip": {"source": "folder", "path": str(folder.resolve()), "labels": "none"}}
    assert config["grid"] == {"datasets": ["trip"], "backbones": ["efficientnet_lite0"], "splits": ["all"],
                              "pca": [100], "k": [3], "embeddings": ["raw"]}  # fmt: skip
    assert config["extraction"] == {"engine": "torch"} and unlabelled.cell.endswith("trip/efficientnet_lite0/all/100")
    assert config["update"] == {"refit": "when_due"}
    labelled = plan_index(folder, name="trips", labels="auto", backbone="efficientnet_lite0")
    assert labelled.labels == "folders" and labelled.split == "80-20" and labelled.pca == "100"
    with pytest.raises(ValueError, match="not in the backbone catalogue"):
        index_config(plan_index(folder, name=None, labels="auto", backbone="resnet9"), base)


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
