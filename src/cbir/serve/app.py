"""``cbir serve``: a small web page and JSON API to search one trained grid cell with your own image.

The model (backbone, PCA, MLP, centroids, gallery features) is loaded once when the app is
created; requests only read it. Uploads are limited in bytes and in pixels, must declare an image
content type and must decode with Pillow; anything else gets a 4xx with a message. Images are
only ever served by id (gallery and test images of the model's dataset), never by a path.

Under load: queries are read, decoded, embedded and searched in turn on one thread per process
(:class:`QueryThread`); at most ``max_concurrent`` requests per process are in progress, the next
ones get a 503 with ``Retry-After``; a request body must arrive within ``upload_timeout`` seconds
(408). With a token (required off loopback) every request needs it: see :mod:`cbir.serve.auth`.
When the cell is rewritten, a new model is loaded beside the old one (on SIGHUP, or when a
periodic check finds the cell's files changed and settled) and swapped in as one reference:
each request reads the model once, so it sees either the old or the new model, never a mix.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import io
import json
import logging
import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import ExifTags, Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cbir import __version__
from cbir.layout import MODEL_FILES, cell_place, clusters_name, metrics_name
from cbir.search.cell import Cell, available_k, load_cell
from cbir.search.index import MODE_TITLES, MODES
from cbir.search.query import (
    NEAREST_CLUSTER_TITLE,
    Embedder,
    describe_space,
    match_calibration,
    search_features,
    shown_modes,
)
from cbir.serve.auth import TOKEN_ENV, SecurityHeaders, TokenAuth, is_loopback

__all__ = ["ServeSettings", "ServedModel", "create_app", "is_loopback", "run_server", "serve_in_thread"]

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_PIXELS = 40_000_000
MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and headers around the file, on top of the upload limit
MAX_TOP_K = 50
DEFAULT_MAX_CONCURRENT = 32
DEFAULT_UPLOAD_TIMEOUT = 30.0
DEFAULT_RELOAD_INTERVAL = 10.0
RETRY_AFTER_S = 1
WORKER_START_S = 120  # how long a `--workers` process may take to load the model before uvicorn gives up on it
SETTINGS_ENV = "CBIR_SERVE_SETTINGS"  # the settings of `--workers` processes (the token travels in CBIR_TOKEN)
THUMBNAIL_PIXELS = 160
UPLOAD_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
WEB_FILES = {
    "app.js": "text/javascript; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
# the Swagger UI of /docs, served from the fastapi-offline package rather than a CDN
DOCS_ASSETS = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}


@dataclass(frozen=True)
class ServeSettings:
    model: Path
    k: int | None = None
    top_k: int = 5
    max_upload_bytes: int = int(DEFAULT_MAX_UPLOAD_MB * 1024 * 1024)
    max_pixels: int = DEFAULT_MAX_PIXELS
    device: str = "auto"
    metric: str = "euclidean"
    space: str = "best"  # the embedding space searched: raw, a fitted one, or best (highest evaluated global mAP)
    threads: int | None = None  # torch's intra-op threads for the CNN forward; None: torch's default
    max_concurrent: int = DEFAULT_MAX_CONCURRENT  # requests in progress per process; more get a 503
    upload_timeout: float = DEFAULT_UPLOAD_TIMEOUT  # seconds for a request body to arrive; slower gets a 408
    reload_interval: float = DEFAULT_RELOAD_INTERVAL  # seconds between checks of the cell's files; 0: SIGHUP only
    token: str | None = field(default=None, repr=False)  # every request needs it (bearer or login cookie)

    def to_env(self) -> str:
        """These settings, less the token, as JSON for the environment of worker processes."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "token"}
        return json.dumps({**values, "model": str(self.model)})

    @classmethod
    def from_env(cls) -> ServeSettings:
        values = json.loads(os.environ[SETTINGS_ENV])
        return cls(**{**values, "model": Path(values["model"]), "token": os.environ.get(TOKEN_ENV) or None})


def mode_title(mode: str, space: str) -> str:
    """A mode's title on the page; outside the paper's space, the searches over all images name their space."""
    title = MODE_TITLES[mode].short
    return title if space == "raw" or mode != "global" else f"{title} ({space} space)"


