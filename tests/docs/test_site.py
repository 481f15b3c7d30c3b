"""The documentation site: a strict build catches broken links and anchors, and the built site loads in
headless Chromium with nothing from the internet, no console error and no failed request."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from pathlib import Path

import pytest
from site_build import ROOT, mkdocs_build

TIMEOUT_MS = 30_000


def test_a_broken_anchor_fails_the_strict_build(tmp_path: Path, mermaid_js):
    docs = tmp_path / "docs"
    shutil.copytree(ROOT / "docs", docs, ignore=shutil.ignore_patterns("hooks", "__pycache__"))
    page = docs / "getting-started.md"
    page.write_text(page.read_text() + "\n[a flag](reference/cli.md#cbir-index--no-such-flag)\n")
    config = (ROOT / "mkdocs.yml").read_text()
    config = config.replace("docs_dir: docs", f"docs_dir: {docs}").replace("- docs/hooks/", f"- {ROOT}/docs/hooks/")
    (tmp_path / "mkdocs.yml").write_text(config)
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0
    assert "cbir-index--no-such-flag" in result.stderr


@pytest.fixture(scope="module")
def site_url(built_site):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

    handler = functools.partial(Quiet, directory=str(built_site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def visit(browser, url: str):
    """The page loaded; what it reported: console errors, page errors, failed and outside requests."""
    context = browser.new_context()
    outside: list[str] = []

    def only_local(route):
        if route.request.url.startswith(("http://127.0.0.1", "data:", "blob:")):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_local)
    page = context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("requestfailed", lambda r: problems.append(f"failed: {r.url} {r.failure}"))
    page.on("response", lambda r: problems.append(f"{r.status}: {r.url}") if r.status >= 400 else None)
    page.goto(url, wait_until="networkidle", timeout=TIMEOUT_MS)
    return page, problems, outside


def test_the_site_loads_offline_in_headless_chromium(browser, site_url, built_site):
    for path, heading in (("index.html", "cbir"), ("reference/cli.html", "Command line")):
        page, problems, outside = visit(browser, f"{site_url}/{path}")
        assert heading in page.locator("article h1").first.inner_text()
        assert page.locator("nav.md-nav").count() > 0
        assert problems == [] and outside == [], (path, problems, outside)
        page.context.close()
    page, problems, outside = visit(browser, f"{site_url}/reference/cli.html#cbir-index--labels")
    assert page.locator("[id='cbir-index--labels']").count() == 1
    page.context.close()
    # the DAG diagram is drawn by the site's own mermaid.js (into a closed shadow root: measured by its height)
    page, problems, outside = visit(browser, f"{site_url}/explanation/method.html")
    assert page.locator("pre.mermaid").count() == 0  # every diagram's source was replaced by its drawing
    page.wait_for_function(
        "() => [...document.querySelectorAll('div.mermaid')].some(d => d.getBoundingClientRect().height > 200)",
        timeout=TIMEOUT_MS,
    )
    assert problems == [] and outside == [], (problems, outside)
    page.context.close()


def test_the_built_site_names_no_internet_asset(built_site):
    for file in built_site.rglob("*"):
        if file.suffix in (".html", ".css", ".js") and file.is_file():
            text = file.read_text(errors="replace")
            for host in ("fonts.googleapis.com", "fonts.gstatic.com", "cdn.jsdelivr.net"):
                assert host not in text, f"{file.relative_to(built_site)} loads from {host}"
            if file.suffix == ".html":
                assert 'src="https://unpkg.com' not in text, file
