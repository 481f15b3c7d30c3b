"""``cbir serve``: a small web page and JSON API to search one trained grid cell with your own image.

The model (backbone, PCA, MLP, centroids, gallery features) is loaded once when the app is
created; requests only read it. Uploads are limited in bytes and in pixels, must declare an image
content type and must decode with Pillow; anything else gets a 4xx with a message. Images are
only ever served by id (gallery and test images of the model's dataset), never by a path.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import ipaddress
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cbir import __version__
from cbir.cell import Cell, available_k, load_cell
from cbir.query import Embedder, search_features
from cbir.retrieve import MODE_TITLES, MODES

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD_MB = 10.0
DEFAULT_MAX_PIXELS = 40_000_000
MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and headers around the file, on top of the upload limit
MAX_TOP_K = 50
THUMBNAIL_PIXELS = 160
UPLOAD_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM")
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
WEB_FILES = {"app.js": "text/javascript; charset=utf-8", "style.css": "text/css; charset=utf-8"}
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
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
    threads: int | None = None  # torch's intra-op threads for the CNN forward; None: torch's default


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

    def __post_init__(self) -> None:
        self._thumbnails = functools.lru_cache(maxsize=4096)(self._make_thumbnail)

    @classmethod
    def load(cls, settings: ServeSettings) -> ServedModel:
        if settings.threads:
            import torch

            torch.set_num_threads(settings.threads)
        model = load_cell(settings.model, k=settings.k, metric=settings.metric)
        images, test_ids = index_images(model)
        embedder = Embedder(model.record, settings.device)
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
        from cbir.images import load_rgb_image

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
            "feature_dim": self.model.feature_dim,
            "reduced_dim": int(index.gallery.shape[1]),
            "metric": index.metric,
            "top_k": self.settings.top_k,
            "max_top_k": MAX_TOP_K,
            "max_upload_bytes": self.settings.max_upload_bytes,
            "max_pixels": self.settings.max_pixels,
            "modes": {mode: MODE_TITLES[mode].short for mode in MODES},
            "metrics": quality_metrics(self.metrics),
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
        [answer] = search_features(self.model, features, top_k, MODES, timings=timings)
        results = {
            mode: [
                {
                    "rank": r["rank"],
                    "id": r["id"],
                    "class": r["class"],
                    "distance": r["distance"],
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
            "results": results,
            "timings_ms": timings,
        }


def quality_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Accuracy, then mAP@top-k, mAP and precision@top-k of the three query modes, in that order."""
    top_k = metrics.get("top_k", 5)
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

    folder = model.folder.resolve()
    if len(folder.parents) < 5:  # not inside <root>/results/<dataset>/: a copied cell
        return _gallery_images(model, Path.cwd()), []
    dataset_folder, root = folder.parents[2], folder.parents[4]

    images = _gallery_images(model, root)
    manifest_csv, split_csv = dataset_folder / "manifest.csv", dataset_folder / "splits" / f"{folder.parent.name}.csv"
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


# --- uploads ---------------------------------------------------------------------------------


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """Decode image bytes to RGB (EXIF orientation applied), refusing non-images and oversized images."""
    from cbir.images import load_rgb_image

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
        return load_rgb_image(io.BytesIO(data))  # type: ignore[arg-type]  # PIL opens file objects too
    except Image.DecompressionBombError as error:
        raise UploadError(413, f"the image has too many pixels (decompression bomb?): {error}") from error
    except Exception as error:  # a truncated or corrupt file fails only when decoded
        raise UploadError(422, f"the image cannot be decoded: {type(error).__name__}: {error}") from error


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


# --- the API ---------------------------------------------------------------------------------


class ResultTile(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    rank: int
    id: str
    class_name: str = Field(alias="class")
    distance: float
    thumbnail: str = Field(description="URL of the image's thumbnail (GET /api/images/{id})")
    correct: bool | None = Field(description="the result's class is the query's known class; null when unknown")


class QueryInfo(BaseModel):
    source: Literal["upload", "test"]
    name: str
    id: str | None = None
    true_class: str | None = None
    width: int
    height: int


class QueryResponse(BaseModel):
    query: QueryInfo
    predicted_class: str
    probability: float
    prediction_correct: bool | None
    top_k: int
    results: dict[str, list[ResultTile]] = Field(description="top-k per mode: clustered, class, global")
    timings_ms: dict[str, float] = Field(
        description="decode, preprocess, forward, project_predict, search_<mode>, total (milliseconds)"
    )


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
    feature_dim: int
    reduced_dim: int
    metric: str
    top_k: int
    max_top_k: int
    max_upload_bytes: int
    max_pixels: int
    modes: dict[str, str]
    metrics: dict[str, float] = Field(description="accuracy, mAP and precision from the cell's metrics file")


class SampleImage(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    id: str
    class_name: str = Field(alias="class")
    thumbnail: str


class ErrorMessage(BaseModel):
    detail: str


ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorMessage, "description": text}
    for status, text in {
        400: "empty upload, or neither/both of image and test_id",
        404: "unknown test image id",
        413: "upload over the byte limit, or image over the pixel limit",
        415: "not a form, or the file's content type is not an image",
        422: "not an image Pillow can decode, or an invalid field",
    }.items()
}


