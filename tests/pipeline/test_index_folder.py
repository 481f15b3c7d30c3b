"""``cbir index FOLDER``: checks the folder, writes a config, runs the workflow, and updates incrementally."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import cbir.cli
from cbir.cli import listen_problem, main
from cbir.pipeline import index_folder
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
    assert detect_labels(classes).labels == "folders" and class_folders(classes) == 3
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(classes / "loose.png")
    assert detect_labels(classes).labels == "none"  # a photo at the top: not a class layout
    one = make_image_folder(tmp_path / "one", per_class=3)
    for name in ("green", "blue"):
        for path in (one / name).iterdir():
            path.rename(one / "red" / f"{name}_{path.name}")
        (one / name).rmdir()
    assert detect_labels(one).labels == "none" and class_folders(one) == 1
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
                              "pca": [100], "k": [3], "measure": "chosen", "embeddings": ["raw"]}  # fmt: skip
    assert config["extraction"] == {"engine": "torch"} and unlabelled.cells == [
        "results/trip/efficientnet_lite0/all/100"
    ]
    assert config["update"] == {"refit": "when_due"}
    # the test split measures the re-ranking validation chose, not the fixed comparison's three
    assert config["embeddings"]["rerank"] == {"query_expansion": {"n": 0}, "dba": {"k": 0}}
    assert config["feedback"] == {"eval_spaces": "searched"}  # the simulated user refines where queries do
    labelled = plan_index(folder, name="trips", labels="auto", backbone="efficientnet_lite0")
    # with labels, every PCA size the training images allow (100 of 120; not 256), for validation to choose
    assert labelled.labels == "folders" and labelled.split == "80-20" and labelled.pcas == ("100", "original")
    assert index_config(labelled, base)["grid"]["pca"] == [100, "original"]
    # each size validated, only the one validation chose tested on the held-out fifth
    assert index_config(labelled, base)["grid"]["measure"] == "chosen"
    assert index_folder.pca_sizes("folders", 1000) == ("100", "256", "original")
    assert index_folder.pca_sizes("folders", 100) == ("original",)  # 100 of 100 training images: too close
    assert index_folder.pca_sizes("none", 1000) == ("100",) and index_folder.pca_sizes("none", 80) == ("original",)
    with pytest.raises(ValueError, match="not in the backbone catalogue"):
        index_config(plan_index(folder, name=None, labels="auto", backbone="resnet9"), base)


def test_a_labelled_folder_is_measured_on_80_20_and_searched_in_a_cell_of_every_photo(tmp_path: Path):
    folder = make_image_folder(tmp_path / "trip", per_class=50)
    base = {"backbones": {"efficientnet_lite0": {}}, "grid": {"k": [3, 5], "embeddings": ["raw", "lda"]}}
    labelled = plan_index(folder, name="trips", labels="folders", backbone="efficientnet_lite0")
    assert labelled.measured_cells == ["results/trips/efficientnet_lite0/80-20/100",
                                       "results/trips/efficientnet_lite0/80-20/original"]  # fmt: skip
    # what cbir query and serve may load; validation inside each picks one (cbir.search.cell.chosen_cell)
    assert labelled.cells == [
        "results/trips/efficientnet_lite0/all/100",
        "results/trips/efficientnet_lite0/all/original",
    ]
    config = index_config(labelled, base, data={"max_excluded_fraction": 0.5, "ignore": ["*.tmp"]})
    assert config["grid"]["splits"] == ["80-20"] and config["data"] == {
        "max_excluded_fraction": 0.5,
        "ignore": ["*.tmp"],
    }
    # the search cell is built beside the grid (never evaluated: nothing is held out of it)
    files = ("projection.h5", "gallery.h5", "classifier.h5", "selection.json", "clusters_k3.h5", "clusters_k5.h5",
             "embedding_lda.h5", "clusters_lda_k3.h5", "clusters_lda_k5.h5")  # fmt: skip
    assert index_folder.search_cell_files(labelled, config, base) == [
        f"{cell}/{name}" for cell in labelled.cells for name in files
    ]
    unlabelled = plan_index(folder, name=None, labels="none", backbone="efficientnet_lite0")
    assert unlabelled.cells == unlabelled.measured_cells and unlabelled.log == "results/trip/index.log"
    assert index_folder.search_cell_files(unlabelled, index_config(unlabelled, base), base) == []  # the grid's own cell


def test_a_failed_run_is_one_line_and_the_logs_to_read(tmp_path: Path, capsys, monkeypatch):
    folder = make_image_folder(tmp_path / "trip", per_class=3)
    log = tmp_path / "results/trip/index.log"

    def failing_run(plan, workdir, cores, extraction, **options):
        error = "checking the files failed (rule manifest): 5 of 17 files were excluded"
        raise index_folder.IndexRunError(error, log, tmp_path / "results/logs/manifest/trip.log")

    monkeypatch.setattr(cbir.cli, "run_workflow", failing_run)
    assert main(["index", str(folder), "--workdir", str(tmp_path), "--max-excluded-fraction", "0.3"]) == 2
    error = capsys.readouterr().err.splitlines()
    assert error[1] == "cbir index: error: checking the files failed (rule manifest): 5 of 17 files were excluded"
    assert error[2] == (f"cbir index: the failed step's log: {tmp_path}/results/logs/manifest/trip.log; the full "
                        f"log: {log} (--verbose shows it as it runs)")  # fmt: skip
    assert len(error) == 3
    assert main(["index", str(folder), "--workdir", str(tmp_path), "--verbose"]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err
    assert main(["index", str(folder), "--max-excluded-fraction", "2"]) == 2
    assert "--max-excluded-fraction must be between 0 and 1" in capsys.readouterr().err


def test_an_unexpected_error_is_one_line_too_and_verbose_shows_where(tmp_path: Path, capsys, monkeypatch):
    def broken(path):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(cbir.cli, "load_index", broken)
    assert main(["duplicates", str(tmp_path / "x.h5")]) == 2
    error = capsys.readouterr().err
    assert error == (
        "cbir duplicates: error: RuntimeError: something nobody foresaw (unexpected: --verbose shows where it "
        "happened)\n"
    )
    assert main(["duplicates", str(tmp_path / "x.h5"), "--verbose"]) == 2
    error = capsys.readouterr().err
    assert "Traceback (most recent call last)" in error and "in broken" in error


def test_serve_refuses_a_port_in_use_before_loading_the_model(tmp_path: Path, capsys):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert "in use" in listen_problem("127.0.0.1", port)
        assert main(["serve", "--model", str(tmp_path / "missing"), "--port", str(port)]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"cbir serve: error: port {port} on 127.0.0.1 is in use") and len(error.splitlines()) == 1
    assert listen_problem("127.0.0.1", 70000) == "--port must be between 0 and 65535, not 70000"
    assert "is not an address" in listen_problem("no-such-host.invalid", 8000)
    assert main(["serve", "--model", str(tmp_path / "missing"), "--port", "0"]) == 2
    assert capsys.readouterr().err == f"cbir serve: error: model folder '{tmp_path / 'missing'}' does not exist\n"
