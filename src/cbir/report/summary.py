"""Summary: every grid cell's metrics in one table, the paper's tables beside ours, plots and the report's pages.

Each table of the summary is written per split twice: a wide CSV for machines, and Markdown a
person reads (small tables of at most :data:`MAX_COLUMNS` columns, one set per dataset). The
report's pages (HTML, shown by ``snakemake --report``) are made of the same pieces.
"""

from __future__ import annotations

import base64
import functools
import html
import json
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from cbir.data.manifest import write_csv_table
from cbir.io import atomic_path
from cbir.report import paper
from cbir.search.index import MODE_TITLES

KEY_COLUMNS = ["dataset", "backbone", "split", "pca", "k"]
MAX_COLUMNS = 8  # columns of a readable table besides its index: it fits a normal screen


def _pca_key(value: Any) -> float:
    return float("inf") if str(value) == "original" else float(value)


def _pca_sort_key(values: pd.Series) -> pd.Series:
    """Numeric PCA sizes ascending, 'original' last."""
    return values.map(_pca_key)


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


def _by_label(frame: pd.DataFrame, split: str) -> Iterable[tuple[str, pd.DataFrame]]:
    """Each dataset's (dataset/backbone/k's) cells of one split, indexed by PCA size in order."""
    subset = frame[frame["split"] == split]
    labels = _column_label(subset)
    for label in dict.fromkeys(labels):
        rows = subset[labels == label].set_index("pca")
        rows = rows.sort_index(key=_pca_sort_key)
        rows.index.name = "PCA"
        yield label, rows


def _columns_table(rows: pd.DataFrame, columns: Mapping[str, str], scale: float = 1.0) -> pd.DataFrame:
    """The metrics columns present in ``rows``, renamed (heading -> metrics column) and scaled."""
    present = {title: column for title, column in columns.items() if column in rows.columns}
    return pd.DataFrame({title: rows[column].astype(float) * scale for title, column in present.items()})


# --- documents: Markdown and HTML from one description --------------------------------------------

