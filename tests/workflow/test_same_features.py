"""A gallery image queried through `cbir query` and `cbir serve` finds itself, at (almost) no distance.

Two trained tiny cells: the session's run (pretrained EfficientNet-Lite0, bf16 forced on every
CPU) and one with random VGG16 weights and seed 1 (fp32), where a query through a network built
with another seed would land elsewhere.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from helpers import make_image_folder, run_snakemake, tiny_config, write_config

pytestmark = pytest.mark.workflow
QUERY = "data/tiny/red/000.png"  # in the 80-20 gallery of every tiny run (checked below)


@pytest.fixture(scope="module")
def random_seed_1_run(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("seed1")
    data = make_image_folder(root / "data" / "tiny", per_class=10)
    config = tiny_config(data, backbones=["vgg"], pca=[8])
    config["seed"] = 1
    config["backbones"] = {"vgg": {"arch": "vgg16", "weights": "random", "pooling": "avg", "image_size": 32}}
    result = run_snakemake(root, write_config(root / "config.yaml", config))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return root


@pytest.fixture(params=["bf16-pretrained", "fp32-random-seed-1"])
def cell(request, finished_run) -> tuple[Path, Path, str]:
    """(run folder, cell folder, precision) of a trained cell."""
    if request.param == "bf16-pretrained":
        root = finished_run[0]
        return root, root / "results/tiny/lite/80-20/8", "bf16"
    root = request.getfixturevalue("random_seed_1_run")
    return root, root / "results/tiny/vgg/80-20/8", "fp32"


def median_gallery_distance(cell_folder: Path) -> float:
    from cbir.io import load_arrays

    gallery = load_arrays(cell_folder / "gallery.h5")[0]["features"].astype(np.float64)
    distances = np.sqrt(((gallery[:, None, :] - gallery[None, :, :]) ** 2).sum(-1))
    return float(np.median(distances[np.triu_indices(len(gallery), k=1)]))


def test_cbir_query_and_serve_find_a_gallery_image_first_at_no_distance(cell):
    from fastapi.testclient import TestClient

    from cbir.serve.app import create_app
    from cbir.serve.model import ServedModel
    from cbir.serve.settings import ServeSettings

    root, folder, precision = cell
    tolerance = 1e-3 * median_gallery_distance(folder)
    served = ServedModel.load(ServeSettings(model=folder))
    assert served.embedder.prepared.precision == precision and served.embedder.notice is None
    assert "red/000.png" in set(served.model.gallery_ids)

    done = subprocess.run([sys.executable, "-m", "cbir.cli", "query", str(root / QUERY), "--model", str(folder),
                           "--json"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "note:" not in done.stderr  # the record was followed
    [answer] = json.loads(done.stdout)
    first = answer["results"]["global"][0]
    assert first["id"] == "red/000.png" and first["distance"] <= tolerance

    with TestClient(create_app(ServeSettings(model=folder), served=served)) as client:
        response = client.post("/api/query", files={"image": ("q.png", (root / QUERY).read_bytes(), "image/png")})
        info = client.get("/api/model").json()
    assert response.status_code == 200, response.text
    first = response.json()["results"]["global"][0]
    assert first["id"] == "red/000.png" and first["distance"] <= tolerance
    assert info["precision"] == precision and info["precision_notice"] is None


def test_the_query_latency_is_measured_through_the_gallerys_network(cell):
    root, folder, precision = cell
    backbone = folder.parts[-3]
    timing = json.loads((root / f"results/tiny/features/{backbone}.timing.json").read_text())
    assert timing["precision"] == precision
    assert timing["precision_reason"] == f"{precision}, as the gallery was extracted"
    assert timing["seed"] == (0 if precision == "bf16" else 1)
    assert timing["time_extract_median_us"] > 0


def test_a_large_jpeg_upload_is_decoded_as_the_gallery_and_cbir_query_decode_it(finished_run, tmp_path):
    from fastapi.testclient import TestClient
    from PIL import Image

    from cbir.data.images import load_rgb_image
    from cbir.serve.app import create_app
    from cbir.serve.model import ServedModel
    from cbir.serve.settings import ServeSettings

    root = finished_run[0]
    folder = root / "results/tiny/lite/80-20/8"
    served = ServedModel.load(ServeSettings(model=folder))
    prepared = served.embedder.prepared
    assert prepared.draft_to, "the session's gallery was draft-decoded"
    exif = Image.Exif()
    exif[0x0112] = 6  # shown turned a quarter: 300 wide, 400 high
    photo = tmp_path / "large.jpg"
    Image.open(root / QUERY).convert("RGB").resize((400, 300)).save(photo, quality=90, exif=exif)
    with Image.open(photo) as image:
        assert min(image.size) >= 4 * prepared.draft_to  # decoded at a reduced scale

    # what `cbir query` computes for the file: the gallery's decoding (draft), then the search
    expected = served.search(prepared.decode(photo), 5, None)["results"]["global"]
    in_full = served.search(load_rgb_image(photo), 5, None)["results"]["global"]  # what the server did before
    with TestClient(create_app(ServeSettings(model=folder), served=served)) as client:
        response = client.post("/api/query", files={"image": ("large.jpg", photo.read_bytes(), "image/jpeg")})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert [r["id"] for r in answer["results"]["global"]] == [r["id"] for r in expected]
    assert [r["distance"] for r in answer["results"]["global"]] == pytest.approx([r["distance"] for r in expected])
    assert [r["distance"] for r in in_full] != pytest.approx([r["distance"] for r in expected], abs=1e-6)
    assert (answer["query"]["width"], answer["query"]["height"]) == (300, 400)
