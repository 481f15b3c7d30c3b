"""`cbir serve` under sustained load: 1, 4 and 16 concurrent clients, 60 s each, on 127.0.0.1.

Starts `cbir serve` on a free loopback port and drives it with locust (headless, in
`_load_driver.py`) at each level of concurrent closed-loop clients, for ``--duration`` seconds or
``--max-requests`` requests per level, whichever comes first. The mix: uploads (JPEG and PNG at
96, 320 and 800 px) 50%, test-image queries 20%, thumbnails 30%. For each level: requests/s,
p50/p95/p99 latency of all requests and of the queries alone, non-2xx and 5xx counts, and the
server's RSS (all its processes) at the level's start and end. Then the top level again with
``--scaling-workers`` processes (`cbir serve --workers`), for the scaling.

Targets, checked at the end: no 5xx at any level; RSS growth under 5% from the end of the first
minute of load to the end (no leak); mean latency at the top level within top x the mean at one
client + 10% (queueing, not collapse: with closed-loop clients the mean is clients / throughput).

    python benchmarks/serve_load.py --model results/digits/efficientnet_lite0/80-20/100
    python benchmarks/serve_load.py --duration 10 --levels 1,4     # a quick look
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from _common import default_model, free_port, print_table, record, start_cbir_serve

DRIVER = Path(__file__).with_name("_load_driver.py")
UPLOAD_SIZES = (96, 320, 800)


# --- the server and its memory -------------------------------------------------------------


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (the `--workers` processes), in MB."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, stack = 0.0, [pid]
    while stack:
        current = stack.pop()
        stack += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


class RssSampler:
    """The server's RSS once a second, in a thread, with the time since the load started."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.samples: list[tuple[float, float]] = []
        self.started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append((time.monotonic() - self.started, rss_mb(self.pid)))
            self._stop.wait(1.0)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def now(self) -> float:
        return time.monotonic() - self.started

    def at(self, t: float) -> float:
        """The sample nearest to time t."""
        return min(self.samples, key=lambda s: abs(s[0] - t))[1]


def start_server(model: Path, port: int, args: argparse.Namespace, workers: int) -> subprocess.Popen:
    arguments = ["--model", str(model), "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
                 "--workers", str(workers), "--max-concurrent", str(args.max_concurrent),
                 "--reload-interval", "0"]  # fmt: skip
    if args.threads:
        arguments += ["--threads", str(args.threads)]
    env = {"CBIR_TOKEN": args.token} if args.token else None
    return start_cbir_serve(
        arguments, lambda: request(port, "GET", "/api/test-images", token=args.token)[0] == 200, 300, env
    )


def stop_server(server: subprocess.Popen) -> None:
    server.send_signal(signal.SIGINT)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=30)


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None,
            token: str | None = None) -> tuple[int, bytes]:  # fmt: skip
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    auth = {"Authorization": f"Bearer {token}"} if token else {}
    connection.request(method, path, body=body, headers={**auth, **(headers or {})})
    response = connection.getresponse()
    payload = response.read()
    connection.close()
    return response.status, payload


# --- the requests --------------------------------------------------------------------------


