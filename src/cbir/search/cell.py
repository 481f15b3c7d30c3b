"""One grid cell, ``results/<dataset>/<backbone>/<split>/<pca>/``: the names of its artifacts, and loading them.

A cell holds the projection, the gallery (the projected training images with their ids, paths
and classes), the MLP, the intra-class clusters for one or more k and the metrics per k. The
workflow's rules take the names from here; the evaluation, ``cbir query`` and ``cbir serve``
load a cell with :func:`load_cell`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from cbir.fitting.chosen import Selection, read_selection
from cbir.fitting.kmeans import IntraClassClusters, load_clusters
from cbir.fitting.mlp import MlpModel, load_mlp, single_class_model
from cbir.fitting.pca import Projection, load_projection
from cbir.fitting.refit import WHEN_DUE, place_new_images
from cbir.fitting.rerank import NO_RERANK, Rerank
from cbir.fitting.spaces import RAW, Embedding, identity_embedding, load_embedding
from cbir.io import load_arrays
from cbir.layout import (
    CLASSIFIER,
    GALLERY,
    MODEL_FILES,
    PROJECTION,
    cell_place,
    clusters_name,
    embedding_name,
    metrics_name,
)
from cbir.search.index import MODES, FaissSearch, RetrievalIndex
from cbir.search.rerank import RerankedSearch

T = TypeVar("T")
Searcher = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def available_k(folder: str | Path, space: str = RAW) -> list[int]:
    """The k of every clusters file of ``space`` in the folder, ascending."""
    pattern = re.compile(re.escape(clusters_name("", space)[: -len(".h5")]) + r"(\d+)\.h5")
    return sorted(
        int(m.group(1)) for p in Path(folder).glob(clusters_name("*", space)) if (m := pattern.fullmatch(p.name))
    )


class ModelFolderError(ValueError):
    """The model folder cannot be used; the message says what is missing or wrong."""


# --- the models of a cell ---------------------------------------------------------------


@dataclass
class CellModels:
    """The projection and the MLP (on the projected features), and the searches in the cell's embedding space."""

    projection: Projection
    mlp: MlpModel
    index: RetrievalIndex  # its gallery and centroids are in the embedding space
    faiss: dict[str, FaissSearch] = field(default_factory=dict)
    embedding: Embedding = field(default_factory=identity_embedding)
    reranked: RerankedSearch | None = None  # the global search with the re-ranking validation chose

    def searchers(self) -> dict[str, Searcher]:
        """Every retrieval mode as f(reduced queries, predicted classes, top_k) -> (indices, distances).

        The queries are the projected features (what the MLP takes); each search maps them into
        the embedding space first, so a search's time includes that step.
        """
        embed = self.embedding.transform
        modes: dict[str, Searcher] = {
            mode: (lambda q, p, k, mode=mode: self.index.search(embed(q), mode, k, p)) for mode in MODES
        }
        if self.reranked is not None:
            modes["global"] = lambda q, p, k: self.reranked.search(embed(q), k)
        for kind, search in self.faiss.items():
            modes[f"faiss_{kind}"] = lambda q, p, k, search=search: search.search(embed(q), k)
        return modes


def build_models(
    projection: Projection,
    mlp: MlpModel,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    clusters: IntraClassClusters,
    *,
    metric: str = "euclidean",
    faiss_options: dict[str, Any] | None = None,
    seed: int = 0,
    embedding: Embedding | None = None,
    rerank: Rerank = NO_RERANK,
) -> CellModels:
    """The cell's searches over ``train_features`` (the projected training images) in ``embedding``'s space;
    ``clusters`` were fitted in that space."""
    embedding = embedding or identity_embedding()
    train_features = embedding.transform(train_features)
    index = RetrievalIndex(
        gallery=train_features,
        labels=train_labels,
        centroids=clusters.centroids,
        centroid_labels=clusters.centroid_labels,
        assignments=clusters.assignments,
        metric=metric,
    )
    faiss = {}
    if faiss_options and faiss_options.get("enabled"):
        for kind in ("flat", "ivf"):
            faiss[kind] = FaissSearch(
                train_features, kind, metric, faiss_options["nlist"], faiss_options["nprobe"], seed
            )
    reranked = RerankedSearch(index, rerank, embedding.normalised) if rerank.active else None
    return CellModels(projection, mlp, index, faiss, embedding, reranked)


# --- a cell loaded from its folder ----------------------------------------------------------


@dataclass(frozen=True)
class CellIdentity:
    """Which grid cell: recorded in the projection's and the gallery's attributes."""

    dataset: str
    backbone: str
    split: str
    pca: str

    def as_dict(self) -> dict[str, str]:
        return dataclasses.asdict(self)


