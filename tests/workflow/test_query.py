"""`cbir query` on a trained tiny model, the montage, and `snakemake --report`."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from helpers import run_cbir, run_snakemake, write_config

pytestmark = pytest.mark.workflow
CELL = "results/tiny/lite/80-20/8"


def test_query_prints_the_predicted_class_and_ranked_results(finished_run, tmp_path: Path):
    root, _ = finished_run
    query = root / "data/tiny/red/000.png"
    result = run_cbir(
        "query", str(query), "--model", CELL, "--json", "--top-k", "3", "--montage", str(tmp_path / "m.png"), cwd=root
    )
    assert result.returncode == 0, result.stderr
    [answer] = json.loads(result.stdout)
    assert answer["query"] == str(query)
    assert answer["predicted_class"] == "red"
    assert set(answer["results"]) == {"clustered", "class", "global"}
    global_results = answer["results"]["global"]
    assert [r["rank"] for r in global_results] == [1, 2, 3]
    distances = [r["distance"] for r in global_results]
    assert distances == sorted(distances)
    assert all(r["class"] == "red" for r in answer["results"]["class"])
    assert 1 <= len(answer["results"]["clustered"]) <= 3
    assert (tmp_path / "m.png").stat().st_size > 1000


def test_query_accepts_folders_and_other_formats_and_prints_a_table(finished_run, tmp_path: Path):
    from PIL import Image

    root, _ = finished_run
    folder = tmp_path / "queries"
    folder.mkdir()
    Image.open(root / "data/tiny/blue/001.png").convert("RGB").save(folder / "blue.jpg", quality=90)
    Image.open(root / "data/tiny/green/001.png").save(folder / "green.webp")
    result = run_cbir("query", str(folder), "--model", CELL, "--mode", "clustered", cwd=root)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("query: ") == 2
    assert "predicted class: blue" in result.stdout and "predicted class: green" in result.stdout
    assert "clustered:" in result.stdout and "global:" not in result.stdout


def test_query_reports_an_unreadable_image_and_keeps_going(finished_run, tmp_path: Path):
    root, _ = finished_run
    (tmp_path / "notes.jpg").write_text("not an image")
    result = run_cbir("query", str(tmp_path / "notes.jpg"), str(root / "data/tiny/red/001.png"), "--model", CELL,
                  "--json", cwd=root)  # fmt: skip
    assert result.returncode == 1
    bad, good = json.loads(result.stdout)
    assert "cannot read" in bad["error"] and "notes.jpg" in bad["error"]
    assert good["predicted_class"] == "red"


def test_query_refuses_an_incomplete_model_folder(finished_run, tmp_path: Path):
    root, _ = finished_run
    incomplete = tmp_path / "model"
    incomplete.mkdir()
    (incomplete / "gallery.h5").write_bytes((root / CELL / "gallery.h5").read_bytes())
    result = run_cbir("query", str(root / "data/tiny/red/001.png"), "--model", str(incomplete), cwd=root)
    assert result.returncode == 2
    assert "incomplete" in result.stderr
    assert "projection.h5" in result.stderr and "classifier.h5" in result.stderr and "clusters_k" in result.stderr
    result = run_cbir("query", str(root / "data/tiny/red/001.png"), "--model", CELL, "--k", "7", cwd=root)
    assert result.returncode == 2 and "no clusters for k=7" in result.stderr


def test_summary_has_every_metric_table_plot_and_montage(finished_run):
    root, _ = finished_run
    summary = root / "results/summary"
    wide = (summary / "retrieval_quality_80-20.csv").read_text().splitlines()[0]  # for machines: every column
    for name in ["P@5 clustered", "P@10 global", "mAP class", "mAP@5 clustered", "recall@5 faiss_ivf"]:
        assert f"tiny: {name}" in wide, name
    quality = (summary / "retrieval_quality_80-20.md").read_text()  # for people: a table per metric
    for heading in ["### tiny", "#### precision@5", "#### precision@10", "#### mAP over the full ranking",
                    "#### mAP@5", "#### recall@5"]:  # fmt: skip
        assert heading in quality, heading
    plots = ["accuracy_vs_pca", "map_vs_pca", "latency_vs_pca", "recall_vs_speedup", "paper_accuracy_vs_pca",
             "feedback_rounds"]  # fmt: skip
    for plot in plots:
        assert (summary / f"{plot}.png").stat().st_size > 1000, plot
    assert (summary / "montages/tiny/lite.png").stat().st_size > 1000
    feedback = pd.read_csv(summary / "feedback.csv")  # the simulated user's rounds, per space and method
    assert set(feedback["method"]) == {"learned", "rocchio"} and set(feedback["ranking"]) == {"full", "residual"}
    assert set(feedback["round"]) == {0, 1, 2, 3}
    spaces = pd.read_csv(summary / "spaces.csv")
    # feedback.eval_spaces chosen: each cell's user refines in the paper's space and in the one validation chose
    cell = ["dataset", "backbone", "split", "pca", "k"]
    refined = feedback.groupby(cell)["space"].agg(set).to_dict()
    searched = spaces[spaces["chosen"]].set_index(cell)["space"].to_dict()
    assert refined and refined.keys() == searched.keys()
    assert all(refined[key] == {"raw", space} for key, space in searched.items()), (refined, searched)
    full = feedback[feedback["ranking"] == "full"]  # (the residual empties: the tiny gallery is all marked)
    by_round = full.groupby("round")["precision_at_10"].mean()
    assert by_round[3] > by_round[0]
    timing = (summary / "retrieval_time_80-20.md").read_text()
    assert "total with clustering" in timing and "search alone" in timing and "clustered (paper)" in timing


def test_report_builds(finished_run):
    root, config = finished_run
    result = run_snakemake(root, write_config(root / "report.yaml", config), "--report", "report.html")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    html = (root / "report.html").read_text(errors="replace")
    assert "montage" in html.lower() and "metrics.csv" in html


def test_a_gallery_from_an_older_version_is_refused_with_a_message(finished_run, tmp_path: Path):
    import shutil

    import h5py

    from cbir.search.cell import ModelFolderError, load_cell

    root, _ = finished_run
    old = tmp_path / "old"
    shutil.copytree(root / CELL, old)
    with h5py.File(old / "gallery.h5", "r+") as f:
        del f.attrs["class_names"]
    with pytest.raises(ModelFolderError, match="older version of cbir; rerun the workflow"):
        load_cell(old)


def test_a_damaged_artifact_is_refused_with_its_name(finished_run, tmp_path: Path):
    import shutil

    from cbir.search.cell import ModelFolderError, load_cell

    root, _ = finished_run
    damaged = tmp_path / "damaged"
    shutil.copytree(root / CELL, damaged)
    (damaged / "classifier.h5").write_bytes((damaged / "classifier.h5").read_bytes()[:300])  # truncated
    with pytest.raises(ModelFolderError, match=r"classifier\.h5' cannot be read as a cbir artifact"):
        load_cell(damaged)


def test_results_beyond_the_calibrated_distance_are_marked_no_good_match(finished_run, tmp_path: Path):
    import shutil

    from cbir.data.split import split_ids
    from cbir.io import load_features
    from cbir.layout import metrics_name
    from cbir.search.answer import FileAnswer, format_table
    from cbir.search.cell import load_cell
    from cbir.search.query import answer_features, search_features

    root, _ = finished_run
    queries = load_features(
        root / "results/tiny/features/lite.h5", split_ids(root / "results/tiny/splits/80-20.csv", "test")
    )
    for space in ("raw", "l2"):
        model = load_cell(root / CELL, 2, space=space, rerank=False)  # results in order of distance
        metrics = json.loads((root / CELL / metrics_name(2, space)).read_text())
        # the evaluation wrote the calibration, and the search uses it
        assert metrics["no_match_results_global"] == metrics["n_test"] * metrics["top_k"]
        answers = search_features(model, queries.features, top_k=5)
        threshold = metrics["no_match_distance_global"]
        assert answers[0]["no_match"]["distance"] == pytest.approx(threshold)
        assert "no_match_distance_global" in answers[0]["no_match"]["source"]
        assert answers[0]["similarity"] == ("relevance" if space == "raw" else "cosine")
        for answer in answers:
            for r in (r for results in answer["results"].values() for r in results):
                assert r["good_match"] == (r["distance"] <= threshold)
                if space == "l2":  # cosine of unit vectors
                    assert r["similarity"] == pytest.approx(1 - r["distance"] ** 2 / 2)
                else:
                    assert 0 <= r["similarity"] <= 1
        # a threshold between the results: the nearer ones are good matches, the farther ones are not
        distances = sorted(r["distance"] for r in answers[0]["results"]["global"])
        middle = (distances[1] + distances[2]) / 2
        calibration = {"distance": middle, "precision": 0.9, "recall": 0.8, "intercept": None, "slope": None,
                       "metric": "no_match_distance_global", "source": "a test"}  # fmt: skip
        [found] = answer_features(model, queries.features[:1], top_k=5, calibration=calibration)
        marks = [r["good_match"] for r in found.to_json()["results"]["global"]]
        assert marks == [True, True, False, False, False]
        table = format_table([FileAnswer(Path("q.png"), found)])
        assert table.count("(no good match)") >= 3 and "no good match beyond distance" in table
    # metrics from an older cbir (in a copy of the cell): nothing is marked, and the answer says why
    copy = shutil.copytree(root / CELL, tmp_path / "cell")
    older = {key: value for key, value in metrics.items() if not key.startswith(("no_match", "relevance_"))}
    (copy / metrics_name(2, "l2")).write_text(json.dumps(older))
    [answer] = search_features(load_cell(copy, 2, space="l2"), queries.features[:1], top_k=5)
    assert answer["no_match"]["distance"] is None and "older cbir" in answer["no_match"]["source"]
    assert all(r["good_match"] is None for results in answer["results"].values() for r in results)
    assert all(r["similarity"] is not None for r in answer["results"]["global"])  # the cosine needs no calibration


def test_query_by_gallery_id_and_with_marks(finished_run, tmp_path: Path):
    root, _ = finished_run
    # "more like this": a gallery image as the query, no photo given; itself left out of its results
    result = run_cbir("query", "--id", "red/000.png", "--model", CELL, "--json", "--top-k", "4",
                      "--montage", str(tmp_path / "m.png"), cwd=root)  # fmt: skip
    assert result.returncode == 0, result.stderr
    [answer] = json.loads(result.stdout)
    assert answer["query"] == "red/000.png" and answer["predicted_class"] == "red" and answer["feedback"] is None
    assert all("red/000.png" not in [r["id"] for r in results] for results in answer["results"].values())
    assert {r["class"] for r in answer["results"]["global"]} == {"red"} and len(answer["results"]["global"]) == 4
    assert (tmp_path / "m.png").stat().st_size > 1000
    # a photo with a round of marks: comma-separated and repeated; the ranking changes and says why
    photo = str(root / "data/tiny/red/003.png")
    plain = json.loads(run_cbir("query", photo, "--model", CELL, "--json", "--top-k", "4", cwd=root).stdout)[0]
    first = [r["id"] for r in plain["results"]["global"]]
    result = run_cbir("query", photo, "--model", CELL, "--json", "--top-k", "4", "--relevant", ",".join(first[1:3]),
                      "--relevant", first[3], "--irrelevant", first[0], cwd=root)  # fmt: skip
    assert result.returncode == 0, result.stderr
    [refined] = json.loads(result.stdout)
    assert refined["feedback"] == {"method": "learned", "relevant": 3, "irrelevant": 1, "searched_class": "red"}
    found = [r["id"] for r in refined["results"]["global"]]
    assert found != first and set(found[:3]) == set(first[1:])
    # marks with --id, as a table
    result = run_cbir("query", "--id", "red/000.png", "--relevant", "green/000.png,green/001.png", "--model", CELL,
                      "--mode", "class", cwd=root)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "feedback: learned, 2 relevant and 0 not relevant marked" in result.stdout
    assert "green/000.png" in result.stdout and "red/000.png\n" not in result.stdout.split("\n  class:\n")[1]


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--id", "no/such.png"], "--id: no gallery image with id 'no/such.png'"),
        (
            ["--id", "red/000.png", "--relevant", "red/001.png,nope.png"],
            "--relevant: no gallery image with id 'nope.png'",
        ),
        (
            ["PHOTO", "--irrelevant", "red/003.png"],
            "--irrelevant: no gallery image with id 'red/003.png'",
        ),  # a test image
        (["PHOTO", "--id", "red/000.png"], "give either query photos or --id"),
        ([], "give either query photos or --id"),
        (["--id", "red/000.png", "--relevant", ",".join(["red/001.png"] * 201)], "at most 200"),
        (["data/tiny/red", "--relevant", "red/001.png"], "refine one query"),
    ],
    ids=["unknown-id", "unknown-relevant", "test-image-irrelevant", "both", "neither", "too-many", "a-folder"],
)
def test_query_refuses_unknown_ids_in_one_line(finished_run, arguments, message):
    root, _ = finished_run
    arguments = [str(root / "data/tiny/red/003.png") if a == "PHOTO" else a for a in arguments]
    result = run_cbir("query", *arguments, "--model", CELL, cwd=root)
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if not line.startswith("cbir query: searching in")]
    assert errors == [f"cbir query: error: {errors[0].split('error: ', 1)[1]}"] and message in errors[0], errors
    assert "Traceback" not in result.stderr and not result.stdout