def mode_titles(model: Cell) -> dict[str, str]:
    """The title of each mode the cell answers; without labels there is no class search, and the clustered
    one probes the nearest of all clusters."""
    titles = {mode: mode_title(mode, model.space) for mode in shown_modes(model, MODES)}
    return titles if model.labelled else {**titles, "clustered": NEAREST_CLUSTER_TITLE}


class UploadError(Exception):
    """An image that cannot be searched: the HTTP status and a message for the user."""

    def __init__(self, status_code: int, message: str) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.message = message


# --- the model, loaded once -------------------------------------------------------------


@dataclass(frozen=True)
class ImageEntry:
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

    def __post_init__(self) -> None:
        self._thumbnails = functools.lru_cache(maxsize=4096)(self._make_thumbnail)
        self.loaded_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self.calibration = match_calibration(self.model, self.metrics)

    @classmethod
    def load(cls, settings: ServeSettings) -> ServedModel:
        if settings.threads:
            import torch

            torch.set_num_threads(settings.threads)
        model = load_cell(settings.model, k=settings.k, metric=settings.metric, space=settings.space)
        log.info("%s", describe_space(model))
        images, test_ids = index_images(model)
        embedder = Embedder(model.record, settings.device, model.root)
        if embedder.notice:
            log.warning("%s", embedder.notice)
        return cls(settings, model, embedder, images, test_ids, model.saved_metrics())

    def thumbnail(self, image_id: str) -> bytes:
        if image_id not in self.images:
            raise HTTPException(404, f"no image with id '{image_id}' in this model's gallery or test images")
        try:
            return self._thumbnails(image_id)
        except OSError as error:
            raise HTTPException(404, f"image '{image_id}' cannot be read on the server: {error}") from error

    def _make_thumbnail(self, image_id: str) -> bytes:
        from cbir.data.images import load_rgb_image

        image = load_rgb_image(self.images[image_id].path)
        image.thumbnail((THUMBNAIL_PIXELS, THUMBNAIL_PIXELS))
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=85)
        return buffer.getvalue()

    def info(self) -> dict[str, Any]:
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
            "embedding_dim": int(index.gallery.shape[1]),
            "metric": index.metric,
            "top_k": self.settings.top_k,
            "max_top_k": MAX_TOP_K,
            "max_upload_bytes": self.settings.max_upload_bytes,
            "max_pixels": self.settings.max_pixels,
            "modes": mode_titles(self.model),
            "metrics": quality_metrics(self.metrics),
            "loaded_at": self.loaded_at,
        }

    def search(self, image: Image.Image, top_k: int, true_class: str | None) -> dict[str, Any]:
        """Embed a decoded image and search every mode, timing each step in milliseconds."""
        timings: dict[str, float] = {}
        start = time.perf_counter()
        tensor = self.embedder.preprocess(image)
        timings["preprocess"] = _ms_since(start)
        start = time.perf_counter()
        features = self.embedder.forward(tensor[None])
        timings["forward"] = _ms_since(start)
        [answer] = search_features(self.model, features, top_k, MODES, timings=timings, calibration=self.calibration)
        if not self.model.labelled:
            return collection_answer(answer, top_k, timings)
        results = {
            mode: [
                {
                    "rank": r["rank"],
                    "id": r["id"],
                    "class": r["class"],
                    "distance": r["distance"],
                    "similarity": r["similarity"],
                    "good_match": r["good_match"],
                    "thumbnail": thumbnail_url(r["id"]),
                    "correct": None if true_class is None else r["class"] == true_class,
                }
                for r in rows
            ]
            for mode, rows in answer["results"].items()
        }
        predicted = answer["predicted_class"]
        return {
            "predicted_class": predicted,
            "probability": answer["probability"],
            "prediction_correct": None if true_class is None else predicted == true_class,
            "top_k": top_k,
            "similarity": answer["similarity"],
            "no_match": answer["no_match"],
            "results": results,
            "timings_ms": timings,
        }


