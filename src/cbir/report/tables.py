"""The summary's tables, one per split: a wide CSV and readable Markdown, our metrics and the paper's beside them.

Each table is written twice: a wide CSV for machines, and Markdown a person reads (small tables
of at most :data:`cbir.report.doc.MAX_COLUMNS` columns, one set per dataset).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

from cbir.report import paper
from cbir.report.doc import Doc
from cbir.report.metrics import (
    Summary,
    by_label,
    column_label,
    columns_table,
    columns_with_intervals,
    gather_spaces,
    modes_in,
    paper_table,
    pca_key,
    pca_sort_key,
    top_k_of,
)
from cbir.search.index import MODE_TITLES


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
    for label, rows in by_label(summary.frame, split):
        doc.heading(label).heading("search alone, median per query (µs)", 4).table(columns_table(rows, search), ".1f")
        doc.heading("whole query, median per query (ms)", 4).table(columns_table(rows, WHOLE_QUERY, 1e-3), ".3f")
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
    for label, rows in by_label(summary.frame, split):
        doc.heading(label)
        if "n_queries_evaluated" in rows.columns:
            doc.text(_queries_note(rows))
        for heading, pattern in _quality_metrics(summary).values():
            columns = {MODE_TITLES[m].report: pattern.format(mode=m) for m in summary.modes()}
            table = columns_with_intervals(rows, columns)
            if not table.empty:
                doc.heading(heading, 4).table(table)
    return doc


def _queries_note(rows: pd.DataFrame) -> str:
    """Which test images the figures are measured on, and what the ± beside them is."""
    evaluated, tested = rows["n_queries_evaluated"].astype(int), rows["n_test"].astype(int)
    if (evaluated == tested).all():
        on = f"all {tested.min()} test images" if tested.nunique() == 1 else "all test images"
    else:
        on = f"{evaluated.max()} of {tested.max()} test images, drawn in proportion to each class"
        on += " (retrieval.eval_queries)"
    return f"Measured on {on}; ± the half-width of each figure's 95 % confidence interval over the queries."


# --- embedding spaces --------------------------------------------------------------------------------


def _space_metrics(top_k: int) -> dict[str, str]:
    return {
        "chosen": "chosen",
        "validation P@10": "validation_precision_at_10_global",
        "validation mAP": "validation_map_global",
        "P@10": "precision_at_10_global",
        "mAP": "map_global",
        "mAP plain": "map_global_plain",
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
    table = columns_table(rows, _space_metrics(summary.top_k))
    table.index = pd.MultiIndex.from_frame(rows[index]) if len(index) > 1 else rows[index[0]]
    return table


def spaces_doc(summary: Summary, split: str) -> Doc:
    doc = Doc().text(
        'Global exact search over all training images in each embedding space (docs, "Embedding spaces"). '
        "Each space's settings and re-ranking, and the space searched (chosen = 1), were chosen on a validation "
        'part of the training split (docs, "Settings chosen by validation"): its P@10 and mAP, then the test '
        "split's P@10 and mAP of the full ranking with the chosen re-ranking (mAP plain: without), mAP after query "
        "expansion (QE) and database-side augmentation (DBA) with fixed settings, the MLP's accuracy, the "
        "paper's clustered search in that space, and the space's fitting time."
    )
    frame = summary.spaces if summary.spaces is not None else gather_spaces(summary.frame, [])
    for label, rows in by_label(frame, split):
        doc.heading(label)
        table = columns_with_intervals(rows, _space_metrics(summary.top_k))
        table.index = pd.Index([f"{pca} · {space}" for pca, space in zip(table.index, rows["space"], strict=True)])
        table.index.name = "PCA · space"
        doc.table(table.dropna(axis=1, how="all"))
    return doc


# --- the paper's tables beside ours ----------------------------------------------------------------


def no_comparison() -> str:
    names = ", ".join(f"{name} ({paper.title(name)})" for name in paper.paper_datasets())
    return (
        f"No dataset of this run is one of the paper's ({names}), so there is nothing to compare. To compare a "
        "dataset as a stand-in for one of them, map it in the config: `paper: {datasets: {<dataset>: <paper's>}}`."
    )


def comparison_groups(summary: Summary, comparison: pd.DataFrame) -> Iterable[tuple[str, paper.Match, pd.DataFrame]]:
    """(heading, match, rows) per compared dataset (and backbone and k where the grid varies them)."""
    if comparison.empty:
        return
    labels = column_label(comparison)
    for label in dict.fromkeys(labels):
        rows = comparison[labels == label]
        match = summary.matched[rows["dataset"].iloc[0]]
        yield match.label(label), match, rows


def pca_index(rows: pd.DataFrame, columns: Mapping[str, str]) -> pd.DataFrame:
    table = rows.set_index("pca")[list(columns.values())].rename(columns={v: k for k, v in columns.items()})
    table = table.sort_index(key=pca_sort_key).astype(float)
    table.index.name = "PCA"
    return table


def _empty_pca_table(summary: Summary, split: str) -> pd.DataFrame:
    """No dataset compared: the split's PCA sizes, no columns."""
    sizes = sorted(set(summary.frame.loc[summary.frame["split"] == split, "pca"]), key=pca_key)
    return pd.DataFrame(index=pd.Index(sizes, name="PCA"))


