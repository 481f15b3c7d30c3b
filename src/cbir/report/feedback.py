"""Relevance feedback in the summary: feedback.csv (one row per cell, space, method, round and ranking) and its plot.

The figures come from the evaluation's simulated user (:mod:`cbir.evaluation.feedback`), recorded in each
cell's metrics as ``feedback_<method>_round<r>_<ranking>_<figure>``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from cbir.report.figures import pyplot, save_figure
from cbir.report.metrics import Summary

KEY = re.compile(
    r"feedback_(?P<method>[a-z]+)_round(?P<round>\d+)_(?P<ranking>full|residual)_(?P<figure>precision_at_10|map)$"
)
CELL_COLUMNS = ("dataset", "backbone", "split", "pca", "k", "space", "chosen")
FIGURES = ("precision_at_10", "map")
INTERVAL = "_ci95"
PREFERRED_SPLIT = "80-20"


def feedback_table(spaces: pd.DataFrame | None) -> pd.DataFrame:
    """The long table of feedback.csv from spaces.csv's rows: cell, ``space``, ``chosen`` (the space the cell
    searches, as in spaces.csv), ``method``, ``round``, ``ranking`` (full or residual), each figure and its 95 %
    interval, and the queries refined."""
    columns = [*CELL_COLUMNS, "method", "round", "ranking", *(f + s for f in FIGURES for s in ("", INTERVAL)),
               "queries"]  # fmt: skip
    if spaces is None or spaces.empty:
        return pd.DataFrame(columns=columns)
    found = {}
    for column in spaces.columns:
        if match := KEY.match(column):
            found.setdefault((match["method"], int(match["round"]), match["ranking"]), {})[match["figure"]] = column
    rows = []
    for _, cell in spaces.iterrows():
        for (method, round_, ranking), figures in sorted(found.items()):
            values = {figure: cell.get(column) for figure, column in figures.items()}
            if all(pd.isna(value) for value in values.values()):
                continue  # a cell without the simulated user (no labels, or feedback.rounds 0)
            row = {name: cell.get(name) for name in CELL_COLUMNS}
            row.update(method=method, round=round_, ranking=ranking, queries=cell.get("feedback_queries"))
            for figure in FIGURES:
                row[figure] = values.get(figure)
                row[figure + INTERVAL] = cell.get(figures.get(figure, "") + INTERVAL) if figure in figures else None
            rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    if "chosen" in spaces.columns:
        table["chosen"] = table["chosen"].map(lambda value: value is True or str(value) == "True")
    return table


def shown_cells(table: pd.DataFrame, spaces: pd.DataFrame) -> pd.DataFrame:
    """Per dataset, the rows of the one cell the plot shows: at split 80-20 where there is one (else the first), in
    the space each cell searches (``chosen``; raw where none is marked), the PCA size whose choice scored best on
    validation (as ``cbir index`` picks its cell; the first without validation figures)."""
    shown = []
    marked = "chosen" in spaces.columns and spaces["chosen"].any()
    searched = spaces[spaces["chosen"]] if marked else spaces[spaces["space"] == "raw"]
    for dataset in dict.fromkeys(table["dataset"]):
        cells = searched[searched["dataset"] == dataset]
        split = PREFERRED_SPLIT if (cells["split"] == PREFERRED_SPLIT).any() else cells["split"].iloc[0]
        cells = cells[cells["split"] == split]
        if "validation_map_global" in cells.columns and cells["validation_map_global"].notna().any():
            cells = cells.sort_values("validation_map_global", ascending=False, kind="stable")
        best = cells.iloc[0]
        keys = ("dataset", "backbone", "split", "pca", "k", "space")
        chosen = pd.Series(True, index=table.index)
        for key in keys:
            chosen &= table[key].astype(str) == str(best[key])
        shown.append(table[chosen])
    return pd.concat(shown) if shown else table.iloc[:0]


def plot_feedback(summary: Summary, out_path: str | Path) -> None:
    """P@10 per round of feedback, each method on the full and the residual ranking, one panel per dataset."""
    table = feedback_table(summary.spaces)
    table = shown_cells(table, summary.spaces) if not table.empty else table
    datasets = list(dict.fromkeys(table["dataset"]))
    columns = min(max(len(datasets), 1), 2)
    fig, axes = pyplot().subplots(-(-max(len(datasets), 1) // columns), columns, squeeze=False, sharey=True,
                                  figsize=(5.0 * columns, 3.6 * -(-max(len(datasets), 1) // columns)),
                                  layout="constrained")  # fmt: skip
    axes = list(axes.flat)
    if not datasets:
        axes[0].set_axis_off()
        axes[0].text(0.5, 0.5, "no labelled cell measured relevance feedback", ha="center", va="center")
    for ax, dataset in zip(axes, datasets, strict=False):
        rows = table[table["dataset"] == dataset]
        first = rows.iloc[0]
        for i, method in enumerate(dict.fromkeys(rows["method"])):
            for ranking, style in (("full", "-"), ("residual", "--")):
                line = rows[(rows["method"] == method) & (rows["ranking"] == ranking)].sort_values("round")
                ax.errorbar(line["round"], line["precision_at_10"], yerr=line["precision_at_10" + INTERVAL],
                            color=f"C{i}", linestyle=style, marker="o", capsize=3,
                            label=f"{method}, {ranking} ranking")  # fmt: skip
        ax.set_title(f"{dataset}: {first['backbone']} {first['split']} PCA {first['pca']}, {first['space']} space",
                     fontsize="medium")  # fmt: skip
        ax.set_xlabel("round of feedback (10 results marked per round)")
        ax.set_ylabel("P@10")
        ax.set_xticks(sorted(set(rows["round"])))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="lower right")
    for ax in axes[len(datasets) or 1 :]:
        ax.set_visible(False)
    save_figure(fig, out_path)
