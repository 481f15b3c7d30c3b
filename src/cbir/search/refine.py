"""A query as the user refines it in a loaded cell: gallery images named by id, marked relevant or not, and
"more like this" (a gallery image as the query). The methods are those of :mod:`cbir.search.feedback`; this
module maps ids to gallery rows, picks the class and cluster searched, and runs each search mode."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cbir.search.cell import Cell
from cbir.search.feedback import MAX_MARKS, FeedbackSettings, Marks, feedback_search, refine_query


class UnknownIdsError(ValueError):
    """Ids that name no gallery image of the cell; the message lists them."""

    def __init__(self, ids: Sequence[str], field: str) -> None:
        shown = ", ".join(f"'{i}'" for i in ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        super().__init__(f"{field}: no gallery image with id {shown} in this model")
        self.ids = list(ids)
        self.field = field


def gallery_rows(model: Cell, ids: Sequence[str], field: str = "ids") -> np.ndarray:
    """The gallery rows of ``ids`` (in their order); :class:`UnknownIdsError` names those the gallery lacks."""
    position = model.gallery_positions
    unknown = [i for i in ids if i not in position]
    if unknown:
        raise UnknownIdsError(unknown, field)
    return np.array([position[i] for i in ids], dtype=np.int64)


def marks_from_ids(model: Cell, relevant_ids: Sequence[str] = (), irrelevant_ids: Sequence[str] = ()) -> Marks:
    """The marks of a round from gallery ids; more than :data:`MAX_MARKS` in all, or unknown ids, are refused."""
    if len(relevant_ids) + len(irrelevant_ids) > MAX_MARKS:
        raise ValueError(
            f"{len(relevant_ids) + len(irrelevant_ids)} marked images: at most {MAX_MARKS} relevant and not relevant "
            "together (start over, or mark fewer)"
        )
    return Marks(
        gallery_rows(model, list(relevant_ids), "relevant_ids"),
        gallery_rows(model, list(irrelevant_ids), "irrelevant_ids"),
    )


def cell_feedback_settings(metrics: Mapping[str, Any]) -> FeedbackSettings:
    """The feedback settings the cell's evaluation recorded (``feedback_settings``), or the defaults."""
    recorded = metrics.get("feedback_settings")
    try:
        return FeedbackSettings.from_mapping(json.loads(recorded) if isinstance(recorded, str) else None)
    except (ValueError, TypeError):  # a record this version does not read: the defaults
        return FeedbackSettings()


@dataclass(frozen=True)
class RefinedQuery:
    """One query vector in the cell's space, refined by a round of marks."""

    query: np.ndarray  # the query as the index holds vectors (prepared)
    refined: np.ndarray  # Rocchio's refined query
    searched_class: int  # the class the clustered and class searches look in


def refined_query(
    model: Cell, reduced: np.ndarray, predicted: int, marks: Marks, settings: FeedbackSettings
) -> RefinedQuery:
    """The query (one projected row) refined by ``marks``; its class is most of the relevant marks' (ties: the
    predicted class if among them, else the lowest), the ``predicted`` one while nothing is marked relevant."""
    index = model.models.index
    query = index.prepare(model.models.embedding.transform(np.atleast_2d(reduced)))[0]
    normalised = model.models.embedding.normalised or index.metric == "cosine"
    refined = refine_query(query, index.gallery, marks, settings, normalised)
    searched = int(predicted)
    if model.labelled and len(marks.relevant):
        counts = np.bincount(model.gallery_labels[marks.relevant])
        best = np.flatnonzero(counts == counts.max())
        searched = searched if searched in best else int(best[0])
    return RefinedQuery(query, refined, searched)


def _nearest_cluster_members(model: Cell, query: RefinedQuery, exclude: Sequence[int]) -> np.ndarray:
    """The members of the searched class's cluster nearest the refined query; where that cluster holds nothing
    but excluded images (a "more like this" image alone in its cluster), the next nearest one's."""
    index = model.models.index
    centroids = np.flatnonzero(np.asarray(index.centroid_labels) == query.searched_class)
    distances = np.linalg.norm(index.centroids[centroids] - query.refined, axis=1)
    members = np.empty(0, dtype=np.int64)
    for cluster in centroids[np.argsort(distances, kind="stable")]:
        members = index.members("clustered", int(cluster))
        if len(np.setdiff1d(members, np.asarray(exclude, dtype=np.int64))):
            return members
    return members


def search_refined(
    model: Cell, query: RefinedQuery, mode: str, marks: Marks, settings: FeedbackSettings, top_k: int,
    exclude: Sequence[int] = (),
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Top-k gallery rows (padded with -1) of one search mode after a round of marks, with their distances to
    the query itself (not to the refined one): an identical photo stays at 0, and the "no good match" distance
    keeps its meaning. The clustered search looks in the searched class's cluster nearest the refined query."""
    index = model.models.index
    if mode == "clustered":
        members = _nearest_cluster_members(model, query, exclude)
    elif mode == "class":
        members = index.members("class", query.searched_class)
    else:  # global, and the faiss searches over all images
        members = index.members("global", 0)
    rows = feedback_search(query.query, query.refined, index.gallery, members, marks, settings, top_k, exclude)
    difference = index.gallery[rows] - query.query
    distances = index.reported_distances(np.einsum("ij,ij->i", difference, difference))
    indices = np.full(top_k, -1, dtype=np.int64)
    found = np.full(top_k, np.inf)
    indices[: len(rows)], found[: len(rows)] = rows, distances
    return indices, found
