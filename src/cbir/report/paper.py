"""The paper's own figures, shipped with cbir, and a run set beside them.

The figures (``paper_data/``, copied from the project's ``../shared/paper/``, see its
``SOURCE.md``) are the paper's classification accuracy per dataset, split and PCA size, and its
time per query per step. A dataset of the run is compared with one of the paper's through the
config's ``paper.datasets`` mapping (our name -> the paper's); one that is not read by the paper
dataset's own source is a stand-in, and labelled so.

Everything here is computed from the run's metrics (one row per grid cell: the columns of
``results/summary/metrics.csv``) and its settings (:func:`summary_settings`): the comparison with
the paper's figures and the deviations from its set-up; :mod:`cbir.report.claims` judges its
claims. :mod:`cbir.report.tables`, :mod:`cbir.report.plots` and :mod:`cbir.report.pages` lay them out.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import pandas as pd

DATA_FOLDER = "paper_data"
FIGURE_FILES = ("accuracy.csv", "retrieval_time.csv", "README.md")
ANY_SPLIT = "any"  # CIFAR-10: one table for every split
KEYS = ["dataset", "backbone", "split", "pca", "k"]
# the paper's datasets, in its order, by the name of the cbir source that reads each one
TITLES = {
    "corel1k": "Corel-1K",
    "corel10k": "Corel-10K",
    "ghim10k": "GHIM-10K",
    "cifar10": "CIFAR-10",
    "voc2012": "Pascal VOC 2012",
}
PAPER_HARDWARE = "Nvidia GeForce 840M (laptop GPU)"
# the paper's time steps, and the medians of this run's metrics that measure the same step (µs, summed)
TIME_STEPS = {
    "prediction": ("prediction (CNN forward + projection + MLP)", ("time_extract_median_us", "time_predict_median_us")),
    "with_clustering": ("search with clustering", ("time_search_clustered_median_us",)),
    "without_clustering": ("search without clustering (predicted class)", ("time_search_class_median_us",)),
}
# the paper's method, as far as its tables and the project's notes (paper_data/README.md) say
PAPER_SETUP = {
    "arch": "vgg16",
    "backbone": "VGG16 pre-trained on ImageNet, last convolutional block",
    "weights": "ImageNet (VGG16's)",
    "pooling": "none",
    "image_size": 224,
    "k": 3,
    "top_k": 5,
}


def figure_file(name: str):
    """A file of the shipped copy of the paper's figures (an importlib.resources Traversable)."""
    return resources.files("cbir.report").joinpath(DATA_FOLDER, name)


@functools.cache
def paper_figures(name: str) -> pd.DataFrame:
    """``accuracy`` (dataset, split, pca, accuracy_percent) or ``retrieval_time`` (…, step, seconds)."""
    with figure_file(f"{name}.csv").open("r") as f:
        return pd.read_csv(f, dtype={"dataset": str, "split": str, "pca": str})


def paper_datasets() -> list[str]:
    """The datasets the paper reports on, in its order (the values allowed in ``paper.datasets``)."""
    names = set(paper_figures("accuracy")["dataset"])
    return [name for name in TITLES if name in names] + sorted(names - set(TITLES))


def title(paper_dataset: str) -> str:
    return TITLES.get(paper_dataset, paper_dataset)


def summary_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The settings the summary reads besides the metrics: the paper mapping, the datasets' sources, the
    seed and the model settings the deviations name (only these, so that other settings do not rerun it)."""
    return {
        "paper": dict(config.get("paper", {}).get("datasets", {})),
        "sources": {name: config["datasets"][name]["source"] for name in config["grid"]["datasets"]},
        "seed": config["seed"],
        "mlp": dict(config["mlp"]),
        "kmeans": {key: config["kmeans"][key] for key in ("n_init", "max_iter")},
        "top_k": config["retrieval"]["top_k"],
        "metric": config["retrieval"]["metric"],
    }


@dataclass(frozen=True)
class Match:
    """A dataset of the run compared with one of the paper's."""

    dataset: str
    paper: str
    stand_in: bool  # not read by the paper dataset's own source: another copy or another dataset

    @property
    def title(self) -> str:
        return title(self.paper)

    def describe(self) -> str:
        if self.stand_in:
            return f"{self.dataset}: a stand-in for the paper's {self.title}, not the paper's dataset"
        return f"{self.dataset}: the paper's {self.title}"

    def label(self, name: str) -> str:
        """A table heading for ``name`` (the dataset, qualified where the grid varies backbone or k)."""
        return f"{name} (stand-in for {self.title})" if self.stand_in else name


