"""`cbir serve` while its cell is rewritten: the new model is swapped in whole (on request, SIGHUP, or
a file check once the cell has settled), a query in flight finishes on the old model, a broken
cell keeps the old model serving.

The served cell is a copy of the tiny run's PCA-8 cell; "rewriting" it copies the PCA-4 cell's
files over it, so the two models answer the same query with different distances.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from helpers import REPO

pytestmark = pytest.mark.workflow
OLD, NEW = "results/tiny/lite/80-20/8", "results/tiny/lite/80-20/4"


def write_cell(source: Path, target: Path, *, metrics: bool = True) -> None:
    """Copy a cell's artifacts as the workflow writes them: fresh files, the metrics last."""
    target.mkdir(exist_ok=True)
    files = sorted(source.iterdir(), key=lambda p: p.name.startswith("metrics"))
    for path in files:
        if metrics or not path.name.startswith("metrics"):
            (target / path.name).write_bytes(path.read_bytes())


@pytest.fixture
def cell(finished_run, tmp_path) -> Path:
    root, _ = finished_run
    folder = tmp_path / "model"
    write_cell(root / OLD, folder)
    return folder


def app_for(cell: Path, **settings):
    from cbir.serve.app import create_app
    from cbir.serve.settings import ServeSettings

    return create_app(ServeSettings(model=cell, **{"reload_interval": 0, **settings}))


def answer(client, data: bytes) -> dict:
    response = client.post("/api/query", files={"image": ("q.png", data, "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    return {mode: [(t["id"], round(t["distance"], 5)) for t in tiles] for mode, tiles in body["results"].items()}


def wait_for(check, what: str, tries: int = 2400) -> None:
    for _ in range(tries):
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"not reached: {what}")


def test_a_query_in_flight_during_the_switch_finishes_on_the_old_model(cell, finished_run):
    from fastapi.testclient import TestClient

    root, _ = finished_run
    query = (root / "data/tiny/blue/004.png").read_bytes()
    app = app_for(cell)
    holder = app.state.holder
    with TestClient(app) as client:
        old_answer = answer(client, query)
        old = holder.current
        entered, release = threading.Event(), threading.Event()
        forward = old.embedder.forward

        def held_forward(batch):  # the old model's forward waits until the switch is done
            entered.set()
            assert release.wait(120)
            return forward(batch)

        old.embedder.forward = held_forward
        with ThreadPoolExecutor(max_workers=1) as pool:
            in_flight = pool.submit(answer, client, query)
            assert entered.wait(120)
            write_cell(root / NEW, cell)
            holder.request_reload()  # what SIGHUP does
            wait_for(lambda: holder.reloads == 1, "the reload")
            assert holder.current is not old
            info = client.get("/api/model").json()  # new requests see the new model while the old query waits
            assert (info["pca"], info["reduced_dim"], info["reloads"]) == ("4", 4, 1)
            release.set()
            assert in_flight.result(timeout=120) == old_answer
        new_answer = answer(client, query)
        assert new_answer != old_answer
        assert holder.current.embedder.forward != held_forward


def test_the_file_check_waits_for_a_settled_cell(cell, finished_run):
    from fastapi.testclient import TestClient

    root, _ = finished_run
    app = app_for(cell, reload_interval=3600)  # the watcher thread sleeps; the checks are called here
    holder = app.state.holder
    with TestClient(app) as client:
        write_cell(root / NEW, cell, metrics=False)  # the models rewritten, the evaluation not yet
        seen = holder.check(None)
        assert seen is not None and holder.check(seen) == seen and holder.reloads == 0
        write_cell(root / NEW, cell)  # now the metrics, written last
        seen = holder.check(None)  # changed since the last look: wait one more check
        assert holder.reloads == 0
        holder.check(seen)
        assert holder.reloads == 1 and client.get("/api/model").json()["reduced_dim"] == 4
        assert holder.check(None) is None  # nothing new


def test_a_broken_cell_keeps_the_old_model_serving(cell, finished_run, caplog):
    from fastapi.testclient import TestClient

    root, _ = finished_run
    query = (root / "data/tiny/red/004.png").read_bytes()
    app = app_for(cell)
    holder = app.state.holder
    with TestClient(app) as client:
        before = answer(client, query)
        gallery = cell / "gallery.h5"
        gallery.write_bytes(gallery.read_bytes()[:1000])  # a half-written file
        assert not holder.reload("test")
        assert "reloading" in caplog.text and "failed, the previous model stays" in caplog.text
        assert answer(client, query) == before and client.get("/api/model").json()["reloads"] == 0
        seen = holder.check(None)
        assert seen is None  # the same broken files are not loaded again
        write_cell(root / NEW, cell)
        seen = holder.check(None)
        holder.check(seen)
        assert holder.reloads == 1 and client.get("/api/model").json()["pca"] == "4"


def test_sighup_reloads_a_running_cbir_serve(cell, finished_run):
    root, _ = finished_run
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api/model"
    command = [sys.executable, "-m", "cbir.cli", "serve", "--model", str(cell), "--port", str(port),
               "--reload-interval", "0", "--threads", "1", "--log-level", "warning"]  # fmt: skip
    server = subprocess.Popen(command, env={**os.environ, "PYTHONPATH": str(REPO / "src")},
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip

    def model() -> dict | None:
        assert server.poll() is None, server.communicate()[1][-3000:]
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                return json.loads(response.read())
        except OSError:
            return None

    try:
        wait_for(lambda: model() is not None, "cbir serve answers", tries=3600)
        assert model()["pca"] == "8"
        write_cell(root / NEW, cell)
        server.send_signal(signal.SIGHUP)
        wait_for(lambda: model()["pca"] == "4", "the new cell after SIGHUP")
        assert model()["reloads"] == 1
    finally:
        server.send_signal(signal.SIGINT)
        _, stderr = server.communicate(timeout=60)
    assert "reloaded" in stderr and "(SIGHUP)" in stderr
