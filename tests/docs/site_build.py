"""The documentation site's build, as `make docs` runs it, for tests/docs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ROOT / "docs" / "hooks"
MERMAID = ROOT / "docs" / "assets" / "vendor" / "mermaid.min.js"
SHIM = MERMAID.parent / "iframe-worker-shim.js"


def mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    """`mkdocs build --strict` of ``config`` into ``site``, as `make docs` runs it."""
    command = [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config), "-d", str(site)]
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