def collection_answer(answer: dict[str, Any], top_k: int, timings: dict[str, float]) -> dict[str, Any]:
    """The response for a collection without labels: the nearest clusters, no class and no marks."""
    results = {
        mode: [
            {key: r[key] for key in ("rank", "id", "cluster", "distance", "similarity")}
            | {"thumbnail": thumbnail_url(r["id"])}
            for r in rows
        ]
        for mode, rows in answer["results"].items()
    }
    return {
        "top_k": top_k,
        "similarity": answer["similarity"],
        "no_match": answer["no_match"],
        "nearest_clusters": answer["nearest_clusters"],
        "results": results,
        "timings_ms": timings,
    }


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


def _ms_since(start: float) -> float:
    return (time.perf_counter() - start) * 1e3


def thumbnail_url(image_id: str) -> str:
    from urllib.parse import quote

    return f"/api/images/{quote(image_id, safe='/')}"


def index_images(model: Cell) -> tuple[dict[str, ImageEntry], list[str]]:
    """Gallery images (from gallery.h5) plus the split's test images (from the dataset's manifest).

    The cell is ``<root>/results/<dataset>/<backbone>/<split>/<pca>/``; relative manifest paths
    are relative to ``<root>``, the folder the workflow ran in. Without a manifest or split file
    only the gallery is known.
    """
    import pandas as pd

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


# --- a cell that changes under the running server ------------------------------------------

Signature = tuple[tuple[str, int, int], ...]


def cell_signature(folder: Path) -> Signature | None:
    """Name, modification time and size of each artifact in the cell (None: the folder cannot be listed)."""
    try:
        return tuple(
            (path.name, stat.st_mtime_ns, stat.st_size)
            for path in sorted(folder.iterdir())
            if path.suffix in (".h5", ".json") and path.is_file() and (stat := path.stat())
        )
    except OSError:
        return None


def cell_settled(folder: Path, k: int | None) -> bool:
    """Whether the workflow looks done with the cell: its metrics for k are no older than its models.

    The workflow writes ``metrics_k<k>.json`` last; a cell without any metrics file (copied out of
    its run) counts as settled.
    """
    ks = available_k(folder)
    if not ks:
        return False
    k = k if k is not None else ks[0]
    metrics = folder / metrics_name(k)
    if not any(folder.glob("metrics_k*.json")):
        return True
    try:
        newest_model = max((folder / name).stat().st_mtime_ns for name in (*MODEL_FILES, clusters_name(k)))
        return metrics.stat().st_mtime_ns >= newest_model
    except OSError:
        return False


class ModelHolder:
    """The served model behind one reference, replaced whole when the cell changes.

    A request reads :attr:`current` once and uses only that object, so a reload never mixes an
    old and a new model within a request. A new model is loaded beside the running one and only
    swapped in when it loaded completely and the cell's files did not change while it loaded; a
    failed load keeps the old model (and is not retried until the files change again).
    """

    def __init__(self, served: ServedModel) -> None:
        self.current = served
        self.folder = Path(served.settings.model)
        self.signature = cell_signature(self.folder)
        self.reloads = 0
        self._failed: Signature | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._forced = False

    @property
    def settings(self) -> ServeSettings:
        return self.current.settings

    def reload(self, reason: str) -> bool:
        """Load the cell again and swap it in; False (old model kept, reason logged) when that fails."""
        with self._lock:
            before = cell_signature(self.folder)
            try:
                fresh = ServedModel.load(self.settings)
            except Exception as error:  # a half-written or broken cell: keep serving the old model
                self._failed = before
                log.error("cbir serve: reloading '%s' (%s) failed, the previous model stays: %s: %s",
                          self.folder, reason, type(error).__name__, error)  # fmt: skip
                return False
            if cell_signature(self.folder) != before:
                log.warning(
                    "cbir serve: '%s' changed while it was loaded (%s); will load it again", self.folder, reason
                )
                return False
            self.current, self.signature, self._failed = fresh, before, None
            self.reloads += 1
            log.warning("cbir serve: reloaded '%s' (%s): %s", self.folder, reason, _describe_cell(fresh))
            return True

    def request_reload(self) -> None:
        """Ask the watcher thread for a reload now (the SIGHUP handler calls this)."""
        self._forced = True
        self._wake.set()

    def check(self, seen: Signature | None) -> Signature | None:
        """One periodic check: reload when the files differ from the loaded ones and are unchanged since
        the previous check (``seen``) and the workflow is done with the cell. Returns what it saw."""
        now = cell_signature(self.folder)
        if now is None or now == self.signature or now == self._failed:
            return None
        if now == seen and cell_settled(self.folder, self.settings.k):
            self.reload("its files changed")
        return now

    def watch(self, stop: threading.Event) -> None:
        """The watcher thread: reloads on request, and checks the files every ``reload_interval`` seconds."""
        interval = self.settings.reload_interval
        seen: Signature | None = None
        while not stop.is_set():
            self._wake.wait(timeout=interval if interval > 0 else None)
            if stop.is_set():
                return
            if self._forced:
                self._wake.clear()
                self._forced = False
                self.reload("SIGHUP")
                seen = None
            elif interval > 0:
                seen = self.check(seen)

    def stop(self, stop: threading.Event) -> None:
        stop.set()
        self._wake.set()


