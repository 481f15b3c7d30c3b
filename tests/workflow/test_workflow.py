"""The workflow end to end on a tiny dataset, and what an incremental rerun rebuilds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pandas as pd
import pytest
import yaml

from cbir.io import load_arrays, read_attrs
from cbir.layout import SELECTION, clusters_name, embedding_name

from dataset_fixtures import paper_datasets
from helpers import REPO, make_image_folder, planned_jobs, run_snakemake, tiny_config, write_config

pytestmark = pytest.mark.workflow
CELL = Path("results/tiny/lite/80-20")


def test_run_writes_every_cell_and_the_summary_tables(finished_run):
    root, _ = finished_run
    metrics = pd.read_csv(root / "results/summary/metrics.csv")
    assert len(metrics) == 3
    assert set(metrics["pca"].astype(str)) == {"4", "8", "original"}
    for column in ["dataset", "backbone", "split", "k", "accuracy", "precision_at_5_clustered",
                   "precision_at_5_class", "precision_at_5_global", "time_predict_median_us",
                   "time_search_clustered_p95_us", "time_total_class_median_us"]:  # fmt: skip
        assert column in metrics.columns, column
    assert metrics["accuracy"].between(0, 1).all()
    # three colour classes are easy: the pretrained backbone separates them
    assert metrics["accuracy"].min() >= 0.8
    table = pd.read_csv(root / "results/summary/accuracy_80-20.csv", index_col=0)
    assert list(table.index.astype(str)) == ["4", "8", "original"] and list(table.columns) == ["tiny"]
    assert "| PCA" in (root / "results/summary/accuracy_80-20.md").read_text()
    assert (root / "results/summary/retrieval_time_80-20.md").exists()
    assert (root / "results/summary/accuracy_vs_pca.png").stat().st_size > 1000


def test_split_file_and_manifest_are_readable(finished_run):
    root, _ = finished_run
    manifest = pd.read_csv(root / "results/tiny/manifest.csv")
    assert len(manifest) == 30 and manifest["sha256"].str.len().eq(64).all()
    split = pd.read_csv(root / "results/tiny/splits/80-20.csv")
    assert list(split.columns) == ["id", "label", "subset"]
    assert split["subset"].value_counts().to_dict() == {"train": 24, "test": 6}


def test_features_are_extracted_once_per_dataset_and_backbone(finished_run):
    root, _ = finished_run
    assert [p.name for p in (root / "results/tiny/features").glob("*.h5")] == ["lite.h5"]
    with h5py.File(root / "results/tiny/features/lite.h5") as f:
        assert f["features"].shape == (30, 1280)
        assert f.attrs["arch"] == "efficientnet_lite0"


def test_noop_rerun_has_nothing_to_do(finished_run):
    root, config = finished_run
    result = run_snakemake(root, write_config(root / "same.yaml", config), "-n")
    assert result.returncode == 0
    assert planned_jobs(result) == {}
    assert "Nothing to be done" in result.stdout + result.stderr


def test_adding_one_pca_size_rebuilds_only_that_branch(finished_run):
    root, config = finished_run
    config = {**config, "grid": {**config["grid"], "pca": [4, 6, 8, "original"]}}
    result = run_snakemake(root, write_config(root / "more_pca.yaml", config), "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned_jobs(result) == {
        "project": 1, "cluster": 1, "train_mlp": 1, "select_settings": 1, "evaluate": 1, "fit_spaces": 1,
        "evaluate_spaces": 1, "summarize": 1, "all": 1,
    }  # fmt: skip
    assert "results/tiny/lite/80-20/6/metrics_k2.json" in result.stdout


def test_other_splits_and_k_reuse_the_features(finished_run):
    root, config = finished_run
    config = {**config, "grid": {**config["grid"], "splits": ["80-20", "70-30"], "k": [2, 3]}}
    result = run_snakemake(root, write_config(root / "more_splits.yaml", config), "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result)
    assert "extract_features" not in jobs and "manifest" not in jobs
    assert jobs["split"] == 1 and jobs["fit_pca"] == 1
    assert jobs["evaluate"] == 2 * 3 * 2 - 3  # every cell but the three already done


def test_the_key_order_of_a_config_file_does_not_rebuild_anything(finished_run):
    root, config = finished_run

    def reversed_keys(value):
        if isinstance(value, dict):
            return {key: reversed_keys(value[key]) for key in reversed(list(value))}
        return value

    path = root / "reordered.yaml"
    path.write_text(yaml.safe_dump(reversed_keys(config), sort_keys=False))
    result = run_snakemake(root, path, "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned_jobs(result) == {}


def test_speed_settings_do_not_re_extract_the_features(finished_run):
    root, config = finished_run
    faster = {**config["extraction"], "num_workers": 1, "threads": 2}
    result = run_snakemake(root, write_config(root / "speed.yaml", {**config, "extraction": faster}), "-n")
    assert result.returncode == 0, result.stderr[-3000:]
    assert planned_jobs(result) == {}
    precise = {**config["extraction"], "feature_dtype": "float16"}
    result = run_snakemake(root, write_config(root / "dtype.yaml", {**config, "extraction": precise}), "-n")
    assert planned_jobs(result).get("gather_features") == 1  # the stored features change
    on_device = {**config["extraction"], "decode": "device"}
    result = run_snakemake(root, write_config(root / "decode.yaml", {**config, "extraction": on_device}), "-n")
    assert planned_jobs(result).get("plan_shards") == 1  # another decoder: its own cache, which lacks every image


def test_images_decoded_on_the_device_are_extracted_under_their_own_fingerprint(finished_run, tmp_path: Path):
    """extraction.decode: device (here on the CPU) runs through the extraction jobs and is recorded."""
    root, config = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, symlinks=True)
    on_device = {**config, "extraction": {**config["extraction"], "decode": "device"}}
    features = "results/tiny/features/lite.h5"
    result = run_snakemake(copy, write_config(copy / "decode.yaml", on_device), features)
    assert result.returncode == 0, result.stderr[-3000:]
    with h5py.File(copy / features) as f, h5py.File(root / features) as g:
        record = read_attrs(f)["preprocessing"]
        assert record["decode"].startswith("decode_jpeg") and record["jpeg_draft"] is False
        a, b = f["features"][()], g["features"][()]
    assert a.shape == b.shape
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.99  # the same images, decoded by another decoder
    caches = [p for p in (copy / "results/cache/features").iterdir() if p.is_dir()]
    assert len(caches) == 2  # Pillow's fingerprint and the device decoder's


def test_a_retrieval_setting_reruns_only_the_jobs_that_read_it(finished_run):
    root, config = finished_run
    fewer = {**config, "retrieval": {"montage_queries": 2}}
    jobs = planned_jobs(run_snakemake(root, write_config(root / "montage.yaml", fewer), "-n"))
    assert jobs.get("montage") == 1 and "evaluate" not in jobs
    wider = {**config, "retrieval": {"faiss": {"nprobe": 8}}}
    jobs = planned_jobs(run_snakemake(root, write_config(root / "nprobe.yaml", wider), "-n"))
    assert jobs.get("evaluate") == 3 and "montage" not in jobs


def test_no_test_image_influences_any_fitted_model(finished_run, tmp_path: Path):
    """Replace the test images' features with noise: every fitted model stays bit-identical."""
    root, config = finished_run
    copy = tmp_path / "copy"
    shutil.copytree(root, copy, symlinks=True)
    test_ids = set(pd.read_csv(copy / "results/tiny/splits/80-20.csv").query("subset == 'test'")["id"])
    with h5py.File(copy / "results/tiny/features/lite.h5", "r+") as f:
        rows = [i for i, image_id in enumerate(f["ids"].asstr()[()]) if image_id in test_ids]
        f["features"][rows] = np.random.default_rng(0).normal(size=(len(rows), f["features"].shape[1]))
    result = run_snakemake(copy, write_config(copy / "rerun.yaml", config))
    assert result.returncode == 0, result.stderr[-3000:]

    spaces = [space for space in config["grid"]["embeddings"] if space != "raw"]
    assert spaces, "the session's run fits further embedding spaces"
    in_spaces = [name for space in spaces for name in (embedding_name(space), clusters_name(2, space))]
    per_cell = ("projection.h5", "gallery.h5", "classifier.h5", "clusters_k2.h5", *in_spaces)
    fitted = ["pca_basis.h5"] + [f"{pca}/{name}" for pca in ("4", "8", "original") for name in per_cell]
    for name in fitted:
        before, _ = load_arrays(root / CELL / name)
        after, _ = load_arrays(copy / CELL / name)
        assert before.keys() == after.keys()
        for key in before:
            assert np.array_equal(before[key], after[key]), (name, key)
    # every choice made by validation (each space's settings and re-ranking, the space searched), and the
    # figures behind it, are the same too: the validation part is drawn from the training images only
    for pca in ("4", "8", "original"):
        before, after = (json.loads((folder / CELL / pca / SELECTION).read_text()) for folder in (root, copy))
        assert before["validation"]["n_validation"] > 0
        before["validation"].pop("seconds"), after["validation"].pop("seconds")
        assert before == after, pca
    # ...while the evaluation did see the changed test images
    old = json.loads((root / CELL / "original/metrics_k2.json").read_text())
    new = json.loads((copy / CELL / "original/metrics_k2.json").read_text())
    assert (old["accuracy"], old["precision_at_5_global"]) != (new["accuracy"], new["precision_at_5_global"])


