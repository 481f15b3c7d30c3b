"""The ``fashion_mnist`` source: the strict IDX reader, the PNG export with the official split, the per-class cap,
the errors for broken files, the config checks, the data rules, and the real files where Debian installed them."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cbir.data.manifest import read_manifest

from dataset_fixtures import cifar_tree
from helpers import REPO, planned_jobs, run_snakemake, write_config

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


# --- fake files in the real layout ----------------------------------------------------------


def idx_payload(array: np.ndarray, magic: int | None = None) -> bytes:
    """An IDX file's bytes: magic number, big-endian dimensions, then the uint8 values."""
    magic = (0x0800 | array.ndim) if magic is None else magic
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return magic.to_bytes(4, "big") + dims + np.asarray(array, dtype=np.uint8).tobytes()


def write_gz(path: Path, payload: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(payload, mtime=0))
    return path


def fake_fashion(folder: Path, per_class: dict[str, int] | None = None, classes=(0, 1, 2), seed: int = 0) -> dict:
    """The four .gz files with ``per_class`` images of each of ``classes`` per subset, in shuffled order.

    Returns, per subset, the images and labels written.
    """
    per_class = per_class or {"train": 4, "test": 2}
    rng = np.random.default_rng(seed)
    written = {}
    for subset, (images_name, labels_name) in FILES.items():
        labels = rng.permutation(np.repeat(np.asarray(classes, dtype=np.uint8), per_class[subset]))
        images = rng.integers(0, 256, size=(len(labels), 28, 28), dtype=np.uint8)
        write_gz(folder / images_name, idx_payload(images))
        write_gz(folder / labels_name, idx_payload(labels))
        written[subset] = (images, labels)
    return written


# --- the reader -----------------------------------------------------------------------------


# --- the export and the manifest -------------------------------------------------------------


# --- the per-class cap ------------------------------------------------------------------------


# --- presence and configuration ----------------------------------------------------------------


def base_config(tmp_path: Path, datasets: dict, splits: list[str] | None = None) -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["data_root"] = str(tmp_path)
    config["datasets"] = datasets
    config["grid"]["datasets"] = list(datasets)
    config["grid"]["splits"] = splits or ["80-20"]
    config["grid"]["pca"] = [4, "original"]
    return config


# --- the workflow ----------------------------------------------------------------------------------


@pytest.mark.workflow
def test_data_rules_export_and_index_fashion_mnist_beside_cifar10(tmp_path: Path):
    fake_fashion(tmp_path / "data" / "fm", per_class={"train": 6, "test": 2})
    cifar_tree(tmp_path / "data" / "cifar")
    config = base_config(
        tmp_path / "data",
        {
            "fm": {"source": "fashion_mnist", "path": "fm", "max_per_class": 4},
            "cifar": {"source": "cifar10", "path": "cifar"},
        },
        ["official"],
    )
    config_path = write_config(tmp_path / "config.yaml", config)
    targets = [f"results/{name}/splits/official.csv" for name in ("fm", "cifar")]
    result = run_snakemake(tmp_path, config_path, *targets)
    assert result.returncode == 0, result.stderr[-4000:]

    manifest = read_manifest(tmp_path / "results/fm/manifest.csv")
    assert len(manifest) == 12 and set(manifest["width"]) == {64}  # the schema's image_size default
    official = pd.read_csv(tmp_path / "results/fm/splits/official.csv")
    assert official.groupby(["label", "subset"]).size().to_dict() == {
        (label, subset): n for label in (0, 1, 2) for subset, n in (("test", 1), ("train", 3))
    }
    report = json.loads((tmp_path / "results/fm/images/export.json").read_text())
    assert report["max_per_class"] == 4 and report["seed"] == 0
    assert len(read_manifest(tmp_path / "results/cifar/manifest.csv")) == 60
    assert (tmp_path / "results/logs/fashion_mnist_images/fm.log").is_file()

    again = run_snakemake(tmp_path, config_path, "-n", *targets)
    assert again.returncode == 0 and planned_jobs(again) == {}
    # replaced IDX files export the images again
    fake_fashion(tmp_path / "data" / "fm", per_class={"train": 6, "test": 2}, seed=1)
    changed = run_snakemake(tmp_path, config_path, "-n", *targets)
    assert planned_jobs(changed).get("fashion_mnist_images") == 1 and "cifar10_images" not in planned_jobs(changed)


# --- real data ---------------------------------------------------------------------------------------
