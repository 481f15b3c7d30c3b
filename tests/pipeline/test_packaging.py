"""How cbir is packaged: the workflow a wheel ships, where cbir finds it, and modules that do one job."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from cbir import cli
from cbir.pipeline import workflow_files

from helpers import REPO, make_image_folder

MAX_MODULE_LINES = 400


def test_setup_py_ships_the_parts_the_package_looks_for():
    tree = ast.parse((REPO / "setup.py").read_text())
    (parts,) = (
        ast.literal_eval(node.value)
        for node in tree.body
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "WORKFLOW_PARTS"
    )
    assert parts == workflow_files.WORKFLOW_PARTS
    manifest_in = (REPO / "MANIFEST.in").read_text()
    for part in parts:  # a source distribution carries them too, for a wheel built from it
        assert part in manifest_in


def test_a_checkout_runs_its_own_workflow():
    assert workflow_files.workflow_dir() == REPO
    assert workflow_files.snakefile() == REPO / "Snakefile"


def test_the_packaged_copy_comes_first(tmp_path: Path, monkeypatch):
    packaged = tmp_path / "workflow"
    (packaged / "config").mkdir(parents=True)
    (packaged / "Snakefile").write_text("")
    (packaged / "config" / "config.yaml").write_text("")
    monkeypatch.setattr(workflow_files, "PACKAGED", packaged)
    assert workflow_files.workflow_dir() == packaged


def test_without_any_workflow_cbir_index_says_what_to_do(tmp_path: Path, monkeypatch, capsys):
    monkeypatch.setattr(workflow_files, "PACKAGED", tmp_path / "none")
    monkeypatch.setattr(workflow_files, "CHECKOUT", tmp_path / "none")
    folder = make_image_folder(tmp_path / "photos", per_class=3)
    assert cli.main(["index", str(folder), "--workdir", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert "Snakefile" in error and "pip install ." in error and "Traceback" not in error


def test_no_module_is_over_400_lines():
    long = {
        str(path.relative_to(REPO)): n
        for path in (REPO / "src" / "cbir").rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


@pytest.mark.parametrize("module", ["cbir.pipeline.config", "cbir.extend", "cbir.layout"])
def test_config_checks_and_the_plugin_api_do_not_load_torch(module: str):
    code = f"import sys, {module}; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
