"""The documentation site's fixtures: its reference generators (docs/hooks/) and the site built once."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from site_build import HOOKS, MERMAID, ROOT, SHIM, mkdocs_build

sys.path.insert(0, str(HOOKS))  # the generators are plain modules beside the mkdocs hook


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
