"""`cbir serve`'s relevance feedback (issue #29): marks by gallery id with any of the three queries (an upload, a
test image, a gallery image: "more like this"), through FastAPI's test client on the tiny trained model."""

from __future__ import annotations

import json

import pytest

from cbir.search.feedback import MAX_MARKS

pytestmark = pytest.mark.workflow
QUERY = "data/tiny/red/003.png"  # a red test image, uploaded
TOP_K = 4


@pytest.fixture(scope="module")
def client(served):
    from fastapi.testclient import TestClient

    from cbir.serve.app import create_app
    from cbir.serve.settings import ServeSettings

    app = create_app(ServeSettings(model=served.settings.model, reload_interval=0, top_k=TOP_K), served=served)
    with TestClient(app) as test_client:
        yield test_client


def ids(answer: dict, mode: str = "global") -> list[str]:
    return [tile["id"] for tile in answer["results"][mode]]


def upload(client, finished_run, **form):
    root, _ = finished_run
    image = {"image": ("q.png", (root / QUERY).read_bytes(), "image/png")}
    return client.post("/api/query", files=image, data=form)


def test_marks_change_the_ranking_and_the_answer_says_how(client, finished_run):
    plain = upload(client, finished_run).json()
    assert plain["feedback"] is None and "refine" not in plain["timings_ms"]
    first = ids(plain)
    assert len(first) == TOP_K
    # the user finds the three lower results relevant and the first one not
    relevant, irrelevant = first[1:], first[:1]
    response = upload(client, finished_run, relevant_ids=relevant, irrelevant_ids=irrelevant)
    assert response.status_code == 200, response.text
    refined = response.json()
    assert refined["feedback"] == {"method": "learned", "relevant": 3, "irrelevant": 1, "searched_class": "red"}
    assert ids(refined) != first
    # what the learned method does on this cell: the marked relevant images come first in the search over all
    # images and in the predicted class (the clustered search may look in another of the class's clusters)
    for mode in ("global", "class"):
        assert set(ids(refined, mode)[:3]) == set(relevant), mode
        assert irrelevant[0] not in ids(refined, mode)[:3], mode
    assert {"decode", "forward", "refine", "search_global", "total"} <= set(refined["timings_ms"])
    assert refined["query"]["source"] == "upload" and refined["prediction_correct"] is None
    # a new round re-sends the query with every mark so far: one more relevant keeps the others first too
    more = upload(client, finished_run, relevant_ids=[*relevant, irrelevant[0]]).json()
    assert more["feedback"]["relevant"] == 4 and set(ids(more)) == set(first)


def test_marks_work_with_a_test_image_as_the_query(client, served):
    test_id = next(i for i in served.test_ids if served.images[i].class_name == "blue")
    plain = client.post("/api/query", data={"test_id": test_id}).json()
    greens = [i for i in map(str, served.model.gallery_ids) if i.startswith("green/")][:3]
    response = client.post("/api/query", data={"test_id": test_id, "relevant_ids": greens})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["feedback"] == {"method": "learned", "relevant": 3, "irrelevant": 0, "searched_class": "green"}
    assert answer["query"]["source"] == "test" and answer["query"]["true_class"] == "blue"
    # three green marks turn a blue query's class search to green, and the tiles are judged against blue
    assert (
        {tile["class"] for tile in answer["results"]["class"]}
        == {"green"}
        != {tile["class"] for tile in plain["results"]["class"]}
    )
    assert all(tile["correct"] is False for tile in answer["results"]["class"])
    assert set(ids(answer, "class")[:3]) == set(greens)
    # over all images the query still counts (as relevant): a marked image first, not necessarily all three
    assert ids(answer)[0] in greens and ids(plain)[0].startswith("blue/")


