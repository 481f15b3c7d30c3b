"""cbir as a user installs it: a wheel built from the project, installed (not editable) into a throwaway
environment, indexes, queries, serves and de-duplicates a folder from a directory outside the checkout."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from cbir.pipeline.workflow_files import WORKFLOW_PARTS

from helpers import REPO, SMALL_BACKBONE, make_collection

pytestmark = pytest.mark.workflow

# what a wheel is built from: the project without its environments, outputs and caches
NOT_BUILT_FROM = (".git", ".venv", "results", "resources", ".snakemake", "build", "dist", "*.egg-info", "__pycache__",
                  ".pytest_cache", ".ruff_cache", "tests", "benchmarks")  # fmt: skip


def _run(command: list[str], cwd: Path, env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """(the throwaway environment's bin folder, the environment variables to run it with)."""
    root = tmp_path_factory.mktemp("installed")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*NOT_BUILT_FROM))
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    wheel_options = ["--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(root / "dist")]
    _run([*pip, "wheel", *wheel_options, str(source)], cwd=root, env=env)
    (wheel,) = (root / "dist").glob("cbir-*.whl")

    # a fresh environment that reuses the test environment's packages (torch, snakemake, ...) through a
    # .pth file, listed after its own site-packages, where only the wheel's cbir is installed
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=root, env=env)
    python = venv / "bin" / "python"
    site = Path(
        _run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, env).stdout.strip()
    )
    paths = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "test-environment.pth").write_text("".join(f"{path}\n" for path in paths))
    _run([*pip, "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=root, env=env)
    return venv / "bin", env


def test_the_wheel_ships_the_workflow_and_is_what_runs(installed):
    bin_folder, env = installed
    found = _run([str(bin_folder / "python"), "-c", "import cbir, cbir.pipeline.workflow_files as w; "
                  "print(cbir.__file__); print(w.workflow_dir())"], cwd=bin_folder, env=env).stdout.split()  # fmt: skip
    venv = bin_folder.parent.resolve()
    module, workflow = Path(found[0]).resolve(), Path(found[1]).resolve()
    assert venv in module.parents, f"cbir was imported from {module}, not from the installed wheel"
    assert venv in workflow.parents and (workflow / "Snakefile").is_file()
    for part in WORKFLOW_PARTS:  # every part of the project's workflow, as it is in the checkout
        shipped, original = workflow / part, REPO / part
        if original.is_file():
            assert shipped.read_bytes() == original.read_bytes()
        else:
            names = {
                p.relative_to(original) for p in original.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            }
            assert names and names <= {p.relative_to(shipped) for p in shipped.rglob("*")}


def test_an_installed_cbir_indexes_queries_serves_and_deduplicates_a_folder(installed, tmp_path: Path):
    bin_folder, env = installed
    cbir = str(bin_folder / "cbir")
    photos = make_collection(tmp_path / "photos")
    elsewhere = tmp_path / "elsewhere"  # neither the checkout nor the photos' folder
    elsewhere.mkdir()
    options = ["--cores", "2", "--engine", "torch", "--precision", "fp32", *SMALL_BACKBONE]
    index = _run([cbir, "index", str(photos), "--workdir", str(tmp_path / "work"), *options], cwd=elsewhere, env=env)
    cell = tmp_path / "work" / "results" / "photos" / "efficientnet_lite0" / "all" / "original"
    assert f"cbir query PHOTO --model {cell}" in index.stdout

    photo = str(photos / "top_000.png")
    answer = json.loads(_run([cbir, "query", photo, "--model", str(cell), "--json"], cwd=elsewhere, env=env).stdout)
    (first,) = answer if isinstance(answer, list) else [answer]
    assert Path(first["results"]["global"][0]["path"]).name == "top_000.png"

    features = tmp_path / "work" / "results" / "photos" / "features" / "efficientnet_lite0.h5"
    duplicates = _run([cbir, "duplicates", str(features), "--json", str(tmp_path / "d.json")], cwd=elsewhere, env=env)
    assert json.loads((tmp_path / "d.json").read_text())["images"] == 36, duplicates.stdout

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([cbir, "serve", "--model", str(cell), "--port", str(port)], cwd=elsewhere, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/model", timeout=5) as response:
                    model = json.loads(response.read())
                break
            except OSError:
                assert server.poll() is None and time.monotonic() < deadline, "cbir serve did not answer"
                time.sleep(1)
        assert model["dataset"] == "photos"
    finally:
        server.terminate()
        server.wait(timeout=30)
