"""The public API (cbir.api) on the session's finished run: the same answers as `cbir query --json`, from a path,
a PIL image or an array, and clear errors for what it cannot open or read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cbir.api import ModelFolderError, QueryError, find_cell, open_index
from cbir.fitting.chosen import Selection, SpaceChoice
from cbir.layout import PROJECTION, SELECTION

from helpers import run_cbir

CELL = "results/tiny/lite/80-20/8"


@pytest.fixture(scope="module")
def index(finished_run):
    root, _ = finished_run
    return open_index(root / CELL)


def _without_query(answer: dict) -> dict:
    return {key: value for key, value in answer.items() if key != "query"}


def test_a_path_gets_the_answer_of_cbir_query_json(finished_run, index):
    root, _ = finished_run
    photo = root / "data" / "tiny" / "red" / "003.png"
    cli = run_cbir("query", str(photo), "--model", CELL, "--json", cwd=root)
    assert cli.returncode == 0, cli.stderr
    (expected,) = json.loads(cli.stdout)
    assert json.loads(json.dumps(index.search(photo))) == expected
    assert expected["results"]["global"] and expected["query"] == str(photo)


def test_a_pil_image_and_an_array_get_the_same_answer_as_the_file(finished_run, index):
    root, _ = finished_run
    photo = root / "data" / "tiny" / "green" / "005.png"
    from_file = index.search(photo, top_k=3)
    with Image.open(photo) as image:
        from_pil = index.search(image, top_k=3)
        pixels = np.asarray(image.convert("RGB"))
    assert from_pil["query"] == "<image>" and _without_query(from_pil) == _without_query(from_file)
    assert _without_query(index.search(pixels, top_k=3)) == _without_query(from_file)
    # floats in 0..1 are pixels too
    as_floats = index.search(pixels.astype(np.float32) / 255.0, top_k=3, name="floats")
    assert as_floats["query"] == "floats"
    assert [r["id"] for r in as_floats["results"]["global"]] == [r["id"] for r in from_file["results"]["global"]]
    many = index.search_many([photo, pixels], top_k=3, modes=("global",))
    assert [list(a["results"]) for a in many] == [["global"], ["global"]]


def test_what_the_index_is(index):
    assert index.labelled and index.class_names == ["blue", "green", "red"]
    assert index.size == 24 and index.folder.name == "8"


def test_a_folder_with_several_cells_names_them(finished_run):
    root, _ = finished_run
    with pytest.raises(ModelFolderError, match="holds 3 grid cells") as error:
        open_index(root / "results" / "tiny")
    assert str(root / CELL) in str(error.value)
    with pytest.raises(ModelFolderError, match="does not exist"):
        open_index(root / "nowhere")


def test_an_unreadable_query_is_a_query_error(index, tmp_path: Path):
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(QueryError, match=r"notes\.png"):
        index.search(text)
    with pytest.raises(QueryError, match="height x width"):
        index.search(np.zeros(5))
    with pytest.raises(QueryError, match="top_k"):
        index.search(text, top_k=0)
    with pytest.raises(QueryError, match="unknown search mode"):
        index.search(text, modes=("nearest",))


def test_a_folder_opens_its_only_cell_or_its_only_cell_of_every_image(tmp_path: Path):
    def cell(path: str) -> Path:
        (tmp_path / path).mkdir(parents=True)
        (tmp_path / path / PROJECTION).touch()
        return tmp_path / path

    measured = cell("results/trip/lite/80-20/original")
    assert find_cell(tmp_path) == measured and find_cell(tmp_path / "results" / "trip") == measured
    searchable = cell("results/trip/lite/all/original")  # cbir index on a labelled folder
    assert find_cell(tmp_path) == searchable and find_cell(measured) == measured
    # one searchable cell per PCA size: the one whose validated choice scored highest (a tie: the smaller size)
    smaller = cell("results/trip/lite/all/100")
    assert find_cell(tmp_path) == smaller
    for folder, figure in ((smaller, 0.91), (searchable, 0.95)):
        Selection("lda", {"lda": SpaceChoice(figures={"map_global": figure})}, {"n_validation": 20}).save(
            folder / SELECTION
        )
    assert find_cell(tmp_path) == searchable and find_cell(tmp_path / "results" / "trip") == searchable
    cell("results/other/lite/all/100")
    with pytest.raises(ModelFolderError, match="holds 4 grid cells"):
        find_cell(tmp_path)


def test_marks_and_more_like_this_from_a_program(finished_run, index):
    from cbir.api import UnknownIdsError

    root, _ = finished_run
    photo = root / "data" / "tiny" / "red" / "003.png"
    first = [r["id"] for r in index.search(photo, top_k=4)["results"]["global"]]
    refined = index.search(photo, top_k=4, relevant_ids=first[1:], irrelevant_ids=first[:1])
    assert refined["feedback"] == {"method": "learned", "relevant": 3, "irrelevant": 1, "searched_class": "red"}
    assert refined["query"] == str(photo) and set(r["id"] for r in refined["results"]["global"][:3]) == set(first[1:])
    cli = run_cbir("query", str(photo), "--model", CELL, "--json", "--top-k", "4", "--relevant", ",".join(first[1:]),
                   "--irrelevant", first[0], cwd=root)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    assert json.loads(json.dumps(refined)) == json.loads(cli.stdout)[0]  # the answer of cbir query
    similar = index.more_like_this("red/000.png", top_k=3)
    assert similar["query"] == "red/000.png" and similar["feedback"] is None
    assert "red/000.png" not in [r["id"] for r in similar["results"]["global"]]
    assert similar == json.loads(run_cbir("query", "--id", "red/000.png", "--model", CELL, "--json", "--top-k", "3",
                                          cwd=root).stdout)[0]  # fmt: skip
    with pytest.raises(UnknownIdsError, match=r"relevant_ids: no gallery image with id 'nope\.png'"):
        index.search(photo, relevant_ids=["red/001.png", "nope.png"])
    with pytest.raises(UnknownIdsError, match=r"gallery_id: no gallery image with id 'red/003\.png'"):
        index.more_like_this("red/003.png")  # a test image
    with pytest.raises(QueryError, match="lists of ids"):
        index.search(photo, relevant_ids="red/001.png")
    with pytest.raises(QueryError, match="at most 200"):
        index.more_like_this("red/000.png", relevant_ids=["red/001.png"] * 201)
