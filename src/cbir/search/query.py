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
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from cbir.data.ignore import list_folder
from cbir.layout import metrics_name
from cbir.search.answer import (
    Answer,
    ClusterInfo,
    ClusterMatch,
    CollectionAnswer,
    FileAnswer,
    LabelledAnswer,
    Match,
    NoMatchInfo,
)
from cbir.search.cell import Cell, ModelFolderError
from cbir.search.index import MODES

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


NO_MATCH_METRIC = "no_match_distance_global"
NEAREST_CLUSTERS = 3  # nearest centroids named per query of a collection without labels
UNLABELLED_NO_MATCH = "a collection without labels has no 'no good match' distance: it is calibrated on labels"


def elapsed_ms(start: float) -> float:
    """Milliseconds since ``start`` (a :func:`time.perf_counter` reading)."""
    return (time.perf_counter() - start) * 1e3


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and np.isfinite(value) else None


def match_calibration(model: Cell, metrics: dict[str, Any] | None = None) -> dict[str, Any]:
    """The cell's "no good match" distance and where it came from, for the answers' ``no_match``.

    Read from the cell's metrics (``metrics`` or :meth:`Cell.saved_metrics`): the evaluation fits
    it on the test queries' global top-k results (:func:`cbir.evaluation.metrics.calibrate_no_match`).
    ``distance`` is None, and nothing is marked, when the metrics lack it (no metrics file, or one
    written by an older cbir) or were computed with another distance metric than the search's.
    ``intercept`` and ``slope`` are the logistic fit of relevance on distance (None without one).
    """
    metrics = model.saved_metrics() if metrics is None else metrics
    name = metrics_name(model.k, model.space)
    metric = model.models.index.metric
    out: dict[str, Any] = {"distance": None, "precision": None, "recall": None, "metric": NO_MATCH_METRIC,
                           "intercept": None, "slope": None}  # fmt: skip
    if not model.labelled:
        out["source"] = UNLABELLED_NO_MATCH
    elif not metrics:
        out["source"] = f"no {name} in the model folder: no calibrated distance, no result is marked"
    elif _number(metrics.get(NO_MATCH_METRIC)) is None:
        out["source"] = (
            f"{name} has no {NO_MATCH_METRIC} (evaluated by an older cbir; rerun the workflow to calibrate it): "
            "no result is marked"
        )
    elif metrics.get("metric", metric) != metric:
        out["source"] = (
            f"{NO_MATCH_METRIC} in {name} was calibrated on {metrics['metric']} distances, but this search "
            f"uses {metric}: no result is marked"
        )
    else:
        out.update(
            distance=_number(metrics[NO_MATCH_METRIC]),
            precision=_number(metrics.get("no_match_precision_global")),
            recall=_number(metrics.get("no_match_recall_global")),
            intercept=_number(metrics.get("relevance_intercept_global")),
            slope=_number(metrics.get("relevance_slope_global")),
            source=(
                f"{NO_MATCH_METRIC} in {name}: where the estimated share of relevant results among the test "
                f"queries' global top-{metrics.get('top_k', '?')} results against the training images falls "
                "below 0.5"
            ),
        )
    return out


def similarity_kind(model: Cell, calibration: dict[str, Any]) -> str | None:
    """What ``similarity`` means for this cell: ``cosine`` (unit vectors or the cosine metric),
    ``relevance`` (raw space: the calibrated probability that a result is relevant), or None."""
    if model.models.index.metric == "cosine" or model.models.embedding.normalised:
        return "cosine"
    return "relevance" if calibration["intercept"] is not None and calibration["slope"] is not None else None


def similarities(distances: np.ndarray, kind: str | None, metric: str, calibration: dict[str, Any]) -> np.ndarray:
    """The similarity of each distance: cosine = 1 - d (cosine metric) or 1 - d²/2 (Euclidean on unit
    vectors), or the logistic estimate of relevance; NaN where there is none."""
    d = np.asarray(distances, dtype=np.float64)
    finite = np.isfinite(d)  # padding (a small cluster) has no similarity
    d = np.where(finite, d, 0.0)
    if kind == "cosine":
        score = np.clip(1.0 - d if metric == "cosine" else 1.0 - d**2 / 2.0, -1.0, 1.0)
    elif kind == "relevance":
        logit = calibration["intercept"] + calibration["slope"] * d
        score = 1.0 / (1.0 + np.exp(-np.clip(logit, -500, 500)))
    else:
        return np.full(d.shape, np.nan)
    return np.where(finite, score, np.nan)


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

    ``timings``, when given, receives the milliseconds of each step: ``project_predict`` and
    ``search_<mode>``.
    """
    if features.shape[1] != model.feature_dim:
        raise QueryError(
            f"query features have {features.shape[1]} dimensions but the model in '{model.folder}' expects "
            f"{model.feature_dim}: the model was built with backbone "
            f"{ {key: model.record.get(key) for key in ('arch', 'weights', 'pooling', 'image_size')} }"
        )
    steps = timings if timings is not None else {}
    start = time.perf_counter()
    reduced = model.models.projection.transform(features)
    probabilities = model.models.mlp.predict_proba(reduced)
    predicted = model.models.mlp.classes[np.argmax(probabilities, axis=1)]
    steps["project_predict"] = elapsed_ms(start)
    searchers = model.models.searchers()
    found = {}
    for mode in shown_modes(model, modes):
        start = time.perf_counter()
        found[mode] = searchers[mode](reduced, predicted, top_k)
        steps[f"search_{mode}"] = elapsed_ms(start)
    calibration = match_calibration(model) if calibration is None else calibration
    kind = similarity_kind(model, calibration)
    scores = {mode: similarities(d, kind, model.models.index.metric, calibration) for mode, (_, d) in found.items()}
    threshold = calibration["distance"]
    no_match = {key: calibration[key] for key in NoMatchInfo.model_fields}
    clusters = None if model.labelled else nearest_clusters(model, reduced)
    answers: list[Answer] = []
    for row in range(len(features)):
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
        shared = {"space": model.space, "similarity": kind, "no_match": NoMatchInfo(**no_match), "results": results}
        if clusters is None:
            predicted_class = model.class_names[int(predicted[row])]
            probability = float(probabilities[row].max())
            answers.append(LabelledAnswer[Match](predicted_class=predicted_class, probability=probability, **shared))
        else:
            answers.append(CollectionAnswer[ClusterMatch](nearest_clusters=clusters[row], **shared))
    return answers


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
             "distance": distance, "similarity": _number(score)}  # fmt: skip
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