@dataclass
class Cell:
    folder: Path
    k: int
    identity: CellIdentity
    record: dict[str, Any]  # the gallery's feature record: backbone, seed, precision, preprocessing
    class_names: list[str]
    gallery_ids: np.ndarray
    gallery_paths: np.ndarray
    gallery_labels: np.ndarray
    clusters: IntraClassClusters
    models: CellModels
    reduced_dim: int  # dimensions of the projected features (the MLP's input)
    space: str = RAW  # the embedding space every search ranks in
    labelled: bool = True  # False: a collection without labels (no classifier; one class, clusters over all)
    placed_since_fit: int = 0  # gallery images that joined kept clusters after their fit (update.refit: when_due)
    selection: Selection | None = None  # what validation chose (None: a cell from before cbir validated)
    gallery_reduced: np.ndarray | None = None  # the projected gallery (the MLP's input): "more like this" queries

    @property
    def rerank(self) -> Rerank:
        """The re-ranking the global search applies (validation's choice for the space, unless turned off)."""
        return self.models.reranked.rerank if self.models.reranked is not None else NO_RERANK

    def describe_setting(self) -> str:
        """The space searched, its settings and re-ranking, and how they were chosen, in one line."""
        if self.selection is None:
            return f"{self.space} (no validation recorded in this cell: rerun the workflow to choose by validation)"
        return self.selection.describe(self.space, self.rerank)

    @functools.cached_property
    def gallery_positions(self) -> dict[str, int]:
        """Each gallery id's row (ids named by a query's marks or "more like this"), built on first use."""
        return {str(image_id): row for row, image_id in enumerate(self.gallery_ids)}

    @property
    def root(self) -> Path:
        """The folder the workflow ran in (``<root>/results/<dataset>/...``), against which recorded paths resolve."""
        place = cell_place(self.folder)
        return place.dataset.root if place else Path.cwd()

    @property
    def feature_dim(self) -> int:
        """Dimensions of the raw backbone features the cell takes."""
        projection = self.models.projection
        return len(projection.mean) if projection.mean is not None else self.reduced_dim

    def saved_metrics(self) -> dict[str, Any]:
        """The cell's evaluation for this k and space (``metrics_k<k>.json``); empty before it has run."""
        path = self.folder / metrics_name(self.k, self.space)
        return json.loads(path.read_text()) if path.is_file() else {}


def fitted_spaces(folder: str | Path) -> list[str]:
    """The spaces fitted in a cell folder (an ``embedding_<space>.h5`` each), sorted; ``raw`` needs none."""
    prefix, suffix = embedding_name("*").split("*")
    return sorted(p.name[len(prefix) : -len(suffix)] for p in Path(folder).glob(embedding_name("*")))


def available_spaces(folder: str | Path, k: int) -> list[str]:
    """The spaces a cell can search in with k clusters: ``raw`` and every fitted space with its clusters."""
    return [RAW, *(s for s in fitted_spaces(folder) if (Path(folder) / clusters_name(k, s)).is_file())]


BEST = "best"


def best_space(folder: str | Path, k: int) -> tuple[str, float | None]:
    """The space validation chose inside the training split (:mod:`cbir.evaluation.validation`) and its
    validation mAP; ``raw`` and None for a cell without a validated choice, or whose chosen space lacks
    clusters for ``k``. The test split plays no part: its figures would flatter the space chosen on them."""
    return _best_of(read_selection(folder), folder, k)


def _best_of(selection: Selection | None, folder: str | Path, k: int) -> tuple[str, float | None]:
    if selection is None or not selection.validated or selection.chosen not in available_spaces(folder, k):
        return RAW, None
    return selection.chosen, selection.score()


def chosen_cell(cells: Sequence[Path]) -> Path:
    """Of cells fitted on the same training images with different PCA sizes, the one whose chosen setting
    scored highest on validation (each draws the same validation part: the same images, in the same order);
    a tie, or no validated cell, keeps the earlier."""

    def score(cell: Path) -> float:
        found = validation_score(cell)
        return float("-inf") if found is None else found

    return max(enumerate(cells), key=lambda item: (score(item[1]), -item[0]))[1]


def validation_score(cell: Path) -> float | None:
    """The validation figure of the cell's chosen setting (what :func:`chosen_cell` compares); None when the cell
    was not validated."""
    selection = read_selection(cell)
    return selection.score() if selection is not None and selection.validated else None


def read_identity(folder: Path, attrs: dict[str, Any]) -> CellIdentity:
    """Dataset, backbone, split and PCA from the gallery's attributes.

    A gallery written before cbir recorded them there (the PCA size was already) is named by its
    folder path instead, ``.../<dataset>/<backbone>/<split>/<pca>``.
    """
    names = [f.name for f in dataclasses.fields(CellIdentity)]
    from_path = dict(zip(names, ("", "", "", *folder.resolve().parts)[-4:], strict=True))
    return CellIdentity(**{name: str(attrs.get(name, from_path[name])) for name in names})


