"""The ASGI middleware that keeps ``cbir serve`` up under load: upload size, body timeout, concurrency limit.

A request body to the query endpoint over the upload limit gets a 413 before it is parsed; a
body must arrive within ``upload_timeout`` seconds (408); at most ``max_concurrent`` requests
per process are in progress, the next ones get a 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import HTTPException
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cbir.serve.uploads import describe_size

MULTIPART_OVERHEAD = 64 * 1024  # form boundaries and headers around the file, on top of the upload limit
FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")
RETRY_AFTER_S = 1


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
        too_large = f"the upload is larger than the limit of {describe_size(self.max_upload_bytes)}"
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
