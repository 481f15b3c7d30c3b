"""Dataset adapters: download and checksum, safe unpacking, the literature's class mappings, the workflow."""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import tarfile
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from cbir.data.manifest import DatasetError
from cbir.data.sources import (
    CIFAR10_CLASSES,
    COREL1K_CLASSES,
    SOURCES,
    UNPACKED_STAMP,
    VOC_CLASSES,
    Source,
    UnsafePickleError,
    build_manifest,
    data_dir,
    export_cifar10_png,
    fetch_dataset,
    get_source,
    official_split_table,
    register_source,
    restricted_load,
    safe_extract,
    voc_labels,
)
from cbir.pipeline.config import ConfigError, load_schema, validate_config
from cbir.pipeline.grid import missing_datasets

from dataset_fixtures import (
    VOC_SAMPLE,
    archive_entry,
    cifar_tree,
    class_folders,
    corel1k_flat,
    corel1k_folders,
    numbered_flat,
    paper_datasets,
    sha256_of,
    tar_folder,
    tiny_jpeg,
    voc_tree,
)
from helpers import REPO, SHARED_DATA

SCHEMA = load_schema(REPO / "config" / "schema.yaml")
COREL1K = SHARED_DATA / "corel1k"


def quiet_build(source: str, entry: dict, root: Path, images_dir: Path | None = None):
    """build_manifest, returning the manifest and the warnings it gave."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        manifest = build_manifest(source, {"source": source, **entry}, root, images_dir)
    return manifest, [str(w.message) for w in caught]


# --- download, checksum, unpacking ---------------------------------------------------------


@pytest.fixture
def corel_archive(tmp_path: Path) -> Path:
    """Wang's archive layout: a tar.gz whose top folder holds 0.jpg … (3 per class here)."""
    corel1k_flat(tmp_path / "src" / "image.orig")
    return tar_folder(tmp_path / "src", tmp_path / "served" / "corel1k.tar.gz")


def corel_entry(archive: Path, **overrides) -> dict:
    return {"source": "corel1k", "subdir": "image.orig", "layout": "flat", **archive_entry(archive), **overrides}


def test_archive_is_verified_unpacked_and_never_downloaded_again(tmp_path, corel_archive, downloads):
    entry = corel_entry(corel_archive)
    root, store = tmp_path / "data" / "corel1k", tmp_path / "data" / "downloads"

    first = fetch_dataset("corel1k", "corel1k", entry, root, store)
    assert first["status"] == "unpacked" and first["downloaded"] is True
    assert downloads == [entry["url"]]
    assert sha256_of(store / "corel1k.tar.gz") == entry["sha256"]
    assert (root / "image.orig" / "902.jpg").is_file()
    assert json.loads((root / UNPACKED_STAMP).read_text())["sha256"] == entry["sha256"]

    second = fetch_dataset("corel1k", "corel1k", entry, root, store)
    assert second["status"] == "present and verified" and second["downloaded"] is False
    assert downloads == [entry["url"]]  # not opened again

    # the unpacked folder is gone but the verified archive is there: unpack it, do not download
    import shutil

    shutil.rmtree(root)
    third = fetch_dataset("corel1k", "corel1k", entry, root, store)
    assert third["status"] == "unpacked" and third["downloaded"] is False
    assert downloads == [entry["url"]]

    manifest, _ = quiet_build("corel1k", entry, root)
    assert len(manifest.images) == 30 and set(manifest.images["label"]) == set(range(10))


def test_wrong_digest_stops_before_unpacking_naming_the_file_and_both_digests(tmp_path, corel_archive):
    good = sha256_of(corel_archive)
    entry = corel_entry(corel_archive, sha256="ab" * 32)
    root, store = tmp_path / "data" / "corel1k", tmp_path / "data" / "downloads"
    with pytest.raises(DatasetError, match="checksum mismatch") as error:
        fetch_dataset("corel1k", "corel1k", entry, root, store)
    message = str(error.value)
    assert "corel1k.tar.gz" in message and "ab" * 32 in message and good in message
    assert not root.exists()  # nothing unpacked
    assert list(store.iterdir()) == []  # neither the archive nor a partial file is kept


