"""Embedding spaces: what the search ranks in, fitted on the training images of a grid cell only.

The paper searches the PCA(n) features as they are (``raw``). A space maps those reduced
features to another vector space before every search mode (clustered, class, global, faiss):

- ``raw``: the PCA(n) features, the paper's setting;
- ``l2``: L2-normalised (cosine ranking);
- ``whiten``: L2, PCA whitening with eigenvalues raised to ``-power`` (0.5: full whitening;
  smaller values shrink towards plain rotation), L2;
- ``lda``: L2, linear discriminant analysis fitted on the training labels (at most classes - 1
  dimensions), L2;
- ``mlp``: the trained MLP's last hidden layer (standardisation, ReLU layers), L2.

A fitted space is a short list of steps (``l2``, ``scale``, ``affine``, ``relu``) stored as plain
arrays in HDF5, so that a query applies it without scikit-learn. A new space is one
:class:`SpaceSpec` entry in :data:`SPACES` (or :func:`register_space` from a plugin).

Re-ranking, which works in any space, is in :mod:`cbir.fitting.rerank`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cbir.distances import l2_normalise
from cbir.fitting.kmeans import fit_intra_class_kmeans, save_clusters
from cbir.fitting.mlp import MlpModel, load_mlp
from cbir.io import load_arrays, save_arrays
from cbir.layout import RAW
from cbir.plugins import current_plugin

log = logging.getLogger(__name__)

STEP_KINDS = ("l2", "scale", "affine", "relu")

# above this many input dimensions LDA uses the SVD solver (no d x d covariance, no shrinkage)
LDA_EIGEN_MAX_DIM = 4096
# whitening keeps the axes whose variance is above this share of the largest one
WHITEN_RELATIVE_FLOOR = 1e-6


@dataclass
class Step:
    """One step of a fitted space: ``l2``, ``relu``, ``scale`` (x * weight + bias), ``affine`` (x @ weight + bias)."""

    kind: str
    weight: np.ndarray | None = None
    bias: np.ndarray | None = None

    def apply(self, x: np.ndarray) -> np.ndarray:
        if self.kind == "l2":
            return l2_normalise(x)
        if self.kind == "relu":
            return np.maximum(x, 0.0)
        if self.kind == "scale":
            return x * self.weight + self.bias
        return x @ self.weight + self.bias


@dataclass
class Embedding:
    """A fitted space: its name, the steps from reduced features to the search vectors, and its settings."""

    space: str
    steps: list[Step] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def normalised(self) -> bool:
        """Whether every vector of the space has unit length (the last step is ``l2``)."""
        return bool(self.steps) and self.steps[-1].kind == "l2"

    def transform(self, reduced: np.ndarray) -> np.ndarray:
        x = np.asarray(reduced, dtype=np.float32)
        for step in self.steps:
            x = step.apply(x)
        return np.asarray(x, dtype=np.float32)


# --- the spaces ------------------------------------------------------------------------------


FitFunction = Callable[[np.ndarray, np.ndarray, MlpModel, Mapping[str, Any]], list[Step]]


@dataclass(frozen=True)
class SpaceSpec:
    name: str
    fit: FitFunction
    description: str
    uses_labels: bool = False  # fitted on the training labels (directly or through the MLP)
    plugin: str | None = None


def _fit_raw(reduced: np.ndarray, labels: np.ndarray, mlp: MlpModel, options: Mapping[str, Any]) -> list[Step]:
    return []


def _fit_l2(reduced: np.ndarray, labels: np.ndarray, mlp: MlpModel, options: Mapping[str, Any]) -> list[Step]:
    return [Step("l2")]


def principal_axes(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The variances (descending) and principal axes (rows) of the rows of ``x``: from the d x d covariance's
    eigendecomposition when there are at least as many rows as dimensions (56,000 x 1,280: 2 s on one core
    instead of the SVD's 16 s), else from the SVD of the centred rows. An axis's sign is arbitrary either way."""
    centred = x - x.mean(axis=0)
    if len(x) >= x.shape[1]:
        eigenvalues, vectors = np.linalg.eigh(centred.T @ centred / max(len(x) - 1, 1))
        return np.maximum(eigenvalues[::-1], 0.0), vectors[:, ::-1].T
    _, singular, vt = np.linalg.svd(centred, full_matrices=False)
    return singular**2 / max(len(x) - 1, 1), vt


