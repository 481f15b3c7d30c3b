"""`cbir serve`: the JSON API through FastAPI's test client, on the tiny trained model."""

from __future__ import annotations

import io
import json
import struct
import subprocess
import sys
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

from cbir.layout import metrics_name
from cbir.search.cell import best_space

from helpers import REPO

pytestmark = pytest.mark.workflow
CELL = "results/tiny/lite/80-20/8"
TIMED_STEPS = {"decode", "preprocess", "forward", "project_predict", "search_clustered", "search_class",
               "search_global", "total"}  # fmt: skip


@pytest.fixture(scope="module")
def served(finished_run):
    """The tiny model loaded once for every app in this module."""
    from cbir.serve.model import ServedModel
    from cbir.serve.settings import ServeSettings

    root, _ = finished_run
    return ServedModel.load(ServeSettings(model=root / CELL))


def make_client(served, **limits):
    from fastapi.testclient import TestClient

    from cbir.serve.app import create_app
    from cbir.serve.settings import ServeSettings

    return TestClient(create_app(ServeSettings(model=served.settings.model, **limits), served=served))


@pytest.fixture(scope="module")
def client(served):
    with make_client(served) as test_client:
        yield test_client


def png_bytes(path: Path) -> bytes:
    return path.read_bytes()


def upload(client, data: bytes, name: str = "query.png", content_type: str = "image/png", **form):
    return client.post("/api/query", files={"image": (name, data, content_type)}, data=form)


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels (a decompression bomb's calling card)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, format="PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", width, height)  # IHDR payload starts after signature, length, type
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def without_timings(answer: dict) -> dict:
    return {key: value for key, value in answer.items() if key != "timings_ms"}


def test_model_info_describes_the_cell_and_its_metrics(client, finished_run):
    root, _ = finished_run
    info = client.get("/api/model").json()
    names = (info["dataset"], info["backbone"], info["split"], info["pca"], info["k"])
    assert names == ("tiny", "lite", "80-20", "8", 2)
    assert info["arch"] == "efficientnet_lite0" and info["classes"] == ["blue", "green", "red"]
    assert info["labelled"] is True
    assert info["gallery_size"] == 24 and info["test_images"] == 6 and info["reduced_dim"] == 8
    assert info["max_upload_bytes"] == 64 * 1024 * 1024 and info["top_k"] == 5
    # it searches in the cell's best space (the session's run fits all of them), and says which
    assert info["space"] == best_space(root / CELL, 2)[0] and info["space"] != "raw"
    assert info["modes"]["global"] == f"all images ({info['space']} space)"
    metrics = json.loads((root / CELL / metrics_name(2, info["space"])).read_text())
    shown = ["accuracy", "map_at_5_clustered", "map_at_5_class", "map_at_5_global", "map_class", "map_global",
             "precision_at_5_clustered", "precision_at_5_class", "precision_at_5_global"]  # fmt: skip
    assert list(info["metrics"]) == shown
    assert info["metrics"] == pytest.approx({key: metrics[key] for key in shown})
    tests = client.get("/api/test-images").json()
    assert len(tests) == 6 and {t["class"] for t in tests} == {"blue", "green", "red"}
    split = (root / "results/tiny/splits/80-20.csv").read_text()
    assert all(f"{t['id']},{info['classes'].index(t['class'])},test" in split for t in tests)


def test_an_uploaded_image_is_classified_and_searched_like_cbir_query(client, served, finished_run):
    from cbir.search.query import query_images

    root, _ = finished_run
    query = root / "data/tiny/red/000.png"  # a gallery image: it must find itself first
    response = upload(client, png_bytes(query), top_k="4")
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["predicted_class"] == "red" and answer["prediction_correct"] is None
    preview = answer["query"].pop("preview")
    assert answer["query"] == {"source": "upload", "name": "query.png", "id": None, "true_class": None,
                               "width": 32, "height": 32}  # fmt: skip
    assert preview.startswith("data:image/jpeg;base64,")
    assert set(answer["results"]) == {"clustered", "class", "global"}
    assert answer["results"]["global"][0]["id"] == "red/000.png"
    assert answer["results"]["global"][0]["distance"] == pytest.approx(0, abs=1e-3)
    assert len(answer["results"]["class"]) == 4 and 1 <= len(answer["results"]["clustered"]) <= 4
    assert all(tile["correct"] is None for tiles in answer["results"].values() for tile in tiles)
    assert set(answer["timings_ms"]) == TIMED_STEPS and all(v >= 0 for v in answer["timings_ms"].values())
    assert answer["timings_ms"]["total"] >= answer["timings_ms"]["forward"]
    [expected] = [found.to_json() for found in query_images(served.model, [query], top_k=4, embedder=served.embedder)]
    for mode, tiles in answer["results"].items():
        assert [t["id"] for t in tiles] == [r["id"] for r in expected["results"][mode]], mode
        assert [t["distance"] for t in tiles] == pytest.approx([r["distance"] for r in expected["results"][mode]])
        assert [t["class"] for t in tiles] == [r["class"] for r in expected["results"][mode]]
        assert [t["similarity"] for t in tiles] == pytest.approx([r["similarity"] for r in expected["results"][mode]])
        assert [t["good_match"] for t in tiles] == [r["good_match"] for r in expected["results"][mode]]
    # the score and the "no good match" mark, calibrated in the evaluation of the cell's space
    metrics = json.loads((root / CELL / metrics_name(2, served.model.space)).read_text())
    threshold = metrics["no_match_distance_global"]
    assert answer["no_match"]["distance"] == pytest.approx(threshold) == expected["no_match"]["distance"]
    assert answer["no_match"]["metric"] == "no_match_distance_global" and answer["no_match"]["source"]
    assert answer["similarity"] == "cosine"  # the best space of the session's run is a normalised one
    top = answer["results"]["global"][0]
    assert top["similarity"] == pytest.approx(1, abs=1e-3) and top["good_match"] is True  # itself
    tiles = [tile for tiles in answer["results"].values() for tile in tiles]
    assert all(tile["good_match"] == (tile["distance"] <= threshold) for tile in tiles)
    assert all(-1 <= tile["similarity"] <= 1 for tile in tiles)
    thumbnail = client.get(answer["results"]["class"][1]["thumbnail"])
    assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(thumbnail.content)).size == (32, 32)


