"""MkDocs hook: the site's scripts from npm packages, served by the site itself (no CDN), must be there.

Material for MkDocs draws ```mermaid fences with the global `mermaid` when a page defines one, and only
otherwise loads it from a CDN; the site lists its copy in extra_javascript. The offline plugin's search
needs iframe-worker's shim, which mkdocs.yml names among the polyfills so that no CDN copy is added.
`make docs-assets` fetches both, pinned and checked, into docs/assets/vendor/ (ignored by git).
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.exceptions import PluginError

VENDOR = Path(__file__).resolve().parents[1] / "assets" / "vendor"
SCRIPTS = ("mermaid.min.js", "iframe-worker-shim.js")


def on_pre_build(config) -> None:
    missing = [name for name in SCRIPTS if not (VENDOR / name).is_file()]
    if missing:
        raise PluginError(f"{VENDOR} lacks {', '.join(missing)}: run `make docs-assets` (npm, pinned versions)")
