"""The summary's plots: accuracy, mAP and search time against PCA size, ours beside the paper's, recall vs speed-up.

matplotlib is imported at the first plot (:func:`cbir.report.figures.pyplot`), not with the module:
the workflow imports the registries (:mod:`cbir.report.pages`) at every start.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from cbir.report import paper
from cbir.report.figures import pyplot, save_figure
from cbir.report.metrics import Summary, modes_in, paper_table, pca_key, top_k_of
from cbir.report.tables import comparison_groups, pca_index
from cbir.search.index import MODE_TITLES


def placeholder_plot(text: str, out_path: str | Path) -> None:
    """A plot that only says why there is nothing to plot."""
    fig, ax = pyplot().subplots(figsize=(5, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    save_figure(fig, out_path)


def _panels(n: int, sharey: bool = True, width: float = 5.0, height: float = 3.6):
    """A figure of n panels, at most two a row, laid out so that labels and legend fit."""
    columns = min(n, 2)
    rows = -(-n // columns)
    fig, axes = pyplot().subplots(
        rows, columns, figsize=(width * columns, height * rows), sharey=sharey, squeeze=False, layout="constrained"
    )
    axes = list(axes.flat)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _legend_below(fig, axes) -> None:
    """One legend for the whole figure, under the panels (never over the lines): one column under one
    column of panels, up to three under two."""
    handles, labels = {}, []
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in handles:
                handles[label] = handle
                labels.append(label)
    if labels:
        columns = 1 if len({ax.get_position().x0 for ax in axes}) == 1 else min(len(labels), 3)
        fig.legend([handles[label] for label in labels], labels, loc="outside lower center",
                   ncols=columns, fontsize="small", frameon=False)  # fmt: skip


def _plain_log_ticks(axis, suffix: str = "") -> None:
    """Log-scale ticks at 1, 2 and 5 per decade, written as plain numbers (no 3×10⁰ that run together)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # start-up cost: see figures.pyplot

    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}{suffix}"))
    axis.set_minor_formatter(NullFormatter())


def plot_vs_pca(frame: pd.DataFrame, series: dict[str, str], ylabel: str, out_path: str | Path, scale: float = 1.0,
                log: bool = False) -> None:  # fmt: skip
    """One panel per split; one line per dataset column and series (label -> metrics column)."""
    splits = list(dict.fromkeys(frame["split"]))
    fig, axes = _panels(len(splits))
    for ax, split in zip(axes, splits, strict=True):
        for label, column in series.items():
            if column not in frame.columns:
                continue
            table = paper_table(frame, split, column) * scale
            positions = range(len(table.index))
            for dataset in table.columns:
                name = f"{dataset}: {label}" if label else dataset
                ax.plot(positions, table[dataset], marker="o", label=name)
            ax.set_xticks(list(positions), list(table.index), rotation=45)
        ax.set_title(f"split {split}")
        ax.set_xlabel("PCA size")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if log:
            ax.set_yscale("log")
            _plain_log_ticks(ax.yaxis)
    _legend_below(fig, axes)
    save_figure(fig, out_path)


def plot_accuracy(frame: pd.DataFrame, out_path: str | Path) -> None:
    plot_vs_pca(frame, {"": "accuracy"}, "classification accuracy (%)", out_path, scale=100)


def plot_paper_accuracy(summary: Summary, out_path: str | Path) -> None:
    """Accuracy against PCA size per split: ours solid, the paper's dashed, one colour per compared dataset."""
    comparison = paper.accuracy_comparison(summary.frame, summary.matched)
    if comparison.empty:
        fig, axes = _panels(1, height=1.6)
        axes[0].set_axis_off()
        message = (
            "No dataset of this run is one of the paper's: nothing to compare.\n(see paper.datasets in the config)"
        )
        axes[0].text(0.5, 0.5, message, ha="center", va="center")
        save_figure(fig, out_path)
        return
    splits = summary.splits
    fig, axes = _panels(len(splits))
    for ax, split in zip(axes, splits, strict=True):
        rows = comparison[comparison["split"] == split]
        sizes = sorted(set(rows["pca"]), key=pca_key)
        for i, (heading, match, group) in enumerate(comparison_groups(summary, rows)):
            table = pca_index(group, {"paper": "paper", "ours": "ours"}).reindex(sizes)
            positions = [sizes.index(p) for p in table.index]
            colour = f"C{i}"
            ax.plot(positions, table["ours"], marker="o", color=colour, label=f"{heading}: ours")
            known = table["paper"].notna()
            ax.plot([p for p, k in zip(positions, known, strict=True) if k], table["paper"][known], marker="s",
                    linestyle="--", color=colour, label=f"{match.title}: the paper's")  # fmt: skip
        ax.set_xticks(range(len(sizes)), sizes, rotation=45)
        ax.set_title(f"split {split}")
        ax.set_xlabel("PCA size")
        ax.set_ylabel("classification accuracy (%)")
        ax.grid(alpha=0.3)
    _legend_below(fig, axes)
    save_figure(fig, out_path)


def plot_recall_vs_speedup(frame: pd.DataFrame, out_path: str | Path) -> None:
    """Each grid cell as a point: recall@k against exact search vs speed-up over exhaustive search."""
    top_k = top_k_of(frame)
    fig, axes = _panels(1, width=6.4, height=4.4)
    ax = axes[0]
    baseline = frame["time_search_global_median_us"]
    for mode in [m for m in ("clustered", "class", "faiss_ivf") if f"recall_at_{top_k}_vs_exact_{m}" in frame]:
        speedup = baseline / frame[f"time_search_{mode}_median_us"]
        ax.scatter(speedup, frame[f"recall_at_{top_k}_vs_exact_{mode}"], label=MODE_TITLES[mode].report, alpha=0.7)
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis, "×")
    ax.set_xlabel("speed-up of the search over exhaustive exact search\n(median time per query, log scale)")
    ax.set_ylabel(f"recall@{top_k} against exact search")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small", loc="lower left")
    save_figure(fig, out_path)


def plot_map(frame: pd.DataFrame, out_path: str | Path) -> None:
    series = {MODE_TITLES[mode].report: f"map_{mode}" for mode in ("class", "global")}
    plot_vs_pca(frame, series, "mAP (full ranking)", out_path)


def plot_latency(frame: pd.DataFrame, out_path: str | Path) -> None:
    latency = {MODE_TITLES[m].report: f"time_search_{m}_median_us" for m in modes_in(frame)}
    plot_vs_pca(frame, latency, "median search time per query (µs)", out_path, log=True)
