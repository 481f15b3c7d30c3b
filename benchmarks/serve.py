"""Query latency through `cbir serve`: POST /api/query to a uvicorn server on 127.0.0.1 vs in-process.

Starts `cbir serve` on a free port as a separate process, uploads photo-sized JPEGs one request
at a time over a kept-alive connection and times each round trip (upload, decode, CNN forward,
projection, prediction, three searches, JSON). The baseline runs the same images through the
in-process path of `cbir query` (read, decode, forward, search) with the backbone built once,
interleaved with the requests so that both see the same machine load. The ratio is
API median / in-process median.

    python benchmarks/serve.py                                   # first 80-20 cell under results/
    python benchmarks/serve.py --model results/digits/efficientnet_lite0/80-20/100 --requests 50
"""

from __future__ import annotations

import argparse
import http.client
import json
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from _common import default_model, free_port, make_jpegs, print_table, record, start_cbir_serve


def multipart(path: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{Path(path).name}"\r\n'
            "Content-Type: image/jpeg\r\n\r\n").encode()  # fmt: skip
    return head + Path(path).read_bytes() + f"\r\n--{boundary}--\r\n".encode(), boundary


def start_server(model: Path, port: int, top_k: int, threads: int | None) -> subprocess.Popen:
    arguments = ["--model", str(model), "--port", str(port), "--top-k", str(top_k), "--log-level", "warning"]
    if threads:
        arguments += ["--threads", str(threads)]

    def ready() -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        connection.request("GET", "/api/model")
        return connection.getresponse().status == 200

    return start_cbir_serve(arguments, ready, timeout=180)


class ApiClient:
    """POST /api/query over one kept-alive connection."""

    def __init__(self, port: int, paths: list[str]) -> None:
        self.connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        self.bodies = [multipart(p) for p in paths]

    def query(self, i: int) -> float:
        """Posts image i; returns the server's own total milliseconds."""
        body, boundary = self.bodies[i % len(self.bodies)]
        self.connection.request("POST", "/api/query", body=body,
                                headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})  # fmt: skip
        response = self.connection.getresponse()
        payload = response.read()
        if response.status != 200:
            sys.exit(f"POST /api/query answered {response.status}: {payload[:500]!r}")
        return json.loads(payload)["timings_ms"]["total"]


def in_process_query(model_folder: Path, paths: list[str], top_k: int, threads: int | None):
    """The path of `cbir query` with the model and backbone loaded once: read, decode, forward, search."""
    from cbir.search.cell import load_cell
    from cbir.search.query import Embedder, query_images

    if threads:
        import torch

        torch.set_num_threads(threads)
    model = load_cell(model_folder)
    embedder = Embedder(model.record, root=model.root)
    return lambda i: query_images(model, [paths[i % len(paths)]], top_k=top_k, embedder=embedder)


def timed(function, i: int) -> tuple[float, object]:
    start = time.perf_counter()
    result = function(i)
    return (time.perf_counter() - start) * 1e3, result


def measure(client: ApiClient, local, requests: int, warmup: int) -> dict[str, np.ndarray]:
    """Round trips and in-process queries interleaved, so that both see the same machine load."""
    samples: dict[str, list[float]] = {"api": [], "server": [], "local": []}
    for i in range(warmup + requests):
        api_ms, server_ms = timed(client.query, i)
        local_ms, _ = timed(local, i)
        if i >= warmup:
            samples["api"].append(api_ms)
            samples["server"].append(server_ms)
            samples["local"].append(local_ms)
    return {key: np.asarray(values) for key, values in samples.items()}


def row(path: str, samples: np.ndarray, **extra: float) -> dict:
    return {"path": path, "requests": len(samples), "median_ms": float(np.median(samples)),
            "p95_ms": float(np.percentile(samples, 95)), "mean_ms": float(samples.mean()), **extra}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=None, help="a grid cell (default: the first 80-20 cell)")
    parser.add_argument("--requests", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--images", type=int, default=10, help="distinct query JPEGs, cycled")
    parser.add_argument("--size", type=int, default=256, help="query JPEG side in pixels")
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads of both (default: torch's)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "cbir-bench"))
    args = parser.parse_args()
    model = (args.model or default_model()).resolve()
    paths = make_jpegs(Path(args.cache) / f"serve-{args.size}", args.images, size=args.size)

    port = free_port()
    server = start_server(model, port, args.top_k, args.threads)
    try:
        local = in_process_query(model, paths, args.top_k, args.threads)
        samples = measure(ApiClient(port, paths), local, args.requests, args.warmup)
    finally:
        server.terminate()
        server.wait(timeout=30)
    server_total = float(np.median(samples["server"]))
    rows = [row("POST /api/query (uvicorn)", samples["api"], server_total_median_ms=server_total),
            row("in-process (baseline)", samples["local"])]  # fmt: skip
    ratio_median = rows[0]["median_ms"] / rows[1]["median_ms"]
    ratio_p95 = rows[0]["p95_ms"] / rows[1]["p95_ms"]
    print(f"serve: {model}, {args.requests} requests after {args.warmup} warm-up, {args.size}px JPEGs, "
          f"top-{args.top_k}, 3 modes, torch threads {args.threads or 'default'}")  # fmt: skip
    print_table(rows, ["path", "requests", "median_ms", "p95_ms", "mean_ms", "server_total_median_ms"])
    print(f"ratio API / in-process: median {ratio_median:.2f}, p95 {ratio_p95:.2f}")
    record("serve", rows, settings={**vars(args), "model": str(model)}, ratio_median=ratio_median,
           ratio_p95=ratio_p95)  # fmt: skip


if __name__ == "__main__":
    main()