_INLINE = [(re.compile(r"`([^`]+)`"), r"<code>\1</code>"), (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>")]
PAGE_STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2933; margin: 1.5em auto;
       max-width: 72em; padding: 0 1em; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 1.6em; border-bottom: 1px solid #d9e2ec; }
h3 { font-size: 1.1em; margin-top: 1.3em; } h4 { font-size: 1em; margin: 1em 0 0.3em; color: #334e68; }
table { border-collapse: collapse; margin: 0.4em 0 1em; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #d9e2ec; padding: 0.25em 0.6em; }
th { background: #f0f4f8; text-align: left; } td { text-align: right; } td:first-child { text-align: left; }
td.text { text-align: left; } code { background: #f0f4f8; padding: 0 0.2em; }
img { max-width: 100%; border: 1px solid #d9e2ec; }
"""


def _inline_html(text: str) -> str:
    out = html.escape(text, quote=False)
    for pattern, replacement in _INLINE:
        out = pattern.sub(replacement, out)
    return out


def _chunks(table: pd.DataFrame, size: int = MAX_COLUMNS) -> list[pd.DataFrame]:
    """A wide table cut into tables of at most ``size`` columns, each with the index."""
    if len(table.columns) <= size:
        return [table]
    return [table.iloc[:, i : i + size] for i in range(0, len(table.columns), size)]


@dataclass
class Doc:
    """A page of headings, paragraphs, lists, tables and images, written as Markdown or HTML."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)

    def heading(self, text: str, level: int = 3) -> Doc:
        self.blocks.append(("heading", (level, text)))
        return self

    def text(self, text: str) -> Doc:
        self.blocks.append(("text", text))
        return self

    def items(self, items: Iterable[str]) -> Doc:
        self.blocks.append(("items", list(items)))
        return self

    def table(self, table: pd.DataFrame, floatfmt: str = ".3f") -> Doc:
        """A table (index included); over :data:`MAX_COLUMNS` columns it is cut into several."""
        for part in _chunks(table):
            self.blocks.append(("table", (part, floatfmt)))
        return self

    def records(self, table: pd.DataFrame) -> Doc:
        """Rows of text (index: what each row is about): a table in HTML, a list in Markdown, where long
        text would make a table too wide to read."""
        self.blocks.append(("records", table))
        return self

    def image(self, path: str | Path, alt: str) -> Doc:
        self.blocks.append(("image", (Path(path), alt)))
        return self

    def extend(self, other: Doc) -> Doc:
        self.blocks.extend(other.blocks)
        return self

    def markdown(self) -> str:
        parts = []
        for kind, value in self.blocks:
            if kind == "heading":
                parts.append(f"{'#' * value[0]} {value[1]}")
            elif kind == "text":
                parts.append(value)
            elif kind == "items":
                parts.append("\n".join(f"- {item}" for item in value))
            elif kind == "table":
                table, floatfmt = value
                cells = table.astype(object).where(table.notna(), None)
                parts.append(cells.to_markdown(floatfmt=floatfmt, missingval="—"))
            elif kind == "records":
                columns = list(value.columns)
                parts.append("\n".join(
                    f"- **{index}**: " + "; ".join(f"{c}: {v}" for c, v in zip(columns, row, strict=True))
                    for index, *row in value.itertuples(name=None)
                ))  # fmt: skip
            elif kind == "image":
                parts.append(f"![{value[1]}]({value[0].name})")
        return "\n\n".join(parts) + "\n"

    def html(self) -> str:
        parts = []
        for kind, value in self.blocks:
            if kind == "heading":
                parts.append(f"<h{value[0]}>{_inline_html(value[1])}</h{value[0]}>")
            elif kind == "text":
                parts.append(f"<p>{_inline_html(value)}</p>")
            elif kind == "items":
                parts.append("<ul>" + "".join(f"<li>{_inline_html(item)}</li>" for item in value) + "</ul>")
            elif kind == "table":
                table, floatfmt = value
                parts.append(_html_table(table, floatfmt))
            elif kind == "records":
                parts.append(_html_table(value, ""))
            elif kind == "image":
                data = base64.b64encode(value[0].read_bytes()).decode()
                parts.append(f'<p><img src="data:image/png;base64,{data}" alt="{html.escape(value[1])}"></p>')
        return "\n".join(parts)


def _html_table(table: pd.DataFrame, floatfmt: str) -> str:
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in [table.index.name or "", *table.columns])
    rows = []
    for index, *row in table.itertuples(name=None):
        cells = [f"<td>{_inline_html(str(index))}</td>"]
        for value in row:
            if value is None or (isinstance(value, float | np.floating) and np.isnan(value)):
                cells.append("<td>—</td>")
            elif isinstance(value, float | np.floating):
                cells.append(f"<td>{format(value, floatfmt)}</td>")
            elif isinstance(value, int | np.integer) and not isinstance(value, bool):
                cells.append(f"<td>{value}</td>")
            else:
                cells.append(f'<td class="text">{_inline_html(str(value))}</td>')
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def html_page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{PAGE_STYLE}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n"
    )


# --- the summary of a run: its metrics, settings and datasets --------------------------------------


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
        return _top_k(self.frame)

    @property
    def splits(self) -> list[str]:
        return list(dict.fromkeys(self.frame["split"]))

    def modes(self) -> list[str]:
        return modes_in(self.frame)


def modes_in(frame: pd.DataFrame) -> list[str]:
    return [m for m in MODE_TITLES if f"time_search_{m}_median_us" in frame.columns]


# --- accuracy, retrieval quality and time per query -----------------------------------------------


def accuracy_table(summary: Summary, split: str) -> pd.DataFrame:
    return paper_table(summary.frame, split, "accuracy") * 100


WHOLE_QUERY = {
    "CNN forward": "time_extract_median_us",
    "projection + MLP": "time_predict_median_us",
    "total with clustering": "time_total_clustered_median_us",
    "total without clustering (class)": "time_total_class_median_us",
    "total exhaustive (all images)": "time_total_global_median_us",
}


def timing_table(summary: Summary, split: str) -> pd.DataFrame:
    """Median time per query in ms: the search alone for every mode, then the whole query
    (extraction + projection + prediction + search) with clustering, without clustering (the
    predicted class) and exhaustively (all images)."""
    frame = summary.frame
    parts = {f"search {MODE_TITLES[m].report}": f"time_search_{m}_median_us" for m in modes_in(frame)}
    parts.update({name: column for name, column in WHOLE_QUERY.items() if name.startswith("total")})
    return _joined_table(frame, split, parts, divisor=1e3)


def timing_doc(summary: Summary, split: str) -> Doc:
    """Per dataset: the search alone per mode (µs), and the whole query step by step (ms)."""
    doc = Doc()
    search = {MODE_TITLES[m].report: f"time_search_{m}_median_us" for m in summary.modes()}
    for label, rows in _by_label(summary.frame, split):
        doc.heading(label).heading("search alone, median per query (µs)", 4).table(_columns_table(rows, search), ".1f")
        doc.heading("whole query, median per query (ms)", 4).table(_columns_table(rows, WHOLE_QUERY, 1e-3), ".3f")
    return doc


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


def _quality_metrics(summary: Summary) -> dict[str, tuple[str, str]]:
    """Heading and metrics-column pattern of each retrieval-quality metric."""
    k = summary.top_k
    return {
        "P@5": ("precision@5: share of the first 5 results of the query's class", "precision_at_5_{mode}"),
        "P@10": ("precision@10", "precision_at_10_{mode}"),
        "mAP": ("mAP over the full ranking (exact modes)", "map_{mode}"),
        f"mAP@{k}": (f"mAP@{k}", f"map_at_{k}_{{mode}}"),
        f"recall@{k}": (f"recall@{k} against exact search over all images", f"recall_at_{k}_vs_exact_{{mode}}"),
    }


def quality_table(summary: Summary, split: str) -> pd.DataFrame:
    """Retrieval quality per PCA size: precision@k, mAP, mAP@k and recall@k against exact search."""
    columns = {
        f"{name} {mode}": pattern.format(mode=mode)
        for mode in summary.modes()
        for name, (_, pattern) in _quality_metrics(summary).items()
    }
    return _joined_table(summary.frame, split, columns)


def quality_doc(summary: Summary, split: str) -> Doc:
    """Per dataset, one table per metric with the retrieval modes as columns."""
    doc = Doc()
    for label, rows in _by_label(summary.frame, split):
        doc.heading(label)
        for heading, pattern in _quality_metrics(summary).values():
            columns = {MODE_TITLES[m].report: pattern.format(mode=m) for m in summary.modes()}
            table = _columns_table(rows, columns)
            if not table.empty:
                doc.heading(heading, 4).table(table)
    return doc


# --- embedding spaces --------------------------------------------------------------------------------

SPACE_COLUMNS = ["dataset", "backbone", "split", "pca", "k", "space"]


def gather_spaces(frame: pd.DataFrame, space_paths: Iterable[str | Path]) -> pd.DataFrame:
    """The paper's cells (space raw) and the same cells in every further space, one row each."""
    raw = frame.assign(space=frame["space"].fillna("raw") if "space" in frame.columns else "raw")
    paths = list(space_paths)
    spaces = pd.concat([raw, gather_metrics(paths)], ignore_index=True) if paths else raw
    order = {name: i for i, name in enumerate(dict.fromkeys(["raw", *spaces["space"]]))}
    leading = [c for c in SPACE_COLUMNS if c in spaces.columns]
    spaces = spaces[leading + [c for c in spaces.columns if c not in leading]]
    return spaces.sort_values(
        leading, key=lambda s: _pca_sort_key(s) if s.name == "pca" else s.map(order) if s.name == "space" else s
    ).reset_index(drop=True)


def _space_metrics(top_k: int) -> dict[str, str]:
    return {
        "P@10": "precision_at_10_global",
        "mAP": "map_global",
        "mAP +QE": "map_global_qe",
        "mAP +DBA": "map_global_dba",
        "mAP +DBA+QE": "map_global_dba_qe",
        "accuracy": "accuracy",
        "P@10 clustered": "precision_at_10_clustered",
        f"recall@{top_k} clustered": f"recall_at_{top_k}_vs_exact_clustered",
        "fit (s)": "time_fit_space_s",
    }


def spaces_table(summary: Summary, split: str) -> pd.DataFrame:
    """Global exact search per embedding space (P@10, mAP, with re-ranking), accuracy and the clustered search."""
    frame = summary.spaces if summary.spaces is not None else gather_spaces(summary.frame, [])
    rows = frame[frame["split"] == split]
    index = [c for c in ("dataset", "backbone", "pca", "k", "space") if c in rows.columns]
    table = _columns_table(rows, _space_metrics(summary.top_k))
    table.index = pd.MultiIndex.from_frame(rows[index]) if len(index) > 1 else rows[index[0]]
    return table


def spaces_doc(summary: Summary, split: str) -> Doc:
    doc = Doc().text(
        'Global exact search over all training images in each embedding space (README, "Embedding spaces"): '
        "P@10 and mAP of the full ranking, mAP after query expansion (QE) and database-side augmentation (DBA), "
        "the MLP's accuracy, the paper's clustered search in that space, and the space's fitting time."
    )
    frame = summary.spaces if summary.spaces is not None else gather_spaces(summary.frame, [])
    for label, rows in _by_label(frame, split):
        doc.heading(label)
        table = _columns_table(rows, _space_metrics(summary.top_k))
        table.index = pd.Index([f"{pca} · {space}" for pca, space in zip(table.index, rows["space"], strict=True)])
        table.index.name = "PCA · space"
        doc.table(table.dropna(axis=1, how="all"))
    return doc


# --- the paper's tables beside ours ----------------------------------------------------------------


def _no_comparison() -> str:
    names = ", ".join(f"{name} ({paper.title(name)})" for name in paper.paper_datasets())
    return (
        f"No dataset of this run is one of the paper's ({names}), so there is nothing to compare. To compare a "
        "dataset as a stand-in for one of them, map it in the config: `paper: {datasets: {<dataset>: <paper's>}}`."
    )


def _comparison_groups(summary: Summary, comparison: pd.DataFrame) -> Iterable[tuple[str, paper.Match, pd.DataFrame]]:
    """(heading, match, rows) per compared dataset (and backbone and k where the grid varies them)."""
    if comparison.empty:
        return
    labels = _column_label(comparison)
    for label in dict.fromkeys(labels):
        rows = comparison[labels == label]
        match = summary.matched[rows["dataset"].iloc[0]]
        yield match.label(label), match, rows


def _pca_index(rows: pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    table = rows.set_index("pca")[list(columns.values())].rename(columns={v: k for k, v in columns.items()})
    table = table.sort_index(key=_pca_sort_key).astype(float)
    table.index.name = "PCA"
    return table


def _empty_pca_table(summary: Summary, split: str) -> pd.DataFrame:
    """No dataset compared: the split's PCA sizes, no columns."""
    sizes = sorted(set(summary.frame.loc[summary.frame["split"] == split, "pca"]), key=_pca_key)
    return pd.DataFrame(index=pd.Index(sizes, name="PCA"))


def paper_accuracy_table(summary: Summary, split: str) -> pd.DataFrame:
    """Rows PCA size; per compared dataset the paper's accuracy (%), ours and the difference ours - paper."""
    comparison = paper.accuracy_comparison(summary.frame[summary.frame["split"] == split], summary.matched)
    tables = []
    for heading, _, rows in _comparison_groups(summary, comparison):
        columns = {f"{heading}: {name}": name for name in ("paper", "ours", "difference")}
        tables.append(_pca_index(rows, columns))
    return pd.concat(tables, axis=1) if tables else _empty_pca_table(summary, split)


def _group_note(match: paper.Match, rows: pd.DataFrame, split: str) -> str:
    """Which dataset this is, what ran on it, and where the paper's figures for it come from."""
    names = ", ".join(f"`{b}`" for b in dict.fromkeys(rows["backbone"]))
    note = f"{match.describe()}. Ours: backbone {names}, k = {', '.join(map(str, dict.fromkeys(rows['k'])))}."
    if rows["paper"].isna().all():
        return note + f" The paper has no figures for split {split}."
    figures = paper.paper_figures("accuracy")
    if paper.ANY_SPLIT in set(figures.loc[figures["dataset"] == match.paper, "split"]):
        return note + " The paper gives one table for every split."
    return note


def paper_accuracy_doc(summary: Summary, split: str) -> Doc:
    doc = Doc()
    comparison = paper.accuracy_comparison(summary.frame[summary.frame["split"] == split], summary.matched)
    if comparison.empty:
        return doc.text(_no_comparison())
    doc.text("Classification accuracy (%) on the test split; difference = ours − paper, in percentage points.")
    for heading, match, rows in _comparison_groups(summary, comparison):
        doc.heading(heading).text(_group_note(match, rows, split))
        columns = {"paper": "paper", "ours": "ours", "difference (ours − paper)": "difference"}
        doc.table(_pca_index(rows, columns), ".2f")
    return doc


def paper_time_table(summary: Summary, split: str) -> pd.DataFrame:
    """Rows PCA size; per compared dataset and step the paper's time per query (ms), ours and the difference."""
    comparison = paper.time_comparison(summary.frame[summary.frame["split"] == split], summary.matched)
    tables = []
    for heading, _, rows in _comparison_groups(summary, comparison):
        for step in paper.TIME_STEPS:
            columns = {f"{heading}: {step}: {name} (ms)": name for name in ("paper", "ours", "difference")}
            tables.append(_pca_index(rows[rows["step"] == step], columns))
    return pd.concat(tables, axis=1) if tables else _empty_pca_table(summary, split)


def paper_time_doc(summary: Summary, split: str) -> Doc:
    doc = Doc()
    comparison = paper.time_comparison(summary.frame[summary.frame["split"] == split], summary.matched)
    if comparison.empty:
        return doc.text(_no_comparison())
    doc.text("Time per query (ms); difference = ours − paper. " + paper.hardware_note(summary.frame))
    for heading, match, rows in _comparison_groups(summary, comparison):
        doc.heading(heading).text(_group_note(match, rows[rows["step"] == "prediction"], split))
        for step, (step_title, _) in paper.TIME_STEPS.items():
            part = rows[rows["step"] == step]
            doc.heading(step_title, 4)
            if part["paper"].isna().all():
                doc.text("The paper reports no time for this step here; ours:")
            doc.table(_pca_index(part, {"paper": "paper", "ours": "ours", "difference": "difference"}), ".3f")
    return doc


@dataclass(frozen=True)
class SummaryTable:
    """A table of the summary, one per split: the wide CSV, and readable Markdown (default: the wide table)."""

    title: str
    wide: Callable[[Summary, str], pd.DataFrame]
    readable: Callable[[Summary, str], Doc] | None = None

    def doc(self, summary: Summary, split: str, wide: pd.DataFrame | None = None) -> Doc:
        if self.readable is not None:
            return self.readable(summary, split)
        return Doc().table(self.wide(summary, split) if wide is None else wide)


def split_collections(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The cells of labelled datasets, and those of collections without labels (``labelled`` false)."""
    if "labelled" not in frame.columns:
        return frame, frame.iloc[:0]
    labelled = frame["labelled"].map(lambda value: value is not False and str(value) != "False")
    return frame[labelled].reset_index(drop=True), frame[~labelled].reset_index(drop=True)


def collections_table(summary: Summary, split: str) -> pd.DataFrame:
    """Collections without labels: each search's recall@k against exact search and its median time (ms)."""
    frame = summary.collections
    if frame.empty or not (frame["split"] == split).any():
        return pd.DataFrame()
    rows = frame[frame["split"] == split]
    rows.index = [f"{r.dataset} / {r.backbone} / PCA {r.pca} / {r.k} clusters" for r in rows.itertuples()]
    top_k = _top_k(frame)
    columns = {"images in the gallery": "n_train", "queries": "n_test", "clusters": "n_clusters"}
    for mode in MODE_TITLES:
        columns[f"recall@{top_k} {MODE_TITLES[mode].report}"] = f"recall_at_{top_k}_vs_exact_{mode}"
    table = _columns_table(rows, columns)
    for mode in modes_in(frame):
        if mode != "class":
            table[f"ms {MODE_TITLES[mode].report}"] = rows[f"time_search_{mode}_median_us"].astype(float) / 1e3
    return table


def collections_doc(summary: Summary, split: str) -> Doc:
    table = collections_table(summary, split)
    if table.empty:
        return Doc().text(f"No dataset without labels at split {split}.")
    return (
        Doc()
        .text(
            "Datasets without labels (labels: none): each search's recall of the exact top results over the whole "
            "gallery, and the median search time per query. Queries are the held-out images, or for split all a "
            "seeded sample of the gallery, each leaving itself out."
        )
        .table(table, ".3f")
    )


# --- plots ----------------------------------------------------------------------------------------


def _save(fig, out_path: str | Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(out_path) as tmp:
        fig.savefig(tmp, dpi=120, format=Path(out_path).suffix.lstrip(".") or "png")
    plt.close(fig)


def _placeholder_plot(text: str, out_path: str | Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 1.5))
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center")
    _save(fig, out_path)


def _panels(n: int, sharey: bool = True, width: float = 5.0, height: float = 3.6):
    """A figure of n panels, at most two a row, laid out so that labels and legend fit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(n, 2)
    rows = -(-n // columns)
    fig, axes = plt.subplots(
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
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

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
    _save(fig, out_path)


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
        _save(fig, out_path)
        return
    splits = summary.splits
    fig, axes = _panels(len(splits))
    for ax, split in zip(axes, splits, strict=True):
        rows = comparison[comparison["split"] == split]
        sizes = sorted(set(rows["pca"]), key=_pca_key)
        for i, (heading, match, group) in enumerate(_comparison_groups(summary, rows)):
            table = _pca_index(group, {"paper": "paper", "ours": "ours"}).reindex(sizes)
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
    _save(fig, out_path)


def plot_recall_vs_speedup(frame: pd.DataFrame, out_path: str | Path) -> None:
    """Each grid cell as a point: recall@k against exact search vs speed-up over exhaustive search."""
    top_k = _top_k(frame)
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
    _save(fig, out_path)


def plot_map(frame: pd.DataFrame, out_path: str | Path) -> None:
    series = {MODE_TITLES[mode].report: f"map_{mode}" for mode in ("class", "global")}
    plot_vs_pca(frame, series, "mAP (full ranking)", out_path)


def plot_latency(frame: pd.DataFrame, out_path: str | Path) -> None:
    latency = {MODE_TITLES[m].report: f"time_search_{m}_median_us" for m in modes_in(frame)}
    plot_vs_pca(frame, latency, "median search time per query (µs)", out_path, log=True)


# --- pages of the report ---------------------------------------------------------------------------


def paper_comparison_page(summary: Summary, split: str | None = None) -> Doc:
    """The paper's tables beside ours, every split, with the plot: the report's first page."""
    doc = Doc()
    if not summary.matched:
        return doc.text(_no_comparison())
    doc.text("Compared with the paper (config `paper.datasets`):")
    doc.items(match.describe() for match in summary.matched.values())
    if "paper_accuracy_vs_pca" in summary.plots:
        doc.image(summary.plots["paper_accuracy_vs_pca"], "accuracy against PCA size, ours solid, the paper's dashed")
    for split in summary.splits:
        doc.heading(f"Split {split}: classification accuracy", 2).extend(paper_accuracy_doc(summary, split))
        doc.heading(f"Split {split}: time per query", 2).extend(paper_time_doc(summary, split))
    return doc


def tables_page(summary: Summary, split: str) -> Doc:
    """One split's accuracy, retrieval quality and time tables, one set per dataset; then the collections without
    labels."""
    doc = Doc()
    if not summary.collections.empty and (summary.collections["split"] == split).any():
        doc.heading("Collections without labels", 2).extend(collections_doc(summary, split))
    if not (summary.frame["split"] == split).any():
        return doc
    doc.heading("Classification accuracy (%)", 2).table(accuracy_table(summary, split), ".2f")
    doc.heading("Retrieval quality", 2).extend(quality_doc(summary, split))
    if summary.spaces is not None and set(summary.spaces["space"]) != {"raw"}:
        doc.heading("Retrieval quality per embedding space", 2).extend(spaces_doc(summary, split))
    return doc.heading("Time per query", 2).extend(timing_doc(summary, split))


def deviations_page(summary: Summary, split: str | None = None) -> Doc:
    """What this run did differently from the paper, and the verdict of its metrics on the paper's claims."""
    if summary.frame.empty:
        return Doc().text("No labelled dataset in this run: nothing to compare with the paper's method.")
    doc = Doc().text(
        "Generated from the run: the backbone facts are what the feature files recorded, the hardware what the "
        "timing steps recorded, the verdicts are computed from the metrics of every grid cell (metrics.csv)."
    )
    doc.records(paper.deviations(summary.frame, summary.settings, summary.datasets).set_index("aspect"))
    doc.heading("The paper's claims, judged by this run", 2)
    claims = paper.claim_table(summary.frame)
    labels = _column_label(claims)
    for label in dict.fromkeys(labels):
        cells = claims[labels == label]
        doc.heading(f"{label} ({len(cells)} grid cells)")
        verdict, details = paper.speed_verdict(cells)
        doc.text(f"**Clustering makes search faster**: {verdict}.").items(details)
        verdict, details = paper.semantic_verdict(cells, summary.top_k)
        doc.text(f"**Clustering makes results more semantic**: {verdict}.").items(details)
    return doc


def datasets_page(summary: Summary, split: str | None = None) -> Doc:
    if summary.datasets is None:
        return Doc().text("No dataset counts were given.")
    table = summary.datasets.set_index("dataset")
    return (
        Doc()
        .text(
            "Per dataset: the images and classes used, files excluded (results/<dataset>/excluded.csv) and duplicated "
            "content (duplicates.csv)."
        )
        .table(table, ".4f")
    )


@dataclass(frozen=True)
class Page:
    """An HTML page of the report (and, with ``markdown``, a Markdown file beside the tables)."""

    title: str
    build: Callable[[Summary, str | None], Doc]
    category: str  # the report's category: numbered, as the report orders categories by name
    per_split: bool = False
    markdown: bool = False


# the summary's tables, one per split: name -> SummaryTable
TABLES: dict[str, SummaryTable] = {
    "accuracy": SummaryTable("Classification accuracy (%)", accuracy_table),
    "retrieval_time": SummaryTable("Median time per query (ms)", timing_table, timing_doc),
    "retrieval_quality": SummaryTable("Retrieval quality", quality_table, quality_doc),
    "paper_comparison": SummaryTable("Classification accuracy (%), the paper's and ours", paper_accuracy_table,
                                     paper_accuracy_doc),
    "paper_time_comparison": SummaryTable("Time per query (ms), the paper's and ours", paper_time_table,
                                          paper_time_doc),
    "embedding_spaces": SummaryTable("Retrieval quality per embedding space", spaces_table, spaces_doc),
    "collections": SummaryTable("Collections without labels: recall against exact search", collections_table,
                                collections_doc),
}  # fmt: skip
# the one table of the cells without labels; the others are made of the labelled cells
COLLECTION_TABLES = ("collections",)
PLOTS: dict[str, Callable[[Summary, str | Path], None]] = {
    "paper_accuracy_vs_pca": plot_paper_accuracy,
    "accuracy_vs_pca": lambda summary, path: plot_accuracy(summary.frame, path),
    "map_vs_pca": lambda summary, path: plot_map(summary.frame, path),
    "latency_vs_pca": lambda summary, path: plot_latency(summary.frame, path),
    "recall_vs_speedup": lambda summary, path: plot_recall_vs_speedup(summary.frame, path),
}
PAGES: dict[str, Page] = {
    "paper_comparison": Page("The paper's tables beside ours", paper_comparison_page, "1 Paper comparison"),
    "tables": Page("Accuracy, retrieval quality and time per query", tables_page, "2 Tables", per_split=True),
    "deviations": Page("Deviations from the paper", deviations_page, "5 Deviations from the paper", markdown=True),
    "datasets": Page("Datasets", datasets_page, "6 Datasets"),
}


def page_files(splits: Iterable[str]) -> list[tuple[str, str, str]]:
    """Every page file for these splits: (page, split or "", "html" or "md")."""
    files = []
    for name, page in PAGES.items():
        for split in list(splits) if page.per_split else [""]:
            files += [(name, split, ext) for ext in ("html", "md") if ext == "html" or page.markdown]
    return files


def write_summary(
    metric_paths: Iterable[str | Path],
    metrics_csv: str | Path,
    tables: Mapping[tuple[str, str, str], str | Path],
    plots: Mapping[str, str | Path],
    pages: Mapping[tuple[str, str, str], str | Path] | None = None,
    *,
    settings: Mapping[str, Any] | None = None,
    datasets: pd.DataFrame | None = None,
    space_metric_paths: Iterable[str | Path] = (),
    spaces_csv: str | Path | None = None,
) -> pd.DataFrame:
    """metrics.csv (the paper's space), spaces.csv (every space), and exactly the tables, plots and pages asked for.

    ``tables`` maps (table, split, "csv" or "md") to its path, a table of :data:`TABLES` written
    both as CSV (wide) and as Markdown (readable); ``plots`` maps a plot of :data:`PLOTS` to its
    path; ``pages`` maps (page of :data:`PAGES`, split or "", "html" or "md") to its path.
    ``settings`` (:func:`cbir.report.paper.summary_settings`) say which datasets are compared with the
    paper's and what the deviations name; ``datasets`` is datasets.csv.
    """
    frame = gather_metrics(metric_paths)
    write_csv_table(frame.drop(columns=["library_versions"], errors="ignore"), metrics_csv)
    spaces = gather_spaces(frame, space_metric_paths)
    if spaces_csv is not None:
        write_csv_table(spaces.drop(columns=["library_versions"], errors="ignore"), spaces_csv)
    labelled, collections = split_collections(frame)
    summary = Summary(labelled, settings or {}, datasets, spaces=spaces, collections=collections)
    for name, split in dict.fromkeys((name, split) for name, split, _ in tables):
        table = TABLES[name]
        if name in COLLECTION_TABLES or (labelled["split"] == split).any():
            wide, body = table.wide(summary, split), None
        else:  # a split that only collections without labels have
            wide, body = pd.DataFrame(), Doc().text(f"No labelled dataset at split {split}.")
        with atomic_path(tables[name, split, "csv"]) as tmp:
            wide.to_csv(tmp, float_format="%.4f")
        doc = Doc().heading(f"{table.title}, split {split}", 2).extend(body or table.doc(summary, split, wide))
        with atomic_path(tables[name, split, "md"]) as tmp:
            tmp.write_text(doc.markdown())
    for name, path in plots.items():
        if labelled.empty:
            _placeholder_plot("no labelled dataset in this run", path)
        else:
            PLOTS[name](summary, path)
        summary.plots[name] = Path(path)
    for (name, split, ext), path in (pages or {}).items():
        page = PAGES[name]
        doc = page.build(summary, split or None)
        title = f"{page.title}, split {split}" if split else page.title
        with atomic_path(path) as tmp:
            if ext == "html":
                tmp.write_text(html_page(title, doc.html()), encoding="utf-8")
            else:
                tmp.write_text(Doc().heading(title, 2).extend(doc).markdown(), encoding="utf-8")
    return frame


DATASET_COLUMNS = [
    "dataset", "images", "classes", "smallest_class", "excluded", "excluded_fraction", "empty_classes",
    "duplicates", "duplicates_across_classes", "image_size",
]  # fmt: skip


def image_size_summary(images: pd.DataFrame) -> str:
    """The images' sizes, width x height: the one size, or the two commonest with their shares."""
    if images.empty or not {"width", "height"} <= set(images.columns):
        return ""
    sizes = (images["width"].astype(str) + "x" + images["height"].astype(str)).value_counts()
    if len(sizes) == 1:
        return str(sizes.index[0])
    parts = [f"{size} ({count / len(images):.0%})" for size, count in sizes.head(2).items()]
    if len(sizes) > 2:
        parts.append(f"{len(sizes) - 2} other sizes")
    return ", ".join(parts)


def dataset_counts(name: str, manifest_csv: str | Path, excluded_csv: str | Path, duplicates_csv: str | Path) -> dict:
    """One row of datasets.csv: images and classes used, files excluded, duplicated content."""
    from cbir.data.manifest import EMPTY_CLASS_REASON, excluded_file_count, read_manifest

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
        "image_size": image_size_summary(images),
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
