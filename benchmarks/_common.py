"""Shared helpers of the benchmarks: machine description, result lines, tables, test images."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
COREL = REPO.parent / "shared" / "data" / "corel1k"  # the real photos of ../shared (README there)
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:
        info["torch"] = None
    return info


def record(name: str, rows: list[dict[str, Any]], **extra: Any) -> Path:
    """Append one JSON line with the machine, the settings and the rows to benchmarks/results/<name>.jsonl."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.jsonl"
    line = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "machine": machine(), **extra, "rows": rows}
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")
    return path


def print_table(rows: list[dict[str, Any]], columns: list[str]) -> None:
    def fmt(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
        return str(value)

    widths = {c: max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    print("  ".join("-" * widths[c] for c in columns))
    for row in rows:
        print("  ".join(fmt(row.get(c, "")).ljust(widths[c]) for c in columns))


def make_jpegs(folder: Path, n: int, size: int = 256, seed: int = 0) -> list[str]:
    """n photo-sized JPEGs (smooth colour fields plus noise), written once and reused."""
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        path = folder / f"{i:06d}.jpg"
        if not path.exists():
            base = rng.integers(0, 255, size=(4, 4, 3)).astype(np.uint8)
            image = Image.fromarray(base).resize((size, size), Image.BICUBIC)
            noise = rng.normal(0, 12, size=(size, size, 3))
            pixels = np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def add_backbone_arguments(parser: Any, arch: str, *, weights: str | None = None, pooling: str | None = None) -> None:
    """``--arch`` (choices: the backbone registry) and, where given a default, ``--weights`` and ``--pooling``."""
    from cbir.extraction.pooling import POOLINGS
    from cbir.extraction.registry import BACKBONES

    parser.add_argument("--arch", default=arch, choices=list(BACKBONES))
    if weights is not None:
        parser.add_argument("--weights", default=weights, help="a named weights of the architecture, or a file")
    if pooling is not None:
        parser.add_argument("--pooling", default=pooling, choices=list(POOLINGS))


def default_model() -> Path:
    """The first trained 80-20 cell under results/, for the serve benchmarks."""
    from cbir.layout import CELL, GALLERY

    pattern = CELL.format(dataset="*", backbone="*", split="80-20", pca="*")
    cells = sorted(REPO.glob(f"{pattern}/{GALLERY}"))
    if not cells:
        sys.exit("no trained cell under results/*/*/80-20/: run the workflow first, or pass --model")
    return cells[0].parent


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_cbir_serve(arguments: list[str], ready: Any, timeout: float, env: dict[str, str] | None = None) -> Any:
    """Start ``cbir serve`` with ``arguments`` (from this checkout's src/) and wait until ``ready()`` is true.

    ``ready`` probes the server (an OSError counts as not yet); the process is returned, or the
    benchmark exits with the server's stderr when it stops, or when it is not ready in ``timeout`` s.
    """
    import subprocess

    env = {**os.environ, **(env or {}), "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "cbir.cli", "serve", *arguments]
    server = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            sys.exit(f"cbir serve exited with {server.returncode}: {server.stderr.read()[-2000:]}")
        try:
            if ready():
                return server
        except OSError:
            pass
        time.sleep(0.2)
    server.kill()
    sys.exit(f"cbir serve did not answer within {timeout:.0f} s")