def test_wrong_size_is_refused(tmp_path, corel_archive):
    size = corel_archive.stat().st_size
    store = tmp_path / "downloads"
    with pytest.raises(DatasetError, match="larger than the expected"):
        fetch_dataset("c", "corel1k", corel_entry(corel_archive, size=size - 1), tmp_path / "c", store)
    with pytest.raises(DatasetError, match=rf"checksum mismatch.*\({size} bytes\)"):
        fetch_dataset("c", "corel1k", corel_entry(corel_archive, size=size + 1), tmp_path / "c", store)
    assert not (tmp_path / "c").exists()


def test_a_corrupt_archive_in_the_store_is_downloaded_again(tmp_path, corel_archive, downloads):
    entry = corel_entry(corel_archive)
    store = tmp_path / "downloads"
    store.mkdir()
    (store / "corel1k.tar.gz").write_bytes(b"truncated")
    record = fetch_dataset("c", "corel1k", entry, tmp_path / "c", store)
    assert record["downloaded"] is True and len(downloads) == 1
    assert sha256_of(store / "corel1k.tar.gz") == entry["sha256"]


def test_files_already_in_place_are_used_without_download(tmp_path, downloads):
    corel1k_flat(tmp_path / "c" / "image.orig")
    entry = {"source": "corel1k", "subdir": "image.orig", "url": "file:///nowhere/x.tar", "sha256": "0" * 64}
    record = fetch_dataset("c", "corel1k", entry, tmp_path / "c", tmp_path / "downloads")
    assert record["status"] == "local files, not verified"
    assert downloads == []


def test_a_new_archive_replaces_files_unpacked_from_another_one(tmp_path, corel_archive, downloads):
    root, store = tmp_path / "data" / "c", tmp_path / "data" / "downloads"
    fetch_dataset("c", "corel1k", corel_entry(corel_archive), root, store)
    corel1k_flat(tmp_path / "v2" / "image.orig", per_class=4)
    newer = tar_folder(tmp_path / "v2", tmp_path / "served" / "corel1k-v2.tar.gz")
    record = fetch_dataset("c", "corel1k", corel_entry(newer), root, store)
    assert record["status"] == "unpacked" and record["downloaded"] is True and len(downloads) == 2
    assert (root / "image.orig" / "903.jpg").is_file()


def test_unreachable_url_is_named(tmp_path):
    entry = {"source": "cifar10", "url": (tmp_path / "absent.tar.gz").as_uri(), "sha256": "0" * 64}
    with pytest.raises(DatasetError, match=r"cannot download 'absent\.tar\.gz'"):
        fetch_dataset("cifar10", "cifar10", entry, tmp_path / "cifar10", tmp_path / "downloads")


def _tar_with(path: Path, *members: tuple[tarfile.TarInfo, bytes | None]) -> Path:
    with tarfile.open(path, "w") as tar:
        good = tarfile.TarInfo("good.txt")
        good.size = 2
        tar.addfile(good, io.BytesIO(b"ok"))
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


UNSAFE_TAR_MEMBERS = {  # case -> (members after a good one, the reason given)
    "absolute path": ([(_member("/tmp/cbir-evil.txt"), b"x")], "absolute path"),
    "parent directory": ([(_member("../evil.txt"), b"x")], "'..' in its path"),
    "nested parent directory": ([(_member("a/../../evil.txt"), b"x")], "'..' in its path"),
    "symlink to an absolute path": ([(_member("link", tarfile.SYMTYPE, "/etc"), None)], "link to an absolute path"),
    "symlink outside": ([(_member("sub/link", tarfile.SYMTYPE, "../../outside"), None)], "pointing outside"),
    "hard link outside": ([(_member("hard", tarfile.LNKTYPE, "../outside"), None)], "pointing outside"),
    "write through a link": (
        [(_member("p", tarfile.SYMTYPE, "."), None), (_member("p/q", tarfile.SYMTYPE, "../evil"), None)],
        "goes through a link",
    ),
    "device file": ([(_member("dev", tarfile.CHRTYPE), None)], "device file"),
}


