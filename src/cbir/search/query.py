"""Query a trained grid cell with your own images: the machinery behind ``cbir query`` and ``cbir serve``.

A model folder is one grid cell, ``results/<dataset>/<backbone>/<split>/<pca>/`` (see
:mod:`cbir.search.cell`). The backbone is rebuilt from the settings recorded in the gallery, so a query
image goes through exactly what the gallery went through. The answers are the models of
:mod:`cbir.search.answer`: from raw features (:func:`answer_features`), a decoded image
(:func:`answer_image`) or image files and folders (:func:`query_images`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cbir.data.ignore import list_folder
from cbir.search.answer import (
    Answer,
    ClusterInfo,
    ClusterMatch,
    CollectionAnswer,
    FeedbackInfo,
    FileAnswer,
    LabelledAnswer,
    Match,
    NoMatchInfo,
)
from cbir.search.calibration import finite_number, match_calibration, similarities, similarity_kind
from cbir.search.cell import Cell, ModelFolderError
from cbir.search.feedback import FeedbackSettings, Marks
from cbir.search.index import MODES
from cbir.search.refine import gallery_rows, refined_query, search_refined

if TYPE_CHECKING:
    import torch
    from PIL import Image


class QueryError(ValueError):
    """A query image cannot be used; the message names it and says why."""


def collect_query_paths(arguments: Sequence[str | Path]) -> list[Path]:
    """Image files named directly, plus the photos inside named folders (recursively, sorted), listed as the
    manifest lists a dataset's folder (:func:`cbir.data.ignore.list_folder`)."""
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = list_folder(path).files  # what the manifest would index: no sidecar, OS file or RAW twin
            if not found:
                raise QueryError(f"folder '{path}' holds no image files")
            paths.extend(found)
        elif path.is_file():
            paths.append(path)
        else:
            raise QueryError(f"query '{path}' does not exist")
    return paths


class Embedder:
    """The gallery's network, ready to embed query images: prepared once from the feature record, reused per call.

    Preprocessing runs in the caller's thread; the forward pass holds a lock, so one embedder can
    serve concurrent requests (the network is read-only, but a single forward at a time keeps
    memory and CPU threads bounded).
    """

    def __init__(self, record: dict[str, Any], device: str = "auto", root: str | Path | None = None) -> None:
        # here, not at the top: it imports torch, seconds of start-up that not every importer needs
        from cbir.extraction.network import RecordError, prepare_from_record

        try:
            self.prepared = prepare_from_record(record, device, root)
        except RecordError as error:
            raise ModelFolderError(f"{error}; rerun the workflow to rebuild the cell") from error
        self._lock = threading.Lock()

    @property
    def notice(self) -> str | None:
        """Why queries cannot run exactly as the gallery was extracted (None: they do)."""
        return self.prepared.notice

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The network's input tensor (3 x size x size) for a decoded RGB image."""
        return self.prepared.preprocess(image)

    def forward(self, batch: torch.Tensor) -> np.ndarray:
        """Features (batch, dim) of preprocessed images, one forward pass at a time."""
        with self._lock:
            return self.prepared.embed(batch)

    def embed_paths(self, paths: Sequence[Path]) -> tuple[np.ndarray, list[str | None]]:
        """Features of each image file; unreadable images get a row of NaN and an error message."""

        rows: list[np.ndarray | None] = []
        errors: list[str | None] = []
        for path in paths:
            try:
                tensor = self.preprocess(self.prepared.decode(path))
            except Exception as error:  # PIL raises many types for a bad file
                rows.append(None)
                errors.append(f"cannot read '{path}' as an image: {type(error).__name__}: {error}")
                continue
            rows.append(self.forward(tensor[None])[0])
            errors.append(None)
        dim = next((len(r) for r in rows if r is not None), 0)
        features = np.full((len(paths), dim), np.nan, dtype=np.float32)
        for i, row in enumerate(rows):
            if row is not None:
                features[i] = row
        return features, errors


NEAREST_CLUSTERS = 3  # nearest centroids named per query of a collection without labels


def elapsed_ms(start: float) -> float:
    """Milliseconds since ``start`` (a :func:`time.perf_counter` reading)."""
    return (time.perf_counter() - start) * 1e3


def shown_modes(model: Cell, modes: Sequence[str]) -> tuple[str, ...]:
    """The requested modes worth answering: without labels the class search is the global one, so it is left out."""
    if model.labelled:
        return tuple(modes)
    shown = tuple(mode for mode in modes if mode != "class")
    if modes and not shown:
        raise QueryError("a collection without labels has no class search (it is the global one): use global")
    return shown


