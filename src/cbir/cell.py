"""One grid cell, ``results/<dataset>/<backbone>/<split>/<pca>/``: the names of its artifacts, and loading them.

A cell holds the projection, the gallery (the projected training images with their ids, paths
and classes), the MLP, the intra-class clusters for one or more k and the metrics per k. The
workflow's rules take the names from here; the evaluation, ``cbir query`` and ``cbir serve``
load a cell with :func:`load_cell`.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cbir.classify import MlpModel, load_mlp
from cbir.cluster import IntraClassClusters, load_clusters
from cbir.io import load_arrays
from cbir.reduce import Projection, load_projection
from cbir.retrieve import MODES, FaissSearch, RetrievalIndex

CELL_FOLDER = "results/{dataset}/{backbone}/{split}/{pca}"
PROJECTION = "projection.h5"
GALLERY = "gallery.h5"
CLASSIFIER = "classifier.h5"
MODEL_FILES = (PROJECTION, GALLERY, CLASSIFIER)  # with one clusters_k<k>.h5, what a query needs
CLUSTERS_FILE = re.compile(r"clusters_k(\d+)\.h5")

T = TypeVar("T")
Searcher = Callable[[np.ndarray, np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def cell_folder(dataset: str, backbone: str, split: str, pca: str) -> str:
    return CELL_FOLDER.format(dataset=dataset, backbone=backbone, split=split, pca=pca)


def clusters_name(k: int | str) -> str:
    """``clusters_k<k>.h5``; ``clusters_name("{k}")`` is the rules' pattern."""
    return f"clusters_k{k}.h5"


def metrics_name(k: int | str) -> str:
    return f"metrics_k{k}.json"


def model_files(k: int | str) -> tuple[str, ...]:
    """Every artifact a model with ``k`` clusters per class is loaded from."""
    return (*MODEL_FILES, clusters_name(k))


def available_k(folder: str | Path) -> list[int]:
    """The k of every clusters file in the folder, ascending."""
    return sorted(
        int(m.group(1)) for p in Path(folder).glob("clusters_k*.h5") if (m := CLUSTERS_FILE.fullmatch(p.name))
    )


class ModelFolderError(ValueError):
    """The model folder cannot be used; the message says what is missing or wrong."""


# --- the models of a cell ---------------------------------------------------------------


@dataclass
class CellModels:
    projection: Projection
    mlp: MlpModel
    index: RetrievalIndex
    faiss: dict[str, FaissSearch] = field(default_factory=dict)

    def searchers(self) -> dict[str, Searcher]:
        """Every retrieval mode as f(reduced queries, predicted classes, top_k) -> (indices, distances)."""
        modes: dict[str, Searcher] = {
            mode: (lambda q, p, k, mode=mode: self.index.search(q, mode, k, p)) for mode in MODES
        }
        for kind, search in self.faiss.items():
            modes[f"faiss_{kind}"] = lambda q, p, k, search=search: search.search(q, k)
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
) -> CellModels:
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
    return CellModels(projection, mlp, index, faiss)


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

    @property
    def root(self) -> Path:
        """The folder the workflow ran in (``<root>/results/<dataset>/...``), against which recorded paths resolve."""
        folder = self.folder.resolve()
        return folder.parents[4] if len(folder.parents) >= 5 and folder.parents[3].name == "results" else Path.cwd()

    @property
    def feature_dim(self) -> int:
        """Dimensions of the raw backbone features the cell takes."""
        projection = self.models.projection
        return len(projection.mean) if projection.mean is not None else self.models.index.gallery.shape[1]

    def saved_metrics(self) -> dict[str, Any]:
        """The cell's evaluation for this k (``metrics_k<k>.json``); empty before it has run."""
        path = self.folder / metrics_name(self.k)
        return json.loads(path.read_text()) if path.is_file() else {}


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
) -> Cell:
    """Read a cell's artifacts once and build its models (k: the smallest available by default).

    An incomplete folder is refused with the names of what is missing; a damaged or outdated
    artifact, or clusters fitted on other images than the gallery, with what is wrong.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ModelFolderError(f"model folder '{folder}' does not exist")
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    ks = available_k(folder)
    if not ks:
        missing.append(clusters_name("<k>"))
    if missing:
        raise ModelFolderError(
            f"model folder '{folder}' is incomplete: missing {', '.join(missing)} "
            "(expected a grid cell such as results/<dataset>/<backbone>/<split>/<pca>/ after a finished run)"
        )
    if k is None:
        k = ks[0]
    elif k not in ks:
        raise ModelFolderError(f"model folder '{folder}' has no clusters for k={k} (available: {ks})")
    gallery, attrs = _read_artifact(folder / GALLERY, load_arrays)
    record = attrs.get("backbone_attrs")
    if "class_names" not in attrs or not isinstance(record, dict):
        raise ModelFolderError(
            f"'{folder / GALLERY}' lacks the class names or the backbone settings: it was written by an "
            "older version of cbir; rerun the workflow to rebuild the cell"
        )
    clusters, cluster_ids, _ = _read_artifact(folder / clusters_name(k), load_clusters)
    if list(cluster_ids) != list(gallery["ids"]):
        raise ModelFolderError(f"'{folder / clusters_name(k)}' was fitted on other images than the gallery")
    models = build_models(
        _read_artifact(folder / PROJECTION, load_projection),
        _read_artifact(folder / CLASSIFIER, load_mlp),
        gallery["features"],
        gallery["labels"],
        clusters,
        metric=metric,
        faiss_options=faiss_options,
        seed=seed,
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
    )
