"""`cbir serve` under overload: the concurrency limit (503 + Retry-After) and the body timeout (408),
on a real uvicorn on 127.0.0.1 with raw sockets; `--workers` processes behind one port.

No test here depends on how fast the machine is: a request is held open by sending its body
slowly (never finishing it), and every wait is a bounded poll for a state, not a sleep for a time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import closing

import pytest

from helpers import REPO

pytestmark = pytest.mark.workflow
CELL = "results/tiny/lite/80-20/8"
TOKEN = "limits-token-0123456789abcdef"


def running(served, **settings):
    from cbir.serve.app import create_app
    from cbir.serve.run import serve_in_thread
    from cbir.serve.settings import ServeSettings

    app = create_app(ServeSettings(model=served.settings.model, reload_interval=0, **settings), served=served)
    return serve_in_thread(app, "127.0.0.1")


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, {k.lower(): v for k, v in response.headers.items()}, response.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


def start_slow_request(url: str, path: str = "/api/query", content_type: str = "multipart/form-data; boundary=b",
                       declared: int = 10_000) -> socket.socket:  # fmt: skip
    """A request whose headers arrive and whose body never completes: it stays in progress."""
    host, port = url.removeprefix("http://").split(":")
    connection = socket.create_connection((host, int(port)), timeout=60)
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {declared}\r\n\r\n")  # fmt: skip
    connection.sendall(head.encode() + b"--b\r\nContent-Disposition: form-data; name")
    return connection


def read_response(connection: socket.socket) -> tuple[int, bytes]:
    """Everything the server sends until it closes the connection (bounded by the socket's timeout)."""
    data = b""
    while chunk := connection.recv(65536):
        data += chunk
    status = int(data.split(b" ", 2)[1])
    return status, data


def poll(check, what: str, tries: int = 600) -> None:
    for _ in range(tries):
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not reached: {what}")


def test_over_the_concurrency_limit_requests_get_503_with_retry_after(served):
    with running(served, max_concurrent=2) as url:
        held = [start_slow_request(url), start_slow_request(url)]
        answers: list[tuple[int, dict[str, str], bytes]] = []
        poll(lambda: answers.append(get(url + "/api/model")) or answers[-1][0] == 503, "a 503 while 2 are held")
        _, headers, body = answers[-1]
        assert headers["retry-after"] == "1"
        assert "busy" in json.loads(body)["detail"] and "2 requests in progress" in json.loads(body)["detail"]
        assert headers["x-content-type-options"] == "nosniff"
        held.pop().close()  # one slot frees: the server answers again
        poll(lambda: get(url + "/api/model")[0] == 200, "a 200 once a slot is free")
        held.pop().close()
        poll(lambda: get(url + "/api/test-images")[0] == 200, "a 200 after both are gone")


def test_a_request_body_trickling_past_the_timeout_gets_408_and_frees_its_slot(served, finished_run):
    with running(served, max_concurrent=1, upload_timeout=0.5) as url:
        with closing(start_slow_request(url)) as slow:
            slow.sendall(b'="image"; filename="q.png"\r\n')  # a few more bytes, never the rest
            status, data = read_response(slow)
        assert status == 408 and b"did not arrive within 0.5 s" in data
        assert b"connection: close" in data.lower() and b"x-content-type-options: nosniff" in data.lower()
        poll(lambda: get(url + "/api/model")[0] == 200, "the slot is free again")
        with closing(start_slow_request(url, declared=100)) as stalled:  # headers, then nothing more at all
            assert read_response(stalled)[0] == 408


def test_a_trickled_login_form_times_out_too(served):
    with running(served, token=TOKEN, upload_timeout=0.5) as url:
        with closing(start_slow_request(url, "/login", "application/x-www-form-urlencoded")) as slow:
            status, data = read_response(slow)
        assert status == 408 and b"did not arrive" in data
        assert get(url + "/api/model", {"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_workers_serve_one_port_and_sighup_replaces_them(finished_run):
    root, _ = finished_run
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "cbir.cli", "serve", "--model", str(root / CELL), "--port", str(port),
               "--workers", "2", "--threads", "1", "--reload-interval", "0", "--log-level", "info"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "CBIR_TOKEN": TOKEN}
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def loaded_at() -> str | None:
        assert server.poll() is None, server.communicate()[1][-3000:]
        try:
            status, _, body = get(url + "/api/model", auth)
        except OSError:
            return None
        return json.loads(body)["loaded_at"] if status == 200 else None

    try:
        poll(lambda: loaded_at() is not None, "the workers answer", tries=3600)
        assert get(url + "/api/model")[0] == 401  # the token reached the workers
        first = {loaded_at() for _ in range(20)}
        time.sleep(1.1)  # loaded_at has whole seconds: the replacements must load in a later second
        server.send_signal(signal.SIGHUP)
        poll(lambda: all(loaded_at() not in first for _ in range(10)), "every answer from a new worker", tries=3600)
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=120)
    assert "Received SIGHUP, restarting processes" in stderr
    assert TOKEN not in stderr


def test_the_load_benchmark_runs_against_a_real_server(finished_run):
    root, _ = finished_run
    command = [sys.executable, "benchmarks/serve_load.py", "--model", str(root / CELL), "--duration", "2",
               "--levels", "1,2", "--max-requests", "300", "--scaling-workers", "0"]  # fmt: skip
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "PASS  no 5xx" in result.stdout and "1 client, 1 worker" in result.stdout
    line = json.loads((REPO / "benchmarks/results/serve_load.jsonl").read_text().splitlines()[-1])
    assert [row["clients"] for row in line["rows"]] == [1, 2]
    for row in line["rows"]:
        assert 0 < row["requests"] <= 300 and row["5xx"] == 0 and row["rss_end_mb"] > 0
        assert row["p50_ms"] <= row["p95_ms"] <= row["p99_ms"]