def _fit_whiten(reduced: np.ndarray, labels: np.ndarray, mlp: MlpModel, options: Mapping[str, Any]) -> list[Step]:
    x = l2_normalise(np.asarray(reduced, dtype=np.float64))
    mean = x.mean(axis=0)
    variance, vt = principal_axes(x)
    keep = variance > variance[0] * WHITEN_RELATIVE_FLOOR if len(variance) else variance > 0
    weight = vt[keep].T * variance[keep] ** -float(options["power"])
    return [Step("l2"), Step("affine", weight.astype(np.float32), (-mean @ weight).astype(np.float32)), Step("l2")]


def _fit_lda(reduced: np.ndarray, labels: np.ndarray, mlp: MlpModel, options: Mapping[str, Any]) -> list[Step]:
    # sklearn on first use: the config checks import this module
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    x = l2_normalise(np.asarray(reduced, dtype=np.float64))
    shrinkage = options.get("shrinkage", "auto")
    lda = None
    if x.shape[1] <= LDA_EIGEN_MAX_DIM and shrinkage is not None:
        try:
            lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage).fit(x, labels)
            offset = np.zeros(x.shape[1])
        except np.linalg.LinAlgError as error:
            # too few images per class for the eigen solver's within-class scatter (2 per class, many dimensions)
            log.warning("LDA's eigen solver failed (%s); fitting with the SVD solver instead", error)
    if lda is None:
        lda = LinearDiscriminantAnalysis(solver="svd").fit(x, labels)
        offset = lda.xbar_
    weight = lda.scalings_[:, : lda._max_components]
    return [Step("l2"), Step("affine", weight.astype(np.float32), (-offset @ weight).astype(np.float32)), Step("l2")]


def _fit_mlp(reduced: np.ndarray, labels: np.ndarray, mlp: MlpModel, options: Mapping[str, Any]) -> list[Step]:
    steps = [Step("scale", (1.0 / mlp.scaler_scale).astype(np.float32), (-mlp.scaler_mean / mlp.scaler_scale))]
    for weight, bias in zip(mlp.weights[:-1], mlp.biases[:-1], strict=True):
        steps += [Step("affine", weight, bias), Step("relu")]
    return [*steps, Step("l2")]


SPACES: dict[str, SpaceSpec] = {
    "raw": SpaceSpec("raw", _fit_raw, "the PCA(n) features (the paper)"),
    "l2": SpaceSpec("l2", _fit_l2, "L2-normalised PCA(n) features"),
    "whiten": SpaceSpec("whiten", _fit_whiten, "L2, PCA whitening (eigenvalues to the power -`power`), L2"),
    "lda": SpaceSpec("lda", _fit_lda, "L2, LDA on the training labels (classes - 1 dimensions), L2", True),
    "mlp": SpaceSpec("mlp", _fit_mlp, "the MLP's last hidden layer, L2", True),
}


def register_space(spec: SpaceSpec) -> SpaceSpec:
    """Add a space to :data:`SPACES` (from a plugin: docs, "Plugin API")."""
    if spec.name in SPACES and SPACES[spec.name].plugin is None:
        raise ValueError(f"embedding space '{spec.name}' is one of cbir's own; choose another name")
    if spec.plugin is None and (plugin := current_plugin()):
        spec = SpaceSpec(spec.name, spec.fit, spec.description, spec.uses_labels, plugin)
    SPACES[spec.name] = spec
    return spec


def fit_embedding(
    space: str, reduced_train: np.ndarray, train_labels: np.ndarray, mlp: MlpModel, options: Mapping[str, Any]
) -> Embedding:
    """Fit ``space`` on the reduced training features (and labels, and the MLP trained on them) only."""
    if space not in SPACES:
        raise ValueError(f"unknown embedding space '{space}' (allowed: {', '.join(SPACES)})")
    settings = dict(options.get(space, {}))
    steps = SPACES[space].fit(np.asarray(reduced_train), np.asarray(train_labels), mlp, settings)
    return Embedding(space, steps, settings)


