"""The documentation site's fixtures: its reference generators (docs/hooks/) and the site built once."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "docs" / "hooks"
MERMAID = ROOT / "docs" / "assets" / "vendor" / "mermaid.min.js"
SHIM = MERMAID.parent / "iframe-worker-shim.js"
sys.path.insert(0, str(HOOKS))  # the generators are plain modules beside the mkdocs hook


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of ``config`` into ``site``, as `make docs` runs it."""
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "-d", str(site)]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="session")
def mermaid_js() -> Path:
    """The site's vendored scripts (`make docs-assets`); fetched here when npm can, else the test is skipped."""
    if not (MERMAID.is_file() and SHIM.is_file()) and shutil.which("npm") and shutil.which("make"):
        subprocess.run(["make", "docs-assets"], cwd=ROOT, capture_output=True, timeout=300)
    if not (MERMAID.is_file() and SHIM.is_file()):
        pytest.skip(f"{MERMAID.parent.relative_to(ROOT)} lacks the site's scripts and npm could not fetch them")
    return MERMAID


@pytest.fixture(scope="session")
def built_site(tmp_path_factory, mermaid_js) -> Path:
    site = tmp_path_factory.mktemp("site")
    result = mkdocs_build(ROOT / "mkdocs.yml", site)
    assert result.returncode == 0, result.stderr[-4000:]
    return site