def test_a_test_image_has_a_known_class_and_right_or_wrong_results(client):
    for test_image in client.get("/api/test-images").json():
        response = client.post("/api/query", data={"test_id": test_image["id"], "top_k": "3"})
        assert response.status_code == 200, response.text
        answer = response.json()
        truth = test_image["class"]
        assert answer["query"] == {"source": "test", "name": test_image["id"], "id": test_image["id"],
                                   "true_class": truth, "width": 32, "height": 32, "preview": None}  # fmt: skip
        assert answer["prediction_correct"] == (answer["predicted_class"] == truth)
        for tiles in answer["results"].values():
            assert len(tiles) >= 1 and all(tile["correct"] == (tile["class"] == truth) for tile in tiles)
        # exact search within the predicted class: every result is right exactly when the prediction is
        assert {tile["correct"] for tile in answer["results"]["class"]} == {answer["prediction_correct"]}


def bad(request_kwargs: dict, status: int, message: str, name: str):
    return pytest.param(request_kwargs, status, message, id=name)


BAD_REQUESTS = [
    bad({"files": {"image": ("notes.txt", b"hello", "text/plain")}}, 415, "content type is 'text/plain'", "text"),
    bad({"json": {"image": "x"}}, 415, "multipart/form-data", "json-body"),
    bad({"content": b"\x89PNG", "headers": {"content-type": "image/png"}}, 415, "multipart/form-data", "raw-body"),
    bad({"files": {"image": ("fake.png", b"not an image at all", "image/png")}}, 422, "not an image", "garbage"),
    bad({"files": {"image": ("empty.png", b"", "image/png")}}, 400, "empty", "empty"),
    bad({"data": {"top_k": "3"}}, 400, "exactly one of", "nothing"),
    bad({"data": {"test_id": "no/such.png"}}, 404, "no test image", "unknown-id"),
    bad({"data": {"test_id": "red/000.png"}}, 404, "no test image", "gallery-id-is-no-test-image"),
    bad({"data": {"test_id": "/etc/passwd"}}, 404, "no test image", "absolute-path"),
    bad({"data": {"test_id": "../../etc/passwd"}}, 404, "no test image", "relative-path"),
    bad({"files": {"image": ("huge.png", png_claiming(50_000, 50_000), "image/png")}}, 413, "too many pixels", "bomb"),
    bad({"files": {"image": ("big.png", png_claiming(8_000, 8_000), "image/png")}}, 413, "over the limit", "pixels"),
    bad({"files": {"image": ("q.png", b"x", "image/png")}, "data": {"top_k": "0"}}, 422, "top_k", "top-k-0"),
    bad({"files": {"image": ("q.png", b"x", "image/png")}, "data": {"top_k": "51"}}, 422, "top_k", "top-k-51"),
]


