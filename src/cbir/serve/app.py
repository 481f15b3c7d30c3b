"""``cbir serve``: a small web page and JSON API to search one trained grid cell with your own image.

The model (backbone, PCA, MLP, centroids, gallery features) is loaded once when the app is
created (:mod:`cbir.serve.model`); requests only read it, and a rewritten cell is loaded again
and swapped in whole (:mod:`cbir.serve.reload`). Uploads are limited in bytes and in pixels,
must declare an image content type and must decode with Pillow (:mod:`cbir.serve.uploads`);
anything else gets a 4xx with a message. Images are only ever served by id (gallery and test
images of the model's dataset), never by a path.

Under load: queries are read, decoded, embedded and searched in turn on one thread per process
(:class:`QueryThread`); the limits of :mod:`cbir.serve.middleware` refuse the rest. With a token
(required off loopback) every request needs it: see :mod:`cbir.serve.auth`. This module holds
the routes; :mod:`cbir.serve.schemas` their responses, :mod:`cbir.serve.run` the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import Future, ThreadPoolExecutor
from importlib import resources
from typing import Annotated, Any, TypeVar

from fastapi import FastAPI, File, Form, HTTPException, Security, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPBearer

from cbir import __version__
from cbir.search.feedback import MAX_MARKS
from cbir.serve.auth import SecurityHeaders, TokenAuth
from cbir.serve.middleware import BodyTimeout, ConcurrencyLimit, UploadLimit
from cbir.serve.model import ServedModel, UnknownImageError
from cbir.serve.queries import (
    GALLERY_ID_HELP,
    IRRELEVANT_HELP,
    QUERY_DESCRIPTION,
    RELEVANT_HELP,
    TEST_ID_HELP,
    QueryForm,
    answer_query,
    check_query,
)
from cbir.serve.reload import ModelHolder
from cbir.serve.schemas import (
    AnyQueryResponse,
    CollectionQueryResponse,
    ModelInfo,
    QueryResponse,
    SampleImage,
    error_responses,
    thumbnail_url,
)
from cbir.serve.settings import MAX_TOP_K, ServeSettings
from cbir.serve.uploads import UploadError

T = TypeVar("T")

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
        description="Search a trained grid cell (CNN codes, PCA, intra-class clusters, MLP) with your own image, a "
        "test image or a gallery image, and refine the results with relevance feedback.",
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
        try:
            thumbnail = holder.current.thumbnail(image_id)
        except UnknownImageError as error:
            raise HTTPException(404, str(error)) from error
        return Response(thumbnail, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})

    @app.post(
        "/api/query",
        response_model=AnyQueryResponse,
        responses=error_responses(400, 404, 408, 413, 415, 422, token=token),
        summary="Search with an uploaded image (field 'image'), a test image ('test_id') or a gallery image "
        "('gallery_id'), optionally after a round of relevance feedback ('relevant_ids', 'irrelevant_ids')",
        description=QUERY_DESCRIPTION,
    )
    async def query(
        image: Annotated[UploadFile | None, File(description="the query image (JPEG, PNG, WebP, …)")] = None,
        test_id: Annotated[str | None, Form(description=TEST_ID_HELP)] = None,
        gallery_id: Annotated[str | None, Form(description=GALLERY_ID_HELP)] = None,
        relevant_ids: Annotated[list[str] | None, Form(max_length=MAX_MARKS, description=RELEVANT_HELP)] = None,
        irrelevant_ids: Annotated[list[str] | None, Form(max_length=MAX_MARKS, description=IRRELEVANT_HELP)] = None,
        top_k: Annotated[int | None, Form(ge=1, le=MAX_TOP_K, description="results per mode")] = None,
    ) -> QueryResponse | CollectionQueryResponse:
        started = time.perf_counter()
        served = holder.current  # one model for the whole request, even if a reload swaps it meanwhile
        form = QueryForm(top_k or settings.top_k, image, test_id, gallery_id, relevant_ids or [], irrelevant_ids or [])
        feedback = check_query(served, form)  # a wrong form is refused before it waits for the query thread
        work = functools.partial(answer_query, served, settings, form, feedback, started)
        return await asyncio.wrap_future(queries.submit(work))

    return app
