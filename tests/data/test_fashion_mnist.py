"""The ``fashion_mnist`` source: the strict IDX reader, the PNG export with the official split, the per-class cap,
the errors for broken files, the config checks, the data rules, and the real files where Debian installed them."""

from __future__ import annotations

import gzip
import hashlib
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.data.manifest import DatasetError
from cbir.data.sources import (
    FASHION_MNIST_CLASSES,
    build_manifest,
    export_fashion_mnist_png,
    get_source,
    official_split_table,
    prepared_datasets_pattern,
    read_idx_gz,
)
from cbir.data.sources.fashion_mnist import (
    DEBIAN_FOLDER,
    FASHION_MNIST_MD5,
    IDX_IMAGES_MAGIC,
    IDX_LABELS_MAGIC,
    class_quotas,
    read_subset,
    select_per_class,
)
from cbir.pipeline.config import ConfigError, load_schema, validate_config
from cbir.pipeline.grid import missing_datasets

from dataset_fixtures import FILES, default_config_with, fake_fashion, write_gz
from helpers import REPO

SCHEMA = load_schema(REPO / "config" / "schema.yaml")
REAL = Path(DEBIAN_FOLDER)


# --- fake files in the real layout ----------------------------------------------------------


def quiet_manifest(root: Path, images_dir: Path, **entry):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = build_manifest("fashion_mnist", {"source": "fashion_mnist", **entry}, root, images_dir)
    return manifest, [str(w.message) for w in caught]


# --- the reader -----------------------------------------------------------------------------


def test_reader_returns_the_arrays_and_the_md5_of_the_unpacked_content(tmp_path: Path):
    written = fake_fashion(tmp_path / "fm")
    images, labels, md5s = read_subset(tmp_path / "fm", "train")
    assert images.shape == (12, 28, 28) and images.dtype == np.uint8
    assert np.array_equal(images, written["train"][0]) and np.array_equal(labels, written["train"][1])
    payload = gzip.decompress((tmp_path / "fm" / FILES["train"][0]).read_bytes())
    assert md5s[FILES["train"][0]] == hashlib.md5(payload).hexdigest()
    labels, _ = read_idx_gz(tmp_path / "fm" / FILES["test"][1], IDX_LABELS_MAGIC)
    assert labels.shape == (6,)


