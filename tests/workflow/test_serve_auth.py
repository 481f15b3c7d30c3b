"""`cbir serve` off loopback: the token (bearer or login cookie), the refusal to start without one,
the token kept out of logs and pages, the security headers on every response, /docs offline."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

import pytest

from helpers import REPO

pytestmark = pytest.mark.workflow
CELL = "results/tiny/lite/80-20/8"
TOKEN = "s3cret-token-for-tests-0123456789"
WRONG = "wrong-token-for-tests-9876543210"
API = ["/api/model", "/api/test-images", "/api/images/red/000.png", "/openapi.json"]
PAGES = ["/", "/static/app.js", "/static/docs.js", "/docs", "/docs/assets/swagger-ui.css"]
# "more like this" with a round of marks: a query that reads no upload
FEEDBACK = {
    "gallery_id": "red/000.png",
    "relevant_ids": ["red/001.png", "red/002.png"],
    "irrelevant_ids": "blue/000.png",
}


def make_client(served, **settings):
    from fastapi.testclient import TestClient

    from cbir.serve.app import create_app
    from cbir.serve.settings import ServeSettings

    app = create_app(ServeSettings(model=served.settings.model, reload_interval=0, **settings), served=served)
    return TestClient(app, follow_redirects=False)


@pytest.fixture(scope="module")
def client(served):
    with make_client(served, token=TOKEN) as test_client:
        yield test_client


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def image_bytes(finished_run) -> bytes:
    root, _ = finished_run
    return (root / "data/tiny/green/003.png").read_bytes()


def test_without_a_token_api_requests_get_401_and_pages_the_login_form(client, finished_run):
    for path in API:
        response = client.get(path)
        assert response.status_code == 401, path
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert "log in at /login" in response.json()["detail"]
    for path in PAGES:
        response = client.get(path)
        assert response.status_code == 303 and response.headers["location"] == "/login", path
    upload = {"image": ("q.png", image_bytes(finished_run), "image/png")}
    assert client.post("/api/query", files=upload).status_code == 401
    assert client.post("/api/query", data={"test_id": "x"}).status_code == 401
    assert client.post("/api/query", data=FEEDBACK).status_code == 401  # "more like this" with marks too
    assert client.post("/api/query", files=upload, data={"relevant_ids": ["red/001.png"]}).status_code == 401


def test_a_wrong_token_is_refused_like_none(client, finished_run):
    for headers in (bearer(WRONG), bearer(TOKEN[:-1]), bearer(TOKEN + "x"), {"Authorization": TOKEN},
                    {"Authorization": f"Basic {TOKEN}"}, {"Cookie": f"cbir_session={TOKEN}"},
                    {"Cookie": "cbir_session=" + "0" * 64}):  # fmt: skip
        for path in API:
            assert client.get(path, headers=headers).status_code == 401, (path, headers)
        assert client.get("/", headers=headers).status_code == 303, headers
        upload = {"image": ("q.png", image_bytes(finished_run), "image/png")}
        assert client.post("/api/query", files=upload, headers=headers).status_code == 401
        assert client.post("/api/query", data=FEEDBACK, headers=headers).status_code == 401


def test_the_right_token_opens_every_request(client, finished_run):
    for path in [*API, *PAGES]:
        assert client.get(path, headers=bearer(TOKEN)).status_code == 200, path
    upload = {"image": ("q.png", image_bytes(finished_run), "image/png")}
    response = client.post("/api/query", files=upload, headers=bearer(TOKEN))
    assert response.status_code == 200 and response.json()["predicted_class"] == "green"
    response = client.post("/api/query", data=FEEDBACK, headers=bearer(TOKEN))
    assert response.status_code == 200 and response.json()["feedback"]["relevant"] == 2
    assert response.json()["query"]["source"] == "gallery"
    schema = client.get("/openapi.json", headers=bearer(TOKEN)).json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert "401" in schema["paths"]["/api/query"]["post"]["responses"]


def test_the_login_form_sets_a_cookie_that_is_not_the_token(served):
    with make_client(served, token=TOKEN) as client:
        form = client.get("/login")
        assert form.status_code == 200 and 'name="token"' in form.text and 'type="password"' in form.text
        wrong = client.post("/login", data={"token": WRONG})
        assert wrong.status_code == 401 and "Wrong token" in wrong.text and "set-cookie" not in wrong.headers
        assert client.get("/api/model").status_code == 401
        right = client.post("/login", data={"token": TOKEN})
        assert right.status_code == 303 and right.headers["location"] == "/"
        cookie = right.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
        for path in [*API, *PAGES]:  # the test client keeps the cookie
            assert client.get(path).status_code == 200, path
        logout = client.get("/logout")
        assert logout.status_code == 303 and "Max-Age=0" in logout.headers["set-cookie"]
        client.cookies.clear()
        assert client.get("/api/model").status_code == 401


def test_the_token_is_in_no_page_and_no_response(client):
    for path in [*API, *PAGES, "/login", "/docs/assets/swagger-ui-bundle.js"]:
        response = client.get(path, headers=bearer(TOKEN))
        assert TOKEN.encode() not in response.content, path
        assert all(TOKEN not in value for value in response.headers.values()), path
    for path in API:  # nor is a wrong token echoed back
        assert WRONG.encode() not in client.get(path, headers=bearer(WRONG)).content


def test_security_headers_are_on_every_response(served, finished_run):
    from cbir.serve.auth import SECURITY_HEADERS

    with make_client(served) as client:
        responses = [client.get("/"), client.get("/api/model"), client.get("/api/images/nope"), client.get("/nope"),
                     client.get("/api/images/red/000.png"), client.get("/docs"), client.get("/openapi.json"),
                     client.post("/api/query", json={}), client.post("/api/query", data={"top_k": "0"}),
                     client.post("/api/query", data={"test_id": "no"}), client.delete("/api/model"),
                     client.post("/api/query", data={**FEEDBACK, "relevant_ids": "no/such.png"})]  # fmt: skip
    with make_client(served, token=TOKEN) as client:
        responses += [client.get("/api/model"), client.get("/"), client.get("/login"), client.post("/login")]
    assert {r.status_code for r in responses} >= {200, 303, 401, 404, 405, 415, 422}
    for response in responses:
        for name, value in SECURITY_HEADERS.items():
            assert response.headers.get(name) == value, (response.request.url, response.status_code, name)


def test_docs_are_served_offline(served):
    with make_client(served) as client:
        page = client.get("/docs")
        assert page.status_code == 200
        assert "http" not in page.text.lower().replace("http-equiv", "")  # no CDN
        for name, kind in [("swagger-ui-bundle.js", "text/javascript"), ("swagger-ui.css", "text/css"),
                           ("favicon.png", "image/png")]:  # fmt: skip
            asset = client.get(f"/docs/assets/{name}")
            assert asset.status_code == 200 and asset.headers["content-type"].startswith(kind), name
            assert len(asset.content) > 1000, name
        assert "SwaggerUIBundle" in client.get("/static/docs.js").text
        assert client.get("/docs/assets/..%2Fcore.py").status_code == 404
        assert client.get("/redoc").status_code == 404  # its script came from a CDN: dropped


def test_login_then_the_page_and_docs_in_a_browser(served, browser):
    """Headless Chromium (the `browser` fixture of conftest.py): the login form, the search page
    after it, and Swagger UI at /docs rendered from local assets under the page's CSP."""
    from cbir.serve.app import create_app
    from cbir.serve.run import serve_in_thread
    from cbir.serve.settings import ServeSettings

    app = create_app(ServeSettings(model=served.settings.model, reload_interval=0, token=TOKEN), served=served)
    with serve_in_thread(app, "127.0.0.1") as url:
        page = browser.new_page()
        console: list[str] = []
        page.on("console", lambda message: console.append(message.text))
        try:
            page.goto(url + "/docs")
            assert page.url == url + "/login"
            page.fill("#token", WRONG)
            page.click("button[type=submit]")
            page.wait_for_selector("#login-error", timeout=30_000)
            page.fill("#token", TOKEN)
            page.click("button[type=submit]")
            page.wait_for_url(url + "/", timeout=30_000)
            page.wait_for_selector("#model-info dt", timeout=30_000)  # the page's API calls carry the cookie
            page.goto(url + "/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=60_000)
            paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.textContent)")
            assert {"/api/query", "/api/model", "/api/test-images"} <= set(paths)
            assert TOKEN not in page.content()
        finally:
            page.close()
    assert not [line for line in console if "Content Security Policy" in line], console