def test_a_gallery_image_is_a_query_and_is_left_out_of_its_results(client, served):
    response = client.post("/api/query", data={"gallery_id": "red/000.png", "top_k": "5"})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["query"] == {"source": "gallery", "name": "red/000.png", "id": "red/000.png", "true_class": "red",
                               "width": None, "height": None, "preview": None}  # fmt: skip
    assert answer["feedback"] is None  # "more like this" without marks
    for mode in ("clustered", "class", "global"):
        assert "red/000.png" not in ids(answer, mode) and ids(answer, mode), mode
    assert len(ids(answer)) == 5 and ids(answer, "class") == ids(answer)
    assert all(tile["class"] == "red" and tile["correct"] for tile in answer["results"]["global"])
    assert answer["predicted_class"] == "red" and answer["prediction_correct"] is True
    assert {"decode", "preprocess", "forward"}.isdisjoint(answer["timings_ms"])  # no image is read
    assert {"project_predict", "refine", "search_global", "total"} <= set(answer["timings_ms"])
    # its nearest gallery image, as a plain search of that image's own features finds it first after itself
    gallery = served.model.models.index.gallery
    row = list(map(str, served.model.gallery_ids)).index("red/000.png")
    distances = ((gallery - gallery[row]) ** 2).sum(axis=1)
    distances[row] = float("inf")
    assert ids(answer)[0] == str(served.model.gallery_ids[distances.argmin()])
    # with marks: green ones turn it green, itself still left out
    greens = ["green/000.png", "green/001.png"]
    marked = client.post("/api/query", data={"gallery_id": "red/000.png", "relevant_ids": greens}).json()
    assert marked["feedback"]["relevant"] == 2 and marked["feedback"]["searched_class"] == "green"
    assert set(greens) <= set(ids(marked, "class")) and "red/000.png" not in ids(marked)


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"relevant_ids": ["red/001.png", "no/such.png"]}, "relevant_ids: no gallery image with id 'no/such.png'"),
        ({"irrelevant_ids": ["blue/999.png", "../etc/passwd"]}, "'blue/999.png', '../etc/passwd'"),
        ({"relevant_ids": ["red/003.png"]}, "'red/003.png'"),  # a test image is no gallery image
    ],
    ids=["relevant", "irrelevant", "test-image"],
)
def test_unknown_ids_get_a_422_that_names_them(client, form, message):
    for query in ({"test_id": "red/003.png"}, {"gallery_id": "red/000.png"}):
        response = client.post("/api/query", data={**query, **form})
        assert response.status_code == 422, response.text
        assert message in response.json()["detail"]


def test_more_than_max_marks_get_a_422(client):
    many = {"relevant_ids": ["red/001.png"] * 120, "irrelevant_ids": ["blue/000.png"] * (MAX_MARKS - 119)}
    response = client.post("/api/query", data={"gallery_id": "red/000.png", **many})
    assert response.status_code == 422 and f"at most {MAX_MARKS}" in response.json()["detail"]
    response = client.post("/api/query", data={"gallery_id": "red/000.png", "relevant_ids": ["red/001.png"] * 201})
    assert response.status_code == 422 and "relevant_ids" in response.json()["detail"]
    many = {"relevant_ids": ["red/001.png"] * 100, "irrelevant_ids": ["blue/000.png"] * (MAX_MARKS - 100)}
    assert client.post("/api/query", data={"gallery_id": "red/000.png", **many}).status_code == 200


def test_exactly_one_query_and_known_images_only(client, finished_run):
    root, _ = finished_run
    image = {"image": ("q.png", (root / QUERY).read_bytes(), "image/png")}
    for files, form in [
        (None, {"relevant_ids": ["red/001.png"]}),  # marks alone are no query
        (None, {"test_id": "red/003.png", "gallery_id": "red/000.png"}),
        (image, {"gallery_id": "red/000.png"}),
        (image, {"test_id": "red/003.png", "gallery_id": "red/000.png"}),
    ]:
        response = client.post("/api/query", files=files, data=form)
        assert response.status_code == 400, (form, response.text)
        assert "exactly one of" in response.json()["detail"] and "'gallery_id'" in response.json()["detail"]
    for gallery_id in ("no/such.png", "red/003.png", "../../etc/passwd"):  # red/003.png is a test image
        response = client.post("/api/query", data={"gallery_id": gallery_id})
        assert response.status_code == 404 and f"no gallery image with id '{gallery_id}'" in response.text


def test_the_schema_documents_the_feedback(client):
    schema = client.get("/openapi.json").json()
    operation = schema["paths"]["/api/query"]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    body = schema["components"]["schemas"][form["$ref"].rsplit("/", 1)[1]]
    assert {"image", "test_id", "gallery_id", "relevant_ids", "irrelevant_ids", "top_k"} <= set(body["properties"])
    marks = body["properties"]["relevant_ids"]["anyOf"][0]
    assert marks["type"] == "array" and marks["maxItems"] == MAX_MARKS
    assert "repeat" in body["properties"]["relevant_ids"]["description"]
    assert "repeated" in operation["description"] and str(MAX_MARKS) in operation["description"]
    components = schema["components"]["schemas"]
    assert components["QueryInfo"]["properties"]["source"]["enum"] == ["upload", "test", "gallery"]
    assert "feedback" in components["QueryResponse"]["properties"]
    assert "feedback" in components["CollectionQueryResponse"]["properties"]
    assert set(components["FeedbackInfo"]["properties"]) == {"method", "relevant", "irrelevant", "searched_class"}
    page = client.get("/").text
    assert 'id="refine"' in page and 'id="start-over"' in page and 'id="round"' in page
    assert "<script>" not in page  # the page's script is a file: the CSP allows no inline script
    info = client.get("/api/model").json()
    assert info["max_marks"] == MAX_MARKS and info["feedback_method"] == "learned"
    assert json.dumps(components).count("refine") >= 1  # the timings name the step