def test_wrong_config_value_stops_before_any_job(tmp_path: Path):
    data = make_image_folder(tmp_path / "data" / "tiny", per_class=2)
    config = tiny_config(data)
    config["grid"]["pca"] = [4, "all"]
    result = run_snakemake(tmp_path, write_config(tmp_path / "bad.yaml", config))
    assert result.returncode != 0
    assert "config key 'grid.pca[1]'" in result.stderr
    assert "original" in result.stderr  # the allowed value is named
    assert not (tmp_path / "results").exists()


def test_paper_config_plans_the_full_grid_when_the_datasets_are_there(tmp_path: Path):
    paper_datasets(tmp_path / "data")  # each dataset in its real layout
    result = run_snakemake(tmp_path, REPO / "config" / "paper.yaml", "-n", "--config", f"data_root={tmp_path / 'data'}")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result)
    assert jobs["download_dataset"] == 2  # CIFAR-10 and VOC 2012 have official URLs
    assert jobs["manifest"] == 5
    assert jobs["split"] == 5 * 4 and jobs["fit_pca"] == 5 * 4
    assert jobs["evaluate"] == 5 * 4 * 9 and jobs["train_mlp"] == 5 * 4 * 9


def test_paper_config_names_a_missing_dataset_before_any_job(tmp_path: Path):
    data = paper_datasets(tmp_path / "data")
    shutil.rmtree(data / "ghim10k")
    shutil.rmtree(data / "voc2012")  # not missing: the workflow downloads it
    result = run_snakemake(tmp_path, REPO / "config" / "paper.yaml", "-n", "--config", f"data_root={data}")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "dataset 'ghim10k' not found" in output
    assert "20 classes of 500 images" in output  # how to provide it
    assert "voc2012" not in output