def nearest_clusters(model: Cell, reduced: np.ndarray, n: int = NEAREST_CLUSTERS) -> list[list[ClusterInfo]]:
    """For each projected query, its ``n`` nearest centroids (number, distance, gallery images), nearest first."""
    index = model.models.index
    distances = index.centroid_distances(model.models.embedding.transform(reduced))
    sizes = np.bincount(index.assignments, minlength=len(index.centroids))
    nearest = np.argsort(distances, axis=1, kind="stable")[:, :n]
    return [
        [ClusterInfo(cluster=int(c), distance=float(distances[row, c]), size=int(sizes[c])) for c in nearest[row]]
        for row in range(len(reduced))
    ]


def answer_features(
    model: Cell,
    features: np.ndarray,
    top_k: int = 5,
    modes: Sequence[str] = MODES,
    timings: dict[str, float] | None = None,
    calibration: dict[str, Any] | None = None,
    feedback: Feedback | None = None,
) -> list[Answer]:
    """The answer (:mod:`cbir.search.answer`) for each row of raw backbone features: predicted class and
    top-k results per mode.

    A collection without labels (``model.labelled`` False) has no predicted class and no class
    search: its answers name the ``nearest_clusters`` instead, and its results their ``cluster``
    rather than a class and a ``good_match`` (there is no calibration either).

    Each result has its ``distance``, its ``similarity`` (see :func:`similarity_kind`; None where
    the cell has none) and ``good_match``: distance <= the cell's calibrated "no good match"
    distance (None when the cell has no calibration). Each answer names the similarity
    (``similarity``) and the threshold with its source (``no_match``, :func:`match_calibration`,
    read from the cell's metrics unless ``calibration`` is given).

    ``feedback``: a round of relevance feedback (one query row only; :class:`Feedback`).
    ``timings``, when given, receives the milliseconds of each step: ``project_predict`` and
    ``search_<mode>``.
    """
    if features.shape[1] != model.feature_dim:
        raise QueryError(
            f"query features have {features.shape[1]} dimensions but the model in '{model.folder}' expects "
            f"{model.feature_dim}: the model was built with backbone "
            f"{ {key: model.record.get(key) for key in ('arch', 'weights', 'pooling', 'image_size')} }"
        )
    start = time.perf_counter()
    reduced = model.models.projection.transform(features)
    return answer_reduced(model, reduced, top_k, modes, timings, calibration, feedback, started=start)


@dataclass(frozen=True)
class Feedback:
    """A round of relevance feedback for one query: the marked gallery rows (:func:`cbir.search.refine.marks_from_ids`),
    the method's settings, and gallery rows never returned (a "more like this" image itself)."""

    marks: Marks = field(default_factory=Marks)
    settings: FeedbackSettings = field(default_factory=FeedbackSettings)
    exclude: tuple[int, ...] = ()


def answer_reduced(
    model: Cell,
    reduced: np.ndarray,
    top_k: int = 5,
    modes: Sequence[str] = MODES,
    timings: dict[str, float] | None = None,
    calibration: dict[str, Any] | None = None,
    feedback: Feedback | None = None,
    started: float | None = None,
) -> list[Answer]:
    """:func:`answer_features` from projected features (the MLP's input), as the gallery holds them."""
    steps = timings if timings is not None else {}
    start = time.perf_counter() if started is None else started
    probabilities = model.models.mlp.predict_proba(reduced)
    predicted = model.models.mlp.classes[np.argmax(probabilities, axis=1)]
    steps["project_predict"] = elapsed_ms(start)
    if feedback is not None and len(reduced) != 1:
        raise QueryError(f"relevance feedback refines one query at a time, not {len(reduced)}")
    searchers = model.models.searchers()
    found = {}
    refined = None
    if feedback is not None:
        start = time.perf_counter()
        refined = refined_query(model, reduced[0], int(predicted[0]), feedback.marks, feedback.settings)
        steps["refine"] = elapsed_ms(start)
    for mode in shown_modes(model, modes):
        start = time.perf_counter()
        if refined is None:
            found[mode] = searchers[mode](reduced, predicted, top_k)
        else:
            indices, distances = search_refined(model, refined, mode, feedback.marks, feedback.settings, top_k,
                                                feedback.exclude)  # fmt: skip
            found[mode] = indices[None], distances[None]
        steps[f"search_{mode}"] = elapsed_ms(start)
    calibration = match_calibration(model) if calibration is None else calibration
    kind = similarity_kind(model, calibration)
    scores = {mode: similarities(d, kind, model.models.index.metric, calibration) for mode, (_, d) in found.items()}
    threshold = calibration["distance"]
    no_match = {key: calibration[key] for key in NoMatchInfo.model_fields}
    clusters = None if model.labelled else nearest_clusters(model, reduced)
    info = None
    if feedback is not None and not feedback.marks.empty:
        searched = model.class_names[refined.searched_class] if model.labelled else None
        info = FeedbackInfo(method=feedback.settings.method, relevant=len(feedback.marks.relevant),
                            irrelevant=len(feedback.marks.irrelevant), searched_class=searched)  # fmt: skip
    answers: list[Answer] = []
    for row in range(len(reduced)):
        results = {
            mode: [
                _match(model, rank + 1, int(index), float(distance), score, threshold)
                for rank, (index, distance, score) in enumerate(
                    zip(indices[row], distances[row], scores[mode][row], strict=True)
                )
                if index >= 0
            ]
            for mode, (indices, distances) in found.items()
        }
        shared = {"space": model.space, "similarity": kind, "no_match": NoMatchInfo(**no_match), "results": results,
                  "feedback": info}  # fmt: skip
        if clusters is None:
            predicted_class = model.class_names[int(predicted[row])]
            probability = float(probabilities[row].max())
            answers.append(LabelledAnswer[Match](predicted_class=predicted_class, probability=probability, **shared))
        else:
            answers.append(CollectionAnswer[ClusterMatch](nearest_clusters=clusters[row], **shared))
    return answers


