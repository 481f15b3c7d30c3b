"""Running ``cbir serve``: uvicorn in this process or in ``--workers`` processes, or in a thread for the tests."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn
from fastapi import FastAPI

from cbir.serve.app import create_app
from cbir.serve.auth import TOKEN_ENV
from cbir.serve.settings import SETTINGS_ENV, ServeSettings

WORKER_START_S = 120  # how long a `--workers` process may take to load the model before uvicorn gives up on it


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
    uvicorn.run("cbir.serve.run:worker_app", factory=True, workers=workers, timeout_worker_healthcheck=WORKER_START_S,
                **options)  # fmt: skip


@contextlib.contextmanager
def serve_in_thread(app: FastAPI, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run the app with uvicorn in a background thread; yields its base URL (a free port when 0)."""
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
