"""Relevance feedback: the user marks results relevant or not, and the next round's ranking learns from the marks.

Two methods, both in the cell's search space and both without refitting anything (a round is a few
matrix-vector products and, for ``learned``, one small linear solve: milliseconds):

- ``rocchio``: the query moves towards the relevant marks and away from the others,
  ``q' = alpha q + beta mean(relevant) - gamma mean(not relevant)`` (unit length again in a normalised space);
  the results are the gallery images nearest ``q'``.
- ``learned``: a linear classifier separates the marked vectors (the query counts as relevant; images drawn from
  the gallery stand in for "not relevant" while the user has marked few), and each candidate is ranked by its
  score blended with its nearness to ``q'``. The classifier is a weighted ridge (least-squares SVM) solved in
  its dual: one (marks x marks) system, so its cost does not grow with the dimensions.

Images marked not relevant come last (the user is not shown them again). The clustered mode picks its cluster
again with ``q'``; a labelled cell searches the class most of the relevant
marks belong to (the classifier's prediction while nothing is marked relevant). The evaluation's simulated user
(:mod:`cbir.evaluation.feedback`) measures both methods; ``FeedbackSettings`` holds the defaults it chose.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from cbir.distances import l2_normalise, squared_distances

METHODS = ("rocchio", "learned")
MAX_MARKS = 200  # relevant plus not relevant ids one request may send


@dataclass(frozen=True)
class FeedbackSettings:
    """How a round of feedback ranks (``feedback:`` in the config; the evaluation records them per cell)."""

    method: str = "learned"
    alpha: float = 1.0  # weight of the query in Rocchio's refined query
    beta: float = 0.8  # weight of the mean of the relevant marks
    gamma: float = 0.2  # weight of the mean of the marks that are not relevant
    blend: float = 0.5  # learned: weight of the classifier's score against the nearness to the refined query
    ridge: float = 1.0  # learned: regularisation, relative to the marks' mean squared norm
    pseudo_negatives: int = 20  # learned: gallery images drawn as "not relevant" stand-ins (0: none)
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"feedback method '{self.method}' is not one of {', '.join(METHODS)}")
        if not 0.0 <= self.blend <= 1.0:
            raise ValueError(f"feedback blend {self.blend} is not between 0 and 1")

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any] | None) -> FeedbackSettings:
        """The settings named in ``mapping`` (the config's or a cell's record), defaults for the others."""
        names = {f.name for f in fields(cls)}
        return cls(**{key: value for key, value in (mapping or {}).items() if key in names})

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class Marks:
    """Gallery rows the user marked relevant and not relevant (a row marked both counts as relevant)."""

    relevant: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))
    irrelevant: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))

    def __post_init__(self) -> None:
        relevant = np.unique(np.asarray(self.relevant, dtype=np.int64))
        irrelevant = np.setdiff1d(np.asarray(self.irrelevant, dtype=np.int64), relevant)
        object.__setattr__(self, "relevant", relevant)
        object.__setattr__(self, "irrelevant", irrelevant)

    @property
    def empty(self) -> bool:
        return len(self.relevant) == 0 and len(self.irrelevant) == 0

    @property
    def marked(self) -> np.ndarray:
        return np.concatenate([self.relevant, self.irrelevant])


def refine_query(
    query: np.ndarray, gallery: np.ndarray, marks: Marks, settings: FeedbackSettings, normalised: bool
) -> np.ndarray:
    """Rocchio's refined query (d,) from a query vector and the marked gallery rows, in the space's own units."""
    refined = settings.alpha * np.asarray(query, dtype=np.float64)
    if len(marks.relevant):
        refined = refined + settings.beta * gallery[marks.relevant].mean(axis=0)
    if len(marks.irrelevant):
        refined = refined - settings.gamma * gallery[marks.irrelevant].mean(axis=0)
    return l2_normalise(refined[None])[0] if normalised else refined


def pseudo_negative_rows(n_gallery: int, marks: Marks, settings: FeedbackSettings, query_key: int = 0) -> np.ndarray:
    """Gallery rows that stand in for "not relevant" (seeded, unmarked): most of a gallery is not relevant to a
    query, so a random draw is a cheap, mostly right negative class while the user has marked few."""
    wanted = min(settings.pseudo_negatives, n_gallery)
    if wanted <= 0:
        return np.empty(0, dtype=np.int64)
    rng = np.random.default_rng([settings.seed, query_key])
    drawn = rng.choice(n_gallery, size=min(n_gallery, wanted + len(marks.marked)), replace=False)
    return np.setdiff1d(drawn, marks.marked, assume_unique=True)[:wanted]


def fit_direction(
    query: np.ndarray, gallery: np.ndarray, marks: Marks, settings: FeedbackSettings, query_key: int = 0
) -> tuple[np.ndarray, float] | None:
    """The learned method's linear score ``x . w + b`` (w, b) from the query and the relevant marks (positive)
    against the marks that are not relevant and the pseudo-negatives; None without any negative.

    A class-balanced ridge regression on +1/-1 targets, solved in its dual: with the vectors centred by their
    weighted mean, ``w = X^T a`` where ``(W X X^T + lambda I) a = W y``."""
    negatives = np.concatenate([marks.irrelevant, pseudo_negative_rows(len(gallery), marks, settings, query_key)])
    if len(negatives) == 0:
        return None
    positives = np.vstack([np.asarray(query, dtype=np.float64)[None], gallery[marks.relevant]])
    vectors = np.vstack([positives, gallery[negatives]]).astype(np.float64)
    targets = np.concatenate([np.ones(len(positives)), -np.ones(len(negatives))])
    weights = np.where(targets > 0, 0.5 / len(positives), 0.5 / len(negatives))
    mean = weights @ vectors / weights.sum()
    target_mean = weights @ targets / weights.sum()
    centred = vectors - mean
    kernel = centred @ centred.T
    ridge = settings.ridge * max(float(np.trace(kernel)) / len(vectors), 1e-12) * weights.mean()
    dual = np.linalg.solve(weights[:, None] * kernel + ridge * np.eye(len(vectors)), weights * (targets - target_mean))
    direction = centred.T @ dual
    return direction, float(target_mean - mean @ direction)


def _standardised(scores: np.ndarray) -> np.ndarray:
    """Each row minus its mean, over its standard deviation (rows of one value become 0)."""
    centred = scores - scores.mean(axis=1, keepdims=True)
    spread = centred.std(axis=1, keepdims=True)
    return centred / np.where(spread > 0, spread, 1.0)


def blended_scores(
    refined: np.ndarray,
    candidates: np.ndarray,
    candidate_sq_norms: np.ndarray,
    direction: np.ndarray | None = None,
    bias: np.ndarray | None = None,
    blend: float = 0.5,
) -> np.ndarray:
    """Scores (queries, candidates), higher first: minus the distance to each refined query, or, with the learned
    ``direction`` (queries, d) and ``bias``, the blend of both standardised over the candidates. A row of
    ``direction`` that is NaN (no classifier for that query) ranks by the distance alone."""
    nearness = -np.sqrt(squared_distances(np.atleast_2d(refined), candidates, candidate_sq_norms))
    if direction is None or blend == 0.0:
        return nearness
    direction = np.atleast_2d(direction)
    learned = np.isfinite(direction[:, 0])
    if not learned.any():
        return nearness
    scores = _standardised(nearness)
    decision = candidates @ np.where(learned[:, None], direction, 0.0).T + np.where(learned, bias, 0.0)
    mixed = (1.0 - blend) * scores + blend * _standardised(decision.T)
    return np.where(learned[:, None], mixed, nearness)


def feedback_search(
    query: np.ndarray,
    refined: np.ndarray,
    gallery: np.ndarray,
    members: np.ndarray,
    marks: Marks,
    settings: FeedbackSettings,
    top_k: int,
    exclude: Sequence[int] = (),
) -> np.ndarray:
    """The ``top_k`` rows of ``members`` (gallery rows searched) for one query vector and its refined query
    (:func:`refine_query`) after a round of ``marks``, best first, ties by gallery position; ``exclude``: rows
    never returned (a "more like this" image itself)."""
    gallery_rows = np.setdiff1d(np.asarray(members, dtype=np.int64), np.asarray(exclude, dtype=np.int64))
    if len(gallery_rows) == 0:
        return np.empty(0, dtype=np.int64)
    candidates = gallery[gallery_rows]
    # nothing marked ("more like this"): the plain ranking, not one learned from pseudo-negatives alone
    fitted = (
        fit_direction(query, gallery, marks, settings) if settings.method == "learned" and not marks.empty else None
    )
    direction, bias = (fitted[0][None], np.array([fitted[1]])) if fitted else (None, None)
    scores = blended_scores(refined, candidates, np.einsum("ij,ij->i", candidates, candidates), direction, bias,
                            settings.blend)[0]  # fmt: skip
    scores[np.isin(gallery_rows, marks.irrelevant)] = -np.inf  # what the user turned down is not shown again
    order = np.argsort(-scores, kind="stable")[:top_k]
    return gallery_rows[order]