def matches(settings: Mapping[str, Any], datasets: Iterable[str]) -> dict[str, Match]:
    """The datasets of the run that are compared with the paper's, by the ``paper.datasets`` mapping.

    A dataset is the paper's own when its source is the paper dataset's (cbir's sources are named
    after the paper's datasets); any other mapped dataset is a stand-in.
    """
    mapping, sources = settings.get("paper", {}), settings.get("sources", {})
    return {
        name: Match(name, mapping[name], stand_in=sources.get(name) != mapping[name])
        for name in dict.fromkeys(datasets)
        if mapping.get(name)
    }


def _paper_lookup(figures: pd.DataFrame, value: str, by: list[str]) -> dict[tuple, float]:
    return {tuple(row[:-1]): float(row[-1]) for row in figures[[*by, value]].itertuples(index=False)}


def _paper_value(table: dict[tuple, float], dataset: str, split: str, *rest: str) -> float:
    """The paper's figure at a split, or in its one table for every split (CIFAR-10); NaN where it has none."""
    for paper_split in (split, ANY_SPLIT):
        if (dataset, paper_split, *rest) in table:
            return table[dataset, paper_split, *rest]
    return float("nan")


def _compared_rows(frame: pd.DataFrame, matched: Mapping[str, Match]) -> pd.DataFrame:
    rows = frame[frame["dataset"].isin(list(matched))]
    out = rows[KEYS].copy()
    out["pca"] = out["pca"].astype(str)
    out["paper_dataset"] = [matched[name].paper for name in rows["dataset"]]
    out["stand_in"] = [matched[name].stand_in for name in rows["dataset"]]
    return out


def accuracy_comparison(frame: pd.DataFrame, matched: Mapping[str, Match]) -> pd.DataFrame:
    """One row per grid cell of a compared dataset: the paper's accuracy (%) at that split and PCA size,
    ours, and the difference ours - paper (percentage points; NaN where the paper has no figure)."""
    table = _paper_lookup(paper_figures("accuracy"), "accuracy_percent", ["dataset", "split", "pca"])
    out = _compared_rows(frame, matched)
    out["paper"] = [
        _paper_value(table, p, s, c) for p, s, c in zip(out["paper_dataset"], out["split"], out["pca"], strict=True)
    ]
    out["ours"] = frame.loc[out.index, "accuracy"].astype(float) * 100
    out["difference"] = out["ours"] - out["paper"]
    return out.reset_index(drop=True)


def our_step_ms(frame: pd.DataFrame, step: str) -> pd.Series:
    """This run's time for one of the paper's steps, in ms (NaN where a part was not measured)."""
    columns = TIME_STEPS[step][1]
    parts = [frame[c] if c in frame.columns else pd.Series(np.nan, index=frame.index) for c in columns]
    return sum(parts[1:], parts[0]).astype(float) / 1e3


def time_comparison(frame: pd.DataFrame, matched: Mapping[str, Match]) -> pd.DataFrame:
    """One row per grid cell of a compared dataset and step: the paper's time per query (ms), ours
    (medians over the test queries) and the difference ours - paper."""
    table = _paper_lookup(paper_figures("retrieval_time"), "seconds", ["dataset", "split", "pca", "step"])
    base = _compared_rows(frame, matched)
    if base.empty:
        return pd.DataFrame(columns=[*base.columns, "step", "paper", "ours", "difference"])
    parts = []
    for step in TIME_STEPS:
        part = base.copy()
        part["step"] = step
        part["paper"] = [
            _paper_value(table, p, s, c, step) * 1e3
            for p, s, c in zip(part["paper_dataset"], part["split"], part["pca"], strict=True)
        ]
        part["ours"] = our_step_ms(frame.loc[base.index], step)
        part["difference"] = part["ours"] - part["paper"]
        parts.append(part)
    return pd.concat(parts, ignore_index=True)


# --- deviations from the paper's set-up -----------------------------------------------------------


def _first(rows: pd.DataFrame, column: str, default: Any = None) -> Any:
    if column not in rows.columns:
        return default
    values = rows[column].dropna()
    return values.iloc[0] if len(values) else default


def _same(condition: bool | None) -> str:
    return {True: "yes", False: "no", None: "not known"}[condition]