def _read_artifact(path: Path, loader: Callable[[Path], T]) -> T:
    """Load one artifact; a damaged or foreign file becomes a ModelFolderError naming it."""
    try:
        return loader(path)
    except (OSError, KeyError, ValueError) as error:
        raise ModelFolderError(
            f"'{path}' cannot be read as a cbir artifact ({type(error).__name__}: {error}); rerun the workflow "
            "to rebuild the cell"
        ) from error


def load_cell(
    folder: str | Path,
    k: int | None = None,
    metric: str = "euclidean",
    faiss_options: dict[str, Any] | None = None,
    seed: int = 0,
    space: str = RAW,
    rerank: bool = True,
) -> Cell:
    """Read a cell's artifacts once and build its models (k: the smallest available by default).

    ``space``: the embedding space to search in (``raw``, a fitted space of the cell, or ``best``:
    the one validation chose, see :func:`best_space`). ``rerank``: the global search re-ranked as
    validation chose for that space (the evaluation measures it without, and with, separately).

    An incomplete folder is refused with the names of what is missing; a damaged or outdated
    artifact, or clusters fitted on other images than the gallery, with what is wrong.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder '{folder}' does not exist")
    if space not in (BEST, RAW) and not (folder / embedding_name(space)).is_file():
        raise ModelFolderError(
            f"model folder '{folder}' has no embedding space '{space}' "
            f"(available: {', '.join(sorted({RAW, *fitted_spaces(folder)}))})"
        )
    labelled = _gallery_is_labelled(folder)
    missing = [name for name in MODEL_FILES if not (folder / name).is_file() and (labelled or name != CLASSIFIER)]
    ks = available_k(folder, RAW if space == BEST else space)
    if not ks:
        missing.append(clusters_name("<k>", RAW if space == BEST else space))
    if missing:
        raise ModelFolderError(
            f"model folder '{folder}' is incomplete: missing {', '.join(missing)} "
            "(expected a grid cell such as results/<dataset>/<backbone>/<split>/<pca>/ after a finished run)"
        )
    if k is None:
        k = ks[0]
    elif k not in ks:
        raise ModelFolderError(f"model folder '{folder}' has no clusters for k={k} (available: {ks})")
    selection = read_selection(folder)
    if space == BEST:
        space, _ = _best_of(selection, folder, k)
    gallery, attrs = _read_artifact(folder / GALLERY, load_arrays)
    record = attrs.get("backbone_attrs")
    if "class_names" not in attrs or not isinstance(record, dict):
        raise ModelFolderError(
            f"'{folder / GALLERY}' lacks the class names or the backbone settings: it was written by an "
            "older version of cbir; rerun the workflow to rebuild the cell"
        )
    clusters, cluster_ids, cluster_attrs = _read_artifact(folder / clusters_name(k, space), load_clusters)
    embedding = None if space == RAW else _read_artifact(folder / embedding_name(space), load_embedding)
    placed = 0
    if list(cluster_ids) != list(gallery["ids"]):
        if cluster_attrs.get("refit") != WHEN_DUE:
            raise ModelFolderError(f"'{folder / clusters_name(k, space)}' was fitted on other images than the gallery")
        # update.refit when_due: images added since the fit join the nearest kept centroid of their class
        vectors = gallery["features"] if embedding is None else embedding.transform(gallery["features"])
        try:
            clusters, placed = place_new_images(clusters, cluster_ids, gallery["ids"], vectors, gallery["labels"])
        except ValueError as error:
            raise ModelFolderError(f"'{folder / clusters_name(k, space)}': {error}") from error
    classifier = (
        _read_artifact(folder / CLASSIFIER, load_mlp)
        if labelled
        else single_class_model(int(gallery["features"].shape[1]))
    )
    models = build_models(
        _read_artifact(folder / PROJECTION, load_projection),
        classifier,
        gallery["features"],
        gallery["labels"],
        clusters,
        metric=metric,
        faiss_options=faiss_options,
        seed=seed,
        embedding=embedding,
        rerank=selection.choice(space).rerank if selection is not None and rerank else NO_RERANK,
    )
    return Cell(
        folder=folder,
        k=k,
        identity=read_identity(folder, attrs),
        record=record,
        class_names=list(attrs["class_names"]),
        gallery_ids=gallery["ids"],
        gallery_paths=gallery["paths"],
        gallery_labels=gallery["labels"],
        clusters=clusters,
        models=models,
        reduced_dim=int(gallery["features"].shape[1]),
        space=space,
        labelled=labelled,
        placed_since_fit=placed,
        selection=selection,
        gallery_reduced=gallery["features"],
    )


def _gallery_is_labelled(folder: Path) -> bool:
    """False for a collection without labels (``labelled`` recorded in the gallery; older galleries have labels)."""
    try:
        with h5py.File(folder / GALLERY, "r") as f:
            return bool(f.attrs.get("labelled", True))
    except OSError:  # missing or damaged: reported with the other artifacts
        return True