@pytest.mark.parametrize("case", list(UNSAFE_TAR_MEMBERS))
def test_unsafe_tar_members_are_rejected_before_anything_is_written(tmp_path: Path, case: str):
    members, reason = UNSAFE_TAR_MEMBERS[case]
    archive = _tar_with(tmp_path / "evil.tar", *members)
    target = tmp_path / "nested" / "target"
    with pytest.raises(DatasetError, match="unsafe member") as error:
        safe_extract(archive, target)
    assert reason in str(error.value)
    assert not target.exists()
    assert not (tmp_path / "nested" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt", "C:/evil.txt"])
def test_unsafe_zip_members_are_rejected(tmp_path: Path, name: str):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good.txt", "ok")
        zf.writestr(zipfile.ZipInfo(name), "x")  # ZipInfo keeps the name as given
    target = tmp_path / "nested" / "target"
    with pytest.raises(DatasetError, match="unsafe member"):
        safe_extract(archive, target)
    assert not target.exists()


def test_unsafe_archive_through_fetch_leaves_the_dataset_folder_absent(tmp_path: Path):
    archive = _tar_with(tmp_path / "evil.tar", *UNSAFE_TAR_MEMBERS["parent directory"][0])
    entry = {"source": "corel1k", **archive_entry(archive)}
    with pytest.raises(DatasetError, match=r"unsafe member '\.\./evil\.txt'"):
        fetch_dataset("c", "corel1k", entry, tmp_path / "data" / "c", tmp_path / "data" / "downloads")
    assert not (tmp_path / "data" / "c").exists() and not (tmp_path / "data" / "evil.txt").exists()


def test_links_inside_the_archive_are_unpacked(tmp_path: Path):
    archive = tmp_path / "ok.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("d/a.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
        tar.addfile(_member("d/b.txt", tarfile.SYMTYPE, "a.txt"))
    assert safe_extract(archive, tmp_path / "out") == 2
    assert (tmp_path / "out" / "d" / "b.txt").read_text() == "hello"


# --- Corel-1K ------------------------------------------------------------------------------


def test_corel1k_flat_class_is_index_div_100_in_the_literature_order(tmp_path: Path):
    folder = corel1k_flat(tmp_path / "wang")
    (folder / "notes.txt").write_text("not an image")
    tiny_jpeg(folder / "1000.jpg", seed=1)
    (folder / "50.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    (folder / ".DS_Store").write_bytes(b"\0")
    manifest, warned = quiet_build("corel1k", {"layout": "flat"}, folder)

    images = manifest.images
    assert manifest.classes == list(COREL1K_CLASSES)
    assert len(images) == 30
    index = images["id"].str.removesuffix(".jpg").astype(int)
    assert (images["label"] == index // 100).all()
    assert (images["class_name"] == [COREL1K_CLASSES[i // 100] for i in index]).all()
    row = images.set_index("id").loc["902.jpg"]
    assert (row["label"], row["class_name"]) == (9, "food")
    assert images.set_index("id").loc["402.jpg", "class_name"] == "dinosaurs"

    reasons = manifest.excluded.set_index("path")["reason"]
    assert "not an index" in reasons[str(folder / "notes.txt")]
    assert "outside 0..999" in reasons[str(folder / "1000.jpg")]
    assert "cannot decode" in reasons[str(folder / "50.jpg")]
    assert len(reasons) == 3  # the hidden file is ignored
    assert "class 'africans' has 3 images, expected 100" in warned
    assert len([w for w in warned if "expected 100" in w]) == 10


def test_corel1k_folders_keep_the_literature_order_not_the_alphabet(tmp_path: Path):
    folder = corel1k_folders(tmp_path / "corel")
    (folder / "food").rename(folder / "Food")  # case does not matter
    manifest, _ = quiet_build("corel1k", {}, folder)  # layout auto -> folders
    by_class = manifest.images.groupby("class_name")["label"].first().to_dict()
    assert by_class == {name: i for i, name in enumerate(COREL1K_CLASSES)}
    assert by_class["food"] == 9  # alphabetically it would be 6
    assert (manifest.images["id"].str.extract(r"/(\d+)\.jpg$")[0].astype(int) // 100 == manifest.images["label"]).all()


def test_auto_layout_is_not_fooled_by_a_stray_file_beside_the_class_folders(tmp_path: Path):
    folder = corel1k_folders(tmp_path / "corel", per_class=2)
    (folder / "SOURCE.txt").write_text("where these came from")
    manifest, _ = quiet_build("corel1k", {}, folder)
    assert len(manifest.images) == 20
    assert manifest.images.groupby("class_name")["label"].first().to_dict() == {
        name: i for i, name in enumerate(COREL1K_CLASSES)
    }


def test_a_dataset_without_any_usable_image_is_an_error(tmp_path: Path):
    flat = tmp_path / "wang"
    flat.mkdir()
    (flat / "README.txt").write_text("nothing here")
    (flat / "0.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match="no usable image"):
        quiet_build("corel1k", {"layout": "flat"}, flat)
    rejected = tmp_path / "logs" / "wang.excluded.csv"  # the workflow's manifest job names where the list is
    with pytest.raises(DatasetError, match=r"2 file\(s\) excluded, most common reasons: cannot decode \(1\)") as error:
        build_manifest("corel1k", {"source": "corel1k", "layout": "flat"}, flat, rejected_csv=rejected)
    assert f"listed in '{rejected}'" in str(error.value)
    assert sorted(pd.read_csv(rejected)["path"].map(lambda p: Path(p).name)) == ["0.jpg", "README.txt"]


def test_corel1k_folders_may_be_numbered_and_unknown_folders_are_named(tmp_path: Path):
    numbered = class_folders(tmp_path / "numbered", [str(i) for i in range(10)], per_class=1)
    manifest, _ = quiet_build("corel1k", {"layout": "folders"}, numbered)
    assert manifest.images.set_index("id").loc["9/900.jpg", "class_name"] == "food"

    odd = corel1k_folders(tmp_path / "odd", per_class=1)
    tiny_jpeg(odd / "misc" / "1.jpg", seed=0)
    with pytest.raises(DatasetError, match=r"folder 'misc'.*is not one of the classes africans"):
        build_manifest("corel1k", {"source": "corel1k"}, odd)


def test_corel1k_file_in_the_wrong_folder_is_reported(tmp_path: Path):
    folder = corel1k_folders(tmp_path / "corel", per_class=1)
    tiny_jpeg(folder / "africans" / "150.jpg", seed=150)
    _, warned = quiet_build("corel1k", {}, folder)
    assert any("another class folder than their index says, e.g. 'africans/150.jpg'" in w for w in warned)


# --- Corel-10K, GHIM-10K -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "n_classes", "per_class", "samples"),
    [
        ("corel10k", 100, 100, {"0.jpg": 0, "99.jpg": 0, "100.jpg": 1, "9999.jpg": 99}),
        ("ghim10k", 20, 500, {"0.jpg": 0, "499.jpg": 0, "500.jpg": 1, "9999.jpg": 19}),
    ],
)
def test_flat_numbered_files_class_is_index_div_images_per_class(tmp_path, source, n_classes, per_class, samples):
    folder = tmp_path / source
    for name in samples:
        tiny_jpeg(folder / name, seed=int(name.split(".")[0]))
    tiny_jpeg(folder / "10000.jpg", seed=1)
    manifest, warned = quiet_build(source, {"layout": "flat"}, folder)
    assert manifest.images.set_index("id")["label"].to_dict() == samples
    assert len(manifest.classes) == n_classes
    assert manifest.images.set_index("id").loc["9999.jpg", "class_name"] == manifest.classes[-1]
    assert "outside 0..9999" in manifest.excluded["reason"].iloc[0]
    in_class_1 = sum(label == 1 for label in samples.values())
    assert f"class '{manifest.classes[1]}' has {in_class_1} images, expected {per_class}" in warned


def test_flat_layout_options_images_per_class_and_first_index(tmp_path: Path):
    folder = numbered_flat(tmp_path / "flat", n_classes=4, per_class=3, images_per_class=3, first_index=1)
    entry = {"layout": "flat", "images_per_class": 3, "n_classes": 4, "first_index": 1}
    manifest, warned = quiet_build("corel10k", entry, folder)
    labels = manifest.images.set_index("id")["label"]
    assert labels[["1.jpg", "3.jpg", "4.jpg", "12.jpg"]].tolist() == [0, 0, 1, 3]
    assert manifest.classes == ["0", "1", "2", "3"]
    assert warned == [] and manifest.excluded.empty


def test_class_folders_are_ordered_naturally_and_short_classes_named(tmp_path: Path):
    folder = class_folders(tmp_path / "ghim", ["1", "2", "10"], per_class=2)
    (folder / "10" / "200.jpg").unlink()
    manifest, warned = quiet_build("ghim10k", {"layout": "folders", "images_per_class": 2, "n_classes": 3}, folder)
    assert manifest.images.groupby("class_name")["label"].first().to_dict() == {"1": 0, "2": 1, "10": 2}
    assert warned == ["class '10' has 1 images, expected 2"]


def test_unreadable_files_are_excluded_and_the_rest_still_works(tmp_path: Path):
    folder = class_folders(tmp_path / "c10k", ["a", "b"], per_class=2)
    (folder / "b" / "broken.jpg").write_bytes(b"not a jpeg")
    manifest, _ = quiet_build("corel10k", {"n_classes": 2, "images_per_class": 2}, folder)
    assert len(manifest.images) == 4
    assert manifest.excluded[["class_name", "reason"]].iloc[0].tolist()[0] == "b"
    assert "cannot decode" in manifest.excluded["reason"].iloc[0]


# --- CIFAR-10 ------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar10_batches_become_pngs_per_class_with_the_official_split(tmp_path: Path, protocol: int):
    batches = cifar_tree(tmp_path / "cifar10", protocol=protocol)
    images_dir = tmp_path / "png"
    report = export_cifar10_png(tmp_path / "cifar10", images_dir)
    assert report["images"] == {name: 10 for name in batches} and report["problems"] == []
    manifest, warned = quiet_build("cifar10", {}, tmp_path / "cifar10", images_dir)

    images = manifest.images
    assert manifest.classes == list(CIFAR10_CLASSES)
    assert len(images) == 60
    assert images.groupby("class_name")["label"].first().to_dict() == {n: i for i, n in enumerate(CIFAR10_CLASSES)}
    assert images["official_subset"].value_counts().to_dict() == {"train": 50, "test": 10}
    assert set(images.loc[images["official_subset"] == "test", "id"].str.split("/").str[1].str[:10]) == {"test_batch"}
    # pixels survive: row 3 of data_batch_2 (labels reversed there: 9 - 3 = class 6, frog)
    row = images.set_index("id").loc["frog/data_batch_2_00003.png"]
    expected = batches["data_batch_2"][b"data"][3].reshape(3, 32, 32).transpose(1, 2, 0)
    assert np.array_equal(np.asarray(Image.open(row["path"])), expected)
    assert (row["width"], row["height"]) == (32, 32)
    assert warned == [f"class '{name}' has 6 images, expected 6000" for name in CIFAR10_CLASSES]

    split = official_split_table(images)
    assert list(split.columns) == ["id", "label", "subset"]
    assert (split["subset"] == images["official_subset"]).all()


def test_cifar10_unpickler_refuses_anything_but_arrays_and_lists(tmp_path: Path):
    cifar_tree(tmp_path / "cifar10")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.mkdir, (str(marker),))

    with open(tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_3", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f, protocol=2)
    with pytest.raises(UnsafePickleError, match=r"refusing to load 'posix\.mkdir'"):
        export_cifar10_png(tmp_path / "cifar10", tmp_path / "png")
    assert not marker.exists()

    (tmp_path / "eval.pkl").write_bytes(pickle.dumps(eval))
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        restricted_load(tmp_path / "eval.pkl")


def test_cifar10_unreadable_batch_is_excluded_and_the_rest_kept(tmp_path: Path):
    cifar_tree(tmp_path / "cifar10")
    batch = tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_4"
    batch.write_bytes(batch.read_bytes()[:500])
    (tmp_path / "cifar10" / "cifar-10-batches-py" / "data_batch_5").unlink()
    export_cifar10_png(tmp_path / "cifar10", tmp_path / "png")
    manifest, _ = quiet_build("cifar10", {}, tmp_path / "cifar10", tmp_path / "png")
    assert len(manifest.images) == 40
    reasons = manifest.excluded.set_index("path")["reason"]
    assert "cannot read CIFAR-10 batch" in reasons[str(batch)]
    assert reasons[str(batch.with_name("data_batch_5"))] == "batch file is missing"


# --- Pascal VOC 2012 -----------------------------------------------------------------------


def test_voc_label_is_the_class_with_the_largest_total_box_area(tmp_path: Path):
    voc_tree(tmp_path / "voc")
    manifest, _ = quiet_build("voc2012", {}, tmp_path / "voc")
    images = manifest.images.set_index("id")
    assert manifest.classes == list(VOC_CLASSES)
    primary = {i.split("/")[1][:-4]: c for i, c in images["class_name"].items()}
    assert primary == {
        "2008_000001": "dog",
        "2008_000002": "person",  # 2 x 900 px beat the single 1600 px horse
        "2008_000003": "sofa",
        "2008_000004": "bus",  # tie with car: the earlier VOC class
        "2008_000005": "aeroplane",
        "2008_000006": "tvmonitor",
    }
    assert (images["label"] == images["class_name"].map(VOC_CLASSES.index)).all()
    assert images.loc["JPEGImages/2008_000002.jpg", "labels"] == "horse|person"
    assert images.loc["JPEGImages/2008_000006.jpg", "labels"] == "chair|pottedplant|tvmonitor"
    assert images["official_subset"].tolist() == ["train"] * 3 + ["test"] * 3


def test_voc_problem_images_are_excluded_with_the_reason(tmp_path: Path):
    sample = {**VOC_SAMPLE, "2009_000001": [("unicorn", (1, 1, 5, 5))], "2009_000002": [("dog", (1, 1, 5, 5))]}
    voc = voc_tree(tmp_path / "voc", sample) / "VOCdevkit" / "VOC2012"
    (voc / "JPEGImages" / "2009_000002.jpg").unlink()
    (voc / "Annotations" / "2008_000003.xml").unlink()
    (voc / "Annotations" / "2008_000004.xml").write_text("<annotation><object>")
    with open(voc / "ImageSets" / "Main" / "trainval.txt", "a") as f:
        f.write("2009_000003\n")
    manifest, _ = quiet_build("voc2012", {}, tmp_path / "voc")
    assert len(manifest.images) == 4
    reasons = {Path(p).stem: r for p, r in manifest.excluded[["path", "reason"]].itertuples(index=False)}
    assert reasons["2009_000001"] == "annotation has no object of the 20 VOC classes"
    assert reasons["2009_000002"] == "file is missing"
    assert reasons["2008_000003"] == "no annotation '2008_000003.xml'"
    assert reasons["2008_000004"].startswith("cannot read annotation '2008_000004.xml'")
    assert reasons["2009_000003"] == "no annotation '2009_000003.xml'"


def test_voc_label_rule_on_its_own():
    assert voc_labels([("person", 900), ("horse", 1600), ("person", 900)]) == ("person", ["horse", "person"])
    assert voc_labels([("car", 400), ("bus", 400)]) == ("bus", ["bus", "car"])
    assert voc_labels([("unicorn", 10)]) == (None, [])


def test_official_split_needs_the_column():
    with pytest.raises(DatasetError, match="no official split"):
        official_split_table(pd.DataFrame({"id": ["a"], "label": [0]}))


# --- configuration -------------------------------------------------------------------------


def base_config(tmp_path: Path, datasets: dict, splits: list[str] | None = None) -> dict:
    config = yaml.safe_load((REPO / "config" / "config.yaml").read_text())
    config["data_root"] = str(tmp_path)
    config["datasets"].update(datasets)
    config["grid"]["datasets"] = list(datasets)
    config["grid"]["splits"] = splits or ["80-20"]
    return config


def test_dataset_without_url_or_files_is_named_with_how_to_provide_it(tmp_path: Path):
    config = base_config(tmp_path, {"ghim": {"source": "ghim10k", "how_to_get": "Ask Guang-Hai Liu."}})
    [message] = missing_datasets(validate_config(config, SCHEMA))
    assert "dataset 'ghim' not found" in message and "source ghim10k" in message
    assert "datasets.ghim.url" in message and "Ask Guang-Hai Liu." in message

    config["datasets"]["ghim"]["url"] = "https://example.org/ghim.zip"
    config["datasets"]["ghim"]["sha256"] = "0" * 64
    assert missing_datasets(validate_config(config, SCHEMA)) == []  # the workflow will fetch it
    config["datasets"]["ghim"]["url"] = None  # how a user turns off a url set in paper.yaml
    assert len(missing_datasets(validate_config(config, SCHEMA))) == 1


def test_present_datasets_in_their_layouts_are_not_missing(tmp_path: Path):
    paper_datasets(tmp_path)
    entries = {n: {"source": n} for n in ["corel1k", "corel10k", "ghim10k", "cifar10", "voc2012"]}
    assert missing_datasets(validate_config(base_config(tmp_path, entries), SCHEMA)) == []
    (tmp_path / "cifar10" / "cifar-10-batches-py").rename(tmp_path / "cifar10" / "elsewhere")
    [message] = missing_datasets(validate_config(base_config(tmp_path, entries), SCHEMA))
    assert "dataset 'cifar10' not found" in message and "no CIFAR-10 python batches" in message


@pytest.mark.parametrize(
    ("entry", "splits", "expected"),
    [
        ({"source": "cifar10", "url": "https://example.org/c.tgz"}, None, "'datasets.d.sha256': required when url"),
        ({"source": "cifar10", "layout": "flat"}, None, "layout not used by source 'cifar10'"),
        ({"source": "corel1k", "layout": "stacked"}, None, "'datasets.d.layout'"),
        ({"source": "corel1k", "subdir": "../up"}, None, "'datasets.d.subdir'"),
        ({"source": "corel1k", "url": "ftp:/bad", "sha256": "0" * 64}, None, "'datasets.d.url'"),
        ({"source": "corel1k"}, ["official"], "'official' needs datasets with their own train/test split"),
        ({"source": "corel1k"}, ["80-20", "offical"], "'grid.splits[1]'"),
    ],
)
def test_wrong_dataset_keys_are_named(tmp_path, entry, splits, expected):
    with pytest.raises(ConfigError) as error:
        validate_config(base_config(tmp_path, {"d": entry}, splits), SCHEMA)
    assert expected in str(error.value)


def test_official_split_is_accepted_for_cifar10_and_voc(tmp_path: Path):
    entries = {"c": {"source": "cifar10"}, "v": {"source": "voc2012"}}
    config = validate_config(base_config(tmp_path, entries, ["official", "80-20"]), SCHEMA)
    assert config["grid"]["splits"] == ["official", "80-20"]


# --- the source registry -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SOURCES))
def test_every_source_implements_its_own_presence_check(tmp_path: Path, name: str):
    source = SOURCES[name]
    assert source.name == name
    check = type(source).missing_reason
    assert check is not Source.missing_reason and not getattr(check, "__isabstractmethod__", False)
    # nothing in the data root: only a generated source (the workflow writes it) is not missing
    reason = source.missing_reason({"source": name}, tmp_path / name)
    assert reason is None if source.generated else isinstance(reason, str) and reason


def test_a_source_without_its_check_or_with_a_taken_name_is_not_registered():
    class NoCheck(Source):
        name = "no_check"
        keys = frozenset()

        def manifest(self, entry, root, images_dir=None):
            raise AssertionError("never called")

    class NotACheck(NoCheck):
        missing_reason = None  # "implemented" for the abstract base class, but not a check

    with pytest.raises(TypeError, match="abstract"):
        NoCheck()
    with pytest.raises(TypeError, match="'no_check' does not implement missing_reason"):
        register_source(NotACheck())
    with pytest.raises(TypeError, match=r"not a cbir\.data\.sources\.Source"):
        register_source(object())
    with pytest.raises(ValueError, match="'corel1k' is already registered"):
        register_source(type(SOURCES["corel1k"])())
    assert "no_check" not in SOURCES and list(SOURCES)[:3] == ["folder", "sklearn_digits", "corel1k"]
    with pytest.raises(DatasetError, match=r"unknown dataset source 'imagenet' \(known: folder, sklearn_digits, "):
        get_source("imagenet")


def test_the_schema_allows_exactly_the_registered_sources(tmp_path: Path):
    schema = load_schema(REPO / "config" / "schema.yaml")
    assert schema["properties"]["datasets"]["additionalProperties"]["properties"]["source"]["enum"] == list(SOURCES)
    with pytest.raises(ConfigError) as error:
        validate_config(base_config(tmp_path, {"d": {"source": "imagenet"}}), schema)
    assert "config key 'datasets.d.source': 'imagenet' is not one of" in str(error.value)
    assert f"(allowed: {', '.join(SOURCES)})" in str(error.value)


def test_a_registered_source_is_one_the_config_and_the_checks_know(tmp_path: Path):
    class Shoebox(Source):
        """A plugin's source: images in a folder named 'shoebox' inside the dataset folder."""

        name = "shoebox"
        keys = frozenset({"path"})
        how_to_provide = "put the shoebox there"

        def missing_reason(self, entry, root):
            return None if (root / "shoebox").is_dir() else "no shoebox"

        def manifest(self, entry, root, images_dir=None):
            from cbir.data.scan import scan_image_folder

            return scan_image_folder(root / "shoebox")

    register_source(Shoebox())
    try:
        config = validate_config(base_config(tmp_path, {"box": {"source": "shoebox"}}), SCHEMA)
        [message] = missing_datasets(config)
        assert "source shoebox: no shoebox" in message and "put the shoebox there" in message
        class_folders(tmp_path / "box" / "shoebox", ["a", "b"], per_class=2)
        assert missing_datasets(config) == []
        manifest = build_manifest("shoebox", config["datasets"]["box"], tmp_path / "box")
        assert len(manifest.images) == 4 and manifest.classes == ["a", "b"]
        assert get_source("shoebox").images_folder({}, tmp_path / "box") == data_dir(tmp_path / "box", {})
    finally:
        SOURCES.pop("shoebox", None)


def test_a_source_prepared_by_a_rule_names_a_rule_with_an_output_folder():
    rules = "\n".join(p.read_text() for p in sorted((REPO / "workflow" / "rules").glob("*.smk")))
    blocks = dict(re.findall(r"^rule (\w+):\n(.*?)(?=^rule |\Z)", rules, flags=re.M | re.S))
    prepared = {name: source.prepared_by for name, source in SOURCES.items() if source.prepared_by}
    assert prepared == {
        "sklearn_digits": "prepare_digits",
        "cifar10": "cifar10_images",
        "fashion_mnist": "fashion_mnist_images",
    }
    for rule in prepared.values():
        assert re.search(r"output:\n\s+folder=directory\(", blocks[rule]), rule


# --- the workflow --------------------------------------------------------------------------


# --- real data -----------------------------------------------------------------------------


@pytest.mark.realdata
@pytest.mark.skipif(not COREL1K.is_dir(), reason=f"real Corel-1K images not found at {COREL1K}")
def test_real_corel1k_through_its_folders_and_through_the_index_rule(tmp_path: Path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the real copy is complete: not a single count warning
        folders = build_manifest("corel1k", {"source": "corel1k", "layout": "folders"}, COREL1K)
    images = folders.images
    assert len(images) == 1000 and folders.excluded.empty
    assert images["class_name"].value_counts().to_dict() == {name: 100 for name in COREL1K_CLASSES}
    index = images["id"].str.extract(r"/(\d+)\.jpg$")[0].astype(int)
    assert sorted(index) == list(range(1000))
    assert (images["label"] == index // 100).all()
    assert (images["class_name"] == [COREL1K_CLASSES[i // 100] for i in index]).all()

    flat = tmp_path / "wang"
    flat.mkdir()
    for path, i in zip(images["path"], index, strict=True):
        (flat / f"{i}.jpg").symlink_to(Path(path).resolve())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        by_index = build_manifest("corel1k", {"source": "corel1k", "layout": "flat"}, flat).images
    assert len(by_index) == 1000
    merged = by_index.assign(index=by_index["id"].str.removesuffix(".jpg").astype(int)).merge(
        images.assign(index=index), on="index", suffixes=("_flat", "_folder")
    )
    assert len(merged) == 1000
    assert (merged["label_flat"] == merged["label_folder"]).all()
    assert (merged["class_name_flat"] == merged["class_name_folder"]).all()
    assert (merged["sha256_flat"] == merged["sha256_folder"]).all()
