"""cbir from a program: open a fitted grid cell or an indexed collection, and search it with a path, a PIL
image or an array. Each answer is the one ``cbir query --json`` prints for that image::

    from cbir.api import open_index

    index = open_index("results/photos")  # a collection indexed by `cbir index`, or a grid cell's folder
    answer = index.search("beach.jpg", top_k=5)
    answer["results"]["global"][0]["path"]  # the most similar photo
    # relevance feedback: the same query again, with the results marked relevant and not relevant (by id)
    index.search("beach.jpg", relevant_ids=["dunes/12.jpg", "sea/3.jpg"], irrelevant_ids=["city/7.jpg"])
    index.more_like_this("sea/3.jpg")  # a gallery image as the query, itself left out of its results

The backbone is rebuilt from the settings recorded with the gallery, once per :class:`Index`.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from cbir.data.images import load_rgb_image
from cbir.data.split import ALL
from cbir.layout import PROJECTION, RESULTS
from cbir.search.cell import BEST, Cell, ModelFolderError, chosen_cell, load_cell
from cbir.search.index import MODES
from cbir.search.query import Embedder, Feedback, QueryError, answer_features, answer_gallery_image, search_features
from cbir.search.refine import UnknownIdsError, cell_feedback_settings, marks_from_ids

__all__ = ["MODES", "Index", "ModelFolderError", "QueryError", "UnknownIdsError", "open_index"]

ImageInput = str | Path | Image.Image | np.ndarray


def find_cell(folder: str | Path) -> Path:
    """The grid cell in ``folder``: the cell itself, or the only cell of a dataset folder ``results/<name>/``
    or of the folder a workflow ran in (or its only cell of split ``all``, which holds every image)."""
    folder = Path(folder)
    if (folder / PROJECTION).is_file():
        return folder
    patterns = ("*/*/*/" + PROJECTION, f"{RESULTS}/*/*/*/*/{PROJECTION}")
    cells = sorted({p.parent for pattern in patterns for p in folder.glob(pattern)})
    # `cbir index` on a labelled folder fits cells on every photo (split all), one per PCA size, beside those that
    # measure quality; validation inside each chose its setting, and the best of those choices is opened
    searchable = sorted((cell for cell in cells if cell.parent.name == ALL), key=lambda c: pca_order(c.name))
    if len(cells) == 1 or (searchable and len({cell.parent for cell in searchable}) == 1):
        return chosen_cell(searchable) if searchable else cells[0]
    if not folder.is_dir():
        raise ModelFolderError(f"'{folder}' does not exist")
    if not cells:
        raise ModelFolderError(
            f"'{folder}' holds no grid cell (a folder with {PROJECTION}): index it first (cbir index)"
        )
    listed = "\n  ".join(str(c) for c in cells)
    raise ModelFolderError(f"'{folder}' holds {len(cells)} grid cells; open one of them:\n  {listed}")


def pca_order(pca: str) -> float:
    """PCA sizes in ascending order, ``original`` last (a tie in validation keeps the smaller size)."""
    return float(pca) if pca.isdigit() else float("inf")


class Index:
    """A fitted grid cell with its network, ready to search: what ``cbir query`` loads, kept for many queries."""

    def __init__(self, cell: Cell, embedder: Embedder) -> None:
        self.cell = cell
        self.embedder = embedder

    @property
    def folder(self) -> Path:
        return self.cell.folder

    @property
    def labelled(self) -> bool:
        """False for a collection without labels: answers then name clusters, not classes."""
        return self.cell.labelled

    @property
    def class_names(self) -> list[str]:
        return list(self.cell.class_names)

    @property
    def size(self) -> int:
        """The images the index searches (its gallery)."""
        return len(self.cell.gallery_ids)

    @property
    def notice(self) -> str | None:
        """Why queries cannot run exactly as the gallery was extracted (None: they do)."""
        return self.embedder.notice

    def embed(self, image: ImageInput) -> np.ndarray:
        """The backbone features of one image, as the gallery's were extracted (one row)."""
        decoded = self.embedder.prepared.decode(image) if isinstance(image, str | Path) else _decoded(image)
        return self.embedder.forward(self.embedder.preprocess(decoded)[None])

    def search(
        self,
        image: ImageInput,
        top_k: int = 5,
        modes: Sequence[str] = MODES,
        name: str | None = None,
        *,
        relevant_ids: Sequence[str] = (),
        irrelevant_ids: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The answer for one image: its predicted class (or nearest clusters) and the top-k results per mode.

        ``name`` is the answer's ``query`` (default: the path, or ``"<image>"`` for an image in memory).
        An image that cannot be read raises :class:`QueryError`.

        ``relevant_ids`` and ``irrelevant_ids``: gallery images (the results' ``id``) marked relevant and not
        relevant, a round of relevance feedback: the ranking learns from them with the method the cell's
        evaluation chose, and the answer's ``feedback`` says how many marks it used. Ids not in the gallery
        raise :class:`UnknownIdsError` (naming them), more than ``MAX_MARKS`` (200) in all :class:`QueryError`.
        """
        feedback = feedback_from_ids(self.cell, relevant_ids, irrelevant_ids)
        if feedback is None:
            return self.search_many([image], top_k, modes, [name])[0]
        _check(top_k, modes)
        [answer] = answer_features(self.cell, self._embed_query(image), top_k, modes, feedback=feedback)
        return {"query": name or _name(image), **answer.to_json()}

    def more_like_this(
        self,
        gallery_id: str,
        top_k: int = 5,
        modes: Sequence[str] = MODES,
        *,
        relevant_ids: Sequence[str] = (),
        irrelevant_ids: Sequence[str] = (),
    ) -> dict[str, Any]:
        """The answer for a gallery image as the query, by its id (a result's ``id``; no image is read), the
        image itself left out of its results; ``relevant_ids`` and ``irrelevant_ids`` as for :meth:`search`.
        An id not in the gallery raises :class:`UnknownIdsError`."""
        _check(top_k, modes)
        feedback = feedback_from_ids(self.cell, relevant_ids, irrelevant_ids)
        answer = answer_gallery_image(self.cell, gallery_id, top_k, modes, feedback=feedback)
        return {"query": gallery_id, **answer.to_json()}

    def search_many(
        self,
        images: Sequence[ImageInput],
        top_k: int = 5,
        modes: Sequence[str] = MODES,
        names: Sequence[str | None] | None = None,
    ) -> list[dict[str, Any]]:
        """One answer per image, in order (see :meth:`search`; without marks)."""
        _check(top_k, modes)
        names = list(names) if names is not None else [None] * len(images)
        rows = [self._embed_query(image) for image in images]
        features = np.concatenate(rows) if rows else np.zeros((0, self.cell.feature_dim), dtype=np.float32)
        answers = search_features(self.cell, features, top_k, modes)
        return [
            {"query": name or _name(image), **answer}
            for image, name, answer in zip(images, names, answers, strict=True)
        ]

    def _embed_query(self, image: ImageInput) -> np.ndarray:
        try:
            return self.embed(image)
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            raise QueryError(f"cannot read {_describe(image)} as an image: {type(error).__name__}: {error}") from error


def feedback_from_ids(
    cell: Cell, relevant_ids: Sequence[str] = (), irrelevant_ids: Sequence[str] = ()
) -> Feedback | None:
    """A round of relevance feedback from gallery ids, with the settings the cell's evaluation chose (None without
    marks); :class:`UnknownIdsError` names ids not in the gallery, :class:`QueryError` refuses too many marks."""
    if isinstance(relevant_ids, str) or isinstance(irrelevant_ids, str):
        raise QueryError("relevant_ids and irrelevant_ids are lists of ids, not one string")
    try:
        marks = marks_from_ids(cell, list(relevant_ids), list(irrelevant_ids))
    except UnknownIdsError:
        raise
    except ValueError as error:  # more than MAX_MARKS
        raise QueryError(str(error)) from error
    return None if marks.empty else Feedback(marks, cell_feedback_settings(cell.saved_metrics()))


def _check(top_k: int, modes: Sequence[str]) -> None:
    if top_k < 1:
        raise QueryError("top_k must be at least 1")
    unknown = [mode for mode in modes if mode not in MODES]
    if unknown:
        raise QueryError(f"unknown search mode(s) {', '.join(unknown)} (known: {', '.join(MODES)})")


def _name(image: ImageInput) -> str:
    return str(image) if isinstance(image, str | Path) else "<image>"


def open_index(
    folder: str | Path, *, k: int | None = None, space: str = BEST, metric: str = "euclidean", device: str = "auto"
) -> Index:
    """Open a grid cell (``results/<dataset>/<backbone>/<split>/<pca>/``) or the only cell of a dataset folder
    or workflow folder, with ``cbir query``'s defaults (``--k``, ``--space``, ``--metric``, ``--device``)."""
    cell = load_cell(find_cell(folder), k=k, metric=metric, space=space)
    return Index(cell, Embedder(cell.record, device, cell.root))


def _decoded(image: Image.Image | np.ndarray) -> Image.Image:
    """An image in memory decoded as a file of it would be (alpha on white, 16-bit scaled, RGB)."""
    if isinstance(image, np.ndarray):
        pixels = np.asarray(image)
        if pixels.dtype.kind == "f" and pixels.size and np.nanmax(pixels) <= 1.0:
            pixels = pixels * 255.0  # floats in 0..1, as scikit-image and matplotlib give them
        if pixels.dtype != np.uint8:
            pixels = np.clip(np.nan_to_num(pixels), 0, 255).round().astype(np.uint8)
        if pixels.ndim not in (2, 3) or (pixels.ndim == 3 and pixels.shape[2] not in (1, 3, 4)):
            raise ValueError(f"an image array is height x width (x 1, 3 or 4 channels), not {image.shape}")
        image = Image.fromarray(pixels[..., 0] if pixels.ndim == 3 and pixels.shape[2] == 1 else pixels)
    if not isinstance(image, Image.Image):
        raise ValueError(f"a query is a path, a PIL image or an array, not {type(image).__name__}")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    buffer.seek(0)
    return load_rgb_image(buffer)


def _describe(image: ImageInput) -> str:
    return f"'{image}'" if isinstance(image, str | Path) else f"the {type(image).__name__} given"