def answer_gallery_image(
    model: Cell,
    image_id: str,
    top_k: int = 5,
    modes: Sequence[str] = MODES,
    timings: dict[str, float] | None = None,
    calibration: dict[str, Any] | None = None,
    feedback: Feedback | None = None,
) -> Answer:
    """ "More like this": the answer for a gallery image as the query (by its id; no image is read), the image
    itself left out of its results; with ``feedback``, after a round of marks."""
    [row] = gallery_rows(model, [image_id], "gallery_id")
    if model.gallery_reduced is None:
        raise QueryError(f"the model in '{model.folder}' was loaded without its gallery's features")
    feedback = feedback or Feedback()
    feedback = Feedback(feedback.marks, feedback.settings, (*feedback.exclude, int(row)))
    [answer] = answer_reduced(model, model.gallery_reduced[row : row + 1], top_k, modes, timings, calibration, feedback)
    return answer


def search_features(
    model: Cell,
    features: np.ndarray,
    top_k: int = 5,
    modes: Sequence[str] = MODES,
    timings: dict[str, float] | None = None,
    calibration: dict[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The answers of :func:`answer_features` in their JSON form (plain dicts, as ``cbir query --json`` has them)."""
    return [answer.to_json() for answer in answer_features(model, features, top_k, modes, timings, calibration)]


def _match(
    model: Cell, rank: int, index: int, distance: float, score: float, threshold: float | None
) -> Match | ClusterMatch:
    """One ranked gallery image: its class and calibrated mark, or in a collection without labels its cluster."""
    image = {"rank": rank, "id": str(model.gallery_ids[index]), "path": str(model.gallery_paths[index]),
             "distance": distance, "similarity": finite_number(score)}  # fmt: skip
    if not model.labelled:
        return ClusterMatch(cluster=int(model.models.index.assignments[index]), **image)
    class_name = model.class_names[int(model.gallery_labels[index])]
    return Match(class_name=class_name, good_match=None if threshold is None else bool(distance <= threshold), **image)


def describe_space(model: Cell) -> str:
    """Which embedding space a loaded cell searches in, its settings and re-ranking, and how they were chosen
    (for the CLI and the server's log)."""
    mean_ap = model.saved_metrics().get("map_global_reranked" if model.rerank.active else "map_global")
    measured = f"; test mAP {mean_ap:.3f}" if isinstance(mean_ap, float) else ""
    return f"searching in {model.describe_setting()}{measured} (--space chooses another)"


def answer_image(
    model: Cell,
    embedder: Embedder,
    image: Image.Image,
    top_k: int = 5,
    modes: Sequence[str] = MODES,
    timings: dict[str, float] | None = None,
    calibration: dict[str, Any] | None = None,
) -> Answer:
    """The answer for one decoded RGB image (a PIL image); ``timings`` also receives ``preprocess`` and
    ``forward``, before the steps of :func:`answer_features`."""
    steps = timings if timings is not None else {}
    start = time.perf_counter()
    tensor = embedder.preprocess(image)
    steps["preprocess"] = elapsed_ms(start)
    start = time.perf_counter()
    features = embedder.forward(tensor[None])
    steps["forward"] = elapsed_ms(start)
    [answer] = answer_features(model, features, top_k, modes, steps, calibration)
    return answer


def query_images(model: Cell, arguments: Sequence[str | Path], top_k: int = 5, modes: Sequence[str] = MODES,
                 device: str = "auto", embedder: Embedder | None = None) -> list[FileAnswer]:  # fmt: skip
    """Run image files or folders through the model; unreadable images are reported, not fatal."""
    paths = collect_query_paths(arguments)
    features, errors = (embedder or Embedder(model.record, device, model.root)).embed_paths(paths)
    readable = [i for i, error in enumerate(errors) if error is None]
    answers = (
        dict(zip(readable, answer_features(model, features[readable], top_k, modes), strict=True)) if readable else {}
    )
    return [FileAnswer(path, answers.get(i), errors[i]) for i, path in enumerate(paths)]
