"""The summary of a run: every grid cell's metrics in one table, and the tables, plots and pages asked for.

What each table, plot and page holds is in :mod:`cbir.report.tables`, :mod:`cbir.report.plots` and
:mod:`cbir.report.pages` (with the registries the workflow names its outputs after); the report's
pages (HTML, shown by ``snakemake --report``) are made of the same pieces as the Markdown tables.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from cbir.data.manifest import write_csv_table
from cbir.io import atomic_path
from cbir.report.doc import Doc, html_page
from cbir.report.feedback import feedback_table
from cbir.report.metrics import Summary, gather_metrics, gather_spaces, split_collections
from cbir.report.pages import COLLECTION_TABLES, PAGES, PLOTS, TABLES
from cbir.report.plots import placeholder_plot


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
    feedback_csv: str | Path | None = None,
) -> pd.DataFrame:
    """metrics.csv (the paper's space), spaces.csv (every space), feedback.csv (the simulated user's rounds of
    relevance feedback, from the spaces' metrics), and exactly the tables, plots and pages asked for.

    ``tables`` maps (table, split, "csv" or "md") to its path, a table of :data:`~cbir.report.pages.TABLES`
    written both as CSV (wide) and as Markdown (readable); ``plots`` maps a plot of
    :data:`~cbir.report.pages.PLOTS` to its path; ``pages`` maps (page of :data:`~cbir.report.pages.PAGES`,
    split or "", "html" or "md") to its path.
    ``settings`` (:func:`cbir.report.paper.summary_settings`) say which datasets are compared with the
    paper's and what the deviations name; ``datasets`` is datasets.csv.
    """
    frame = gather_metrics(metric_paths)
    write_csv_table(frame.drop(columns=["library_versions"], errors="ignore"), metrics_csv)
    spaces = gather_spaces(frame, space_metric_paths)
    if spaces_csv is not None:
        write_csv_table(spaces.drop(columns=["library_versions"], errors="ignore"), spaces_csv)
    if feedback_csv is not None:
        write_csv_table(feedback_table(spaces), feedback_csv)
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
            placeholder_plot("no labelled dataset in this run", path)
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
