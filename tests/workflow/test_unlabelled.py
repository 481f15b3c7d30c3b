"""Collections without labels (a folder dataset with ``labels: none``): every image below the folder, k-means
over the whole collection, no classifier, evaluated by each search's recall against exact search."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cbir.data.manifest import UNLABELLED, read_manifest
from cbir.extraction.copies import load_copies
from cbir.fitting.chosen import Selection
from cbir.layout import CLASSIFIER, SELECTION
from cbir.pipeline.config import ConfigError, load_schema, validate_config
from cbir.pipeline.grid import cluster_counts
from cbir.search.cell import BEST, load_cell

from helpers import REPO, collection_config, make_image_folder, tiny_config

SCHEMA = load_schema(REPO / "config" / "schema.yaml")


@pytest.mark.workflow
def test_every_image_of_any_layout_is_one_collection(collection_run: Path):
    manifest = read_manifest(collection_run / "results/photos/manifest.csv")
    assert len(manifest) == 36 and set(manifest["label"]) == {0} and set(manifest["class_name"]) == {UNLABELLED}
    assert {"top_000.png", "green/000.png", "green/nested/000.png"} <= set(manifest["id"])
    assert "notes.txt" not in (collection_run / "results/photos/excluded.csv").read_text()  # not a photo
    ignored = pd.read_csv(collection_run / "results/photos/ignored.csv")
    assert ignored[["kind", "files"]].values.tolist() == [["other", 1]] and ignored["example"][0].endswith("notes.txt")


@pytest.mark.workflow
@pytest.mark.parametrize(("split", "n_gallery", "n_queries", "from_gallery"), [("all", 36, 36, True),
                                                                              ("80-20", 29, 7, False)])  # fmt: skip
def test_a_collection_cell_has_clusters_over_all_images_no_classifier_and_recall_metrics(
    collection_run: Path, split: str, n_gallery: int, n_queries: int, from_gallery: bool
):
    folder = collection_run / f"results/photos/lite/{split}/8"
    assert not (folder / CLASSIFIER).exists()
    metrics = json.loads((folder / "metrics_k6.json").read_text())  # k = round(sqrt(36 image files))
    assert metrics["labelled"] is False and metrics["n_clusters"] == 6
    assert (metrics["n_train"], metrics["n_test"], metrics["queries_from_gallery"]) == (
        n_gallery,
        n_queries,
        from_gallery,
    )
    assert metrics["recall_at_5_vs_exact_faiss_flat"] == pytest.approx(1.0)
    assert 0 < metrics["recall_at_5_vs_exact_clustered"] <= 1
    assert "accuracy" not in metrics and "map_global" not in metrics  # nothing measured against labels

    cell = load_cell(folder, 6, faiss_options={"enabled": True, "nlist": 2, "nprobe": 1})
    assert cell.labelled is False and cell.class_names == [UNLABELLED]
    assert len(cell.clusters.centroids) == 6 and len(cell.gallery_ids) == n_gallery


@pytest.mark.workflow
def test_a_collection_searches_the_label_free_space_that_changed_copies_of_its_photos_find_best(
    collection_run: Path,
):
    copies = collection_run / "results/photos/features/lite.copies.h5"
    features, originals = load_copies(copies)
    assert features.shape == (12, 1280) and len(set(originals)) == 12  # a dozen photos, each copied once
    folder = collection_run / "results/photos/lite/all/8"
    selection = Selection.load(folder / SELECTION)
    assert selection.validated and selection.validation["criterion"] == "changed copies"
    assert selection.validation["n_validation"] == 12 and set(selection.spaces) == {"raw", "l2", "whiten"}
    tried = {(c["space"], c["settings"].get("power"), c["rerank"]["method"]) for c in selection.candidates}
    assert {("whiten", 0.5, "none"), ("whiten", 0.25, "none"), ("l2", None, "dba")} <= tried
    scores = {space: selection.score(space) for space in selection.spaces}
    assert selection.chosen == max(scores, key=scores.get) and all(0 <= v <= 1 for v in scores.values())
    # the label-free spaces are fitted on the collection with their clusters, and the query loads the choice
    for space in ("l2", "whiten"):
        assert (folder / f"embedding_{space}.h5").is_file() and (folder / f"clusters_{space}_k6.h5").is_file()
    cell = load_cell(folder, 6, space=BEST)
    assert cell.space == selection.chosen and "a changed copy and of its photo agree" in cell.describe_setting()


@pytest.mark.workflow
def test_the_summary_reports_collections_apart_from_the_papers_tables(collection_run: Path):
    summary = collection_run / "results/summary"
    table = (summary / "collections_all.md").read_text()
    assert "photos / lite / PCA 8 / 6 clusters" in table and "recall@5 clustered (paper)" in table
    assert "No labelled dataset at split all" in (summary / "accuracy_all.md").read_text()
    assert "Collections without labels" in (summary / "html/tables_all.html").read_text()


def test_split_all_is_for_collections_and_clusters_for_collections_only(tmp_path: Path):
    schema = SCHEMA
    folder = make_image_folder(tmp_path / "photos", per_class=5)
    labelled = tiny_config(folder, splits=["all"])
    with pytest.raises(ConfigError, match=r"'grid.splits\[0\]': 'all' .* tiny has labels"):
        validate_config(labelled, schema)
    with_clusters = tiny_config(folder)
    with_clusters["datasets"]["tiny"]["clusters"] = 4
    with pytest.raises(ConfigError, match=r"'datasets.tiny.clusters': .* without labels"):
        validate_config(with_clusters, schema)
    fixed = validate_config(collection_config(folder, clusters=4), schema)
    assert cluster_counts(fixed, "photos") == [4]
    auto = validate_config(collection_config(folder), schema)
    assert cluster_counts(auto, "photos") == [4]  # round(sqrt(15 image files))


def test_labels_none_belongs_to_folder_datasets(tmp_path: Path):
    config = tiny_config(make_image_folder(tmp_path / "digits", per_class=2))
    config["datasets"]["tiny"] = {"source": "sklearn_digits", "labels": "none"}
    with pytest.raises(ConfigError, match=r"labels not used by source 'sklearn_digits'"):
        validate_config(config, SCHEMA)