def deviations(frame: pd.DataFrame, settings: Mapping[str, Any], datasets: pd.DataFrame | None = None) -> pd.DataFrame:
    """The run's set-up beside the paper's: one row per aspect (``aspect``, ``paper``, ``ours``, ``same``).

    Backbone facts come from what the feature files recorded (the metrics' ``features_*`` columns),
    the hardware from what the timing steps recorded (``hardware_*``), the rest from the settings.
    """
    rows: list[tuple[str, str, str, str]] = []
    for backbone, cells in frame.groupby("backbone", sort=False):
        arch = _first(cells, "features_arch", "not recorded")
        weights = _first(cells, "features_weights", "not recorded")
        pooling = _first(cells, "features_pooling", "not recorded")
        size = _first(cells, "features_image_size")
        dim = _first(cells, "feature_dim")
        engine = " ".join(str(v) for v in (_first(cells, "features_engine"), _first(cells, "features_precision")) if v)
        engine = engine or "not recorded"
        name = f"backbone `{backbone}`"
        rows += [
            (name, PAPER_SETUP["backbone"], f"{arch}, {_first(cells, 'features_layer', 'layer not recorded')}",
             _same(arch == PAPER_SETUP["arch"])),
            (f"{name}: weights", PAPER_SETUP["weights"], str(weights),
             _same(arch == PAPER_SETUP["arch"] and weights == "IMAGENET1K_V1")),
            (f"{name}: image size", f"{PAPER_SETUP['image_size']} x {PAPER_SETUP['image_size']} px",
             f"{size} x {size} px" if size else "not recorded", _same(size == PAPER_SETUP["image_size"])),
            (f"{name}: pooling", PAPER_SETUP["pooling"], str(pooling), _same(pooling == PAPER_SETUP["pooling"])),
            (f"{name}: features", "25,088 values per image",
             f"{int(dim):,} values per image" if dim else "not recorded", _same(dim == 25088 if dim else None)),
            (f"{name}: engine and precision", "not stated", engine, "not known"),
        ]  # fmt: skip
    matched = matches(settings, frame["dataset"])
    sizes = {}
    if datasets is not None and "image_size" in datasets.columns:
        sizes = dict(zip(datasets["dataset"], datasets["image_size"], strict=True))
    for name in dict.fromkeys(frame["dataset"]):
        match = matched.get(name)
        ours = f"{name} (source {settings.get('sources', {}).get(name, '?')})"
        if name in sizes:
            ours += f", images {sizes[name]}"
        paper = match.title if match else "not in the paper"
        rows.append((f"dataset `{name}`", paper, ours, _same(not match.stand_in) if match else "no"))
    figures = paper_figures("accuracy")
    paper_splits = list(dict.fromkeys(s for s in figures["split"] if s != ANY_SPLIT))
    splits = list(dict.fromkeys(frame["split"]))
    rows.append(("splits", f"{', '.join(paper_splits)}; how they were drawn (stratified? seed?) not stated",
                 f"{', '.join(splits)}; stratified per class, seed {settings.get('seed')}",
                 "the ratios" if set(splits) == set(paper_splits) else "no"))  # fmt: skip
    paper_pca = sorted(set(figures["pca"]), key=lambda v: (v == "original", 0 if v == "original" else float(v)))
    pca = list(dict.fromkeys(frame["pca"].astype(str)))
    rows.append(("PCA sizes", ", ".join(paper_pca), f"{', '.join(pca)}; fitted on the training split",
                 _same(set(pca) == set(paper_pca))))  # fmt: skip
    ks = sorted({int(k) for k in frame["k"]})
    kmeans = settings.get("kmeans", {})
    rows.append(("intra-class k-means", f"k = {PAPER_SETUP['k']}",
                 f"k = {', '.join(map(str, ks))}; n_init {kmeans.get('n_init')}, max_iter {kmeans.get('max_iter')}",
                 _same(ks == [PAPER_SETUP["k"]])))  # fmt: skip
    mlp = settings.get("mlp", {})
    rows.append(("MLP", "settings not stated in the paper's tables",
                 f"scikit-learn MLPClassifier on standardised features: hidden layers {mlp.get('hidden_layers')}, "
                 f"ReLU, adam, alpha {mlp.get('alpha')}, learning rate {mlp.get('learning_rate')}, "
                 f"at most {mlp.get('max_iter')} iterations, seed {settings.get('seed')}", "not known"))  # fmt: skip
    top_k = settings.get("top_k")
    rows.append(("results per query", f"top-{PAPER_SETUP['top_k']}", f"top-{top_k}, {settings.get('metric')} distance",
                 _same(top_k == PAPER_SETUP["top_k"])))  # fmt: skip
    extract = _first(frame, "hardware_extract", "not recorded")
    search = _first(frame, "hardware_search", "not recorded")
    rows.append(("hardware of the timings", PAPER_HARDWARE,
                 f"CNN forward: {extract}; projection, MLP and search: {search}", "no"))  # fmt: skip
    return pd.DataFrame(rows, columns=["aspect", "paper", "ours", "same"])


def hardware_note(frame: pd.DataFrame) -> str:
    """Where the paper's and this run's times were measured."""
    extract = _first(frame, "hardware_extract", "not recorded")
    search = _first(frame, "hardware_search", "not recorded")
    return (
        f"The paper's times: {PAPER_HARDWARE}. Ours: the CNN forward on {extract}; projection, MLP and search "
        f"on {search}. Medians over the test queries, one query at a time."
    )
