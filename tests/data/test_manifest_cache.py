"""The manifest's file record cache: only new or changed files are inspected, and the manifest
is the one a build from scratch gives; inspection in a process pool gives the same manifest."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from cbir.data import inspection
from cbir.data.inspection import FileRecords, records_stamp
from cbir.data.manifest import Manifest
from cbir.data.sources import build_manifest

from dataset_fixtures import numbered_flat, voc_tree
from helpers import make_image_folder

FOLDER = {"source": "folder"}


@pytest.fixture
def photos(tmp_path: Path) -> Path:
    """Three classes of four PNGs, plus a text file (ignored, never inspected) and a corrupt JPEG (excluded):
    13 files inspected."""
    root = make_image_folder(tmp_path / "data" / "photos", per_class=4)
    (root / "red" / "notes.txt").write_text("not an image")
    (root / "green" / "broken.jpg").write_bytes(b"not a jpeg")
    return root


@pytest.fixture
def inspected(monkeypatch) -> list[str]:
    """The names of the files inspected (not taken from the cache), in order."""
    names: list[str] = []
    real = inspection.inspect_file

    def spy(path: Path):
        names.append(path.name)
        return real(path)

    monkeypatch.setattr(inspection, "inspect_file", spy)
    return names


def cached_build(root: Path, cache: Path, entry: dict = FOLDER, workers: int = 1) -> tuple[Manifest, FileRecords]:
    """A build as the manifest job does it: cache read, used, and written back."""
    records = FileRecords.load(cache)
    manifest = build_manifest(entry["source"], entry, root, records=records, workers=workers)
    records.save(cache)
    return manifest, records


def assert_same_manifest(manifest: Manifest, expected: Manifest) -> None:
    pd.testing.assert_frame_equal(manifest.images, expected.images)
    pd.testing.assert_frame_equal(manifest.excluded, expected.excluded)
    assert manifest.classes == expected.classes


def assert_as_from_scratch(manifest: Manifest, root: Path, entry: dict = FOLDER) -> None:
    assert_same_manifest(manifest, build_manifest(entry["source"], entry, root))


def write_png(path: Path, size: int, seed: int = 1) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def cached_paths(cache: Path) -> set[str]:
    table = pd.read_csv(cache, skiprows=1, keep_default_na=False)
    return set(table["path"])


def test_an_unchanged_folder_is_not_inspected_again(photos: Path, tmp_path: Path, inspected: list[str]):
    cache = tmp_path / "cache" / "file_records.csv"
    first, records = cached_build(photos, cache)
    assert (records.inspected, records.reused) == (13, 0)
    assert cache.read_text().splitlines()[0] == records_stamp()
    inspected.clear()
    again, records = cached_build(photos, cache)
    assert inspected == [] and (records.inspected, records.reused) == (0, 13)
    assert records.summary(cache) == f"0 inspected, 13 reused from {cache}"
    assert_same_manifest(again, first)
    assert_as_from_scratch(again, photos)


def test_added_files_alone_are_inspected(photos: Path, tmp_path: Path, inspected: list[str]):
    cache = tmp_path / "file_records.csv"
    cached_build(photos, cache)
    write_png(photos / "blue" / "new.png", 20)
    write_png(photos / "amber" / "first.png", 24)  # a new class: the labels after it move
    inspected.clear()
    manifest, records = cached_build(photos, cache)
    assert sorted(inspected) == ["first.png", "new.png"] and records.reused == 13
    assert_as_from_scratch(manifest, photos)


def test_removed_files_drop_out_of_the_cache(photos: Path, tmp_path: Path, inspected: list[str]):
    cache = tmp_path / "file_records.csv"
    cached_build(photos, cache)
    gone = [photos / "red" / "000.png", photos / "green" / "broken.jpg"]
    for path in gone:
        path.unlink()
    inspected.clear()
    manifest, records = cached_build(photos, cache)
    assert inspected == [] and records.reused == 11
    assert not {str(path.absolute()) for path in gone} & cached_paths(cache)
    assert len(cached_paths(cache)) == 11
    assert_as_from_scratch(manifest, photos)


def test_a_file_with_a_new_size_or_mtime_is_inspected_again(photos: Path, tmp_path: Path, inspected: list[str]):
    cache = tmp_path / "file_records.csv"
    cached_build(photos, cache)
    write_png(photos / "red" / "001.png", 40)  # new content, new size
    touched = photos / "blue" / "002.png"
    status = touched.stat()
    os.utime(touched, ns=(status.st_atime_ns, status.st_mtime_ns + 1_000_000_000))  # same bytes, new mtime
    inspected.clear()
    manifest, records = cached_build(photos, cache)
    assert sorted(inspected) == ["001.png", "002.png"] and records.reused == 11
    assert manifest.images.set_index("id").loc["red/001.png", "width"] == 40
    assert_as_from_scratch(manifest, photos)


def test_a_renamed_file_is_inspected_under_its_new_name(photos: Path, tmp_path: Path, inspected: list[str]):
    cache = tmp_path / "file_records.csv"
    cached_build(photos, cache)
    (photos / "green" / "003.png").rename(photos / "green" / "renamed.png")
    inspected.clear()
    manifest, records = cached_build(photos, cache)
    assert inspected == ["renamed.png"] and records.reused == 12
    assert str((photos / "green" / "003.png").absolute()) not in cached_paths(cache)
    assert_as_from_scratch(manifest, photos)


def test_added_removed_changed_and_renamed_at_once(photos: Path, tmp_path: Path, inspected: list[str]):
    cache = tmp_path / "file_records.csv"
    cached_build(photos, cache)
    write_png(photos / "red" / "added.png", 18)
    (photos / "red" / "notes.txt").unlink()
    (photos / "blue" / "000.png").unlink()
    write_png(photos / "green" / "000.png", 28, seed=7)
    (photos / "blue" / "001.png").rename(photos / "red" / "moved.png")  # to another class
    inspected.clear()
    manifest, records = cached_build(photos, cache)
    assert sorted(inspected) == ["000.png", "added.png", "moved.png"] and records.reused == 10
    assert_as_from_scratch(manifest, photos)


def test_an_image_replaced_by_a_corrupt_file_is_excluded_with_its_reason(
    photos: Path, tmp_path: Path, inspected: list[str]
):
    cache = tmp_path / "file_records.csv"
    cached_build(photos, cache)
    (photos / "blue" / "003.png").write_bytes(b"\x89PNG truncated")
    inspected.clear()
    manifest, _ = cached_build(photos, cache)
    assert inspected == ["003.png"]
    assert "blue/003.png" not in set(manifest.images["id"])
    reasons = dict(zip(manifest.excluded["path"], manifest.excluded["reason"], strict=True))
    assert reasons[str(photos / "blue" / "003.png")].startswith("cannot decode")
    assert_as_from_scratch(manifest, photos)


CORRUPT_CACHES = {
    "random bytes": b"\x00\xff\xfe garbage \x81",
    "empty": b"",
    "another version": b"# cbir file records v0\npath,size\n",
    "wrong header": None,  # the stamp, then a header that is not ours
    "a short row": None,
    "a bad number": None,
    "neither image nor reason": None,
}


def corrupt_cache_bytes(case: str, good: str) -> bytes:
    stamp, header, row, *_ = good.splitlines()
    fields = row.split(",")
    if case == "wrong header":
        return f"{stamp}\nfile,bytes\n{row}\n".encode()
    if case == "a short row":
        return f"{stamp}\n{header}\n{','.join(fields[:3])}\n".encode()
    if case == "a bad number":
        return f"{stamp}\n{header}\n{','.join([fields[0], 'twelve', *fields[2:]])}\n".encode()
    if case == "neither image nor reason":
        return f"{stamp}\n{header}\n{','.join([*fields[:3], '', '', '', ''])}\n".encode()
    return CORRUPT_CACHES[case]


@pytest.mark.parametrize("case", list(CORRUPT_CACHES))
def test_a_corrupt_cache_is_ignored_with_a_warning(photos: Path, tmp_path: Path, caplog, case: str):
    cache = tmp_path / "file_records.csv"
    cached_build(photos, cache)
    cache.write_bytes(corrupt_cache_bytes(case, cache.read_text()))
    with caplog.at_level(logging.WARNING, logger="cbir.data.inspection"):
        manifest, records = cached_build(photos, cache)
    assert f"file record cache '{cache}' ignored" in caplog.text
    assert (records.inspected, records.reused) == (13, 0)
    assert_as_from_scratch(manifest, photos)
    assert cache.read_text().splitlines()[0] == records_stamp()  # written anew


def test_a_missing_cache_means_a_full_inspection(photos: Path, tmp_path: Path):
    manifest, records = cached_build(photos, tmp_path / "nowhere" / "file_records.csv")
    assert (records.inspected, records.reused) == (13, 0)
    assert_as_from_scratch(manifest, photos)


def test_a_process_pool_gives_the_same_manifest_as_inline(tmp_path: Path):
    root = make_image_folder(tmp_path / "photos", per_class=12)
    (root / "red" / "broken.png").write_bytes(b"nope")
    inline, _ = cached_build(root, tmp_path / "inline.csv", workers=1)
    pooled, records = cached_build(root, tmp_path / "pooled.csv", workers=2)
    assert records.inspected == 37
    assert_same_manifest(pooled, inline)
    assert (tmp_path / "pooled.csv").read_text() == (tmp_path / "inline.csv").read_text()


def test_voc_images_are_taken_from_the_cache(tmp_path: Path, inspected: list[str]):
    root = voc_tree(tmp_path / "voc")
    entry = {"source": "voc2012"}
    cache = tmp_path / "file_records.csv"
    first, records = cached_build(root, cache, entry)
    assert records.inspected == len(first.images)
    inspected.clear()
    again, records = cached_build(root, cache, entry)
    assert inspected == [] and records.reused == len(first.images)
    assert_as_from_scratch(again, root, entry)


@pytest.mark.filterwarnings("ignore:class '.' has . images, expected 5")
def test_flat_numbered_files_are_taken_from_the_cache(tmp_path: Path, inspected: list[str]):
    root = numbered_flat(tmp_path / "corel10k", n_classes=2, per_class=3, images_per_class=5)
    write_png(root / "2.png", 16)  # the same index as 2.jpg: excluded as a duplicate
    entry = {"source": "corel10k", "layout": "flat", "n_classes": 2, "images_per_class": 5}
    cache = tmp_path / "file_records.csv"
    cached_build(root, cache, entry)
    (root / "6.jpg").write_bytes(b"broken")
    inspected.clear()
    manifest, _ = cached_build(root, cache, entry)
    assert inspected == ["6.jpg"]
    assert "duplicate index 2" in " ".join(manifest.excluded["reason"])
    assert_as_from_scratch(manifest, root, entry)


def test_scan_shards_cover_the_listing_once(photos: Path):
    paths = [path for path, _ in inspection.listed_files(photos)]
    assert len(paths) == 13  # notes.txt is ignored, never listed for inspection
    for n_shards in (1, 2, 3, 5, 14, 20):
        shards = [inspection.shard_of(paths, i, n_shards) for i in range(n_shards)]
        assert [path for shard in shards for path in shard] == paths
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
    with pytest.raises(ValueError, match=r"shard 3 is not one of 0\.\.2"):
        inspection.shard_of(paths, 3, 3)
    assert [inspection.scan_shard_count(n, 4) for n in (0, 1, 4, 5, 8, 9)] == [0, 0, 0, 2, 2, 3]


def test_a_manifest_from_scan_shards_inspects_nothing_itself(photos: Path, tmp_path: Path, inspected: list[str]):
    cache = tmp_path / "cache.csv"
    shards = [tmp_path / f"{i}-of-3.csv" for i in range(3)]
    for i, shard in enumerate(shards):
        inspection.scan_shard(photos, i, 3, cache, shard)
    assert sorted(inspected) == sorted(path.rsplit("/", 1)[-1] for path, _ in inspection.listed_files(photos))
    inspected.clear()
    records = FileRecords.load(cache, shards=shards)
    manifest = build_manifest("folder", FOLDER, photos, records=records)
    assert inspected == [] and records.reused == 13
    assert_as_from_scratch(manifest, photos)
    # a rescan after adding a file inspects that file alone, taking the others from the cache
    records.save(cache)
    inspected.clear()
    write_png(photos / "blue" / "extra.png", 20)
    rescans = [inspection.scan_shard(photos, i, 3, cache, shard) for i, shard in enumerate(shards)]
    assert inspected == ["extra.png"] and sum(r.reused for r in rescans) == 13


def test_unreadable_scan_records_stop_the_manifest_naming_them(tmp_path: Path):
    shard = tmp_path / "0-of-2.csv"
    shard.write_text("not records\n")
    with pytest.raises(ValueError, match=r"scan records '.*0-of-2\.csv' cannot be read"):
        FileRecords.load(tmp_path / "cache.csv", shards=[shard])
