"""What validation chose for a cell (:mod:`cbir.evaluation.validation`): read by the fitting of its spaces,
by the search (``--space best``) and by the report.

``selection.json`` in the cell holds, per embedding space, the settings and the re-ranking that scored
best on the validation part of the training split, with their validation figures; the space chosen
among them; how the validation part was drawn; and every candidate tried.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cbir.fitting.rerank import NO_RERANK, Rerank
from cbir.io import write_json
from cbir.layout import RAW, SELECTION

VALIDATION_METRIC = "map_global"  # mAP of the validation images' exact ranking of the rest of the training split
VALIDATION_FIGURES = ("map_global", "precision_at_10_global")
# a collection without labels: how far a changed copy's neighbours agree with its photo's, and how often the copy
# finds its photo first
COPY_METRIC = "neighbour_overlap_at_10"
COPY_FIGURES = (COPY_METRIC, "copy_finds_photo_first")


@dataclass
class SpaceChoice:
    """One space's chosen settings and re-ranking, and their figures on the validation part."""

    settings: dict[str, Any] = field(default_factory=dict)
    rerank: Rerank = NO_RERANK
    figures: dict[str, float] = field(default_factory=dict)  # VALIDATION_FIGURES; empty when not validated

    def as_dict(self) -> dict[str, Any]:
        return {"settings": self.settings, "rerank": self.rerank.as_dict(), "validation": self.figures}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> SpaceChoice:
        return cls(dict(values.get("settings") or {}), Rerank.from_dict(values.get("rerank")),
                   {k: float(v) for k, v in (values.get("validation") or {}).items()})  # fmt: skip


@dataclass
class Selection:
    """The chosen space and every space's choice; ``validation``: how they were judged (or why not)."""

    chosen: str
    spaces: dict[str, SpaceChoice]
    validation: dict[str, Any]
    candidates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def validated(self) -> bool:
        return bool(self.validation.get("n_validation"))

    @property
    def metric(self) -> str:
        """The figure the choice was made by (:data:`VALIDATION_METRIC`, or :data:`COPY_METRIC` for a collection)."""
        return str(self.validation.get("metric", VALIDATION_METRIC))

    def score(self, space: str | None = None) -> float | None:
        """The validation figure of a space's choice (the chosen space's by default); None when not validated."""
        return self.choice(space or self.chosen).figures.get(self.metric) if self.validated else None

    def choice(self, space: str) -> SpaceChoice:
        """The space's choice; a space validation did not see keeps its configured settings, unranked."""
        return self.spaces.get(space, SpaceChoice())

    def describe(self, space: str | None = None, rerank: Rerank | None = None) -> str:
        """``lda (shrinkage none), re-ranking DBA + QE (k 5, α 3); validation mAP 0.912 on 160 training images``
        (``rerank``: the re-ranking applied, where it is not the one chosen)."""
        space = space or self.chosen
        choice = self.choice(space)
        settings = ", ".join(f"{key} {'none' if value is None else value}" for key, value in choice.settings.items())
        applied = choice.rerank if rerank is None else rerank
        text = f"{space}{f' ({settings})' if settings else ''}, re-ranking {applied.describe()}"
        if not self.validated:
            return f"{text}; not validated: {self.validation.get('reason', 'no validation part')}"
        figure = choice.figures.get(self.metric)
        shown = "n/a" if figure is None else f"{figure:.3f}"
        if self.metric == COPY_METRIC:  # a collection without labels
            return (f"{text}; the 10 nearest photos of a changed copy and of its photo agree {shown} "
                    f"({self.validation['n_validation']} copies)")  # fmt: skip
        return f"{text}; validation mAP {shown} on {self.validation['n_validation']} training images"

    def save(self, path: str | Path) -> None:
        write_json(
            path,
            {
                "chosen": self.chosen,
                "spaces": {name: choice.as_dict() for name, choice in self.spaces.items()},
                "validation": self.validation,
                "candidates": self.candidates,
            },
        )

    @classmethod
    def load(cls, path: str | Path) -> Selection:
        values = json.loads(Path(path).read_text())
        return cls(
            str(values["chosen"]),
            {name: SpaceChoice.from_dict(choice) for name, choice in values["spaces"].items()},
            dict(values.get("validation") or {}),
            list(values.get("candidates") or []),
        )


def unvalidated(spaces: list[str], options: dict[str, Any], reason: str) -> Selection:
    """No validation (no labels, too few images, or switched off): every space keeps its configured
    settings, none is re-ranked, and the paper's space is the one searched."""
    choices = {space: SpaceChoice(dict(options.get(space) or {})) for space in dict.fromkeys([RAW, *spaces])}
    return Selection(RAW, choices, {"n_validation": 0, "reason": reason})


def read_selection(folder: str | Path) -> Selection | None:
    """The cell's selection, or None for a cell written before cbir validated its settings."""
    path = Path(folder) / SELECTION
    return Selection.load(path) if path.is_file() else None