def _web_file(name: str) -> str:
    return (resources.files("cbir") / "web" / name).read_text(encoding="utf-8")


def create_app(settings: ServeSettings, served: ServedModel | None = None) -> FastAPI:
    """The web app for one model; the model is loaded here, once, unless ``served`` is given.

    A given ``served`` model is reused as loaded; the limits and defaults come from ``settings``.
    """
    if served is None:
        served = ServedModel.load(settings)
    elif served.settings != settings:
        served = dataclasses.replace(served, settings=settings)
    app = FastAPI(
        title="cbir serve",
        version=__version__,
        description="Search a trained grid cell (CNN codes, PCA, intra-class clusters, MLP) with your own image.",
    )
    app.state.served = served
    app.add_middleware(UploadLimit, path="/api/query", max_upload_bytes=settings.max_upload_bytes)
    page = _web_file("index.html")
    assets = {name: _web_file(name) for name in WEB_FILES}

    @app.exception_handler(UploadError)
    async def upload_error(_request: Any, error: UploadError) -> JSONResponse:
        return JSONResponse({"detail": error.message}, status_code=error.status_code)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/static/{name}", include_in_schema=False)
    def static(name: str) -> Response:
        if name not in assets:
            raise HTTPException(404, "no such file")
        return Response(assets[name], media_type=WEB_FILES[name], headers=PAGE_HEADERS)

    @app.get("/api/model", response_model=ModelInfo, summary="The loaded model: names, sizes and its metrics")
    def model_info() -> dict[str, Any]:
        return served.info()

    @app.get("/api/test-images", response_model=list[SampleImage], summary="The split's test images, by id")
    def test_images() -> list[dict[str, str]]:
        entries = (served.images[i] for i in served.test_ids)
        return [{"id": e.id, "class": e.class_name, "thumbnail": thumbnail_url(e.id)} for e in entries]

    @app.get(
        "/api/images/{image_id:path}",
        response_class=Response,
        responses={200: {"content": {"image/jpeg": {}}}, 404: {"model": ErrorMessage}},
        summary="JPEG thumbnail of a gallery or test image, by its id in the manifest",
    )
    def image(image_id: str) -> Response:
        headers = {"Cache-Control": "public, max-age=3600", "X-Content-Type-Options": "nosniff"}
        return Response(served.thumbnail(image_id), media_type="image/jpeg", headers=headers)

    @app.post(
        "/api/query",
        response_model=QueryResponse,
        responses=ERRORS,
        summary="Search with an uploaded image (field 'image') or one of the test images (field 'test_id')",
    )
    def query(
        image: Annotated[UploadFile | None, File(description="the query image (JPEG, PNG, WebP, …)")] = None,
        test_id: Annotated[str | None, Form(description="id of a test image (GET /api/test-images)")] = None,
        top_k: Annotated[int | None, Form(ge=1, le=MAX_TOP_K, description="results per mode")] = None,
    ) -> dict[str, Any]:
        started = time.perf_counter()
        if (image is None) == (test_id is None):
            raise UploadError(400, "send exactly one of: a file in the field 'image', or a 'test_id'")
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
            name, true_class, image_id = entry.id, entry.class_name, entry.id
        start = time.perf_counter()
        decoded = decode_image(data, settings.max_pixels)
        decode_ms = _ms_since(start)
        answer = served.search(decoded, top_k or settings.top_k, true_class)
        answer["timings_ms"] = {"decode": decode_ms, **answer["timings_ms"], "total": _ms_since(started)}
        source = "upload" if image is not None else "test"
        answer["query"] = {"source": source, "name": name, "id": image_id, "true_class": true_class,
                           "width": decoded.width, "height": decoded.height}  # fmt: skip
        return answer

    return app


# --- running it ------------------------------------------------------------------------------


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def run_server(app: FastAPI, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level)


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
