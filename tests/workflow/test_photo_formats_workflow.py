"""HEIC and RAW photos found by ``cbir query`` and by ``cbir serve``'s API in a folder of JPEG, HEIC, AVIF and DNG
photos indexed by ``cbir index``; a RAW beside its JPEG is ignored (``raw_with_jpeg``)."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from cbir.data.manifest import read_manifest

from helpers import SMALL_BACKBONE, run_cbir
from photo_export import write_photo

pytestmark = pytest.mark.workflow
pytest.importorskip("pillow_heif", reason="pillow-heif (requirements.txt) is not installed")
pytest.importorskip("rawpy", reason="rawpy (requirements.txt) is not installed")

OPTIONS = ["--cores", "2", "--engine", "torch", "--precision", "fp32", *SMALL_BACKBONE]
# three photos of each kind, each of its own content: (name prefix, extension, how write_photo writes it)
KINDS = [("jpeg", ".jpg", "JPEG"), ("heic", ".HEIC", "HEIC"), ("avif", ".avif", "AVIF"),
         ("raw", ".DNG", "DNG"), ("raw_preview", ".dng", "DNG with preview")]  # fmt: skip


def make_folder(folder: Path) -> list[str]:
    """The photos, and a camera's RAW+JPEG pair (its RAW ignored); returns the names of the photos indexed."""
    names = []
    for n, (prefix, suffix, kind) in enumerate(KINDS):
        for i in range(3):
            names.append(write_photo(folder / f"{prefix}_{i}{suffix}", kind, seed=10 * n + i).name)
    names.append(write_photo(folder / "IMG_0100.JPG", "JPEG", seed=100).name)
    write_photo(folder / "IMG_0100.DNG", "DNG with preview", seed=100)
    return names


def best(results: list[dict]) -> tuple[str, float]:
    return Path(results[0]["id"]).name, results[0]["distance"]


def test_heic_and_raw_photos_are_indexed_and_each_finds_itself_by_query_and_upload(tmp_path: Path):
    names = make_folder(tmp_path / "photos")
    result = run_cbir("index", "photos", *OPTIONS, cwd=tmp_path)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    dataset = tmp_path / "results" / "photos"
    assert sorted(read_manifest(dataset / "manifest.csv")["id"]) == sorted(names)
    ignored = pd.read_csv(dataset / "ignored.csv", keep_default_na=False)
    assert ignored.values.tolist() == [[".", "raw_with_jpeg", 1, "IMG_0100.DNG"]]
    assert pd.read_csv(dataset / "excluded.csv").empty

    cell = dataset / "efficientnet_lite0" / "all" / "original"
    heic, raws = (
        tmp_path / "photos" / "heic_1.HEIC",
        [tmp_path / "photos" / n for n in ("raw_2.DNG", "raw_preview_0.dng")],
    )
    query = run_cbir("query", str(heic), *map(str, raws), "--model", str(cell), "--json", cwd=tmp_path)
    assert query.returncode == 0, query.stderr[-3000:]
    for path, answer in zip([heic, *raws], json.loads(query.stdout), strict=True):
        name, distance = best(answer["results"]["global"])
        assert (name, distance) == (path.name, pytest.approx(0, abs=1e-3)), answer

    from fastapi.testclient import TestClient

    from cbir.serve.app import create_app
    from cbir.serve.settings import ServeSettings

    with TestClient(create_app(ServeSettings(model=cell, reload_interval=0))) as client:
        for path, content_type in ((heic, "image/heic"), (raws[0], "application/octet-stream")):
            response = client.post("/api/query", files={"image": (path.name, path.read_bytes(), content_type)})
            assert response.status_code == 200, response.text
            name, distance = best(response.json()["results"]["global"])
            assert (name, distance) == (path.name, pytest.approx(0, abs=1e-3)), response.json()
            # the page shows the query from the server's JPEG of it: any browser shows a HEIC or RAW query
            query = response.json()["query"]
            header, _, encoded = query["preview"].partition(",")
            assert header == "data:image/jpeg;base64"
            shown = Image.open(io.BytesIO(base64.b64decode(encoded)))
            assert shown.format == "JPEG" and max(shown.size) <= 320
            assert shown.width / shown.height == pytest.approx(query["width"] / query["height"], rel=0.05)
