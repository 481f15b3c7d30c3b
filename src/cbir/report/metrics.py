"""The run's metrics gathered: one row per grid cell (and embedding space), and the Summary made of them."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from cbir.report import paper
from cbir.search.index import MODE_TITLES

KEY_COLUMNS = ["dataset", "backbone", "split", "pca", "k"]
SPACE_COLUMNS = ["dataset", "backbone", "split", "pca", "k", "space"]


def pca_key(value: Any) -> float:
    return float("inf") if str(value) == "original" else float(value)


def pca_sort_key(values: pd.Series) -> pd.Series:
    """Numeric PCA sizes ascending, 'original' last."""
    return values.map(pca_key)


def gather_metrics(paths: Iterable[str | Path]) -> pd.DataFrame:
    rows = [json.loads(Path(p).read_text()) for p in paths]
    frame = pd.DataFrame(rows)
    frame["pca"] = frame["pca"].astype(str)
    leading = [c for c in KEY_COLUMNS if c in frame.columns]
    frame = frame[leading + [c for c in frame.columns if c not in leading]]
    return frame.sort_values(leading, key=lambda s: pca_sort_key(s) if s.name == "pca" else s).reset_index(drop=True)


def column_label(frame: pd.DataFrame) -> pd.Series:
    """Column heading per row: the dataset, qualified by backbone and k where the grid varies them."""
    label = frame["dataset"].astype(str)
    if frame["backbone"].nunique() > 1:
        label = label + "/" + frame["backbone"].astype(str)
    if frame["k"].nunique() > 1:
        label = label + "/k" + frame["k"].astype(str)
    return label


def paper_table(frame: pd.DataFrame, split: str, value: str) -> pd.DataFrame:
    """Rows PCA size, columns dataset: the layout of the paper's tables."""
    subset = frame[frame["split"] == split].assign(column=lambda f: column_label(f))
    table = subset.pivot_table(index="pca", columns="column", values=value, aggfunc="first")
    table = table.sort_index(key=pca_sort_key)
    table.index.name = "PCA"
    table.columns.name = None
    return table


def by_label(frame: pd.DataFrame, split: str) -> Iterable[tuple[str, pd.DataFrame]]:
    """Each dataset's (dataset/backbone/k's) cells of one split, indexed by PCA size in order."""
    subset = frame[frame["split"] == split]
    labels = column_label(subset)
    for label in dict.fromkeys(labels):
        rows = subset[labels == label].set_index("pca")
        rows = rows.sort_index(key=pca_sort_key)
        rows.index.name = "PCA"
        yield label, rows


def columns_table(rows: pd.DataFrame, columns: Mapping[str, str], scale: float = 1.0) -> pd.DataFrame:
    """The metrics columns present in ``rows``, renamed (heading -> metrics column) and scaled."""
    present = {title: column for title, column in columns.items() if column in rows.columns}
    return pd.DataFrame({title: rows[column].astype(float) * scale for title, column in present.items()})


INTERVAL = "_ci95"  # a figure's 95 % interval half-width, beside it in the metrics (cbir.evaluation.quality)


def columns_with_intervals(rows: pd.DataFrame, columns: Mapping[str, str], fmt: str = ".3f") -> pd.DataFrame:
    """:func:`columns_table` as text, each figure followed by ``± <half-width of its 95 % interval>`` where the
    metrics hold one (the figures of a bounded evaluation); missing figures stay missing."""
    table = columns_table(rows, columns)
    out = table.astype(object)
    for title, column in columns.items():
        if title not in table.columns:
            continue
        interval = rows[f"{column}{INTERVAL}"].astype(float) if f"{column}{INTERVAL}" in rows.columns else None
        for position, value in enumerate(table[title]):
            if pd.isna(value):
                out.iloc[position, out.columns.get_loc(title)] = None
                continue
            text = format(value, fmt)
            if interval is not None and pd.notna(interval.iloc[position]):
                text += f" ± {format(interval.iloc[position], fmt)}"
            out.iloc[position, out.columns.get_loc(title)] = text
    return out


