"""Montages: queries and their results, and groups of duplicates, drawn as rows of thumbnails."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from cbir.data.images import load_rgb_image
from cbir.data.split import split_ids
from cbir.io import load_features
from cbir.report.figures import pyplot, save_figure
from cbir.search.cell import load_cell
from cbir.search.duplicates import resolve_path
from cbir.search.index import MODE_TITLES
from cbir.search.query import search_features


def draw_tile(ax, path: str | None, caption: str, correct: bool | None, size: int = 160) -> None:
    """One thumbnail with its caption, framed green (right), red (wrong) or black; blank without a path."""
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


def _guess(answer: dict) -> str:
    """What the model made of a query: its predicted class, or without labels its nearest cluster."""
    if "predicted_class" in answer:
        return f"predicted {answer['predicted_class']}"
    return f"nearest cluster {answer['nearest_clusters'][0]['cluster']}"


def _group(result: dict) -> str:
    """A result's class, or without labels its cluster."""
    return result["class"] if "class" in result else f"cluster {result['cluster']}"


def draw_montage(
    queries: list[dict],
    out_path: str | Path,
    modes: dict[str, str] | None = None,
    true_classes: list[str | None] | None = None,
) -> None:
    """The paper's figure: each query, then its top-k per mode, tiles labelled and marked right/wrong.

    ``queries`` are answers from :func:`cbir.search.query.search_features` with a ``query`` path; a
    result is right when its class equals the query's true class (when known).
    """
    modes = modes or {mode: MODE_TITLES[mode].short for mode in ("clustered", "class")}
    # a collection without labels is not searched by class: its answers have no such rows
    modes = {mode: title for mode, title in modes.items() if any(mode in q["results"] for q in queries)} or modes
    true_classes = true_classes or [None] * len(queries)
    top_k = max((len(q["results"].get(m, [])) for q in queries for m in modes), default=1)
    n_rows = len(queries) * len(modes)
    fig, axes = pyplot().subplots(n_rows, top_k + 1, figsize=(1.9 * (top_k + 1), 2.2 * n_rows), squeeze=False)
    for q, (answer, truth) in enumerate(zip(queries, true_classes, strict=True)):
        for m, (mode, title) in enumerate(modes.items()):
            row = axes[q * len(modes) + m]
            caption = f"query: {truth}" if truth else "query"
            draw_tile(row[0], answer["query"] if m == 0 else None, f"{caption}\n{_guess(answer)}", None)
            results = answer["results"].get(mode, [])
            for r in range(top_k):
                result = results[r] if r < len(results) else None
                correct = None if result is None or truth is None else result["class"] == truth
                label = f"{r + 1}. {_group(result)}\nd = {result['distance']:.3g}" if result else ""
                draw_tile(row[r + 1], result["path"] if result else None, label, correct)
            row[1].set_ylabel(title, fontsize=9, fontweight="bold")  # names the row's retrieval mode
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)


def montage_for_cell(
    cell_folder: str | Path,
    features_h5: str | Path,
    split_csv: str | Path,
    out_path: str | Path,
    *,
    k: int,
    n_queries: int = 3,
    top_k: int = 5,
    metric: str = "euclidean",
) -> None:
    """The montage of ``n_queries`` fixed test images (spread evenly over the test list)."""
    model = load_cell(cell_folder, k=k, metric=metric, rerank=False)  # the paper's search
    test_ids = split_ids(split_csv, "test")
    picks = np.linspace(0, len(test_ids) - 1, num=min(n_queries, len(test_ids))).round().astype(int)
    queries = load_features(features_h5, [test_ids[i] for i in picks])
    answers = search_features(model, queries.features, top_k, ("clustered", "class"))
    for answer, path in zip(answers, queries.paths, strict=True):
        answer["query"] = str(path)
    truths = [model.class_names[int(label)] for label in queries.labels]
    draw_montage(answers, out_path, true_classes=truths)


def draw_groups(
    records: Sequence[dict[str, Any]], root: Path, out_path: str | Path, max_groups: int = 8, max_images: int = 8
) -> None:
    """The largest groups as a figure: one row per group, one thumbnail per image (as ``cbir query --montage``)."""
    plt = pyplot()
    shown = list(records[:max_groups])
    if not shown:
        fig, ax = plt.subplots(figsize=(4, 1))
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no duplicates found", ha="center", va="center")
    else:
        columns = min(max_images, max(r["size"] for r in shown))
        fig, axes = plt.subplots(len(shown), columns, figsize=(1.9 * columns, 2.2 * len(shown)), squeeze=False)
        for row, record in zip(axes, shown, strict=True):
            for column, ax in enumerate(row):
                image = record["images"][column] if column < len(record["images"]) else None
                path = str(resolve_path(image["path"], root)) if image else None
                caption = f"{image['id']}\n{image['class'] or ''}" if image else ""
                draw_tile(ax, path, caption[-40:], None)
            mixed = ", mixed" if record["mixed_classes"] else ""
            row[0].set_ylabel(
                f"#{record['group']} {record['kind']} ({record['size']}{mixed})\nmax d {record['max_distance']:.3g}",
                fontsize=8,
                fontweight="bold",
            )
    fig.tight_layout()
    save_figure(fig, out_path, dpi=100)