def _describe_cell(served: ServedModel) -> str:
    identity = served.model.identity
    return (f"{identity.dataset}/{identity.backbone}/{identity.split}/{identity.pca}, k={served.model.k}, "
            f"{len(served.model.gallery_ids)} gallery images")  # fmt: skip


# --- uploads ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class DecodedUpload:
    """An upload decoded as the gallery's images were, and its size as displayed (in full, turned by EXIF)."""

    image: Image.Image
    width: int
    height: int


def decode_image(data: bytes, max_pixels: int, draft_to: int | None = None) -> DecodedUpload:
    """Decode image bytes to RGB (EXIF orientation applied), refusing non-images and oversized images.

    ``draft_to``: the gallery's draft side (:attr:`cbir.extraction.network.PreparedNetwork.draft_to`): a large
    JPEG is decoded at the reduced DCT scale its images were.
    """
    from cbir.data.images import load_rgb_image

    if not data:
        raise UploadError(400, "the upload is empty")
    try:
        with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as probe:
            width, height = probe.size
    except Image.DecompressionBombError as error:
        raise UploadError(413, f"the image has too many pixels (decompression bomb?): {error}") from error
    except UnidentifiedImageError as error:
        raise UploadError(
            422, f"the upload is not an image in a format this server reads ({', '.join(UPLOAD_FORMATS)})"
        ) from error
    except (OSError, SyntaxError, ValueError) as error:
        raise UploadError(422, f"the image cannot be read: {type(error).__name__}: {error}") from error
    if width * height > max_pixels:
        raise UploadError(
            413, f"the image is {width}x{height} = {width * height:,} pixels, over the limit of {max_pixels:,} pixels"
        )
    try:
        image = load_rgb_image(io.BytesIO(data), draft_to)
        with Image.open(io.BytesIO(data)) as probe:
            turned = probe.getexif().get(ExifTags.Base.Orientation, 1) in (5, 6, 7, 8)
    except Image.DecompressionBombError as error:
        raise UploadError(413, f"the image has too many pixels (decompression bomb?): {error}") from error
    except Exception as error:  # a truncated or corrupt file fails only when decoded
        raise UploadError(422, f"the image cannot be decoded: {type(error).__name__}: {error}") from error
    return DecodedUpload(image, *((height, width) if turned else (width, height)))


def read_upload(upload: UploadFile, max_bytes: int) -> bytes:
    content_type = (upload.content_type or "application/octet-stream").split(";")[0].strip().lower()
    if not (content_type.startswith("image/") or content_type == "application/octet-stream"):
        raise UploadError(415, f"the upload's content type is '{content_type}'; send an image (image/*)")
    data = upload.file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise UploadError(413, f"the upload is larger than the limit of {_size(max_bytes)}")
    return data


def _size(n_bytes: int) -> str:
    return f"{n_bytes / 1024 / 1024:.3g} MB" if n_bytes >= 1024 * 1024 else f"{n_bytes / 1024:.3g} KB"