def identity_embedding() -> Embedding:
    return Embedding(RAW)


# --- storage -----------------------------------------------------------------------------------


def save_embedding(path: str | Path, embedding: Embedding, attrs: Mapping[str, Any]) -> None:
    arrays: dict[str, np.ndarray] = {}
    for i, step in enumerate(embedding.steps):
        if step.weight is not None:
            arrays[f"step{i}_weight"] = np.asarray(step.weight, dtype=np.float32)
            arrays[f"step{i}_bias"] = np.asarray(step.bias, dtype=np.float32)
    save_arrays(
        path,
        arrays,
        {"space": embedding.space, "steps": [s.kind for s in embedding.steps], "settings": embedding.settings, **attrs},
    )


def load_embedding(path: str | Path) -> Embedding:
    arrays, attrs = load_arrays(path)
    kinds = [str(kind) for kind in attrs["steps"]]
    unknown = sorted(set(kinds) - set(STEP_KINDS))
    if unknown:
        raise ValueError(f"'{path}' has step(s) {unknown} that this version of cbir does not know")
    steps = [Step(kind, arrays.get(f"step{i}_weight"), arrays.get(f"step{i}_bias")) for i, kind in enumerate(kinds)]
    return Embedding(str(attrs["space"]), steps, dict(attrs.get("settings") or {}))


def spaces_markdown(names: Sequence[str] | None = None) -> str:
    """The table of spaces, written from the registry into the docs' "Embedding spaces" page at build time."""
    lines = ["| space | search vectors | uses the labels |", "|---|---|---|"]
    for spec in SPACES.values():
        if spec.plugin or (names is not None and spec.name not in names):
            continue
        lines.append(f"| `{spec.name}` | {spec.description} | {'yes' if spec.uses_labels else 'no'} |")
    return "\n".join(lines)


# --- one cell's spaces ---------------------------------------------------------------------------


def fit_cell_spaces(
    gallery_path: str | Path,
    classifier_path: str | Path | None,
    spaces: Sequence[str],
    ks: Sequence[int],
    options: Mapping[str, Any],
    kmeans: Mapping[str, Any],
    seed: int,
    embedding_paths: Mapping[str, str | Path],
    clusters_paths: Mapping[tuple[str, int], str | Path],
    refit: str = "always",
) -> None:
    """Fit every space on the cell's gallery (the projected training images), then k-means within each class in it.

    ``embedding_paths[space]`` and ``clusters_paths[space, k]`` are where they are written; each
    file records its fitting time (``fit_seconds``) and what it was fitted on, with ``refit``,
    the update policy (:mod:`cbir.fitting.refit`).
    """
    gallery, attrs = load_arrays(gallery_path)
    mlp = load_mlp(classifier_path) if classifier_path else None  # None: a collection, label-free spaces only
    # what they are fitted on (cbir.fitting.refit), and whether images added later may join the clusters when loaded
    fitted_on = {"n_train": len(gallery["ids"]), "n_classes": len(np.unique(gallery["labels"])), "refit": refit}
    for space in spaces:
        start = time.perf_counter()
        embedding = fit_embedding(space, gallery["features"], gallery["labels"], mlp, options)
        vectors = embedding.transform(gallery["features"])
        fitted = time.perf_counter() - start
        save_embedding(
            embedding_paths[space],
            embedding,
            {"fit_seconds": fitted, "input_dim": int(gallery["features"].shape[1]), "dim": int(vectors.shape[1]),
             "seed": seed, "pca": attrs.get("pca"), **fitted_on},
        )  # fmt: skip
        for k in ks:
            start = time.perf_counter()
            clusters = fit_intra_class_kmeans(
                vectors,
                gallery["labels"],
                int(k),
                seed=seed,
                n_init=kmeans["n_init"],
                max_iter=kmeans["max_iter"],
                method="auto",
                exact_max_images=kmeans["exact_max_images"],
                batch_size=kmeans["batch_size"],
            )
            save_clusters(
                clusters_paths[space, int(k)],
                clusters,
                gallery["ids"],
                {"k": int(k), "seed": seed, "space": space, "fit_seconds": time.perf_counter() - start, **fitted_on},
            )
