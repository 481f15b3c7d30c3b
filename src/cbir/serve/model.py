"""The model ``cbir serve`` answers with: one cell loaded once, its embedder, and its images by id."""

from __future__ import annotations

import functools
import io
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from PIL import Image

from cbir.data.images import load_rgb_image
from cbir.layout import cell_place
from cbir.search.answer import NEAREST_CLUSTER_TITLE, Answer
from cbir.search.calibration import match_calibration
from cbir.search.cell import Cell, available_k, load_cell
from cbir.search.feedback import MAX_MARKS, FeedbackSettings
from cbir.search.index import MODE_TITLES, MODES
from cbir.search.query import (
    Embedder,
    Feedback,
    answer_features,
    answer_gallery_image,
    describe_space,
    elapsed_ms,
    shown_modes,
)
from cbir.search.refine import cell_feedback_settings, marks_from_ids
from cbir.serve.settings import MAX_TOP_K, ServeSettings

log = logging.getLogger(__name__)

THUMBNAIL_PIXELS = 160


class UnknownImageError(LookupError):
    """No gallery or test image with this id, or one that cannot be read on the server; the message says which."""


@dataclass(frozen=True)
class ImageEntry:
    """A gallery or test image of the served cell, known by its id in the dataset's manifest."""

    id: str
    path: Path
    class_name: str
    subset: Literal["train", "test"]


@dataclass
class ServedModel:
    """Everything a request reads: the query model, the embedder and the images known by id."""

    settings: ServeSettings
    model: Cell
    embedder: Embedder
    images: dict[str, ImageEntry]
    test_ids: list[str]
    metrics: dict[str, Any]
    _thumbnails: Any = field(init=False, repr=False)
    loaded_at: str = field(init=False)
    calibration: dict[str, Any] = field(init=False)  # the "no good match" distance, from the metrics
    feedback_settings: FeedbackSettings = field(init=False)  # how a round of marks ranks, from the metrics

    def __post_init__(self) -> None:
        self._thumbnails = functools.lru_cache(maxsize=4096)(self._make_thumbnail)
        self.loaded_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.calibration = match_calibration(self.model, self.metrics)
        self.feedback_settings = cell_feedback_settings(self.metrics)

    @classmethod
    def load(cls, settings: ServeSettings) -> ServedModel:
        if settings.threads:
            import torch  # here, not at the top: seconds of start-up that importing this module need not cost

            torch.set_num_threads(settings.threads)
        model = load_cell(settings.model, k=settings.k, metric=settings.metric, space=settings.space)
        log.info("%s", describe_space(model))
        images, test_ids = index_images(model)
        embedder = Embedder(model.record, settings.device, model.root)
        if embedder.notice:
            log.warning("%s", embedder.notice)
        return cls(settings, model, embedder, images, test_ids, model.saved_metrics())

    def thumbnail(self, image_id: str) -> bytes:
        """A JPEG thumbnail of a gallery or test image (:class:`UnknownImageError` if there is none)."""
        if image_id not in self.images:
            raise UnknownImageError(f"no image with id '{image_id}' in this model's gallery or test images")
        try:
            return self._thumbnails(image_id)
        except OSError as error:
            raise UnknownImageError(f"image '{image_id}' cannot be read on the server: {error}") from error

    def _make_thumbnail(self, image_id: str) -> bytes:
        image = load_rgb_image(self.images[image_id].path)
        image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()

    def info(self) -> dict[str, Any]:
        """The loaded model as ``GET /api/model`` describes it (less the server's reload count)."""
        index = self.model.models.index
        return {
            **self.model.identity.as_dict(),
            **{key: self.model.record[key] for key in ("arch", "weights", "pooling", "image_size")},
            "seed": self.embedder.prepared.seed,
            "precision": self.embedder.prepared.precision,
            "precision_notice": self.embedder.notice,
            "k": self.model.k,
            "available_k": available_k(self.model.folder),
            "gallery_size": len(self.model.gallery_ids),
            "test_images": len(self.test_ids),
            "classes": self.model.class_names,
            "labelled": self.model.labelled,
            "feature_dim": self.model.feature_dim,
            "reduced_dim": self.model.reduced_dim,
            "space": self.model.space,
            "rerank": self.model.rerank.describe(),
            "setting": self.model.describe_setting(),
            "embedding_dim": int(index.gallery.shape[1]),
            "metric": index.metric,
            "top_k": self.settings.top_k,
            "max_top_k": MAX_TOP_K,
            "max_upload_bytes": self.settings.max_upload_bytes,
            "max_pixels": self.settings.max_pixels,
            "max_marks": MAX_MARKS,
            "feedback_method": self.feedback_settings.method,
            "modes": mode_titles(self.model),
            "metrics": quality_metrics(self.metrics),
            "loaded_at": self.loaded_at,
        }

    def feedback(self, relevant_ids: Sequence[str] = (), irrelevant_ids: Sequence[str] = ()) -> Feedback | None:
        """A round of marks by gallery id, ranked with the cell's feedback settings; None without marks.
        Unknown ids raise :class:`cbir.search.refine.UnknownIdsError`, more than ``MAX_MARKS`` a ValueError."""
        marks = marks_from_ids(self.model, relevant_ids, irrelevant_ids)
        return None if marks.empty else Feedback(marks, self.feedback_settings)

    def answer(
        self, image: Image.Image, top_k: int, timings: dict[str, float] | None = None, feedback: Feedback | None = None
    ) -> Answer:
        """Embed a decoded image and search every mode (with ``feedback``: after that round of marks);
        ``timings`` receives each step's milliseconds (preprocess, forward, then those of the search)."""
        steps = timings if timings is not None else {}
        start = time.perf_counter()
        tensor = self.embedder.preprocess(image)
        steps["preprocess"] = elapsed_ms(start)
        start = time.perf_counter()
        features = self.embedder.forward(tensor[None])
        steps["forward"] = elapsed_ms(start)
        [answer] = answer_features(self.model, features, top_k, MODES, steps, self.calibration, feedback)
        return answer

    def answer_gallery(
        self, image_id: str, top_k: int, timings: dict[str, float] | None = None, feedback: Feedback | None = None
    ) -> Answer:
        """ "More like this": a gallery image (by id) as the query, by its stored features, left out of its own
        results; with ``feedback``, after that round of marks. An unknown id raises ``UnknownIdsError``."""
        return answer_gallery_image(self.model, image_id, top_k, MODES, timings, self.calibration, feedback)

    def search(self, image: Image.Image, top_k: int, timings: dict[str, float] | None = None) -> dict[str, Any]:
        """:meth:`answer` in its JSON form, as ``cbir query --json`` prints it (less the ``query``)."""
        return self.answer(image, top_k, timings).to_json()


