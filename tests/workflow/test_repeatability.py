"""Repeatability: the same config and seed give the same files and numbers, run after run.

The tiny workflow runs a second time, in another folder, on the same images (written again by
the same generator) plus a few files that cannot be used: these are excluded, counted in the
summary, and change no number. Every artifact records the seed and the library versions.
"""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest

from cbir.io import load_arrays, read_attrs

from helpers import make_image_folder, run_snakemake, session_config, write_config

pytestmark = pytest.mark.workflow

CELL = Path("results/tiny/lite/80-20")
PCAS = ("4", "8", "original")
UNUSABLE = {"red/notes.jpg": b"not an image", "green/broken.jpg": b"\xff\xd8\xff\xe0 cut short", "blue/empty.png": b""}
IGNORED = {"red/notes.txt": b"a note beside the photos", "blue/.DS_Store": b"\0"}  # not photos: listed, not counted


@pytest.fixture(scope="module")
def second_run(finished_run, tmp_path_factory) -> tuple[Path, Path]:
    first, config = finished_run
    root = tmp_path_factory.mktemp("again")
    data = make_image_folder(root / "data" / "tiny", per_class=10)
    for name, content in {**UNUSABLE, **IGNORED}.items():
        (data / name).write_bytes(content)
    again = session_config(data)
    # the same settings; only the folder differs
    assert {**again, "data_root": None, "datasets": None} == {**config, "data_root": None, "datasets": None}
    result = run_snakemake(root, write_config(root / "config.yaml", again))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return first, root


def test_splits_are_byte_identical(second_run):
    first, second = second_run
    assert (first / "results/tiny/splits/80-20.csv").read_bytes() == (
        second / "results/tiny/splits/80-20.csv"
    ).read_bytes()
    columns = ["id", "label", "class_name", "width", "height", "bytes", "sha256"]  # the paths differ: other folders
    a, b = (pd.read_csv(root / "results/tiny/manifest.csv")[columns] for root in (first, second))
    pd.testing.assert_frame_equal(a, b)


def test_features_and_every_fitted_model_are_identical(second_run):
    first, second = second_run
    a, b = (load_arrays(root / "results/tiny/features/lite.h5")[0] for root in (first, second))
    assert np.array_equal(a["features"], b["features"]) and list(a["ids"]) == list(b["ids"])
    fitted = ["pca_basis.h5"] + [f"{pca}/{name}" for pca in PCAS for name in ("gallery.h5", "classifier.h5",
                                                                             "clusters_k2.h5")]  # fmt: skip
    for name in fitted:
        a, _ = load_arrays(first / CELL / name)
        b, _ = load_arrays(second / CELL / name)
        assert a.keys() == b.keys(), name
        for key in a:
            if key != "paths":  # absolute paths of the other folder
                assert np.array_equal(a[key], b[key]), (name, key)
    for pca in PCAS:  # the k-means assignments, explicitly
        a, _ = load_arrays(first / CELL / pca / "clusters_k2.h5")
        b, _ = load_arrays(second / CELL / pca / "clusters_k2.h5")
        assert np.array_equal(a["assignments"], b["assignments"])


def _without_timings(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.drop(columns=[c for c in frame.columns if c.startswith("time_") or c == "library_versions"])


def test_metric_tables_are_identical_but_for_the_timings(second_run):
    first, second = second_run
    a, b = (_without_timings(pd.read_csv(root / "results/summary/metrics.csv")) for root in (first, second))
    assert len(a.columns) > 30
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    for name in ("accuracy_80-20.csv", "retrieval_quality_80-20.csv"):
        assert (first / "results/summary" / name).read_bytes() == (second / "results/summary" / name).read_bytes()


def test_unusable_files_are_excluded_counted_in_the_summary_and_change_nothing(second_run):
    first, second = second_run
    excluded = pd.read_csv(second / "results/tiny/excluded.csv")
    assert sorted(Path(p).relative_to(second / "data/tiny").as_posix() for p in excluded["path"]) == sorted(UNUSABLE)
    reasons = dict(zip(excluded["path"].map(lambda p: Path(p).name), excluded["reason"], strict=True))
    assert reasons["notes.jpg"].startswith("cannot decode: not an image Pillow can read")
    ignored = pd.read_csv(second / "results/tiny/ignored.csv")
    assert sorted(ignored["kind"]) == ["os_file", "other"] and ignored["files"].sum() == len(IGNORED)
    assert reasons["broken.jpg"].startswith("cannot decode") and reasons["empty.png"] == "empty file (0 bytes)"
    summary = {root: pd.read_csv(root / "results/summary/datasets.csv").iloc[0] for root in (first, second)}
    assert summary[first][["images", "classes", "excluded", "duplicates"]].tolist() == [30, 3, 0, 0]
    assert summary[second][["images", "classes", "excluded", "duplicates"]].tolist() == [30, 3, 3, 0]
    assert summary[second]["excluded_fraction"] == pytest.approx(3 / 33, abs=1e-6)
    log = (second / "results/logs/manifest/tiny.log").read_text()
    assert "3 file(s) excluded (9.1% of the files, limit 0.2)" in log


def test_every_artifact_records_the_seed_and_the_library_versions(finished_run):
    root, config = finished_run
    artifacts = sorted((root / "results").rglob("*.h5"))
    further_spaces = len(config["grid"]["embeddings"]) - 1
    # the feature cache's pack, features, PCA basis, per cell: projection, gallery, classifier, clusters, and each
    # further space with its clusters
    assert len(list((root / "results/cache/features").rglob("*.h5"))) == 1
    assert len(artifacts) == 1 + 1 + 1 + 3 * (4 + 2 * further_spaces)
    for path in artifacts:
        with h5py.File(path) as f:
            attrs = read_attrs(f)
        assert attrs.get("seed") == config["seed"], path
        assert {"cbir", "python", "numpy", "scikit-learn", "h5py", "pandas", "pillow"} <= set(attrs["library_versions"])
    assert "torch" in load_arrays(root / "results/tiny/features/lite.h5")[1]["library_versions"]
    for path in [root / "results/tiny/features/lite.timing.json", *sorted((root / "results").rglob("metrics_k*.json"))]:
        payload = json.loads(path.read_text())
        assert payload["seed"] == config["seed"] and "numpy" in payload["library_versions"], path