def corrupt(folder: Path, case: str) -> tuple[Path, str]:
    """Break one file of a fake Fashion-MNIST folder; returns it and the expected message."""
    images_path, labels_path = folder / FILES["train"][0], folder / FILES["train"][1]
    images = gzip.decompress(images_path.read_bytes())
    if case == "truncated data":
        write_gz(images_path, images[:-100])
        return images_path, r"is truncated: its header declares 12 x 28 x 28 = 9408 bytes of data, the file holds 9308"
    if case == "truncated gzip":
        blob = images_path.read_bytes()
        images_path.write_bytes(blob[: len(blob) // 2])
        return images_path, "is truncated or corrupt: gzip says"
    if case == "truncated header":
        write_gz(images_path, images[:10])
        return images_path, r"is truncated inside its header \(10 bytes\)"
    if case == "extra bytes":
        write_gz(images_path, images + b"\0" * 5)
        return images_path, r"is longer than its header declares \(12 x 28 x 28 = 9408 bytes of data, then 5 byte"
    if case == "wrong magic":
        write_gz(images_path, IDX_LABELS_MAGIC.to_bytes(4, "big") + images[4:])
        return images_path, r"wrong magic number 0x00000801 \(IDX labels\), expected 0x00000803 \(IDX images\)"
    if case == "other magic":
        write_gz(labels_path, (0x00000D01).to_bytes(4, "big") + gzip.decompress(labels_path.read_bytes())[4:])
        return labels_path, r"wrong magic number 0x00000D01, expected 0x00000801 \(IDX labels\)"
    if case == "count mismatch":
        labels = gzip.decompress(labels_path.read_bytes())
        write_gz(labels_path, (0x801).to_bytes(4, "big") + (11).to_bytes(4, "big") + labels[8:-1])
        return images_path, r"holds 12 images but '.*train-labels-idx1-ubyte\.gz' holds 11 labels"
    if case == "not gzip":
        images_path.write_bytes(images)
        return images_path, r"is not gzip-compressed \(no gzip signature 1f 8b\)"
    if case == "label out of range":
        labels = bytearray(gzip.decompress(labels_path.read_bytes()))
        labels[8 + 5] = 10
        write_gz(labels_path, bytes(labels))
        return labels_path, r"label 10 at position 5 is not a Fashion-MNIST class \(0\.\.9\)"
    raise AssertionError(case)


CASES = [
    "truncated data",
    "truncated gzip",
    "truncated header",
    "extra bytes",
    "wrong magic",
    "other magic",
    "count mismatch",
    "not gzip",
    "label out of range",
]


@pytest.mark.parametrize("case", CASES)
def test_a_broken_file_is_a_dataset_error_naming_it_and_what_is_wrong(tmp_path: Path, case: str):
    fake_fashion(tmp_path / "fm")
    path, expected = corrupt(tmp_path / "fm", case)
    with pytest.raises(DatasetError, match=expected) as error:
        export_fashion_mnist_png(tmp_path / "fm", tmp_path / "png")
    assert f"'{path}'" in str(error.value)
    assert not (tmp_path / "png").exists()  # nothing half-written


def test_a_header_declaring_an_absurd_size_is_refused_before_reading(tmp_path: Path):
    header = IDX_IMAGES_MAGIC.to_bytes(4, "big") + b"".join((2**32 - 1).to_bytes(4, "big") for _ in range(3))
    path = write_gz(tmp_path / "big.gz", header + b"\0" * 10)
    with pytest.raises(DatasetError, match="more than an IDX file cbir reads"):
        read_idx_gz(path, IDX_IMAGES_MAGIC)


# --- the export and the manifest -------------------------------------------------------------


def test_export_writes_one_folder_per_class_and_keeps_the_official_split(tmp_path: Path):
    written = fake_fashion(tmp_path / "fm")
    report = export_fashion_mnist_png(tmp_path / "fm", tmp_path / "png")
    assert report["images"] == {"train": 12, "test": 6} == report["in_files"]
    assert report["per_class"] == {"t-shirt_top": 6, "trouser": 6, "pullover": 6}
    assert report["official_content"] is False  # fake files
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == ["export.json", "pullover", "t-shirt_top", "trouser"]

    manifest, warned = quiet_manifest(tmp_path / "fm", tmp_path / "png")
    assert warned == []
    images = manifest.images
    assert manifest.classes == list(FASHION_MNIST_CLASSES)
    assert len(images) == 18
    assert images.groupby("class_name")["label"].first().to_dict() == {"t-shirt_top": 0, "trouser": 1, "pullover": 2}
    assert images.groupby(["class_name", "official_subset"]).size().to_dict() == {
        (name, subset): n
        for name in ("pullover", "t-shirt_top", "trouser")
        for subset, n in (("test", 2), ("train", 4))
    }
    # pixels and labels survive: the image at position 7 of the training file
    train_images, train_labels = written["train"]
    row = images.set_index("id").loc[f"{FASHION_MNIST_CLASSES[train_labels[7]]}/train_00007.png"]
    assert np.array_equal(np.asarray(Image.open(row["path"])), train_images[7])
    assert (row["width"], row["height"]) == (28, 28) and row["official_subset"] == "train"

    split = official_split_table(images)
    assert split["subset"].value_counts().to_dict() == {"train": 12, "test": 6}


def test_image_size_upscales_the_exported_images(tmp_path: Path):
    fake_fashion(tmp_path / "fm")
    export_fashion_mnist_png(tmp_path / "fm", tmp_path / "png", image_size=64)
    manifest, _ = quiet_manifest(tmp_path / "fm", tmp_path / "png")
    assert set(manifest.images["width"]) == {64} and set(manifest.images["height"]) == {64}
    assert Image.open(manifest.images["path"].iloc[0]).mode == "L"


def test_a_missing_png_is_a_warning_naming_the_class(tmp_path: Path):
    fake_fashion(tmp_path / "fm")
    export_fashion_mnist_png(tmp_path / "fm", tmp_path / "png")
    next((tmp_path / "png" / "trouser").iterdir()).unlink()
    manifest, warned = quiet_manifest(tmp_path / "fm", tmp_path / "png")
    assert len(manifest.images) == 17
    assert warned == ["class 'trouser' has 5 images, 6 were exported"]


# --- the per-class cap ------------------------------------------------------------------------


def test_quotas_share_the_cap_in_proportion_and_keep_a_test_image():
    assert class_quotas([6000, 1000], 100) == [86, 14]
    assert class_quotas([6000, 1000], 7) == [6, 1]
    assert class_quotas([6000, 1000], 3) == [2, 1]  # 2.57 + 0.43 would leave no test image
    assert class_quotas([6000, 1000], 1) == [1, 0]
    assert class_quotas([6, 1], 100) == [6, 1]
    assert class_quotas([6000, 1000], None) == [6000, 1000]


def test_the_cap_is_seeded_deterministic_and_class_balanced(tmp_path: Path):
    fake_fashion(tmp_path / "fm", per_class={"train": 30, "test": 5}, classes=(1, 4, 9))
    ids = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        report = export_fashion_mnist_png(tmp_path / "fm", tmp_path / name, max_per_class=7, seed=seed)
        assert report["images"] == {"train": 18, "test": 3}
        manifest, _ = quiet_manifest(tmp_path / "fm", tmp_path / name)
        images = manifest.images
        counts = images.groupby(["class_name", "official_subset"]).size().to_dict()
        assert counts == {(c, s): n for c in ("ankle_boot", "coat", "trouser") for s, n in (("test", 1), ("train", 6))}
        assert images.groupby("class_name")["label"].first().to_dict() == {"trouser": 1, "coat": 4, "ankle_boot": 9}
        ids[name] = sorted(images["id"])
    assert ids["a"] == ids["b"]  # same files, cap and seed: the same images
    assert ids["a"] != ids["c"]  # another seed: another sample
    assert {p.read_bytes() for p in (tmp_path / "a").rglob("*.png")} == {
        p.read_bytes() for p in (tmp_path / "b").rglob("*.png")
    }

    # the config check's class sizes are the export's
    source = get_source("fashion_mnist")
    entry = {"source": "fashion_mnist", "max_per_class": 7}
    assert source.class_sizes(entry, tmp_path / "fm", official=True)[0] == [6, 6, 6]
    assert source.class_sizes(entry, tmp_path / "fm", official=False)[0] == [7, 7, 7]
    assert source.class_sizes({"source": "fashion_mnist"}, tmp_path / "fm", official=True)[0] == [30, 30, 30]
    assert source.class_sizes({"source": "fashion_mnist"}, tmp_path / "nowhere", official=True) is None


def test_selection_without_a_cap_keeps_every_image_in_file_order():
    labels = {"train": np.array([2, 0, 1, 0], dtype=np.uint8), "test": np.array([1, 1], dtype=np.uint8)}
    chosen = select_per_class(labels, None)
    assert chosen["train"].tolist() == [0, 1, 2, 3] and chosen["test"].tolist() == [0, 1]
    capped = select_per_class(labels, 2, seed=3)
    again = select_per_class(labels, 2, seed=3)
    assert all(np.array_equal(capped[s], again[s]) for s in labels)
    assert all(np.all(np.diff(capped[s]) > 0) for s in capped)  # file order
    kept = np.concatenate([labels[s][capped[s]] for s in labels])
    assert np.bincount(kept).tolist() == [2, 2, 1]  # class 2 has a single image


# --- presence and configuration ----------------------------------------------------------------


def test_a_missing_file_is_named_with_how_to_get_it(tmp_path: Path):
    fake_fashion(tmp_path / "fm")
    source = get_source("fashion_mnist")
    assert source.missing_reason({}, tmp_path / "fm") is None
    (tmp_path / "fm" / FILES["test"][1]).unlink()
    reason = source.missing_reason({}, tmp_path / "fm")
    assert f"1 of the four files are missing in '{tmp_path / 'fm'}': t10k-labels-idx1-ubyte.gz" in reason
    assert "apt install dataset-fashion-mnist" in reason and DEBIAN_FOLDER in reason
    assert "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/<file>" in reason
    # an unpacked copy is pointed out
    (tmp_path / "fm" / "t10k-labels-idx1-ubyte").write_bytes(b"")
    assert "t10k-labels-idx1-ubyte is there unpacked" in source.missing_reason({}, tmp_path / "fm")

    config = validate_config(default_config_with(tmp_path, {"fm": {"source": "fashion_mnist"}}), SCHEMA)
    [message] = missing_datasets(config)
    assert "dataset 'fm' not found" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert "set datasets.fm.path to the folder holding the four .gz files" in message
    assert "datasets.fm.url" not in message  # no download rule for four separate files


def test_subdir_points_inside_a_clone_of_the_repository(tmp_path: Path):
    fake_fashion(tmp_path / "clone" / "data" / "fashion")
    config = default_config_with(
        tmp_path, {"fm": {"source": "fashion_mnist", "path": "clone", "subdir": "data/fashion"}}
    )
    assert missing_datasets(validate_config(config, SCHEMA)) == []


def test_config_accepts_the_official_split_and_the_cap_and_refuses_a_url(tmp_path: Path):
    fake_fashion(tmp_path / "fm")
    entry = {"source": "fashion_mnist", "max_per_class": 5, "image_size": 28}
    config = validate_config(default_config_with(tmp_path, {"fm": entry}, ["official", "80-20"]), SCHEMA)
    assert config["datasets"]["fm"]["max_per_class"] == 5
    with pytest.raises(ConfigError, match=r"'datasets\.fm\.max_per_class'"):
        validate_config(default_config_with(tmp_path, {"fm": {**entry, "max_per_class": 0}}), SCHEMA)
    url = {**entry, "url": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/x.gz", "sha256": "0" * 64}
    with pytest.raises(ConfigError, match="sha256, url not used by source 'fashion_mnist'"):
        validate_config(default_config_with(tmp_path, {"fm": url}), SCHEMA)
    # PCA sizes are checked against the capped training set: 4 train + 2 test images of each of 3 classes,
    # at most 5 per class -> 3 train + 2 test
    config = default_config_with(tmp_path, {"fm": entry}, ["official"])
    config["grid"]["pca"] = [10]
    with pytest.raises(ConfigError, match=r"at most 9 images \(Fashion-MNIST's label files .*, at most 5 per class\)"):
        validate_config(config, SCHEMA)


def test_the_images_rules_match_only_the_datasets_of_their_source():
    datasets = {"c": {"source": "cifar10"}, "f": {"source": "fashion_mnist"}, "g": {"source": "fashion_mnist"}}
    assert prepared_datasets_pattern(datasets, "fashion_mnist_images") == "f|g"
    assert prepared_datasets_pattern(datasets, "cifar10_images") == "c"
    assert prepared_datasets_pattern({"f": {"source": "fashion_mnist"}}, "cifar10_images") == "(?!)"


# --- the workflow ----------------------------------------------------------------------------------


# --- real data ---------------------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.skipif(
    not all((REAL / name).is_file() for pair in FILES.values() for name in pair),
    reason=f"Fashion-MNIST not found at {REAL} (apt install dataset-fashion-mnist)",
)
def test_real_fashion_mnist_files(tmp_path: Path):
    counts = {}
    for subset in FILES:
        images, labels, md5s = read_subset(REAL, subset)
        assert images.shape[1:] == (28, 28)
        counts[subset] = np.bincount(labels, minlength=10).tolist()
        for name, md5 in md5s.items():  # the unpacked content is the official release's
            assert md5 == FASHION_MNIST_MD5[name][1], name
    assert counts == {"train": [6000] * 10, "test": [1000] * 10}
    source = get_source("fashion_mnist")
    assert source.missing_reason({}, REAL) is None
    assert source.class_sizes({}, REAL, official=True)[0] == [6000] * 10
    assert source.class_sizes({}, REAL, official=False)[0] == [7000] * 10

    report = export_fashion_mnist_png(REAL, tmp_path / "png", max_per_class=14)
    assert report["official_content"] is True and report["in_files"] == {"train": 60000, "test": 10000}
    manifest, warned = quiet_manifest(REAL, tmp_path / "png")
    assert warned == [] and manifest.classes == list(FASHION_MNIST_CLASSES)
    assert manifest.images.groupby("official_subset").size().to_dict() == {"train": 120, "test": 20}
    assert manifest.images.groupby("label").size().tolist() == [14] * 10