def mode_title(mode: str, space: str) -> str:
    """A mode's title on the page; outside the paper's space, the searches over all images name their space."""
    title = MODE_TITLES[mode].short
    return title if space == "raw" or mode != "global" else f"{title} ({space} space)"


def mode_titles(model: Cell) -> dict[str, str]:
    """The title of each mode the cell answers; without labels there is no class search, and the clustered
    one probes the nearest of all clusters."""
    titles = {mode: mode_title(mode, model.space) for mode in shown_modes(model, MODES)}
    return titles if model.labelled else {**titles, "clustered": NEAREST_CLUSTER_TITLE}


def quality_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Accuracy, then mAP@top-k, mAP and precision@top-k of the three query modes, in that order; for a
    collection without labels, the recall@top-k of each search against the exact one instead."""
    top_k = metrics.get("top_k", 5)
    if metrics.get("labelled") is False:
        keys = [key for key in sorted(metrics) if key.startswith(f"recall_at_{top_k}_vs_exact_")]
        return {key: float(metrics[key]) for key in keys if isinstance(metrics[key], int | float)}
    keys = ["accuracy"]
    for pattern in (f"map_at_{top_k}_{{}}", "map_{}", f"precision_at_{top_k}_{{}}"):
        keys += [pattern.format(mode) for mode in MODES]
    return {key: float(metrics[key]) for key in keys if isinstance(metrics.get(key), int | float)}


def index_images(model: Cell) -> tuple[dict[str, ImageEntry], list[str]]:
    """Gallery images (from gallery.h5) plus the split's test images (from the dataset's manifest).

    The cell is ``<root>/results/<dataset>/<backbone>/<split>/<pca>/``; relative manifest paths
    are relative to ``<root>``, the folder the workflow ran in. Without a manifest or split file
    only the gallery is known.
    """
    place = cell_place(model.folder)
    if place is None:  # not inside <root>/results/<dataset>/: a copied cell
        return _gallery_images(model, Path.cwd()), []
    root = place.dataset.root

    images = _gallery_images(model, root)
    manifest_csv, split_csv = place.dataset.manifest, place.split_file
    if not (manifest_csv.is_file() and split_csv.is_file()):
        return images, []
    manifest = pd.read_csv(manifest_csv, dtype={"id": str, "path": str}).set_index("id")
    split = pd.read_csv(split_csv, dtype={"id": str, "subset": str})
    test_ids = [i for i in split.loc[split["subset"] == "test", "id"] if i in manifest.index and i not in images]
    for image_id in test_ids:
        row = manifest.loc[image_id]
        path = _resolve(row["path"], root)
        images[image_id] = ImageEntry(image_id, path, model.class_names[int(row["label"])], "test")
    return images, test_ids


def _resolve(path: str, root: Path) -> Path:
    candidate = Path(path)
    return candidate if candidate.is_absolute() else root / candidate


def _gallery_images(model: Cell, root: Path) -> dict[str, ImageEntry]:
    return {
        str(image_id): ImageEntry(str(image_id), _resolve(str(path), root), model.class_names[int(label)], "train")
        for image_id, path, label in zip(model.gallery_ids, model.gallery_paths, model.gallery_labels, strict=True)
    }
