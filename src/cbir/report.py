"""Summary: every grid cell's metrics in one table, the paper's tables and a plot."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import pandas as pd

from cbir.io import atomic_path
from cbir.manifest import write_csv_table
from cbir.retrieve import MODE_TITLES

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
    """Median time per query in ms: the search alone for every mode, then the whole query
    (extraction + projection + prediction + search) with clustering, without clustering (the
    predicted class) and exhaustively (all images)."""
    parts = {f"search {MODE_TITLES[m].report}": f"time_search_{m}_median_us" for m in modes_in(frame)}
    parts.update(
        {
            "total with clustering": "time_total_clustered_median_us",
            "total without clustering (class)": "time_total_class_median_us",
            "total exhaustive (all images)": "time_total_global_median_us",
        }
    )
    return _joined_table(frame, split, parts, divisor=1e3)


def _joined_table(frame: pd.DataFrame, split: str, parts: dict[str, str], divisor: float = 1.0) -> pd.DataFrame:
    """One paper table per metric column present (named ``<dataset>: <name>``), side by side."""
    tables = []
    for name, column in parts.items():
        if column not in frame.columns:
            continue
        table = paper_table(frame, split, column) / divisor
        table.columns = [f"{c}: {name}" for c in table.columns]
        tables.append(table)
    return pd.concat(tables, axis=1)


def _top_k(frame: pd.DataFrame) -> int:
    return int(frame["top_k"].iloc[0]) if "top_k" in frame.columns else 5


def write_csv_and_markdown(table: pd.DataFrame, csv_path: str | Path, md_path: str | Path, title: str) -> None:
    with atomic_path(csv_path) as tmp:
        table.to_csv(tmp, float_format="%.4f")
    with atomic_path(md_path) as tmp:
        tmp.write_text(f"## {title}\n\n{table.to_markdown(floatfmt='.3f')}\n")


def modes_in(frame: pd.DataFrame) -> list[str]:
    return [m for m in MODE_TITLES if f"time_search_{m}_median_us" in frame.columns]


def quality_table(frame: pd.DataFrame, split: str) -> pd.DataFrame:
    """Retrieval quality per PCA size: precision@k, mAP, mAP@k and recall@k against exact search."""
    top_k = _top_k(frame)
    columns = {}
    for mode in modes_in(frame):
        columns.update(
            {
                f"P@5 {mode}": f"precision_at_5_{mode}",
                f"P@10 {mode}": f"precision_at_10_{mode}",
                f"mAP {mode}": f"map_{mode}",
                f"mAP@{top_k} {mode}": f"map_at_{top_k}_{mode}",
                f"recall@{top_k} {mode}": f"recall_at_{top_k}_vs_exact_{mode}",
            }
        )
    return _joined_table(frame, split, columns)


def _save(fig, out_path: str | Path) -> None:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(out_path).suffix.lstrip(".") or "png")
    plt.close(fig)


def _panels(n: int, sharey: bool = True):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.6), sharey=sharey, squeeze=False)
    return fig, axes[0]


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
        ax.grid(alpha=0.3)
        if log:
            ax.set_yscale("log")
    axes[0].set_ylabel(ylabel)
    axes[-1].legend(fontsize="x-small")
    _save(fig, out_path)


def plot_accuracy(frame: pd.DataFrame, out_path: str | Path) -> None:
    plot_vs_pca(frame, {"": "accuracy"}, "classification accuracy (%)", out_path, scale=100)


def plot_recall_vs_speedup(frame: pd.DataFrame, out_path: str | Path) -> None:
    """Each grid cell as a point: recall@k against exact search vs speed-up over exhaustive search."""
    top_k = _top_k(frame)
    fig, axes = _panels(1)
    ax = axes[0]
    baseline = frame["time_search_global_median_us"]
    for mode in [m for m in ("clustered", "class", "faiss_ivf") if f"recall_at_{top_k}_vs_exact_{m}" in frame]:
        speedup = baseline / frame[f"time_search_{mode}_median_us"]
        ax.scatter(speedup, frame[f"recall_at_{top_k}_vs_exact_{mode}"], label=MODE_TITLES[mode].report, alpha=0.7)
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("speed-up of the search over exhaustive exact search (median, one query)")
    ax.set_ylabel(f"recall@{top_k} against exact search")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, out_path)


def plot_map(frame: pd.DataFrame, out_path: str | Path) -> None:
    plot_vs_pca(frame, {"class": "map_class", "all images": "map_global"}, "mAP", out_path)


def plot_latency(frame: pd.DataFrame, out_path: str | Path) -> None:
    latency = {MODE_TITLES[m].report: f"time_search_{m}_median_us" for m in modes_in(frame)}
    plot_vs_pca(frame, latency, "median search time per query (µs)", out_path, log=True)


# the summary's tables, one per split: name -> (title, the table from the metrics of every cell)
TABLES: dict[str, tuple[str, Callable[[pd.DataFrame, str], pd.DataFrame]]] = {
    "accuracy": ("Classification accuracy (%)", lambda frame, split: paper_table(frame, split, "accuracy") * 100),
    "retrieval_time": ("Median time per query (ms)", timing_table),
    "retrieval_quality": ("Retrieval quality", quality_table),
}
PLOTS: dict[str, Callable[[pd.DataFrame, str | Path], None]] = {
    "accuracy_vs_pca": plot_accuracy,
    "map_vs_pca": plot_map,
    "latency_vs_pca": plot_latency,
    "recall_vs_speedup": plot_recall_vs_speedup,
}


def write_summary(
    metric_paths: Iterable[str | Path],
    metrics_csv: str | Path,
    tables: Mapping[tuple[str, str, str], str | Path],
    plots: Mapping[str, str | Path],
) -> pd.DataFrame:
    """metrics.csv, and exactly the tables and plots asked for.

    ``tables`` maps (table, split, "csv" or "md") to its path, a table of :data:`TABLES` written
    both as CSV and as Markdown; ``plots`` maps a plot of :data:`PLOTS` to its path.
    """
    frame = gather_metrics(metric_paths)
    write_csv_table(frame.drop(columns=["library_versions"], errors="ignore"), metrics_csv)
    for name, split in dict.fromkeys((name, split) for name, split, _ in tables):
        title, make_table = TABLES[name]
        csv_path, md_path = tables[name, split, "csv"], tables[name, split, "md"]
        write_csv_and_markdown(make_table(frame, split), csv_path, md_path, f"{title}, split {split}")
    for name, path in plots.items():
        PLOTS[name](frame, path)
    return frame


DATASET_COLUMNS = [
    "dataset", "images", "classes", "smallest_class", "excluded", "excluded_fraction", "empty_classes",
    "duplicates", "duplicates_across_classes",
]  # fmt: skip


def dataset_counts(name: str, manifest_csv: str | Path, excluded_csv: str | Path, duplicates_csv: str | Path) -> dict:
    """One row of datasets.csv: images and classes used, files excluded, duplicated content."""
    from cbir.manifest import EMPTY_CLASS_REASON, excluded_file_count, read_manifest

    images = read_manifest(manifest_csv)
    excluded = pd.read_csv(excluded_csv, dtype=str, keep_default_na=False)
    duplicates = pd.read_csv(duplicates_csv, dtype={"sha256": str, "id": str})
    n_excluded = excluded_file_count(excluded)
    per_class = images["class_name"].value_counts()
    return {
        "dataset": name,
        "images": len(images),
        "classes": len(per_class),
        "smallest_class": int(per_class.min()) if len(per_class) else 0,
        "excluded": n_excluded,
        "excluded_fraction": round(n_excluded / max(1, len(images) + n_excluded), 6),
        "empty_classes": int((excluded["reason"] == EMPTY_CLASS_REASON).sum()) if len(excluded) else 0,
        "duplicates": len(duplicates),
        "duplicates_across_classes": int(duplicates["across_classes"].astype(bool).sum()) if len(duplicates) else 0,
    }


def write_dataset_summary(
    names: Iterable[str],
    manifests: Iterable[str | Path],
    excluded: Iterable[str | Path],
    duplicates: Iterable[str | Path],
    out_csv: str | Path,
) -> pd.DataFrame:
    """results/summary/datasets.csv: per dataset, what was used, excluded and duplicated."""
    rows = [dataset_counts(*files) for files in zip(names, manifests, excluded, duplicates, strict=True)]
    table = pd.DataFrame(rows, columns=DATASET_COLUMNS)
    write_csv_table(table, out_csv)
    return table


def _tile(ax, path: str | None, caption: str, correct: bool | None, size: int = 160) -> None:
    from cbir.images import load_rgb_image

    ax.set_xticks([])
    ax.set_yticks([])
    if path is None:
        ax.set_axis_off()
        return
    try:
        image = load_rgb_image(path)
        image.thumbnail((size, size))
        ax.imshow(image)
    except Exception:  # a missing gallery file must not sink the whole figure
        ax.text(0.5, 0.5, "unreadable", ha="center", va="center", transform=ax.transAxes)
    colour = {True: "tab:green", False: "tab:red", None: "black"}[correct]
    mark = {True: " ✓", False: " ✗", None: ""}[correct]
    ax.set_title(caption + mark, fontsize=8, color=colour)
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(3 if correct is not None else 1)


def draw_montage(
    queries: list[dict],
    out_path: str | Path,
    modes: dict[str, str] | None = None,
    true_classes: list[str | None] | None = None,
) -> None:
    """The paper's figure: each query, then its top-k per mode, tiles labelled and marked right/wrong.

    ``queries`` are answers from :func:`cbir.query.search_features` with a ``query`` path; a
    result is right when its class equals the query's true class (when known).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = modes or {mode: MODE_TITLES[mode].short for mode in ("clustered", "class")}
    true_classes = true_classes or [None] * len(queries)
    top_k = max((len(q["results"].get(m, [])) for q in queries for m in modes), default=1)
    n_rows = len(queries) * len(modes)
    fig, axes = plt.subplots(n_rows, top_k + 1, figsize=(1.9 * (top_k + 1), 2.2 * n_rows), squeeze=False)
    for q, (answer, truth) in enumerate(zip(queries, true_classes, strict=True)):
        for m, (mode, title) in enumerate(modes.items()):
            row = axes[q * len(modes) + m]
            caption = f"query: {truth}" if truth else "query"
            _tile(
                row[0], answer["query"] if m == 0 else None, f"{caption}\npredicted {answer['predicted_class']}", None
            )
            results = answer["results"].get(mode, [])
            for r in range(top_k):
                result = results[r] if r < len(results) else None
                correct = None if result is None or truth is None else result["class"] == truth
                label = f"{r + 1}. {result['class']}\nd = {result['distance']:.3g}" if result else ""
                _tile(row[r + 1], result["path"] if result else None, label, correct)
            row[1].set_ylabel(title, fontsize=9, fontweight="bold")  # names the row's retrieval mode
    fig.tight_layout()
    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=100, format=Path(out_path).suffix.lstrip(".") or "png")
    plt.close(fig)
