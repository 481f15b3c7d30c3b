"""Files that are no photos are ignored by kind (ignored.csv), never excluded: only what claims to be an image and
cannot be read counts against data.max_excluded_fraction."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from cbir.data.ignore import IGNORED_COLUMNS, IgnoreRules, ignored_kind, ignored_summary, ignoring
from cbir.data.inspection import folder_state, listed_files, scan_shard
from cbir.data.manifest import DatasetError, accept_manifest, write_manifest
from cbir.data.scan import count_class_files, count_image_files, scan_image_folder, scan_unlabelled_folder
from cbir.data.sources import build_manifest

from helpers import make_image_folder
from photo_export import (
    EXCLUDED,
    FORMAT_PHOTOS,
    IGNORED,
    IGNORED_FOLDERS,
    N_PHOTOS,
    RAW_TWINS,
    make_photo_export,
)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    return make_photo_export(tmp_path / "Photos")


def ignored_per_kind() -> dict[str, int]:
    expected = Counter(IGNORED.values())
    for kind, files in IGNORED_FOLDERS.values():
        expected[kind] += files
    return dict(expected)


def test_the_export_indexes_its_photos_ignores_the_rest_by_kind_and_excludes_the_unreadable(export: Path):
    manifest = scan_unlabelled_folder(export)
    ids = set(manifest.images["id"])
    assert len(ids) == N_PHOTOS
    assert {"2024/08/Café_été_写真.jpg", "2024/09/link_to_january.jpg", "2024/06/IMG_0102.PNG"} <= ids
    assert {"Dups/IMG_0001 copy.jpg", "Dups/IMG_0002 copy.JPG"} <= ids
    reasons = dict(zip(manifest.excluded["path"], manifest.excluded["reason"], strict=True))
    assert sorted(reasons) == sorted(str(export / path) for path in EXCLUDED)
    for path, reason in EXCLUDED.items():
        assert reasons[str(export / path)].startswith(reason)
    ignored = manifest.ignored
    assert list(ignored.columns) == IGNORED_COLUMNS
    assert ignored.groupby("kind")["files"].sum().to_dict() == ignored_per_kind()
    # one row per folder and kind, with an example
    rows = {(row.folder, row.kind): (row.files, row.example) for row in ignored.itertuples()}
    assert rows[(".", "os_file")] == (2, "Thumbs.db")
    assert rows[("2024/01", "os_file")] == (2, ".DS_Store")
    assert rows[("2024", "system_folder")] == (2, ".thumbnails/")
    assert rows[("2024/03", "system_folder")] == (2, "@eaDir/")
    assert rows[("2024/02", "other")] == (1, "notes.txt")
    assert ignored_summary(ignored) == "4 os_file, 4 system_folder, 2 sidecar, 2 video, 1 hidden_folder, 1 other"
    # nothing ignored or indexed inside the hidden and thumbnail folders
    assert not any(".thumbnails" in i or "@eaDir" in i or ".private" in i for i in ids | set(reasons))


def test_the_excluded_fraction_counts_only_files_that_claim_to_be_images(export: Path, tmp_path: Path):
    manifest = scan_unlabelled_folder(export)
    fraction = accept_manifest(manifest, export, max_excluded_fraction=0.2, rejected_csv=tmp_path / "rejected.csv")
    assert fraction == pytest.approx(2 / (N_PHOTOS + 2))  # 16 ignored files play no part
    with pytest.raises(DatasetError, match=rf"2 of {N_PHOTOS + 2} files .* data\.ignore pattern"):
        accept_manifest(manifest, export, max_excluded_fraction=0.05, rejected_csv=tmp_path / "rejected.csv")


def test_the_labelled_scan_ignores_the_same_and_lists_files_beside_the_classes(export: Path):
    manifest = scan_image_folder(export)
    assert manifest.classes == ["2024", "Dups"] and len(manifest.images) == N_PHOTOS
    assert len(manifest.excluded) == len(EXCLUDED)
    assert manifest.ignored.groupby("kind")["files"].sum().to_dict() == ignored_per_kind()
    folder = make_image_folder(export.parent / "classes", per_class=2)
    (folder / "loose.png").write_bytes((folder / "red" / "000.png").read_bytes())
    (folder / "red" / "clip.MOV").write_bytes(b"video")
    labelled = scan_image_folder(folder)
    assert labelled.classes == ["blue", "green", "red"] and labelled.excluded.empty
    assert labelled.ignored[["folder", "kind", "files", "example"]].values.tolist() == [
        [".", "outside_classes", 1, "loose.png"],
        ["red", "video", 1, "clip.MOV"],
    ]


@pytest.mark.parametrize(
    ("relative", "folder", "kind"),
    [
        *[(f"IMG_0001{ext}", False, "video") for ext in (".mov", ".MOV", ".mp4", ".m4v", ".avi", ".mkv", ".3gp")],
        *[(f"IMG_0001{ext}", False, "sidecar") for ext in (".xmp", ".AAE", ".json", ".thm", ".jpg.xmp")],
        *[(name, False, "os_file") for name in (".DS_Store", "._IMG_1000.HEIC", "Thumbs.db", "THUMBS.DB")],
        ("desktop.ini", False, "os_file"),
        (".hidden.jpg", False, "hidden_file"),
        *[(name, False, "other") for name in ("notes.txt", "README", "scan.pdf", "photos.zip")],
        *[(name, True, "system_folder") for name in ("@eaDir", ".thumbnails", ".AppleDouble", "$RECYCLE.BIN")],
        (".git", True, "hidden_folder"),
        (".cache/IMG_0001.jpg", False, "hidden_folder"),  # inside a hidden folder
        ("2024/@eaDir/IMG_0001.jpg/SYNOPHOTO_THUMB_M.jpg", False, "system_folder"),
        *[(name, False, None) for name in ("IMG_0001.jpg", "IMG_0001.JPEG", "scan.png", "2024/06/a.webp")],
        ("2024", True, None),
    ],
)
def test_each_kind_has_its_rule(relative: str, folder: bool, kind: str | None):
    assert ignored_kind(relative, folder=folder) == kind


def test_data_ignore_patterns_are_matched_on_names_paths_and_folders(export: Path):
    rules = IgnoreRules(["*_thumb.jpg", "Private/", "2024/12", "*/edited/*"])
    assert rules.kind("2024/01/IMG_0001_THUMB.jpg", False) == "configured"  # case-insensitive
    assert rules.kind("Private", True) == "configured" and rules.kind("Private", False) == "other"
    assert rules.kind("2024/12/IMG_0012.jpg", False) == "configured"  # inside a folder matched
    assert rules.kind("2023/12/IMG_0012.jpg", False) is None  # a path pattern is anchored
    assert rules.kind("2024/Edited/IMG_1.jpg", False) == "configured"
    for bad in ("/etc", "../up", "a/../b", ""):
        with pytest.raises(ValueError, match=r"data\.ignore pattern"):
            IgnoreRules([bad])
    extra = ["Dups/", "*_truncated.jpg"]
    manifest = scan_unlabelled_folder(export, ignore=extra)
    assert len(manifest.images) == N_PHOTOS - 2 and len(manifest.excluded) == 1
    configured = manifest.ignored[manifest.ignored["kind"] == "configured"]
    assert configured[["folder", "files", "example"]].values.tolist() == [
        [".", 3, "Dups/"],
        ["2024/05", 1, "IMG_0005_truncated.jpg"],
    ]
    with ignoring(extra):  # as the manifest job sets them
        again = build_manifest("folder", {"source": "folder", "labels": "none"}, export)
        assert count_image_files(export) == N_PHOTOS - 2 + 1
        assert count_class_files(export) == [N_PHOTOS - 2 + 1]  # 2024 alone
    pd.testing.assert_frame_equal(again.ignored, manifest.ignored)


def test_links_keep_their_rules_and_a_link_to_a_photo_is_a_photo(export: Path):
    folder = export / "2024" / "10"
    (folder / "broken.jpg").symlink_to("nowhere.jpg")
    (folder / "broken_clip.mov").symlink_to("nowhere.mov")
    (folder / "album").symlink_to("../../Dups")  # a link to a folder is followed
    manifest = scan_unlabelled_folder(export)
    ids = set(manifest.images["id"])
    assert "2024/09/link_to_january.jpg" in ids and "2024/10/album/IMG_0001 copy.jpg" in ids
    reasons = dict(zip(manifest.excluded["path"], manifest.excluded["reason"], strict=True))
    assert reasons[str(folder / "broken.jpg")] == "broken symbolic link (to 'nowhere.jpg')"
    assert str(folder / "broken_clip.mov") not in reasons
    assert manifest.ignored.set_index(["folder", "kind"]).loc[("2024/10", "video"), "files"] == 1
    assert len(manifest.images) == N_PHOTOS + 2 and len(manifest.excluded) == len(EXCLUDED) + 1


def test_the_scan_jobs_list_only_what_is_inspected(export: Path, tmp_path: Path):
    listed = [Path(path).relative_to(export).as_posix() for path, _ in listed_files(export)]
    assert len(listed) == N_PHOTOS + len(EXCLUDED)
    assert not any(path in IGNORED or ".thumbnails" in path or "@eaDir" in path for path in listed)
    records = scan_shard(export, 0, 2, tmp_path / "cache.csv", tmp_path / "0-of-2.csv", ignore=["Dups/"])
    assert records.inspected == (N_PHOTOS + len(EXCLUDED) - 2) // 2
    # a change to ignored files alone leaves the folder's state (and so its manifest) as it was
    state = folder_state(export)
    (export / "2024" / "01" / ".DS_Store").write_bytes(b"changed by Finder")
    (export / "2024" / "02" / "more notes.txt").write_text("and more")
    assert folder_state(export) == state
    (export / "2024" / "02" / "IMG_0200.jpg").write_bytes((export / "2024" / "02" / "IMG_0002.jpg").read_bytes())
    assert folder_state(export) != state


def test_the_ignored_table_is_written_beside_the_manifest(export: Path, tmp_path: Path):
    manifest = scan_unlabelled_folder(export)
    write_manifest(manifest, tmp_path / "manifest.csv", tmp_path / "excluded.csv", tmp_path / "ignored.csv")
    table = pd.read_csv(tmp_path / "ignored.csv", keep_default_na=False)
    assert list(table.columns) == IGNORED_COLUMNS and table["files"].sum() == sum(ignored_per_kind().values())
    empty = scan_unlabelled_folder(make_image_folder(tmp_path / "plain", per_class=1))
    write_manifest(empty, tmp_path / "m.csv", tmp_path / "x.csv", tmp_path / "none.csv")
    assert (tmp_path / "none.csv").read_text().strip() == ",".join(IGNORED_COLUMNS)


@pytest.mark.parametrize(
    ("names", "raw_with_jpeg"),
    [
        (["IMG_0001.CR2", "IMG_0001.JPG"], {"IMG_0001.CR2"}),  # a camera's RAW+JPEG mode
        (["img_0001.nef", "IMG_0001.jpeg"], {"img_0001.nef"}),  # names and extensions in any case
        (["IMG_0001.ARW", "IMG_0001.HEIC"], {"IMG_0001.ARW"}),
        (["DSCF0001.RAF", "DSCF0001.HIF"], {"DSCF0001.RAF"}),  # Fujifilm's RAW+HEIF
        (["IMG_0001.CR3", "IMG_0001.DNG", "IMG_0001.JPG"], {"IMG_0001.CR3", "IMG_0001.DNG"}),
        (["IMG_0001.CR2"], set()),  # a RAW alone is indexed
        (["IMG_0001.CR2", "IMG_0002.JPG", "IMG_0001.png", "IMG_0001.avif", "IMG_0001.CR2.jpg"], set()),
        (["IMG_0001.CR2", ".IMG_0001.JPG", "IMG_0001.xmp", "IMG_0001.MOV"], set()),  # no twin to inspect
    ],
)
def test_a_raw_is_ignored_only_beside_a_jpeg_or_heic_of_the_same_shot(names: list[str], raw_with_jpeg: set[str]):
    kinds = IgnoreRules().file_kinds("2024/06", names)
    assert {name for name, kind in kinds.items() if kind == "raw_with_jpeg"} == raw_with_jpeg
    assert all(kinds[name] == ignored_kind(f"2024/06/{name}", folder=False) for name in set(names) - raw_with_jpeg)
    # a JPEG ignored by a data.ignore pattern is no twin: the shot keeps its RAW
    configured = IgnoreRules(["*.jpg"]).file_kinds(".", ["IMG_0001.CR2", "IMG_0001.JPG"])
    assert configured == {"IMG_0001.CR2": None, "IMG_0001.JPG": "configured"}


def test_each_shot_of_a_raw_plus_jpeg_camera_is_one_photo_the_jpeg(tmp_path: Path):
    for package in ("pillow_heif", "rawpy"):  # writing the HEIC photos, reading the DNG ones
        pytest.importorskip(package, reason=f"{package} (requirements.txt) is not installed")
    export = make_photo_export(tmp_path / "Photos", formats=True)
    manifest = scan_unlabelled_folder(export)
    ids = set(manifest.images["id"])
    assert len(ids) == N_PHOTOS + len(FORMAT_PHOTOS) and set(FORMAT_PHOTOS) <= ids and not ids & set(RAW_TWINS)
    assert sorted(manifest.excluded["path"]) == sorted(str(export / path) for path in EXCLUDED)
    rows = {(row.folder, row.kind): (row.files, row.example) for row in manifest.ignored.itertuples()}
    assert rows[("2024/12", "raw_with_jpeg")] == (2, "IMG_1212.DNG")
    assert manifest.ignored.groupby("kind")["files"].sum().to_dict() == {**ignored_per_kind(), "raw_with_jpeg": 2}
    # every listing agrees: the scan jobs', the counts before any job, a path asked about alone
    listed = {Path(path).relative_to(export).as_posix() for path, _ in listed_files(export)}
    assert listed == ids | set(EXCLUDED) and count_image_files(export) == len(listed)
    assert count_class_files(export) == [len(listed) - 2, 2]  # 2024, Dups
    for relative in RAW_TWINS:
        assert ignored_kind(export / relative, root=export) == "raw_with_jpeg"
        assert ignored_kind(relative, folder=False) is None  # by its name alone, no folder to look in
    assert ignored_kind(export / "2024/12/DSC_1210.DNG", root=export) is None
    # a change to the ignored RAW alone leaves the folder's state as it was; without its JPEG, the RAW is indexed
    state = folder_state(export)
    (export / "2024/12/IMG_1212.DNG").write_bytes((export / "2024/12/DSC_1211.dng").read_bytes())
    assert folder_state(export) == state
    (export / "2024/12/IMG_1212.JPG").unlink()
    again = scan_unlabelled_folder(export)
    assert "2024/12/IMG_1212.DNG" in set(again.images["id"]) and len(again.images) == len(ids)
    assert again.ignored.set_index(["folder", "kind"]).loc[("2024/12", "raw_with_jpeg"), "files"] == 1
