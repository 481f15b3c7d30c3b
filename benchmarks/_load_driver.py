"""One load level for `benchmarks/serve_load.py`: locust (headless, as a library) against a `cbir serve`.

Runs ``--users`` closed-loop clients (each sends its next request when the previous one is
answered) on a mix of uploads (prebuilt multipart bodies), test-image queries and thumbnails,
until ``--duration`` seconds have passed or ``--max-requests`` requests were sent, whichever
comes first, and writes every request's kind, status and latency as JSON to ``--out``. Only a
loopback host is accepted. Runs in its own process: locust patches the standard library (gevent).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402  (after gevent's patching, as locust requires)
import ipaddress  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from urllib.parse import urlsplit  # noqa: E402

import gevent  # noqa: E402
from locust import FastHttpUser, constant, task  # noqa: E402
from locust.env import Environment  # noqa: E402


def loopback_only(url: str) -> str:
    host = urlsplit(url).hostname or ""
    if host != "localhost" and not ipaddress.ip_address(host).is_loopback:
        sys.exit(f"refusing to load {host}: this driver only sends requests to a loopback address")
    return url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", type=loopback_only, required=True, help="http://127.0.0.1:<port>")
    parser.add_argument("--users", type=int, required=True)
    parser.add_argument("--duration", type=float, required=True, help="seconds")
    parser.add_argument("--max-requests", type=int, required=True)
    parser.add_argument("--bodies", required=True, help="JSON: [{name, boundary, path}] of multipart bodies")
    parser.add_argument("--test-ids", required=True, help="JSON: test image ids")
    parser.add_argument("--token", default=None)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    rng = random.Random(args.seed)
    uploads = []
    for entry in json.loads(Path(args.bodies).read_text()):
        with open(entry["path"], "rb") as f:
            uploads.append((entry["name"], entry["boundary"], f.read()))
    test_ids = json.loads(Path(args.test_ids).read_text())
    auth = {"Authorization": f"Bearer {args.token}"} if args.token else {}
    records: list[tuple[str, int, float, float]] = []  # kind, status (0: no response), ms, time since start
    started = time.monotonic()
    environment: Environment | None = None

    class Client(FastHttpUser):
        host = args.host
        wait_time = constant(0)
        network_timeout = 120.0
        connection_timeout = 30.0

        @task(5)
        def upload(self) -> None:
            name, boundary, body = rng.choice(uploads)
            headers = {**auth, "Content-Type": f"multipart/form-data; boundary={boundary}"}
            self.client.post("/api/query", data=body, headers=headers, name=f"upload {name}")

        @task(2)
        def test_image(self) -> None:
            body = f"test_id={rng.choice(test_ids)}"
            headers = {**auth, "Content-Type": "application/x-www-form-urlencoded"}
            self.client.post("/api/query", data=body, headers=headers, name="test image")

        @task(3)
        def thumbnail(self) -> None:
            self.client.get(f"/api/images/{rng.choice(test_ids)}", headers=auth, name="thumbnail")

    def on_request(name: str, response_time: float, response=None, exception=None, **_kwargs) -> None:
        status = getattr(response, "status_code", 0) or 0
        records.append((name.split(" ")[0], int(status), float(response_time), time.monotonic() - started))
        if len(records) >= args.max_requests and environment is not None and environment.runner is not None:
            gevent.spawn(environment.runner.quit)

    environment = Environment(user_classes=[Client], catch_exceptions=True)
    environment.events.request.add_listener(on_request)
    runner = environment.create_local_runner()
    runner.start(args.users, spawn_rate=args.users)
    gevent.spawn_later(args.duration, runner.quit)
    runner.greenlet.join(timeout=args.duration + 60)  # bounded even if quitting hangs
    elapsed = time.monotonic() - started
    with open(args.out, "w") as f:
        json.dump({"users": args.users, "elapsed_s": elapsed, "records": records}, f)


if __name__ == "__main__":
    main()