# --- the command line ------------------------------------------------------------------------


def serve_command(model, *args: str) -> list[str]:
    return [sys.executable, "-m", "cbir.cli", "serve", "--model", str(model), *args]


def test_off_loopback_the_server_refuses_to_start_without_a_token(finished_run):
    root, _ = finished_run
    env = {k: v for k, v in os.environ.items() if k != "CBIR_TOKEN"}
    for host in ("0.0.0.0", "::"):  # refused before anything binds
        result = subprocess.run(serve_command(root / CELL, "--host", host, "--port", "1"), env=env,
                                capture_output=True, text=True, timeout=120)  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "not a loopback address" in result.stderr and "CBIR_TOKEN" in result.stderr
        assert "Authorization: Bearer" in result.stderr
    short = subprocess.run(serve_command(root / CELL, "--host", "0.0.0.0", "--token", "short"), env=env,
                           capture_output=True, text=True, timeout=120)  # fmt: skip
    assert short.returncode == 2 and "at least 16" in short.stderr and "short" not in short.stderr  # not echoed


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def fetch(url: str, data: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    request = urllib.request.Request(url, data=data, headers=headers or {})
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def wait_until_up(url: str, server: subprocess.Popen) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert server.poll() is None, server.communicate()[1][-3000:]
        try:
            fetch(url + "/login")
            return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("cbir serve did not start within 180 s")


def test_a_real_server_takes_the_token_from_the_environment_and_never_logs_it(finished_run):
    root, _ = finished_run
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**os.environ, "CBIR_TOKEN": TOKEN, "PYTHONPATH": str(REPO / "src")}
    server = subprocess.Popen(serve_command(root / CELL, "--port", str(port), "--log-level", "debug"), env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        wait_until_up(url, server)
        assert fetch(url + "/api/model")[0] == 401
        assert fetch(url + "/api/model", headers=bearer(WRONG))[0] == 401
        assert fetch(url + "/api/model", headers=bearer(TOKEN))[0] == 200
        assert fetch(url + "/login", data=urllib.parse.urlencode({"token": WRONG}).encode())[0] == 401
        assert fetch(url + "/login", data=urllib.parse.urlencode({"token": TOKEN}).encode())[0] == 303
        assert fetch(url + "/?token=" + WRONG)[0] == 303  # a token in a URL is no way in
        status, page = fetch(url + "/", headers=bearer(TOKEN))
        assert status == 200 and TOKEN.encode() not in page
    finally:
        server.send_signal(signal.SIGINT)
        stdout, stderr = server.communicate(timeout=60)
    log = stdout + stderr
    assert "GET /api/model" in log and "token required" in log  # the access log and the banner are there
    assert TOKEN not in log