def paper_accuracy_table(summary: Summary, split: str) -> pd.DataFrame:
    """Rows PCA size; per compared dataset the paper's accuracy (%), ours and the difference ours - paper."""
    comparison = paper.accuracy_comparison(summary.frame[summary.frame["split"] == split], summary.matched)
    tables = []
    for heading, _, rows in comparison_groups(summary, comparison):
        columns = {f"{heading}: {name}": name for name in ("paper", "ours", "difference")}
        tables.append(pca_index(rows, columns))
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
        return doc.text(no_comparison())
    doc.text("Classification accuracy (%) on the test split; difference = ours − paper, in percentage points.")
    for heading, match, rows in comparison_groups(summary, comparison):
        doc.heading(heading).text(_group_note(match, rows, split))
        columns = {"paper": "paper", "ours": "ours", "difference (ours − paper)": "difference"}
        doc.table(pca_index(rows, columns), ".2f")
    return doc


def paper_time_table(summary: Summary, split: str) -> pd.DataFrame:
    """Rows PCA size; per compared dataset and step the paper's time per query (ms), ours and the difference."""
    comparison = paper.time_comparison(summary.frame[summary.frame["split"] == split], summary.matched)
    tables = []
    for heading, _, rows in comparison_groups(summary, comparison):
        for step in paper.TIME_STEPS:
            columns = {f"{heading}: {step}: {name} (ms)": name for name in ("paper", "ours", "difference")}
            tables.append(pca_index(rows[rows["step"] == step], columns))
    return pd.concat(tables, axis=1) if tables else _empty_pca_table(summary, split)


def paper_time_doc(summary: Summary, split: str) -> Doc:
    doc = Doc()
    comparison = paper.time_comparison(summary.frame[summary.frame["split"] == split], summary.matched)
    if comparison.empty:
        return doc.text(no_comparison())
    doc.text("Time per query (ms); difference = ours − paper. " + paper.hardware_note(summary.frame))
    for heading, match, rows in comparison_groups(summary, comparison):
        doc.heading(heading).text(_group_note(match, rows[rows["step"] == "prediction"], split))
        for step, (step_title, _) in paper.TIME_STEPS.items():
            part = rows[rows["step"] == step]
            doc.heading(step_title, 4)
            if part["paper"].isna().all():
                doc.text("The paper reports no time for this step here; ours:")
            doc.table(pca_index(part, {"paper": "paper", "ours": "ours", "difference": "difference"}), ".3f")
    return doc


# --- collections without labels ----------------------------------------------------------------------


def collections_table(summary: Summary, split: str) -> pd.DataFrame:
    """Collections without labels: each search's recall@k against exact search and its median time (ms)."""
    frame = summary.collections
    if frame.empty or not (frame["split"] == split).any():
        return pd.DataFrame()
    rows = frame[frame["split"] == split]
    rows.index = [f"{r.dataset} / {r.backbone} / PCA {r.pca} / {r.k} clusters" for r in rows.itertuples()]
    top_k = top_k_of(frame)
    columns = {"images in the gallery": "n_train", "queries": "n_test", "clusters": "n_clusters"}
    for mode in MODE_TITLES:
        columns[f"recall@{top_k} {MODE_TITLES[mode].report}"] = f"recall_at_{top_k}_vs_exact_{mode}"
    table = columns_table(rows, columns)
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
