"""``cbir index FOLDER``: checks the folder, writes a config, runs the workflow, and updates incrementally."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.cli import main
from cbir.pipeline.index_folder import class_folders, dataset_name, detect_labels, index_config, plan_index

from helpers import make_image_folder


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