def make_uploads(folder: Path) -> list[dict[str, str]]:
    """Multipart bodies of JPEG and PNG photos (smooth colour fields plus noise) at each size, written once."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    bodies = []
    for size in UPLOAD_SIZES:
        base = Image.fromarray(rng.integers(0, 255, size=(4, 4, 3), dtype=np.uint8)).resize((size, size), Image.BICUBIC)
        noise = rng.normal(0, 12, size=(size, size, 3))
        photo = Image.fromarray(np.clip(np.asarray(base, dtype=np.float64) + noise, 0, 255).astype(np.uint8))
        for fmt, mime in (("JPEG", "image/jpeg"), ("PNG", "image/png")):
            buffer = io.BytesIO()
            photo.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            boundary = uuid.uuid4().hex
            head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.{fmt.lower()}"\r\n'
                    f"Content-Type: {mime}\r\n\r\n").encode()  # fmt: skip
            path = folder / f"{fmt.lower()}-{size}.multipart"
            path.write_bytes(head + buffer.getvalue() + f"\r\n--{boundary}--\r\n".encode())
            bodies.append({"name": f"{fmt.lower()}-{size}", "boundary": boundary, "path": str(path)})
    return bodies


def check_uploads(port: int, bodies: list[dict[str, str]], test_ids: list[str], token: str | None) -> None:
    """Every request of the mix answers 200 before the load starts (and warms the server up)."""
    for body in bodies:
        headers = {"Content-Type": f"multipart/form-data; boundary={body['boundary']}"}
        status, payload = request(port, "POST", "/api/query", Path(body["path"]).read_bytes(), headers, token)
        if status != 200:
            sys.exit(f"upload {body['name']} answered {status}: {payload[:300]!r}")
    for test_id in test_ids[:5]:
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        assert request(port, "POST", "/api/query", f"test_id={test_id}".encode(), form, token)[0] == 200
        assert request(port, "GET", f"/api/images/{test_id}", token=token)[0] == 200


def run_level(port: int, users: int, args: argparse.Namespace, files: dict[str, str]) -> dict:
    out = Path(files["folder"]) / f"level-{users}-{uuid.uuid4().hex[:6]}.json"
    command = [sys.executable, str(DRIVER), "--host", f"http://127.0.0.1:{port}", "--users", str(users),
               "--duration", str(args.duration), "--max-requests", str(args.max_requests),
               "--bodies", files["bodies"], "--test-ids", files["test_ids"], "--out", str(out)]  # fmt: skip
    if args.token:
        command += ["--token", args.token]
    before = os.times()
    subprocess.run(command, check=True, timeout=args.duration + 180)
    after = os.times()
    result = json.loads(out.read_text())
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    result["driver_cpu_s"] = cpu
    return result


def summarize(label: str, result: dict, rss_start: float, rss_end: float) -> dict:
    records = result["records"]
    latency = np.array([r[2] for r in records]) if records else np.zeros(1)
    queries = np.array([r[2] for r in records if r[0] in ("upload", "test")]) if records else np.zeros(1)
    statuses = [r[1] for r in records]
    span = max((r[3] for r in records), default=0.0) - min((r[3] - r[2] / 1e3 for r in records), default=0.0)
    return {
        "level": label,
        "clients": result["users"],
        "requests": len(records),
        "req_per_s": len(records) / span if span > 0 else 0.0,
        "mean_ms": float(latency.mean()),
        "p50_ms": float(np.percentile(latency, 50)),
        "p95_ms": float(np.percentile(latency, 95)),
        "p99_ms": float(np.percentile(latency, 99)),
        "query_p50_ms": float(np.percentile(queries, 50)),
        "query_p95_ms": float(np.percentile(queries, 95)),
        "errors": sum(1 for s in statuses if not 200 <= s < 300),
        "5xx": sum(1 for s in statuses if s >= 500 or s == 0),
        "503": sum(1 for s in statuses if s == 503),
        "rss_start_mb": rss_start,
        "rss_end_mb": rss_end,
        "driver_cpu_pct": 100 * result["driver_cpu_s"] / max(result["elapsed_s"], 1e-9),
    }


def load_server(model: Path, workers: int, levels: list[int], args: argparse.Namespace, files: dict[str, str],
                bodies: list[dict[str, str]]) -> tuple[list[dict], list[tuple[float, float]]]:  # fmt: skip
    port = free_port()
    server = start_server(model, port, args, workers)
    rows = []
    try:
        _, payload = request(port, "GET", "/api/test-images", token=args.token)
        test_ids = [t["id"] for t in json.loads(payload)]
        if not test_ids:
            sys.exit("the cell has no test images: serve a cell inside its workflow's results/ folder")
        Path(files["test_ids"]).write_text(json.dumps(test_ids))
        check_uploads(port, bodies, test_ids, args.token)
        with RssSampler(server.pid) as rss:
            for users in levels:
                start = rss_mb(server.pid)
                result = run_level(port, users, args, files)
                label = f"{users} client{'s' if users > 1 else ''}, {workers} worker{'s' if workers > 1 else ''}"
                rows.append(summarize(label, result, start, rss_mb(server.pid)))
                rows[-1]["workers"] = workers
                print(f"  {label}: {rows[-1]['requests']} requests, {rows[-1]['req_per_s']:.1f}/s, "
                      f"p50 {rows[-1]['p50_ms']:.0f} ms", flush=True)  # fmt: skip
            samples = list(rss.samples)
    finally:
        stop_server(server)
    return rows, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a grid cell (default: the first 80-20 cell)")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per level (default 60)")
    parser.add_argument("--levels", default="1,4,16", help="concurrent clients, comma-separated (default 1,4,16)")
    parser.add_argument("--max-requests", type=int, default=50_000, help="at most this many requests per level")
    parser.add_argument("--scaling-workers", type=int, default=2,
                        help="then the top level again with this many server processes (0: skip)")  # fmt: skip
    parser.add_argument("--threads", type=int, default=1, help="torch threads per server process (default 1)")
    parser.add_argument("--max-concurrent", type=int, default=32, help="the server's --max-concurrent (default 32)")
    parser.add_argument("--token", default=None, help="start the server with this token (and send it)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "cbir-bench"))
    args = parser.parse_args()
    levels = [int(level) for level in args.levels.split(",")]
    model = (args.model or default_model()).resolve()
    folder = Path(args.cache) / "serve-load"
    bodies = make_uploads(folder)
    files = {"folder": str(folder), "bodies": str(folder / "bodies.json"), "test_ids": str(folder / "test_ids.json")}
    Path(files["bodies"]).write_text(json.dumps(bodies))

    print(f"serve load: {model}, levels {levels}, {args.duration:g} s or {args.max_requests} requests each, "
          f"torch threads {args.threads}, --max-concurrent {args.max_concurrent}", flush=True)  # fmt: skip
    rows, samples = load_server(model, 1, levels, args, files, bodies)
    if args.scaling_workers > 1:
        scaled, _ = load_server(model, args.scaling_workers, [levels[-1]], args, files, bodies)
        rows += scaled

    columns = ["level", "requests", "req_per_s", "mean_ms", "p50_ms", "p95_ms", "p99_ms", "query_p50_ms",
               "query_p95_ms", "errors", "5xx", "503", "rss_start_mb", "rss_end_mb", "driver_cpu_pct"]  # fmt: skip
    print_table(rows, columns)
    single = [r for r in rows if r["workers"] == 1]
    first_minute = min(60.0, args.duration)
    rss_from, rss_to = (min(samples, key=lambda s: abs(s[0] - first_minute))[1], samples[-1][1]) if samples else (0, 0)
    growth = 100 * (rss_to - rss_from) / rss_from if rss_from else 0.0
    top, one = single[-1], single[0]
    # closed-loop clients: mean latency = clients / throughput (Little's law), so N x the single-client
    # mean is what pure queueing gives; more means throughput fell under concurrency
    bound = top["clients"] / one["clients"] * one["mean_ms"] * 1.1
    checks = {
        "no 5xx": all(r["5xx"] == 0 for r in rows),
        f"RSS growth after {first_minute:g} s < 5% ({rss_from:.0f} -> {rss_to:.0f} MB, {growth:+.1f}%)": growth < 5,
        f"mean latency at {top['clients']} clients {top['mean_ms']:.0f} ms <= {top['clients'] // one['clients']} x "
        f"{one['mean_ms']:.1f} ms + 10% = {bound:.0f} ms": top["mean_ms"] <= bound,
    }
    for name, passed in checks.items():
        print(f"{'PASS' if passed else 'FAIL'}  {name}")
    if args.scaling_workers > 1:
        scaled_row = rows[-1]
        print(f"scaling: {scaled_row['req_per_s']:.1f} req/s with {args.scaling_workers} workers vs "
              f"{top['req_per_s']:.1f} with 1 at {top['clients']} clients "
              f"(x{scaled_row['req_per_s'] / max(top['req_per_s'], 1e-9):.2f})")  # fmt: skip
    record("serve_load", rows, settings={**vars(args), "model": str(model), "token": bool(args.token)},
           checks=checks, rss_growth_pct=growth, rss_samples=samples)  # fmt: skip
    sys.exit(0 if checks["no 5xx"] else 1)


if __name__ == "__main__":
    main()
