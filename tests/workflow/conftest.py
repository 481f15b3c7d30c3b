"""The end-to-end tests' fixtures: the tiny workflow and a collection run once per session, a served cell."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import (
    collection_config,
    make_collection,
    make_image_folder,
    run_snakemake,
    session_config,
    write_config,
)


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


@pytest.fixture(scope="session")
def collection_run(tmp_path_factory) -> Path:
    """The workflow run to completion over a collection without labels (folder, labels: none), once per session."""
    root = tmp_path_factory.mktemp("collection")
    folder = make_collection(root / "data" / "photos")
    config = collection_config(folder)
    # the label-free spaces, judged by changed copies of a dozen photos (docs, "Settings chosen by validation")
    config["grid"]["embeddings"] = ["raw", "l2", "whiten"]
    config["validation"] = {"copies": 12, "candidates": {"whiten": {"power": [0.5, 0.25]}}, "rerank": {"k": [2]}}
    result = run_snakemake(root, write_config(root / "config.yaml", config))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root


@pytest.fixture(scope="module")
def served(finished_run):
    """The session run's cell 80-20 / PCA 8 loaded once per test module for `cbir serve`, without file watching."""
    from cbir.serve.model import ServedModel
    from cbir.serve.settings import ServeSettings

    root, _ = finished_run
    return ServedModel.load(ServeSettings(model=root / "results/tiny/lite/80-20/8", reload_interval=0))
