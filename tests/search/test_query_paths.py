"""Which files `cbir query` takes from a folder: the photos the manifest would index, nothing beside them."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from cbir.search.query import QueryError, collect_query_paths


def test_a_folder_gives_its_photos_as_the_manifest_lists_them(tmp_path: Path):
    folder = tmp_path / "queries"
    (folder / "trip" / ".thumbnails").mkdir(parents=True)
    for name in ("b.jpg", "trip/IMG_0001.JPG", "trip/.thumbnails/t.jpg", "trip/IMG_0002.png"):
        Image.new("RGB", (8, 8)).save(folder / name, format="PNG" if name.endswith("png") else "JPEG")
    for name, content in {
        "trip/IMG_0001.CR2": b"raw",
        "trip/.DS_Store": b"\0",
        "notes.txt": b"hi",
        "a.MOV": b"",
    }.items():
        (folder / name).write_bytes(content)
    named = tmp_path / "named.jpg"
    Image.new("RGB", (8, 8)).save(named)
    found = collect_query_paths([folder, named])
    # the RAW twin of IMG_0001.JPG, the thumbnail folder, the OS file, the note and the video are left out
    assert found == [folder / "b.jpg", folder / "trip" / "IMG_0001.JPG", folder / "trip" / "IMG_0002.png", named]


def test_a_folder_without_photos_or_a_missing_query_is_refused(tmp_path: Path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(QueryError, match="holds no image files"):
        collect_query_paths([tmp_path / "empty"])
    with pytest.raises(QueryError, match="does not exist"):
        collect_query_paths([tmp_path / "nowhere.jpg"])
