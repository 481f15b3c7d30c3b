"""The report's pages, and the registries of what the summary writes: its tables, plots and pages.

The workflow imports :data:`TABLES`, :data:`PLOTS`, :data:`PAGES` and :func:`page_files` when the
Snakefile is parsed, so nothing here (nor below it) imports matplotlib at import time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from cbir.report import paper
from cbir.report.claims import claim_table, semantic_verdict, speed_verdict
from cbir.report.doc import Doc
from cbir.report.feedback import plot_feedback
from cbir.report.metrics import Summary, column_label
from cbir.report.plots import plot_accuracy, plot_latency, plot_map, plot_paper_accuracy, plot_recall_vs_speedup
from cbir.report.tables import (
    SummaryTable,
    accuracy_table,
    collections_doc,
    collections_table,
    no_comparison,
    paper_accuracy_doc,
    paper_accuracy_table,
    paper_time_doc,
    paper_time_table,
    quality_doc,
    quality_table,
    spaces_doc,
    spaces_table,
    timing_doc,
    timing_table,
)


def paper_comparison_page(summary: Summary, split: str | None = None) -> Doc:
    """The paper's tables beside ours, every split, with the plot: the report's first page."""
    doc = Doc()
    if not summary.matched:
        return doc.text(no_comparison())
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
    claims = claim_table(summary.frame)
    labels = column_label(claims)
    for label in dict.fromkeys(labels):
        cells = claims[labels == label]
        doc.heading(f"{label} ({len(cells)} grid cells)")
        verdict, details = speed_verdict(cells)
        doc.text(f"**Clustering makes search faster**: {verdict}.").items(details)
        verdict, details = semantic_verdict(cells, summary.top_k)
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
    "feedback_rounds": plot_feedback,
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
