"""``cbir index FOLDER``: checks the folder, writes a config, runs the workflow, and updates incrementally; a
labelled folder's every photo is searchable; a failed run is one line and a log."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers import SMALL_BACKBONE, make_image_folder, run_cbir

OPTIONS = ["--cores", "2", "--engine", "torch", "--precision", "fp32", *SMALL_BACKBONE]
SNAKEMAKE_SCREEN = ("Job stats:", "Building DAG of jobs", "Select jobs to execute", " INFO cbir.", "Traceback")


@pytest.mark.workflow
def test_a_folder_is_indexed_queried_and_updated_with_only_the_new_photos_extracted(tmp_path: Path):
    folder = make_image_folder(tmp_path / "photos", per_class=6)
    for path in sorted((folder / "red").iterdir()):  # no class layout: photos at the top as well
        path.rename(folder / f"top_{path.name}")
    (folder / "red").rmdir()
    (folder / "scan.png").write_bytes(b"not a photo")  # an image's name, unreadable: left out
    options = ["--cores", "2", "--engine", "torch", "--precision", "fp32", *SMALL_BACKBONE]
    first = run_cbir("index", "photos", *options, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert "steps (100%) done" in first.stderr
    # one line per stage and the summary; Snakemake's log and the jobs' output only in the log file
    assert not [line for line in SNAKEMAKE_SCREEN if line in first.stdout + first.stderr], first.stderr
    assert "  files checked: 18 photo(s) usable" in first.stderr
    assert "  features extracted: 18 photo(s) extracted, 0 from the feature cache" in first.stderr
    assert "  models fitted: 1 cell(s)" in first.stderr and "  quality measured" in first.stderr
    log = tmp_path / "results/photos/index.log"
    assert "the full log: results/photos/index.log" in first.stderr and "Job stats:" in log.read_text()
    assert "18 photo(s) searchable, every indexed one" in first.stdout
    assert "quality measured by the same cell" in first.stdout
    assert "indexed 18 image(s)" in first.stdout and "(without labels)" in first.stdout
    assert "1 file(s) left out" in first.stdout  # scan.png
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
    assert "2 inspected, 19 reused" in log.read_text() and "extracting 2 images" in log.read_text()
    assert "  features extracted: 2 photo(s) extracted, 18 from the feature cache" in second.stderr
    plan = json.loads((tmp_path / "results/photos/shards/efficientnet_lite0/plan.json").read_text())
    assert (plan["n_images"], plan["n_extracted"]) == (20, 2)

    duplicates = run_cbir("duplicates", str(tmp_path / "results/photos/features/efficientnet_lite0.h5"), cwd=tmp_path)
    assert duplicates.returncode == 0, duplicates.stderr[-3000:]


@pytest.mark.workflow
def test_every_photo_of_a_labelled_folder_is_searchable_and_quality_is_measured_on_the_held_out_fifth(
    tmp_path: Path,
):
    make_image_folder(tmp_path / "classes", per_class=10)
    result = run_cbir("index", "classes", *OPTIONS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    cell = tmp_path / "results/classes/efficientnet_lite0/all/original"
    measured = tmp_path / "results/classes/efficientnet_lite0/80-20/original"
    assert f"cbir query PHOTO --model {cell}" in result.stdout and "30 photo(s) searchable" in result.stdout
    assert f"quality measured by {measured} (split 80-20" in result.stdout and "held-out photo(s)" in result.stdout
    assert "  models fitted: 2 cell(s)" in result.stderr
    with h5py.File(cell / "gallery.h5", "r") as f:
        assert f["ids"].shape[0] == 30  # every indexed photo: the held-out fifth as well
    assert list(measured.glob("metrics_*.json")) and not list(cell.glob("metrics_*.json"))

    split = (tmp_path / "results/classes/splits/80-20.csv").read_text().splitlines()
    held_out = next(line.split(",")[0] for line in split[1:] if line.endswith(",test"))
    query = run_cbir("query", f"classes/{held_out}", "--model", str(cell), "--json", cwd=tmp_path)
    assert query.returncode == 0, query.stderr[-3000:]
    (best,) = json.loads(query.stdout)[0]["results"]["global"][:1]
    assert best["id"] == held_out and best["distance"] < 1e-3

    again = run_cbir("index", "classes", *OPTIONS, "--verbose", cwd=tmp_path)  # nothing to do; Snakemake's log shown
    assert again.returncode == 0 and "nothing to do: the index is up to date" in again.stderr
    assert "Building DAG of jobs" in again.stderr and "Nothing to be done" in again.stderr


@pytest.mark.workflow
def test_of_several_pca_sizes_only_the_one_validation_chose_is_measured(tmp_path: Path):
    make_image_folder(tmp_path / "classes", per_class=50)  # 120 training images: PCA 100 and the original
    result = run_cbir("index", "classes", *OPTIONS, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    split = tmp_path / "results/classes/efficientnet_lite0/80-20"
    chosen = json.loads((split / "chosen_pca.json").read_text())["pca"]
    assert set(json.loads((split / "chosen_pca.json").read_text())["validation_scores"]) == {"100", "original"}
    assert f"quality measured by {split / chosen} (split 80-20" in result.stdout
    for pca in ("100", "original"):
        assert (split / pca / "selection.json").is_file()  # validated
        assert bool(list((split / pca).glob("metrics_*.json"))) == (pca == chosen)
        assert (tmp_path / f"results/classes/efficientnet_lite0/all/{pca}/classifier.h5").is_file()  # searchable
    # the stages the choice adds jobs to are told once the run is done, with every job counted
    assert "  models fitted: 4 cell(s)" in result.stderr
    quality = [line for line in result.stderr.splitlines() if line.startswith("  quality measured")]
    assert quality == ["  quality measured: 4 steps"]  # time_extraction, montage, evaluate, evaluate_spaces


@pytest.mark.workflow
def test_a_failed_index_is_one_line_saying_what_and_where_with_the_log(tmp_path: Path):
    folder = tmp_path / "broken"
    folder.mkdir()
    for i in range(4):
        (folder / f"photo_{i}.jpg").write_bytes(b"not a jpeg")
    result = run_cbir("index", "broken", *OPTIONS, cwd=tmp_path)
    assert result.returncode == 2 and result.stdout == ""
    assert not [line for line in SNAKEMAKE_SCREEN if line in result.stderr], result.stderr
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("cbir index: error: checking the files failed (rule manifest): ")
    assert "no usable image" in errors[0] and "4 file(s) excluded" in errors[0]
    assert "the files and reasons are listed in 'results/logs/manifest/broken.excluded.csv'" in errors[0]
    assert len(pd.read_csv(tmp_path / "results/logs/manifest/broken.excluded.csv")) == 4
    assert "the failed step's log: results/logs/manifest/broken.log; the full log: results/broken/index.log" in (
        result.stderr
    )
    log = (tmp_path / "results/broken/index.log").read_text()
    assert "Traceback" in log and "DatasetError" in log

    verbose = run_cbir("index", "broken", *OPTIONS, "--verbose", cwd=tmp_path)
    assert verbose.returncode == 2 and "Traceback" in verbose.stderr and "Job stats:" in verbose.stderr
    assert verbose.stderr.count("cbir index: error: checking the files failed") == 1


@pytest.mark.workflow
def test_too_many_unusable_files_name_the_setting_and_the_list_of_files(tmp_path: Path):
    folder = make_image_folder(tmp_path / "photos", per_class=4)
    for i in range(5):
        (folder / "red" / f"broken_{i}.jpg").write_bytes(b"not a jpeg")
    result = run_cbir("index", "photos", *OPTIONS, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (error,) = [line for line in result.stderr.splitlines() if "error:" in line]
    assert "data.max_excluded_fraction" in error and "(cbir index --ignore, --max-excluded-fraction)" in error
    assert "results/logs/manifest/photos.excluded.csv" in error
    assert (tmp_path / "results/logs/manifest/photos.excluded.csv").is_file()
    # what the message offers: leave them out with a pattern
    again = run_cbir("index", "photos", *OPTIONS, "--ignore", "broken_*", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    ignored = pd.read_csv(tmp_path / "results/photos/ignored.csv")
    assert ignored[["kind", "files"]].values.tolist() == [["configured", 5]]