@pytest.mark.parametrize(("request_kwargs", "status", "message"), BAD_REQUESTS)
def test_bad_requests_get_a_clear_4xx(client, request_kwargs, status, message):
    response = client.post("/api/query", **request_kwargs)
    assert response.status_code == status, response.text
    assert message in json.dumps(response.json()["detail"])


def test_truncated_image_is_refused_and_the_server_keeps_serving(client, finished_run):
    root, _ = finished_run
    data = png_bytes(root / "data/tiny/blue/000.png")
    response = upload(client, data[: len(data) // 2])
    assert response.status_code == 422 and "cannot be" in response.json()["detail"]
    assert upload(client, data).status_code == 200


def test_uploads_over_the_size_limit_get_413(served, finished_run):
    root, _ = finished_run
    good = png_bytes(root / "data/tiny/blue/000.png")
    with make_client(served, max_upload_bytes=100_000) as client:
        assert client.get("/api/model").json()["max_upload_bytes"] == 100_000
        for size in (100_001, 150_000, 1_000_000):  # caught after reading / by Content-Length
            response = upload(client, good + b"\0" * (size - len(good)), name="padded.png")
            assert response.status_code == 413, (size, response.text)
            assert "larger than the limit of 97.7 KB" in response.json()["detail"]
        chunks = (b"x" * 65_536 for _ in range(8))  # streamed without a Content-Length
        response = client.post("/api/query", content=chunks,
                               headers={"content-type": "multipart/form-data; boundary=b"})  # fmt: skip
        assert response.status_code == 413 and "larger than the limit" in response.json()["detail"]
        assert upload(client, good + b"\0" * (99_000 - len(good))).status_code == 200


def test_the_pixel_limit_is_configurable(served, finished_run):
    root, _ = finished_run
    with make_client(served, max_pixels=32 * 32 - 1) as client:
        response = upload(client, png_bytes(root / "data/tiny/blue/000.png"))
        assert response.status_code == 413 and "32x32 = 1,024 pixels" in response.json()["detail"]


def test_images_are_served_by_id_only(client, finished_run):
    root, _ = finished_run
    assert client.get("/api/images/blue/000.png").status_code == 200  # gallery
    test_id = client.get("/api/test-images").json()[0]["id"]
    assert client.get(f"/api/images/{test_id}").status_code == 200  # test image
    for attempt in [str(root / "data/tiny/blue/000.png"), "..%2F..%2Fdata%2Ftiny%2Fblue%2F000.png",
                    "%2e%2e/%2e%2e/etc/passwd", "%2Fetc%2Fpasswd", "blue/%2e%2e/blue/000.png", "nope"]:  # fmt: skip
        response = client.get(f"/api/images/{attempt}")
        assert response.status_code == 404, attempt
        assert response.headers["content-type"].startswith("application/json"), attempt
    for name in ["app.js", "style.css"]:
        assert client.get(f"/static/{name}").status_code == 200
    for attempt in ["..%2Fserve.py", "serve.py", "..%2F__init__.py", "index.html%00.js"]:
        assert client.get(f"/static/{attempt}").status_code == 404, attempt


def test_the_page_and_the_openapi_schema(client):
    page = client.get("/")
    assert page.status_code == 200 and "default-src 'self'" in page.headers["content-security-policy"]
    for anchor in ['id="drop-zone"', 'id="file-input"', 'id="test-select"', 'id="results-clustered"',
                   'id="results-class"', 'id="model-info"', 'src="/static/app.js"']:  # fmt: skip
        assert anchor in page.text, anchor
    assert "http" not in page.text.replace("http-equiv", "")  # no CDN assets
    schema = client.get("/openapi.json").json()
    assert {"/api/query", "/api/model", "/api/images/{image_id}", "/api/test-images"} <= set(schema["paths"])
    form = schema["paths"]["/api/query"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    body = schema["components"]["schemas"][form["$ref"].rsplit("/", 1)[1]] if "$ref" in form else form
    assert {"image", "test_id", "top_k"} <= set(body["properties"])
    assert {"413", "415", "422"} <= set(schema["paths"]["/api/query"]["post"]["responses"])


def test_concurrent_requests_get_the_same_answers_as_sequential_ones(client, finished_run):
    root, _ = finished_run
    images = [png_bytes(root / f"data/tiny/{colour}/00{i}.png") for colour in ("red", "green", "blue") for i in (4, 5)]
    sequential = [without_timings(upload(client, data).json()) for data in images]
    with ThreadPoolExecutor(max_workers=6) as pool:
        responses = list(pool.map(lambda data: upload(client, data), images * 2))
    assert all(r.status_code == 200 for r in responses)
    assert [without_timings(r.json()) for r in responses] == sequential * 2
    assert client.get("/api/model").status_code == 200


def test_a_cell_copied_out_of_its_run_serves_its_gallery(finished_run, tmp_path):
    from fastapi.testclient import TestClient

    from cbir.serve.app import create_app
    from cbir.serve.settings import ServeSettings

    root, _ = finished_run
    copy = tmp_path / "model"
    copy.mkdir()
    for artifact in (root / CELL).iterdir():
        (copy / artifact.name).write_bytes(artifact.read_bytes())
    with TestClient(create_app(ServeSettings(model=copy))) as client:
        info = client.get("/api/model").json()
        assert (info["pca"], info["gallery_size"], info["test_images"]) == ("8", 24, 0)
        assert client.get("/api/test-images").json() == []
        assert client.get("/api/images/green/000.png").status_code == 200  # the gallery keeps absolute paths
        assert upload(client, png_bytes(root / "data/tiny/green/000.png")).json()["predicted_class"] == "green"


def test_cbir_serve_refuses_a_bad_model_folder_and_bad_settings(tmp_path):
    run = [sys.executable, "-m", "cbir.cli", "serve", "--model"]
    result = subprocess.run([*run, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "incomplete" in result.stderr and "projection.h5" in result.stderr
    result = subprocess.run([*run, str(tmp_path), "--top-k", "0"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "--top-k must be between 1 and 50" in result.stderr


def test_the_serve_benchmark_runs_against_a_real_server(finished_run):
    root, _ = finished_run
    result = subprocess.run(
        [sys.executable, "benchmarks/serve.py", "--model", str(root / CELL), "--requests", "5", "--warmup", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert "POST /api/query (uvicorn)" in result.stdout and "in-process (baseline)" in result.stdout
    line = json.loads((REPO / "benchmarks/results/serve.jsonl").read_text().splitlines()[-1])
    assert {row["path"] for row in line["rows"]} == {"POST /api/query (uvicorn)", "in-process (baseline)"}
    assert all(row["requests"] == 5 and row["median_ms"] > 0 for row in line["rows"])
    assert line["ratio_median"] > 0