class UploadLimit:
    """ASGI middleware: a request body to ``path`` over ``max_body_bytes`` gets a 413 before it is parsed.

    The declared Content-Length is checked before anything is read; the bytes actually received
    are counted too (a chunked upload has no Content-Length). A body that is not a form gets a 415.
    """

    def __init__(self, app: ASGIApp, path: str, max_upload_bytes: int) -> None:
        self.app = app
        self.path = path
        self.max_upload_bytes = max_upload_bytes
        self.max_body_bytes = max_upload_bytes + MULTIPART_OVERHEAD

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        headers = {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}
        content_type = headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type not in FORM_TYPES:
            message = f"send the image as multipart/form-data in the field 'image' (got '{content_type or 'none'}')"
            await JSONResponse({"detail": message}, status_code=415)(scope, receive, send)
            return
        too_large = f"the upload is larger than the limit of {_size(self.max_upload_bytes)}"
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await JSONResponse({"detail": too_large}, status_code=413, headers={"Connection": "close"})(
                scope, receive, send
            )
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    raise HTTPException(413, too_large)  # FastAPI passes it through form parsing
            return message

        await self.app(scope, limited_receive, send)


class BodyTimeoutError(HTTPException):
    """A request body that did not arrive in time (FastAPI passes HTTPExceptions through form parsing)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(408, f"the request body did not arrive within {seconds:g} s", headers={"Connection": "close"})


class BodyTimeout:
    """ASGI middleware: the whole request body must arrive within ``seconds`` of the request, else a 408.

    A client trickling bytes (or sending none) then holds a connection for at most that long, and
    never a worker thread: the body is read on the event loop before the endpoint runs.
    """

    def __init__(self, app: ASGIApp, seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.seconds <= 0:
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.seconds
        body_done = False
        started = False

        async def timed_receive() -> Message:
            nonlocal body_done
            if body_done:
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), timeout=max(deadline - time.monotonic(), 0.001))
            except TimeoutError:
                raise BodyTimeoutError(self.seconds) from None
            body_done = message["type"] != "http.request" or not message.get("more_body", False)
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, timed_receive, watched_send)
        except BodyTimeoutError as error:  # raised outside FastAPI (the login form)
            if started:
                raise
            response = JSONResponse({"detail": error.detail}, status_code=408, headers=error.headers)
            await response(scope, receive, send)


class ConcurrencyLimit:
    """ASGI middleware: at most ``limit`` requests in progress in this process; the next get a 503 at once.

    The 503 carries ``Retry-After``, so overload is refused rather than queued without end.
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.active = 0  # touched only on the event loop

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            detail = f"the server is busy ({self.limit} requests in progress); retry in {RETRY_AFTER_S} s"
            response = JSONResponse({"detail": detail}, status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})
            await response(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


# --- the API ---------------------------------------------------------------------------------


class ResultTile(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    rank: int
    id: str
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
    thumbnail: str = Field(description="URL of the image's thumbnail (GET /api/images/{id})")
    correct: bool | None = Field(description="the result's class is the query's known class; null when unknown")


class QueryInfo(BaseModel):
    source: Literal["upload", "test"]
    name: str
    id: str | None = None
    true_class: str | None = None
    width: int
    height: int


class NoMatchInfo(BaseModel):
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


class QueryResponse(BaseModel):
    query: QueryInfo
    predicted_class: str
    probability: float
    prediction_correct: bool | None
    top_k: int
    similarity: Literal["cosine", "relevance"] | None = Field(
        description="what each result's similarity is: cosine, or relevance (the estimated probability that a "
        "result is relevant, calibrated in the evaluation); null: none"
    )
    no_match: NoMatchInfo = Field(description="the distance beyond which results are marked 'no good match'")
    results: dict[str, list[ResultTile]] = Field(description="top-k per mode: clustered, class, global")
    timings_ms: dict[str, float] = Field(
        description="decode, preprocess, forward, project_predict, search_<mode>, total (milliseconds)"
    )


class ClusterInfo(BaseModel):
    cluster: int = Field(description="the centroid's number in the cell's clusters file")
    distance: float = Field(description="distance from the query to the centroid")
    size: int = Field(description="gallery images in the cluster")


class CollectionTile(BaseModel):
    rank: int
    id: str
    cluster: int = Field(description="the cluster of the image")
    distance: float
    similarity: float | None = Field(
        default=None,
        description="cosine similarity (1 = same direction) in a normalised space or with the cosine metric; null "
        "otherwise (a collection without labels has no calibrated relevance)",
    )
    thumbnail: str = Field(description="URL of the image's thumbnail (GET /api/images/{id})")


class CollectionQueryResponse(BaseModel):
    """The answer for a collection without labels: no predicted class, no right/wrong marks."""

    query: QueryInfo
    top_k: int
    similarity: Literal["cosine"] | None = Field(description="what each result's similarity is; null: none")
    no_match: NoMatchInfo = Field(description="always without a distance: it is calibrated on labels")
    nearest_clusters: list[ClusterInfo] = Field(description="the query's nearest centroids, nearest first")
    results: dict[str, list[CollectionTile]] = Field(
        description="top-k per mode: clustered (the nearest cluster's images), global"
    )
    timings_ms: dict[str, float] = Field(
        description="decode, preprocess, forward, project_predict, search_<mode>, total (milliseconds)"
    )


def _answer_kind(answer: Any) -> str:
    has_clusters = "nearest_clusters" in answer if isinstance(answer, dict) else hasattr(answer, "nearest_clusters")
    return "collection" if has_clusters else "labelled"


# a labelled cell's answer, or a collection's (told apart by its nearest clusters)
AnyQueryResponse = Annotated[
    Annotated[QueryResponse, Tag("labelled")] | Annotated[CollectionQueryResponse, Tag("collection")],
    Discriminator(_answer_kind),
]


class ModelInfo(BaseModel):
    dataset: str
    backbone: str
    split: str
    pca: str
    arch: str
    weights: str
    pooling: str
    image_size: int
    seed: int
    precision: str = Field(description="the precision queries run in: the gallery's, where this machine has it")
    precision_notice: str | None = Field(description="why queries cannot run in the gallery's precision, if so")
    k: int
    available_k: list[int]
    gallery_size: int
    test_images: int
    classes: list[str]
    labelled: bool = Field(
        description="false: a collection without labels: no class is predicted, no result is marked right or "
        "wrong, and the clustered search probes the nearest of all clusters"
    )
    feature_dim: int
    reduced_dim: int = Field(description="dimensions of the PCA-reduced features the classifier takes")
    space: str = Field(description="the embedding space every search ranks in (README, 'Embedding spaces')")
    embedding_dim: int = Field(description="dimensions of that space")
    metric: str
    top_k: int
    max_top_k: int
    max_upload_bytes: int
    max_pixels: int
    modes: dict[str, str]
    metrics: dict[str, float] = Field(
        description="accuracy, mAP and precision from the cell's metrics file; without labels, each search's recall "
        "against the exact one"
    )
    loaded_at: str = Field(description="when this model was loaded (UTC, ISO 8601)")
    reloads: int = Field(description="how often this server process has loaded the cell again since it started")


class SampleImage(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    id: str
    class_name: str | None = Field(alias="class", description="null for a collection without labels")
    thumbnail: str


class ErrorMessage(BaseModel):
    detail: str


STATUS_TEXT = {
    400: "empty upload, or neither/both of image and test_id",
    401: "no token, or a wrong one: send 'Authorization: Bearer <token>' or log in at /login",
    404: "unknown test image id",
    408: "the request body did not arrive within the upload timeout",
    413: "upload over the byte limit, or image over the pixel limit",
    415: "not a form, or the file's content type is not an image",
    422: "not an image Pillow can decode, or an invalid field",
    503: "busy: the server's limit of concurrent requests is reached; retry after Retry-After seconds",
}
RETRY_AFTER_HEADER = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}


def error_responses(*statuses: int, token: bool) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI description of the errors an endpoint answers (401 only with a token, 503 always)."""
    codes = sorted({*statuses, 503, *((401,) if token else ())})
    return {
        code: {
            "model": ErrorMessage,
            "description": STATUS_TEXT[code],
            **({"headers": RETRY_AFTER_HEADER} if code == 503 else {}),
        }
        for code in codes
    }


class QueryThread:
    """The one thread of a process that reads, decodes, embeds and searches query images, in turn.

    Queries waiting for it hold no thread, only a future. One thread rather than one per request:
    threads sharing the GIL on a busy machine lose throughput to hand-offs (measured: ~20% fewer
    requests/s at 8 clients on 2 cores), and each thread that allocates gets its own malloc arena,
    so memory grew with the number of concurrent requests (+13% at 16 clients, none with one
    thread). ``--workers`` runs more processes for more queries at a time.
    """

    def __init__(self) -> None:
        self._executor: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()

    def submit(self, work: Callable[[], T]) -> Future[T]:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="cbir-query")
            return self._executor.submit(work)

    def close(self) -> None:
        with self._lock:
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None


def _web_file(name: str) -> str:
    return (resources.files("cbir.serve") / "web" / name).read_text(encoding="utf-8")


@functools.cache
def _docs_asset(name: str) -> bytes:
    return (resources.files("fastapi_offline") / "static" / name).read_bytes()


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for problem in error.errors():
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
        parts.append(f"{where}: {problem.get('msg', 'invalid')}" if where else str(problem.get("msg", "invalid")))
    return "invalid request: " + "; ".join(parts)


def create_app(settings: ServeSettings, served: ServedModel | None = None) -> FastAPI:
    """The web app for one model; the model is loaded here, once, unless ``served`` is given.

    A given ``served`` model is reused as loaded; the limits and defaults come from ``settings``.
    The current model is ``app.state.holder.current`` (``app.state.served`` is the first one).
    """
    from fastapi import Security
    from fastapi.security import HTTPBearer

    if served is None:
        served = ServedModel.load(settings)
    elif served.settings != settings:
        served = dataclasses.replace(served, settings=settings)
    holder = ModelHolder(served)
    token = settings.token is not None

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        stop = threading.Event()
        watcher = threading.Thread(target=holder.watch, args=(stop,), name="cbir-serve-reload", daemon=True)
        watcher.start()
        on_hup = hasattr(signal, "SIGHUP") and threading.current_thread() is threading.main_thread()
        previous = signal.signal(signal.SIGHUP, lambda _n, _f: holder.request_reload()) if on_hup else None
        try:
            yield
        finally:
            if on_hup:
                signal.signal(signal.SIGHUP, previous if previous is not None else signal.SIG_DFL)
            holder.stop(stop)
            watcher.join(timeout=5)
            queries.close()

    # documents the bearer token in the schema (and /docs' Authorize button); TokenAuth enforces it
    bearer = [Security(HTTPBearer(auto_error=False, description="the server's --token"))] if token else []
    app = FastAPI(
        title="cbir serve",
        version=__version__,
        description="Search a trained grid cell (CNN codes, PCA, intra-class clusters, MLP) with your own image.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        dependencies=bearer,
    )
    app.state.served = served
    app.state.holder = holder
    # outermost last: headers, concurrency limit, body timeout, token, upload checks, the app
    app.add_middleware(UploadLimit, path="/api/query", max_upload_bytes=settings.max_upload_bytes)
    if settings.token is not None:
        app.add_middleware(TokenAuth, token=settings.token)
    app.add_middleware(BodyTimeout, seconds=settings.upload_timeout)
    app.add_middleware(ConcurrencyLimit, limit=settings.max_concurrent)
    app.add_middleware(SecurityHeaders)
    queries = QueryThread()
    page, docs_page = _web_file("index.html"), _web_file("docs.html")
    assets = {name: _web_file(name) for name in WEB_FILES}

    @app.exception_handler(UploadError)
    async def upload_error(_request: Any, error: UploadError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status_code)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_request: Any, error: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(error)}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in assets:
            raise HTTPException(404, "no such file")
        return Response(assets[name], media_type=WEB_FILES[name])

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    def docs() -> HTMLResponse:
        return HTMLResponse(docs_page)

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def docs_asset(name: str) -> Response:
        if name not in DOCS_ASSETS:
            raise HTTPException(404, "no such file")
        return Response(_docs_asset(name), media_type=DOCS_ASSETS[name], headers={"Cache-Control": "max-age=86400"})

    @app.get(
        "/api/model",
        response_model=ModelInfo,
        responses=error_responses(token=token),
        summary="The loaded model: names, sizes and its metrics",
    )
    def model_info() -> dict[str, Any]:
        return {**holder.current.info(), "reloads": holder.reloads}

    @app.get(
        "/api/test-images",
        response_model=list[SampleImage],
        responses=error_responses(token=token),
        summary="The split's test images, by id",
    )
    def test_images() -> list[dict[str, str | None]]:
        served = holder.current
        entries = (served.images[i] for i in served.test_ids)
        labelled = served.model.labelled  # a collection's images have no class
        return [
            {"id": e.id, "class": e.class_name if labelled else None, "thumbnail": thumbnail_url(e.id)} for e in entries
        ]

    @app.get(
        "/api/images/{image_id:path}",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, **error_responses(404, token=token)},
        summary="JPEG thumbnail of a gallery or test image, by its id in the manifest",
    )
    def image(image_id: str) -> Response:
        return Response(holder.current.thumbnail(image_id), media_type="image/jpeg",
                        headers={"Cache-Control": "public, max-age=3600"})  # fmt: skip

    @app.post(
        "/api/query",
        response_model=AnyQueryResponse,
        responses=error_responses(400, 404, 408, 413, 415, 422, token=token),
        summary="Search with an uploaded image (field 'image') or one of the test images (field 'test_id')",
    )
    async def query(
        image: Annotated[UploadFile | None, File(description="the query image (JPEG, PNG, WebP, …)")] = None,
        test_id: Annotated[str | None, Form(description="id of a test image (GET /api/test-images)")] = None,
        top_k: Annotated[int | None, Form(ge=1, le=MAX_TOP_K, description="results per mode")] = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        served = holder.current  # one model for the whole request, even if a reload swaps it meanwhile
        if (image is None) == (test_id is None):
            raise UploadError(400, "send exactly one of: a file in the field 'image', or a 'test_id'")

        def work() -> dict[str, Any]:
            if image is not None:
                data = read_upload(image, settings.max_upload_bytes)
                name, true_class, image_id = image.filename or "upload", None, None
            else:
                entry = served.images.get(test_id or "")
                if entry is None or entry.subset != "test":
                    raise UploadError(404, f"no test image with id '{test_id}'")
                try:
                    data = entry.path.read_bytes()
                except OSError as error:
                    raise UploadError(404, f"test image '{test_id}' cannot be read on the server: {error}") from error
                # a collection's test images have no class to judge the results by
                true_class = entry.class_name if served.model.labelled else None
                name, image_id = entry.id, entry.id
            start = time.perf_counter()
            decoded = decode_image(data, settings.max_pixels, served.embedder.prepared.draft_to)
            decode_ms = _ms_since(start)
            answer = served.search(decoded.image, top_k or settings.top_k, true_class)
            answer["timings_ms"] = {"decode": decode_ms, **answer["timings_ms"], "total": _ms_since(started)}
            source = "upload" if image is not None else "test"
            answer["query"] = {"source": source, "name": name, "id": image_id, "true_class": true_class,
                               "width": decoded.width, "height": decoded.height}  # fmt: skip
            return answer

        return await asyncio.wrap_future(queries.submit(work))

    return app


# --- running it ------------------------------------------------------------------------------


def worker_app() -> FastAPI:
    """The app of one ``--workers`` process: settings from CBIR_SERVE_SETTINGS, the token from CBIR_TOKEN."""
    return create_app(ServeSettings.from_env())


def run_server(
    target: FastAPI | ServeSettings,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    workers: int = 1,
) -> None:
    """Serve an app (one process), or the app of some settings in ``workers`` processes.

    Each worker loads the model itself; SIGHUP to the parent then makes uvicorn replace the workers
    one by one, each new one ready (model loaded) before the old one stops.
    """
    import uvicorn

    options: dict[str, Any] = {"host": host, "port": port, "log_level": log_level, "server_header": False}
    if workers <= 1:
        app = target if isinstance(target, FastAPI) else create_app(target)
        uvicorn.run(app, **options)
        return
    if not isinstance(target, ServeSettings):
        raise TypeError("more than one worker needs the settings, not an app")
    os.environ[SETTINGS_ENV] = target.to_env()
    if target.token is not None:
        os.environ[TOKEN_ENV] = target.token
    # a new worker imports torch and loads the model before it answers: give it time (uvicorn's default is 5 s)
    uvicorn.run("cbir.serve.app:worker_app", factory=True, workers=workers, timeout_worker_healthcheck=WORKER_START_S,
                **options)  # fmt: skip


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run the app with uvicorn in a background thread; yields its base URL (a free port when 0)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