def gather_spaces(frame: pd.DataFrame, space_paths: Iterable[str | Path]) -> pd.DataFrame:
    """The paper's cells (space raw) and the same cells in every further space, one row each."""
    raw = frame.assign(space=frame["space"].fillna("raw") if "space" in frame.columns else "raw")
    paths = list(space_paths)
    spaces = pd.concat([raw, gather_metrics(paths)], ignore_index=True) if paths else raw
    order = {name: i for i, name in enumerate(dict.fromkeys(["raw", *spaces["space"]]))}
    leading = [c for c in SPACE_COLUMNS if c in spaces.columns]
    spaces = with_chosen_rerank(spaces[leading + [c for c in spaces.columns if c not in leading]])
    return spaces.sort_values(
        leading, key=lambda s: pca_sort_key(s) if s.name == "pca" else s.map(order) if s.name == "space" else s
    ).reset_index(drop=True)


def with_chosen_rerank(spaces: pd.DataFrame) -> pd.DataFrame:
    """The global search's test figures with the re-ranking validation chose for each row's space: where one
    was chosen, ``map_global`` and ``precision_at_<k>_global`` take the re-ranked figures and the figures
    without re-ranking move to ``..._plain``; ``chosen`` marks the space each cell searches."""
    spaces = spaces.copy()
    for column in [c for c in spaces.columns if c.endswith("_global_reranked")]:
        plain = column.removesuffix("_reranked")
        if plain not in spaces.columns:
            continue
        reranked = spaces[column].notna()
        for suffix in ("", INTERVAL):  # the figure and its interval move together
            if f"{column}{suffix}" not in spaces.columns or f"{plain}{suffix}" not in spaces.columns:
                continue
            spaces[f"{plain}_plain{suffix}"] = spaces[f"{plain}{suffix}"]
            spaces.loc[reranked, f"{plain}{suffix}"] = spaces.loc[reranked, f"{column}{suffix}"]
            spaces = spaces.drop(columns=f"{column}{suffix}")
    if "chosen" in spaces.columns:
        spaces["chosen"] = spaces["chosen"].map(lambda value: value is True or str(value) == "True")
    return spaces


def split_collections(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cells of labelled datasets, and those of collections without labels (``labelled`` false)."""
    if "labelled" not in frame.columns:
        return frame, frame.iloc[:0]
    labelled = frame["labelled"].map(lambda value: value is not False and str(value) != "False")
    return frame[labelled].reset_index(drop=True), frame[~labelled].reset_index(drop=True)


def top_k_of(frame: pd.DataFrame) -> int:
    """The results per query of the run's cells (5 where the metrics do not say)."""
    return int(frame["top_k"].iloc[0]) if "top_k" in frame.columns else 5


def modes_in(frame: pd.DataFrame) -> list[str]:
    return [m for m in MODE_TITLES if f"time_search_{m}_median_us" in frame.columns]


@dataclass
class Summary:
    """What the summary's tables, plots and pages are made from."""

    frame: pd.DataFrame  # one row per grid cell (metrics.csv)
    settings: Mapping[str, Any] = field(default_factory=dict)  # cbir.report.paper.summary_settings(config)
    datasets: pd.DataFrame | None = None  # datasets.csv
    plots: dict[str, Path] = field(default_factory=dict)  # the plots written so far, for the pages to show
    spaces: pd.DataFrame | None = None  # every cell in every embedding space, raw included (spaces.csv)
    # cells of datasets without labels (labels: none): their recall against exact search, not the paper's tables
    collections: pd.DataFrame = field(default_factory=pd.DataFrame)

    @functools.cached_property
    def matched(self) -> dict[str, paper.Match]:
        return paper.matches(self.settings, self.frame["dataset"])

    @property
    def top_k(self) -> int:
        return top_k_of(self.frame)

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(self.frame["split"]))

    def modes(self) -> list[str]:
        return modes_in(self.frame)
