"""The answer to a query, defined once: what ``cbir query --json``, ``cbir serve`` and the API return.

:func:`cbir.search.query.answer_features` (and ``answer_image``, ``query_images``) builds these
models; ``cbir query`` prints them (:meth:`AnswerModel.to_json`, :func:`format_table`), and
``cbir serve``'s responses extend them with what only the server knows (thumbnails, right/wrong
marks, timings; :mod:`cbir.serve.schemas`), leaving out the files' paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

NEAREST_CLUSTER_TITLE = "nearest cluster"  # the clustered search without classes: an inverted file with one probe


class AnswerModel(BaseModel):
    """A part of an answer; its JSON form names ``class_name`` ``class``."""

    model_config = ConfigDict(populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        """The JSON form, as ``cbir query --json`` prints it and the server sends it."""
        return self.model_dump(mode="json", by_alias=True)


class NoMatchInfo(AnswerModel):
    """The cell's "no good match" distance and where it comes from
    (:func:`cbir.search.calibration.match_calibration`)."""

    distance: float | None = Field(
        description="the cell's calibrated 'no good match' distance: beyond it a result is more likely not relevant "
        "than relevant; null when the cell has no calibration (nothing is marked)"
    )
    precision: float | None = Field(
        description="share of relevant results within the distance, on the test queries it was calibrated on"
    )
    recall: float | None = Field(
        description="share of the relevant results (among the calibration's top-k) within the distance"
    )
    metric: str = Field(description="the metrics-file entry it comes from")
    source: str = Field(description="where the distance came from, or why there is none")


class ClusterInfo(AnswerModel):
    """One of a query's nearest clusters, in a collection without labels."""

    cluster: int = Field(description="the centroid's number in the cell's clusters file")
    distance: float = Field(description="distance from the query to the centroid")
    size: int = Field(description="gallery images in the cluster")


class Match(AnswerModel):
    """One ranked gallery image of a labelled cell: its class and its "no good match" mark."""

    rank: int
    id: str
    path: str = Field(description="the image file, as the gallery records it")
    class_name: str = Field(alias="class")
    distance: float
    similarity: float | None = Field(
        default=None,
        description="the response's `similarity`: cosine similarity (1 = same direction) in a normalised space "
        "or with the cosine metric, else the estimated probability that the result is relevant; null when the "
        "cell has neither",
    )
    good_match: bool | None = Field(
        default=None,
        description="distance <= no_match.distance: more likely relevant than not; false: marked 'no good match'; "
        "null when the cell has no calibrated distance",
    )


class ClusterMatch(AnswerModel):
    """One ranked gallery image of a collection without labels: its cluster, no class and no mark."""

    rank: int
    id: str
    path: str = Field(description="the image file, as the gallery records it")
    cluster: int = Field(description="the cluster of the image")
    distance: float
    similarity: float | None = Field(
        default=None,
        description="cosine similarity (1 = same direction) in a normalised space or with the cosine metric; null "
        "otherwise (a collection without labels has no calibrated relevance)",
    )


class FeedbackInfo(AnswerModel):
    """The round of relevance feedback an answer ranked with (:mod:`cbir.search.feedback`)."""

    method: Literal["rocchio", "learned"] = Field(description="how the marks changed the ranking")
    relevant: int = Field(description="gallery images marked relevant")
    irrelevant: int = Field(description="gallery images marked not relevant")
    searched_class: str | None = Field(
        default=None,
        description="the class the clustered and class searches looked in: most of the relevant marks' (the "
        "predicted class while none is marked); null without labels",
    )


MatchT = TypeVar("MatchT", bound=Match)
ClusterMatchT = TypeVar("ClusterMatchT", bound=ClusterMatch)


class LabelledAnswer(AnswerModel, Generic[MatchT]):
    """The answer of a labelled cell: the predicted class and the top-k of each search mode."""

    predicted_class: str
    probability: float
    space: str = Field(description="the embedding space every search ranked in")
    similarity: Literal["cosine", "relevance"] | None = Field(
        description="what each result's similarity is: cosine, or relevance (the estimated probability that a "
        "result is relevant, calibrated in the evaluation); null: none"
    )
    no_match: NoMatchInfo = Field(description="the distance beyond which results are marked 'no good match'")
    results: dict[str, list[MatchT]] = Field(description="top-k per mode: clustered, class, global")
    feedback: FeedbackInfo | None = Field(default=None, description="the marks the ranking used; null: none")


