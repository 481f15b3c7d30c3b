"""`cbir query` and `cbir serve` on a collection without labels: no predicted class, no right/wrong or
"no good match" marks, no class search; the query's nearest clusters instead."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from cbir.search.cell import load_cell

from helpers import run_cbir

pytestmark = pytest.mark.workflow
ALL = "results/photos/lite/all/8"  # every image is in the gallery: a query finds itself
HELD_OUT = "results/photos/lite/80-20/8"  # 7 test images outside the gallery
QUERY = "data/photos/green/nested/004.png"
# the searches of the paper's space, as every collection has it (the space its changed copies chose, l2 or
# whiten: tests/workflow/test_unlabelled.py)
RAW = ("--space", "raw")
RESULT_KEYS = {"rank", "id", "path", "cluster", "distance", "similarity"}


@pytest.fixture(scope="module")
def collection(collection_run: Path) -> Path:
    return collection_run


def cluster_sizes(root: Path, cell: str) -> np.ndarray:
    return np.bincount(load_cell(root / cell).clusters.assignments)


def test_query_json_names_the_nearest_clusters_and_no_class(collection: Path, tmp_path: Path):
    montage = ("--montage", str(tmp_path / "m.png"))
    result = run_cbir("query", QUERY, "--model", ALL, *RAW, "--json", "--top-k", "4", *montage, cwd=collection)
    assert result.returncode == 0, result.stderr
    [answer] = json.loads(result.stdout)
    assert set(answer) == {"query", "space", "similarity", "no_match", "nearest_clusters", "results", "feedback"}
    assert answer["feedback"] is None  # no marks
    # no calibration without labels: nothing is marked, and the answer says why
    assert answer["no_match"]["distance"] is None and "without labels" in answer["no_match"]["source"]
    assert answer["similarity"] is None  # raw Euclidean space: the only score would be the calibrated one

    nearest = answer["nearest_clusters"]
    assert len(nearest) == 3 and all(set(c) == {"cluster", "distance", "size"} for c in nearest)
    distances = [c["distance"] for c in nearest]
    assert distances == sorted(distances) and len({c["cluster"] for c in nearest}) == 3
    sizes = cluster_sizes(collection, ALL)
    assert [c["size"] for c in nearest] == [sizes[c["cluster"]] for c in nearest]

    results = answer["results"]
    assert set(results) == {"clustered", "global"}  # the class search is the global one: not shown
    assert all(set(r) == RESULT_KEYS for rows in results.values() for r in rows)
    assert results["global"][0]["id"] == "green/nested/004.png"
    assert results["global"][0]["distance"] == pytest.approx(0, abs=1e-3)
    # the clustered search probed the nearest centroid: every result is in that cluster
    assert {r["cluster"] for r in results["clustered"]} == {nearest[0]["cluster"]}
    assert len(results["clustered"]) == min(4, nearest[0]["size"])
    assert results["global"][0]["cluster"] == nearest[0]["cluster"]  # k-means puts an image with its nearest centroid
    assert (tmp_path / "m.png").stat().st_size > 1000


def test_query_table_has_no_class_or_marks_and_titles_the_clustered_search(collection: Path):
    result = run_cbir("query", QUERY, "data/photos/top_003.png", "--model", HELD_OUT, *RAW, "--top-k", "3",
                      cwd=collection)  # fmt: skip
    assert result.returncode == 0, result.stderr
    table = result.stdout
    assert table.count("query: ") == 2 and table.count("  nearest clusters: ") == 2
    assert "predicted class" not in table and "(no good match)" not in table
    assert "clustered (nearest cluster only):" in table and "global (all images):" in table
    assert "class:" not in table  # no class search
    header = next(line for line in table.splitlines() if "rank" in line)
    assert header.split() == ["rank", "distance", "cluster", "path"]  # no similarity without a calibration


def test_the_class_search_alone_is_refused_with_a_message(collection: Path):
    result = run_cbir("query", QUERY, "--model", ALL, "--mode", "class", cwd=collection)
    assert result.returncode == 2 and "has no class search" in result.stderr


def test_a_similarity_that_needs_no_calibration_is_kept(collection: Path):
    from cbir.io import load_features
    from cbir.search.query import search_features

    cell = load_cell(collection / ALL, metric="cosine")
    queries = load_features(collection / "results/photos/features/lite.h5", ["top_001.png", "green/002.png"])
    answers = search_features(cell, queries.features, top_k=3)
    for answer in answers:
        assert answer["similarity"] == "cosine" and answer["no_match"]["distance"] is None
        for r in (r for rows in answer["results"].values() for r in rows):
            assert r["similarity"] == pytest.approx(1 - r["distance"])
        nearest = [c["distance"] for c in answer["nearest_clusters"]]
        assert nearest == sorted(nearest) and all(0 <= d <= 2 for d in nearest)


@pytest.fixture(scope="module")
def client(collection: Path):
    from fastapi.testclient import TestClient

    from cbir.serve.app import create_app
    from cbir.serve.model import ServedModel
    from cbir.serve.settings import ServeSettings

    settings = ServeSettings(model=collection / HELD_OUT, reload_interval=0, space="raw")
    with TestClient(create_app(settings, served=ServedModel.load(settings))) as test_client:
        yield test_client


def test_serve_describes_a_collection_without_labels(client):
    info = client.get("/api/model").json()
    assert info["labelled"] is False and (info["dataset"], info["k"]) == ("photos", 6)
    assert info["modes"] == {"clustered": "nearest cluster", "global": "all images"}
    assert set(info["metrics"]) == {"recall_at_5_vs_exact_clustered", "recall_at_5_vs_exact_faiss_flat",
                                    "recall_at_5_vs_exact_faiss_ivf"}  # fmt: skip
    assert info["metrics"]["recall_at_5_vs_exact_faiss_flat"] == pytest.approx(1.0)
    test_images = client.get("/api/test-images").json()
    assert len(test_images) == info["test_images"] == 7 and {t["class"] for t in test_images} == {None}


def test_serve_answers_with_the_nearest_clusters_and_without_class_or_marks(client, collection: Path):
    from cbir.search.query import query_images

    served = client.app.state.served
    query = collection / "data/photos/top_003.png"
    response = client.post("/api/query", files={"image": ("q.png", query.read_bytes(), "image/png")},
                           data={"top_k": "3"})  # fmt: skip
    assert response.status_code == 200, response.text
    answer = response.json()
    assert set(answer) == {"query", "top_k", "similarity", "no_match", "nearest_clusters", "results", "timings_ms",
                           "feedback"}  # fmt: skip
    assert answer["no_match"]["distance"] is None and "search_class" not in answer["timings_ms"]
    tiles = [tile for tiles in answer["results"].values() for tile in tiles]
    assert set(answer["results"]) == {"clustered", "global"}
    assert all(set(tile) == {"rank", "id", "cluster", "distance", "similarity", "thumbnail"} for tile in tiles)
    # the same answer as cbir query's
    [expected] = [found.to_json() for found in query_images(served.model, [query], top_k=3, embedder=served.embedder)]
    for got, want in zip(answer["nearest_clusters"], expected["nearest_clusters"], strict=True):
        assert (got["cluster"], got["size"]) == (want["cluster"], want["size"])
        assert got["distance"] == pytest.approx(want["distance"], rel=1e-4)
    for mode, rows in answer["results"].items():
        assert [t["id"] for t in rows] == [r["id"] for r in expected["results"][mode]], mode
        assert [t["cluster"] for t in rows] == [r["cluster"] for r in expected["results"][mode]], mode
    distances = [c["distance"] for c in answer["nearest_clusters"]]
    assert distances == sorted(distances)
    assert client.get(tiles[0]["thumbnail"]).status_code == 200


def test_a_test_image_of_a_collection_has_no_class_to_judge_by(client):
    test_id = client.get("/api/test-images").json()[0]["id"]
    answer = client.post("/api/query", data={"test_id": test_id, "top_k": "2"}).json()
    assert answer["query"]["true_class"] is None and answer["query"]["id"] == test_id
    assert "prediction_correct" not in answer and "predicted_class" not in answer
    assert all("correct" not in tile for tiles in answer["results"].values() for tile in tiles)
    assert {t["cluster"] for t in answer["results"]["clustered"]} == {answer["nearest_clusters"][0]["cluster"]}


def test_more_like_this_and_marks_in_a_collection(client):
    """Without labels there is no class to search: the marks move the query and its cluster."""
    served = client.app.state.served
    gallery = [str(image_id) for image_id in served.model.gallery_ids]
    query = next(i for i in gallery if i.startswith("green/"))
    plain = client.post("/api/query", data={"gallery_id": query, "top_k": "4"})
    assert plain.status_code == 200, plain.text
    answer = plain.json()
    assert answer["query"]["source"] == "gallery" and answer["query"]["true_class"] is None
    assert query not in {tile["id"] for tiles in answer["results"].values() for tile in tiles}
    relevant = [i for i in gallery if i.startswith("top_")][:3]  # the red photos at the top of the collection
    marked = client.post("/api/query", data={"gallery_id": query, "top_k": "4", "relevant_ids": relevant})
    assert marked.status_code == 200, marked.text
    refined = marked.json()
    assert refined["feedback"] == {"method": "learned", "relevant": 3, "irrelevant": 0, "searched_class": None}
    # the marks turn a green photo's search over all images to the red ones (which of them come first is the
    # method's: in this raw space the query still counts, so the marked three need not lead)
    assert not any(tile["id"].startswith("top_") for tile in answer["results"]["global"])
    assert all(tile["id"].startswith("top_") for tile in refined["results"]["global"])
    unknown = client.post("/api/query", data={"gallery_id": query, "irrelevant_ids": ["nope.png"]})
    assert unknown.status_code == 422 and "'nope.png'" in unknown.json()["detail"]


def test_the_schema_documents_both_answers(client):
    schema = client.get("/openapi.json").json()
    answer = schema["paths"]["/api/query"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert {ref["$ref"].rsplit("/", 1)[1] for ref in answer["oneOf"]} == {"QueryResponse", "CollectionQueryResponse"}
    assert "labelled" in schema["components"]["schemas"]["ModelInfo"]["required"]


def test_the_page_shows_the_nearest_clusters_and_no_class_or_marks(browser, collection: Path):
    from cbir.serve.app import create_app
    from cbir.serve.run import serve_in_thread
    from cbir.serve.settings import ServeSettings

    app = create_app(ServeSettings(model=collection / HELD_OUT, reload_interval=0, space="raw"))
    with serve_in_thread(app, "127.0.0.1") as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        problems: list[str] = []
        page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
        page.goto(url + "/")
        page.wait_for_selector("body[data-state='ready']", timeout=60_000)
        assert "k (clusters)" in page.inner_text("#model-panel") and "recall@5" in page.inner_text("#model-metrics")
        page.click("#test-search")
        page.wait_for_selector("body[data-state='done'], body[data-state='error']", timeout=60_000)
        assert page.get_attribute("body", "data-state") == "done", page.inner_text("#error")
        assert page.is_hidden('.column[data-mode="class"]')
        assert page.inner_text('.column[data-mode="clustered"] h3') == "Nearest cluster"
        assert page.inner_text("#prediction").startswith("nearest clusters")
        assert page.locator("#prediction .nearest-cluster").count() == 3 and page.locator(".predicted").count() == 0
        assert page.locator(".marker, .verdict, .tile.right, .tile.wrong").count() == 0
        labels = page.eval_on_selector_all("#results-clustered .tile .class", "spans => spans.map(s => s.textContent)")
        nearest = page.get_attribute("#prediction .nearest-cluster", "data-cluster")
        assert labels and set(labels) == {f"cluster {nearest}"}
        assert not problems, problems
        page.close()


def test_the_montage_titles_the_clustered_row_as_the_nearest_cluster(collection: Path, tmp_path: Path, monkeypatch):
    from cbir import cli
    from cbir.report import montage

    drawn: list[dict[str, str]] = []
    monkeypatch.setattr(montage, "draw_montage", lambda answers, path, titles: drawn.append(titles))
    monkeypatch.chdir(collection)
    assert cli.main(["query", QUERY, "--model", ALL, "--montage", str(tmp_path / "m.png")]) == 0
    assert drawn[0]["clustered"] == "nearest cluster" and drawn[0]["global"] == "all images"
