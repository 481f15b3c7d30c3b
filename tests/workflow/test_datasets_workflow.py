"""Dataset adapters: download and checksum, safe unpacking, the literature's class mappings, the workflow."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from cbir.data.manifest import read_manifest

from dataset_fixtures import (
    archive_entry,
    cifar_tree,
    class_folders,
    corel1k_flat,
    numbered_flat,
    paper_datasets,
    tar_folder,
    voc_tree,
    zip_folder,
)
from helpers import REPO, planned_jobs, run_snakemake, write_config

# --- download, checksum, unpacking ---------------------------------------------------------


# --- Corel-1K ------------------------------------------------------------------------------


# --- Corel-10K, GHIM-10K -------------------------------------------------------------------


# --- CIFAR-10 ------------------------------------------------------------------------------


# --- Pascal VOC 2012 -----------------------------------------------------------------------


# --- configuration -------------------------------------------------------------------------


# --- the source registry -------------------------------------------------------------------


# --- the workflow --------------------------------------------------------------------------


def paper_config_serving_archives(tmp_path: Path) -> dict:
    """config/paper.yaml with every dataset served as an archive in its real layout via file://."""
    sources, served = tmp_path / "sources", tmp_path / "served"
    corel1k_flat(sources / "corel1k" / "image.orig", per_class=2)
    numbered_flat(sources / "corel10k", n_classes=100, per_class=1, images_per_class=100)
    class_folders(sources / "ghim10k" / "GHIM-10K", ["buildings", "flowers", "insects"], per_class=2)
    cifar_tree(sources / "cifar10")
    voc_tree(sources / "voc2012")
    archives = {
        "corel1k": tar_folder(sources / "corel1k", served / "wang.tar.gz"),
        "corel10k": tar_folder(sources / "corel10k", served / "corel10k.tar", mode="w"),
        "ghim10k": zip_folder(sources / "ghim10k", served / "ghim10k.zip"),
        "cifar10": tar_folder(sources / "cifar10", served / "cifar-10-python.tar.gz"),
        "voc2012": tar_folder(sources / "voc2012", served / "VOCtrainval_11-May-2012.tar", mode="w"),
    }
    config = yaml.safe_load((REPO / "config" / "paper.yaml").read_text())
    config["data_root"] = str(tmp_path / "data")
    for name, archive in archives.items():
        config["datasets"][name].update(archive_entry(archive))
    config["datasets"]["corel1k"]["subdir"] = "image.orig"
    config["datasets"]["corel10k"]["layout"] = "flat"
    config["datasets"]["ghim10k"]["subdir"] = "GHIM-10K"
    return config


@pytest.mark.workflow
def test_data_rules_fetch_and_index_the_five_datasets_through_their_urls(tmp_path: Path):
    config_path = write_config(tmp_path / "paper_local.yaml", paper_config_serving_archives(tmp_path))
    names = ["corel1k", "corel10k", "ghim10k", "cifar10", "voc2012"]
    targets = [f"results/{n}/manifest.csv" for n in names] + [
        "results/cifar10/splits/official.csv",
        "results/voc2012/splits/official.csv",
        "results/corel1k/splits/80-20.csv",
    ]
    result = run_snakemake(tmp_path, config_path, *targets)
    assert result.returncode == 0, result.stderr[-4000:]
    assert sorted(p.name for p in (tmp_path / "data" / "downloads").iterdir()) == sorted(
        ["wang.tar.gz", "corel10k.tar", "ghim10k.zip", "cifar-10-python.tar.gz", "VOCtrainval_11-May-2012.tar"]
    )
    counts = {n: len(read_manifest(tmp_path / f"results/{n}/manifest.csv")) for n in names}
    assert counts == {"corel1k": 20, "corel10k": 100, "ghim10k": 6, "cifar10": 60, "voc2012": 6}

    corel = read_manifest(tmp_path / "results/corel1k/manifest.csv")
    assert (corel["label"] == corel["id"].str.removesuffix(".jpg").astype(int) // 100).all()
    corel10k = read_manifest(tmp_path / "results/corel10k/manifest.csv")
    assert (corel10k["label"] == corel10k["id"].str.removesuffix(".jpg").astype(int) // 100).all()
    voc = read_manifest(tmp_path / "results/voc2012/manifest.csv").set_index("id")
    assert voc.loc["JPEGImages/2008_000002.jpg", ["class_name", "labels"]].tolist() == ["person", "horse|person"]
    official = pd.read_csv(tmp_path / "results/cifar10/splits/official.csv")
    assert official["subset"].value_counts().to_dict() == {"train": 50, "test": 10}
    assert (
        pd.read_csv(tmp_path / "results/voc2012/splits/official.csv")["subset"].tolist() == ["train"] * 3 + ["test"] * 3
    )
    assert (tmp_path / "results/cifar10/images/frog/test_batch_00003.png").is_file()
    assert json.loads((tmp_path / "results/voc2012/download.json").read_text())["status"] == "unpacked"

    again = run_snakemake(tmp_path, config_path, "-n", *targets)
    assert again.returncode == 0 and planned_jobs(again) == {}


def test_paper_config_dry_run_with_fixtures_in_the_real_layouts(tmp_path: Path):
    paper_datasets(tmp_path / "data")
    result = run_snakemake(tmp_path, REPO / "config" / "paper.yaml", "-n", "--config", f"data_root={tmp_path / 'data'}")
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = planned_jobs(result)
    # CIFAR-10 and VOC 2012 have official URLs: their download jobs run first (and find the files in place)
    assert jobs["download_dataset"] == 2 and jobs["cifar10_images"] == 1
    assert jobs["manifest"] == 5
    assert jobs["split"] == 5 * 4 and jobs["evaluate"] == 5 * 4 * 9
    for name in ["cifar10", "voc2012"]:
        assert f"results/{name}/download.json" in result.stdout
    assert "results/corel1k/download.json" not in result.stdout


# --- real data -----------------------------------------------------------------------------
