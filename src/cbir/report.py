"""Summary: every grid cell's metrics in one table, the paper's tables and a plot."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from cbir.io import atomic_path

KEY_COLUMNS = ["dataset", "backbone", "split", "pca", "k"]


def _pca_sort_key(values: pd.Series) -> pd.Series:
    """Numeric PCA sizes ascending, 'original' last."""
    return values.map(lambda v: float("inf") if str(v) == "original" else float(v))


def gather_metrics(paths: Iterable[str | Path]) -> pd.DataFrame:
    rows = [json.loads(Path(p).read_text()) for p in paths]
    frame = pd.DataFrame(rows)
    frame["pca"] = frame["pca"].astype(str)
    leading = [c for c in KEY_COLUMNS if c in frame.columns]
    frame = frame[leading + [c for c in frame.columns if c not in leading]]
    return frame.sort_values(leading, key=lambda s: _pca_sort_key(s) if s.name == "pca" else s).reset_index(drop=True)


def _column_label(frame: pd.DataFrame) -> pd.Series:
    """Column heading per row: the dataset, qualified by backbone and k where the grid varies them."""
    label = frame["dataset"].astype(str)
    if frame["backbone"].nunique() > 1:
        label = label + "/" + frame["backbone"].astype(str)
    if frame["k"].nunique() > 1:
        label = label + "/k" + frame["k"].astype(str)
    return label


def paper_table(frame: pd.DataFrame, split: str, value: str) -> pd.DataFrame:
    """Rows PCA size, columns dataset: the layout of the paper's tables."""
    subset = frame[frame["split"] == split].assign(column=lambda f: _column_label(f))
    table = subset.pivot_table(index="pca", columns="column", values=value, aggfunc="first")
    table = table.sort_index(key=_pca_sort_key)
    table.index.name = "PCA"
    table.columns.name = None
    return table


def timing_table(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    """Median total query time (ms) with clustering, within the class, and over all images."""
    parts = {
        "with clustering": "time_total_clustered_median_us",
        "without clustering (class)": "time_total_class_median_us",
        "exhaustive (all images)": "time_total_global_median_us",
    }
    tables = []
    for name, column in parts.items():
        table = paper_table(frame, split, column) / 1e3
        table.columns = [f"{c}: {name}" for c in table.columns]
        tables.append(table)
    return pd.concat(tables, axis=1)


def write_table(table: pd.DataFrame, csv_path: str | Path, md_path: str | Path, title: str) -> None:
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, float_format="%.4f")
    with atomic_path(md_path) as tmp:
        tmp.write_text(f"## {title}\n\n{table.to_markdown(floatfmt='.2f')}\n")


def plot_accuracy(frame: pd.DataFrame, out_path: str | Path) -> None:
    """Accuracy against PCA size: one panel per split, one line per dataset column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    splits = list(dict.fromkeys(frame["split"]))
    fig, axes = plt.subplots(1, len(splits), figsize=(4 * len(splits), 3.6), sharey=True, squeeze=False)
    for ax, split in zip(axes[0], splits, strict=True):
        table = paper_table(frame, split, "accuracy") * 100
        positions = range(len(table.index))
        for column in table.columns:
            ax.plot(positions, table[column], marker="o", label=column)
        ax.set_xticks(list(positions), list(table.index), rotation=45)
        ax.set_title(f"split {split}")
        ax.set_xlabel("PCA size")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("classification accuracy (%)")
    axes[0][-1].legend(fontsize="small")
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(out_path).suffix.lstrip(".") or "png")
    plt.close(fig)


def write_summary(
    metric_paths: Iterable[str | Path],
    metrics_csv: str | Path,
    splits: Iterable[str],
    out_dir: str | Path,
    plot_path: str | Path,
) -> pd.DataFrame:
    """metrics.csv, then per split the accuracy and timing tables (CSV + Markdown), then the plot."""
    frame = gather_metrics(metric_paths)
    with atomic_path(metrics_csv) as tmp:
        frame.drop(columns=["library_versions"], errors="ignore").to_csv(tmp, index=False)
    out_dir = Path(out_dir)
    for split in splits:
        accuracy = paper_table(frame, split, "accuracy") * 100
        write_table(
            accuracy,
            out_dir / f"accuracy_{split}.csv",
            out_dir / f"accuracy_{split}.md",
            f"Classification accuracy (%), split {split}",
        )
        write_table(
            timing_table(frame, split),
            out_dir / f"retrieval_time_{split}.csv",
            out_dir / f"retrieval_time_{split}.md",
            f"Median time per query (ms: projection + prediction + search), split {split}",
        )
    plot_accuracy(frame, plot_path)
    return frame
