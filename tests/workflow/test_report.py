"""The summary of the session's run beside the paper, and `snakemake --report` read in headless Chromium.

The session's run (``finished_run``) compares its tiny dataset with the paper's Corel-1K as a
stand-in (``paper.datasets`` in conftest's session config). The browser test opens the report
the way a researcher does: it must load without a JavaScript error, every image in it must load,
and the paper comparison page must hold its tables. Without Chromium or Playwright it is skipped
with the reason; with CBIR_REQUIRE_BROWSER=1 (CI) it fails instead. Its screenshot is kept under
the test's tmp_path, and copied to $CBIR_REPORT_SCREENSHOT when that is set.
"""

from __future__ import annotations

import base64
import os
import shutil
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest

from helpers import run_snakemake, write_config

pytestmark = pytest.mark.workflow
SUMMARY = Path("results/summary")
TIMEOUT_MS = 60_000
PAPER_PAGE = "results/summary/html/paper_comparison.html"


@pytest.fixture(scope="module")
def report_html(finished_run) -> Path:
    root, config = finished_run
    result = run_snakemake(root, write_config(root / "report.yaml", config), "--report", "paper-report.html")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return root / "paper-report.html"


def test_the_run_writes_the_paper_comparison_with_its_stand_in_labelled(finished_run):
    root, _ = finished_run
    table = pd.read_csv(root / SUMMARY / "paper_comparison_80-20.csv", index_col=0)
    label = "tiny (stand-in for Corel-1K)"
    assert list(table.columns) == [f"{label}: paper", f"{label}: ours", f"{label}: difference"]
    assert list(table.index.astype(str)) == ["4", "8", "original"]
    assert table[f"{label}: paper"].isna().tolist() == [True, True, False]  # the paper has no PCA 4 or 8
    assert table.loc["original", f"{label}: paper"] == 89.5  # Corel-1K, 80-20, no PCA
    ours = pd.read_csv(root / SUMMARY / "accuracy_80-20.csv", index_col=0)
    assert table.loc["original", f"{label}: ours"] == pytest.approx(ours.loc["original", "tiny"], abs=1e-3)
    assert "### tiny (stand-in for Corel-1K)" in (root / SUMMARY / "paper_comparison_80-20.md").read_text()
    times = pd.read_csv(root / SUMMARY / "paper_time_comparison_80-20.csv", index_col=0)
    assert times.loc["original", f"{label}: prediction: paper (ms)"] == pytest.approx(166.0)
    deviations = (root / SUMMARY / "deviations.md").read_text()
    backbone = "backbone `lite`**: paper: VGG16 pre-trained on ImageNet, last convolutional block; ours: "
    assert backbone + "efficientnet_lite0" in deviations
    assert "pooling**: paper: none; ours: avg; same: no" in deviations
    assert (
        "**Clustering makes search faster**" in deviations
        and "**Clustering makes results more semantic**" in deviations
    )
    for page in ("paper_comparison", "tables_80-20", "deviations", "datasets"):
        assert (root / SUMMARY / "html" / f"{page}.html").stat().st_size > 1000, page


def test_the_faiss_loader_no_longer_fills_the_logs(finished_run):
    root, _ = finished_run
    for log in (root / "results/logs/evaluate").glob("*.log"):
        assert "swigfaiss" not in log.read_text(), log


def _data_uri_text(uri: str) -> str:
    head, _, data = uri.partition(",")
    return base64.b64decode(data).decode() if head.endswith(";base64") else urllib.parse.unquote(data)


def test_the_report_in_headless_chromium(browser, report_html: Path, tmp_path: Path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda m: problems.append(f"console error: {m.text}") if m.type == "error" else None)
    page.goto(report_html.as_uri())
    page.wait_for_function("() => typeof app !== 'undefined' && app !== undefined", timeout=TIMEOUT_MS)
    # the opening page says the run's grid as a reader would, not as Python lists
    opening = " ".join(page.locator("body").inner_text().split())
    assert "The grid of this run: the dataset tiny;" in opening, opening[:2000]
    assert "PCA sizes 4, 8 and original (original: no PCA); k = 2 clusters per class" in opening, opening[:2000]
    assert "['" not in opening and "[4," not in opening

    categories = page.evaluate("Object.keys(categories).sort((a, b) => a.localeCompare(b))")
    assert categories[:6] == ["1 Paper comparison", "2 Tables", "3 Plots", "4 Montages",
                              "5 Deviations from the paper", "6 Datasets"], categories  # fmt: skip
    results = page.evaluate("results")
    images = {path: r["data_uri"] for path, r in results.items() if r["mime_type"].startswith("image/")}
    assert {Path(p).name for p in images} >= {"paper_accuracy_vs_pca.png", "recall_vs_speedup.png", "lite.png"}
    # every image of the report decodes in the browser: the plots, the montages, the page's own
    loaded = page.evaluate(
        """uris => Promise.all(uris.map(uri => new Promise(done => {
               const image = new Image();
               image.onload = () => done(image.naturalWidth);
               image.onerror = () => done(0);
               image.src = uri; })))""",
        list(images.values()),
    )
    assert all(width > 0 for width in loaded), dict(zip(images, loaded, strict=True))
    assert page.evaluate("[...document.images].every(i => i.complete && i.naturalWidth > 0)")

    # the paper comparison, as a researcher opens it: its category, then its page
    page.evaluate("app.showCategory('1 Paper comparison')")
    page.locator("tr", has_text="paper_comparison.html").locator("a").first.click()
    frame = page.frame_locator("iframe")
    frame.locator("table").first.wait_for(timeout=TIMEOUT_MS)
    assert frame.locator("h1").inner_text() == "The paper's tables beside ours"
    headers = frame.locator("table").first.locator("th").all_inner_texts()
    assert headers == ["PCA", "paper", "ours", "difference (ours − paper)"], headers
    assert "tiny (stand-in for Corel-1K)" in frame.locator("body").inner_text()
    assert frame.locator("img").evaluate_all("imgs => imgs.length > 0 && imgs.every(i => i.naturalWidth > 0)")
    page.screenshot(path=str(tmp_path / "cbir-report.png"), full_page=True)
    assert (tmp_path / "cbir-report.png").stat().st_size > 10_000
    if os.environ.get("CBIR_REPORT_SCREENSHOT"):
        shutil.copy(tmp_path / "cbir-report.png", os.environ["CBIR_REPORT_SCREENSHOT"])

    # every HTML page of the report holds what it is for
    pages = {Path(p).name: _data_uri_text(r["data_uri"]) for p, r in results.items() if r["mime_type"] == "text/html"}
    assert "Clustering makes search faster" in pages["deviations.html"]
    assert "<table>" in pages["tables_80-20.html"] and "recall@5" in pages["tables_80-20.html"]
    assert "tiny" in pages["datasets.html"]
    assert not problems, problems
    page.close()