class CollectionAnswer(AnswerModel, Generic[ClusterMatchT]):
    """The answer for a collection without labels: the nearest clusters, no predicted class, no marks."""

    space: str = Field(description="the embedding space every search ranked in")
    similarity: Literal["cosine"] | None = Field(description="what each result's similarity is; null: none")
    no_match: NoMatchInfo = Field(description="always without a distance: it is calibrated on labels")
    nearest_clusters: list[ClusterInfo] = Field(description="the query's nearest centroids, nearest first")
    results: dict[str, list[ClusterMatchT]] = Field(
        description="top-k per mode: clustered (the nearest cluster's images), global"
    )
    feedback: FeedbackInfo | None = Field(default=None, description="the marks the ranking used; null: none")


Answer = LabelledAnswer[Match] | CollectionAnswer[ClusterMatch]


@dataclass(frozen=True)
class FileAnswer:
    """One query file of ``cbir query``: its answer, or why it could not be read."""

    path: Path
    answer: Answer | None = None
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        """As ``cbir query --json`` prints it: ``query`` (the file), then the answer's fields or ``error``."""
        found = {"error": self.error} if self.answer is None else self.answer.to_json()
        return {"query": str(self.path), **found}


def format_table(answers: Sequence[FileAnswer]) -> str:
    """Human-readable results: one block per query, one line per result."""
    lines = []
    for answer in answers:
        lines.append(f"query: {answer.path}")
        found = answer.answer
        if found is None:
            lines.append(f"  error: {answer.error}")
            continue
        if isinstance(found, CollectionAnswer):  # a collection without labels: no class, no marks
            lines.append(f"  nearest clusters: {describe_clusters(found.nearest_clusters)}")
        else:
            lines.append(f"  predicted class: {found.predicted_class} (p = {found.probability:.3f})")
        lines.append(f"  search space: {found.space}")
        if found.feedback is not None:
            info = found.feedback
            lines.append(
                f"  feedback: {info.method}, {info.relevant} relevant and {info.irrelevant} not relevant marked"
            )
        if found.no_match.distance is not None:
            lines.append(f"  no good match beyond distance {found.no_match.distance:.4f} ({found.no_match.source})")
        else:
            lines.append(f"  no good match: not marked ({found.no_match.source})")
        if isinstance(found, CollectionAnswer):
            lines.extend(_collection_results(found))
        else:
            lines.extend(_labelled_results(found))
    return "\n".join(lines)


def describe_clusters(clusters: Sequence[ClusterInfo]) -> str:
    """``4 (d = 1.2345, 17 images), 1 (d = ...)``: the nearest clusters of a query, nearest first."""
    return ", ".join(f"{c.cluster} (d = {c.distance:.4f}, {c.size} images)" for c in clusters)


def collection_mode_heading(mode: str) -> str:
    """A mode's heading in the table for a collection without labels, saying what it searched."""
    titles = {"clustered": f"{NEAREST_CLUSTER_TITLE} only", "global": "all images"}
    return f"{mode} ({titles[mode]})" if mode in titles else mode


def _labelled_results(answer: LabelledAnswer[Match]) -> list[str]:
    """The result lines of a labelled cell: each result's similarity, class and "no good match" mark."""
    kind = answer.similarity or "similarity"
    lines = []
    for mode, results in answer.results.items():
        lines.append(f"  {mode}:")
        lines.append(f"    {'rank':>4}  {'distance':>10}  {kind:>10}  {'class':<16} path")
        for r in results:
            score = "-" if r.similarity is None else f"{r.similarity:.3f}"
            mark = "  (no good match)" if r.good_match is False else ""
            lines.append(f"    {r.rank:>4}  {r.distance:>10.4f}  {score:>10}  {r.class_name:<16} {r.path}{mark}")
    return lines


def _collection_results(answer: CollectionAnswer[ClusterMatch]) -> list[str]:
    """The result lines of a collection without labels: each result's cluster; a similarity column only if any."""
    kind = answer.similarity
    score_header = f"  {kind:>10}" if kind else ""
    lines = []
    for mode, results in answer.results.items():
        lines.append(f"  {collection_mode_heading(mode)}:")
        lines.append(f"    {'rank':>4}  {'distance':>10}{score_header}  {'cluster':>7}  path")
        for r in results:
            score = "" if not kind else f"  {'-' if r.similarity is None else format(r.similarity, '.3f'):>10}"
            lines.append(f"    {r.rank:>4}  {r.distance:>10.4f}{score}  {r.cluster:>7}  {r.path}")
    return lines
