"""cbir serve's parts without a model: upload decoding, the body and concurrency limits, the token's rules and
its middleware, each on a bare ASGI app (the whole server on a fitted cell: tests/workflow/test_serve*.py)."""

from __future__ import annotations

import asyncio
import io

import pytest
from PIL import Image
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from cbir.serve.auth import MIN_TOKEN_LENGTH, TOKEN_ENV, TokenAuth, is_loopback, token_problem
from cbir.serve.middleware import ConcurrencyLimit, UploadLimit
from cbir.serve.uploads import UploadError, decode_image

TOKEN = "t" * MIN_TOKEN_LENGTH


def _image_bytes(size: tuple[int, int], mode: str = "RGB", fmt: str = "PNG", **save) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 128 if mode == "L" else (10, 200, 30, 0)[: len(mode)]).save(buffer, format=fmt, **save)
    return buffer.getvalue()


def test_an_upload_is_decoded_to_rgb_with_its_size():
    decoded = decode_image(_image_bytes((40, 30), "RGBA"), max_pixels=10_000)
    assert decoded.image.mode == "RGB" and decoded.image.size == (40, 30)
    assert decoded.image.getpixel((0, 0)) == (255, 255, 255)  # transparent: composited on white
    grey = decode_image(_image_bytes((8, 8), "L", "JPEG"), max_pixels=10_000)
    assert grey.image.mode == "RGB"


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        (b"", 400, "empty"),
        (b"not an image at all", 422, "not an image in a format this server reads"),
        (_image_bytes((200, 100)), 413, "200x100 = 20,000 pixels, over the limit of 10,000"),
        (_image_bytes((64, 64), fmt="JPEG")[:200], 422, "cannot be"),
    ],
)
def test_a_bad_upload_gets_its_status_and_a_message(data: bytes, status: int, message: str):
    with pytest.raises(UploadError) as error:
        decode_image(data, max_pixels=10_000)
    assert error.value.status_code == status and message in error.value.message


def _echo_app() -> Starlette:
    async def upload(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(len(await request.body())))

    return Starlette(routes=[Route("/api/query", upload, methods=["POST"])])


def test_the_upload_limit_refuses_large_and_non_form_bodies_before_the_app():
    client = TestClient(UploadLimit(_echo_app(), "/api/query", max_upload_bytes=1000))
    files = {"image": ("a.png", b"x" * 100, "image/png")}
    assert client.post("/api/query", files=files).status_code == 200
    too_large = client.post("/api/query", files={"image": ("a.png", b"x" * 100_000, "image/png")})
    assert too_large.status_code == 413 and "larger than the limit" in too_large.json()["detail"]
    not_a_form = client.post("/api/query", content=b"{}", headers={"content-type": "application/json"})
    assert not_a_form.status_code == 415 and "multipart/form-data" in not_a_form.json()["detail"]


def test_requests_over_the_concurrency_limit_get_503_with_retry_after():
    async def slow(request: Request) -> JSONResponse:
        await asyncio.sleep(0.05)
        return JSONResponse({"ok": True})

    limit = ConcurrencyLimit(Starlette(routes=[Route("/slow", slow)]), limit=1)
    limit.active = 1  # one request already in progress
    busy = TestClient(limit).get("/slow")
    assert busy.status_code == 503 and busy.headers["Retry-After"] and "busy" in busy.json()["detail"]
    limit.active = 0
    assert TestClient(limit).get("/slow").json() == {"ok": True} and limit.active == 0


def test_the_token_rules():
    assert is_loopback("127.0.0.1") and is_loopback("[::1]") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1")
    assert token_problem("127.0.0.1", None) is None and token_problem("0.0.0.0", TOKEN) is None
    assert TOKEN_ENV in token_problem("0.0.0.0", None)
    assert f"at least {MIN_TOKEN_LENGTH}" in token_problem("127.0.0.1", "short")


def test_the_token_middleware_lets_in_the_bearer_only():
    async def model(request: Request) -> JSONResponse:
        return JSONResponse({"dataset": "tiny"})

    client = TestClient(TokenAuth(Starlette(routes=[Route("/api/model", model)]), TOKEN), follow_redirects=False)
    assert client.get("/api/model").status_code == 401
    assert client.get("/api/model", headers={"Authorization": "Bearer wrong-token-of-length"}).status_code == 401
    assert client.get("/api/model", headers={"Authorization": f"Bearer {TOKEN}"}).json() == {"dataset": "tiny"}
