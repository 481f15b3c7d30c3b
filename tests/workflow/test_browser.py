"""The `cbir serve` page end to end in headless Chromium (Debian's chromium, driven by Playwright).

The page is served by uvicorn on 127.0.0.1; the test uploads an image with the file picker,
drops one on the drop zone, searches a test image and checks the result tiles. Without Chromium
or Playwright the test is skipped with the reason; with CBIR_REQUIRE_BROWSER=1 (set by CI in
`.ci/run`, which installs chromium) it fails instead (the ``browser`` fixture, in conftest.py).
"""

from __future__ import annotations

import base64
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.workflow
CELL = "results/tiny/lite/80-20/8"
TOP_K = 4
TIMEOUT_MS = 60_000


@pytest.fixture(scope="module")
def server(browser, finished_run):
    from cbir.serve.app import create_app
    from cbir.serve.run import serve_in_thread
    from cbir.serve.settings import ServeSettings

    root, _ = finished_run
    app = create_app(ServeSettings(model=root / CELL, top_k=TOP_K))
    with serve_in_thread(app, "127.0.0.1") as url:
        yield url, app.state.served


def wait_for_results(page) -> None:
    page.wait_for_selector("body[data-state='done'], body[data-state='error']", timeout=TIMEOUT_MS)
    assert page.get_attribute("body", "data-state") == "done", page.inner_text("#error")


def query_shown(page) -> str | None:
    """The kind of URL the query image is shown from, once the browser has decoded it (None: not shown)."""
    return page.eval_on_selector("#query-image", "i => i.complete && i.naturalWidth > 0 ? i.src.split(';')[0] : null")


def tiles(page, mode: str) -> list[dict[str, str]]:
    return page.eval_on_selector_all(
        f"#results-{mode} .tile",
        """tiles => tiles.map(t => ({id: t.dataset.id, cls: t.querySelector('.class').textContent,
                                     distance: t.querySelector('.distance').textContent,
                                     similarity: (t.querySelector('.similarity') || {}).textContent,
                                     noMatch: t.querySelector('.no-match-label') !== null,
                                     img: t.querySelector('img').naturalWidth, verdict: t.className}))""",
    )


def open_page(browser, url: str) -> tuple[Any, list[str]]:
    """The search page loaded, with the page errors and Content Security Policy violations it reports."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    problems: list[str] = []
    page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
    page.on("console", lambda m: problems.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto(url + "/")
    page.wait_for_selector("body[data-state='ready']", timeout=TIMEOUT_MS)
    return page, problems


def test_search_page_in_headless_chromium(browser, server, finished_run, tmp_path: Path):
    url, served = server
    root, _ = finished_run
    classes = set(served.model.class_names)
    page, problems = open_page(browser, url)
    info = page.inner_text("#model-panel")
    for shown in ("tiny", "lite", "80-20", "gallery size", "24", "classification accuracy", "mAP@5"):
        assert shown in info, shown
    assert page.eval_on_selector_all("#test-select option", "o => o.length") == len(served.test_ids)

    # 1. the file picker: a red image from disk
    query = root / "data/tiny/red/003.png"
    page.set_input_files("#file-input", str(query))
    wait_for_results(page)
    image = {"name": "q.png", "mimeType": "image/png", "buffer": query.read_bytes()}
    expected = page.request.post(url + "/api/query", multipart={"image": image, "top_k": str(TOP_K)}).json()
    assert page.inner_text(".predicted") == expected["predicted_class"] == "red"
    for mode in ("clustered", "class", "global"):
        shown = tiles(page, mode)
        assert [t["id"] for t in shown] == [r["id"] for r in expected["results"][mode]], mode
        assert all(t["cls"] in classes and t["img"] > 0 for t in shown), shown  # thumbnails loaded
        assert all("right" not in t["verdict"] and "wrong" not in t["verdict"] for t in shown)  # label unknown
        # the similarity on every tile; beyond the calibrated distance, dimmed and labelled "no good match"
        assert [t["similarity"] for t in shown] == [f"cos {r['similarity']:.3f}" for r in expected["results"][mode]]
        marked = [r["good_match"] is False for r in expected["results"][mode]]
        assert [t["noMatch"] for t in shown] == marked == [("no-match" in t["verdict"]) for t in shown]
    assert "no good match" in page.inner_text("#no-match-note")
    assert len(tiles(page, "class")) == TOP_K and len(tiles(page, "global")) == TOP_K
    assert 1 <= len(tiles(page, "clustered")) <= TOP_K
    assert {row for row in page.eval_on_selector_all("#timings tr", "rows => rows.map(r => r.dataset.step)")} >= {
        "decode", "forward", "project_predict", "search_clustered", "search_class", "total"}  # fmt: skip
    page.screenshot(path=str(tmp_path / "cbir-serve.png"), full_page=True)
    assert (tmp_path / "cbir-serve.png").stat().st_size > 10_000
    assert query_shown(page) == "data:image/jpeg"  # the query as the server read it

    # 1b. a HEIC from the picker, which Chromium cannot display: the page shows the server's JPEG of it
    pillow_heif = pytest.importorskip("pillow_heif", reason="pillow-heif (requirements.txt) is not installed")
    from PIL import Image

    pillow_heif.register_heif_opener()
    heic = tmp_path / "IMG_0003.HEIC"
    Image.open(query).convert("RGB").save(heic, format="HEIF", quality=95)
    page.set_input_files("#file-input", str(heic))
    page.wait_for_function("() => document.querySelector('#query-name').textContent.includes('IMG_0003.HEIC')")
    wait_for_results(page)
    assert page.inner_text(".predicted") == "red" and query_shown(page) == "data:image/jpeg"
    image = {"name": heic.name, "mimeType": "image/heic", "buffer": heic.read_bytes()}
    expected_heic = page.request.post(url + "/api/query", multipart={"image": image, "top_k": str(TOP_K)}).json()
    assert [t["id"] for t in tiles(page, "global")] == [r["id"] for r in expected_heic["results"]["global"]]

    # 2. drag and drop: a green image
    data = base64.b64encode((root / "data/tiny/green/002.png").read_bytes()).decode()
    transfer = page.evaluate_handle(
        """b64 => { const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
                    const transfer = new DataTransfer();
                    transfer.items.add(new File([bytes], 'dropped-green.png', {type: 'image/png'}));
                    return transfer; }""",
        data,
    )
    page.dispatch_event("#drop-zone", "drop", {"dataTransfer": transfer})
    page.wait_for_function("() => document.querySelector('#query-name').textContent.includes('dropped-green.png')")
    wait_for_results(page)
    assert page.inner_text(".predicted") == "green"
    assert {t["cls"] for t in tiles(page, "class")} == {"green"}

    # 3. a test image: its class is known, so every tile is marked right or wrong
    test_id = served.test_ids[0]
    page.select_option("#test-select", test_id)
    page.click("#test-search")
    page.wait_for_function(f"() => document.querySelector('#query-name').textContent.startsWith({test_id!r})")
    wait_for_results(page)
    truth = served.images[test_id].class_name
    for mode in ("clustered", "class", "global"):
        for tile in tiles(page, mode):
            assert ("right" in tile["verdict"]) == (tile["cls"] == truth), tile
            assert ("wrong" in tile["verdict"]) == (tile["cls"] != truth), tile
    assert page.inner_text("#prediction").endswith(("✓ right", "✗ wrong"))
    page.screenshot(path=str(tmp_path / "cbir-serve-test-image.png"), full_page=True)
    if os.environ.get("CBIR_SCREENSHOT"):
        shutil.copy(tmp_path / "cbir-serve-test-image.png", os.environ["CBIR_SCREENSHOT"])

    # 4. a file that is not an image: the server's message is shown, and the page keeps working
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image")
    page.set_input_files("#file-input", str(notes))
    page.wait_for_selector("#error:not([hidden])", timeout=TIMEOUT_MS)
    assert "content type is 'text/plain'" in page.inner_text("#error")
    page.set_input_files("#file-input", str(query))
    wait_for_results(page)
    assert page.is_hidden("#error")
    assert not problems, problems
    page.close()


def marks_shown(page) -> dict[str, str]:
    """Gallery id -> the mark its tiles show (in every column), from the pressed buttons."""
    return page.evaluate(
        """() => { const shown = {};
                   for (const b of document.querySelectorAll('.tile button.mark[aria-pressed="true"]')) {
                     shown[b.closest('.tile').dataset.id] = b.dataset.mark; }
                   return shown; }"""
    )


def wait_for_round(page, text: str) -> None:
    page.wait_for_function(f"() => document.querySelector('#round').textContent.startsWith({text!r})",
                           timeout=TIMEOUT_MS)  # fmt: skip
    wait_for_results(page)


def test_relevance_feedback_in_the_page(browser, server, finished_run):
    from cbir.serve.uploads import decode_image

    url, served = server
    root, _ = finished_run
    page, problems = open_page(browser, url)
    query = root / "data/tiny/red/003.png"
    page.set_input_files("#file-input", str(query))
    wait_for_results(page)
    assert page.inner_text("#round") == "round 1" and page.is_disabled("#refine") and marks_shown(page) == {}
    first = [t["id"] for t in tiles(page, "global")]
    assert len(first) == TOP_K
    labels = page.eval_on_selector_all(f"#results-global .tile[data-id='{first[0]}'] button",
                                       "bs => bs.map(b => [b.textContent, b.getAttribute('aria-label')])")  # fmt: skip
    assert labels == [["Relevant", f"Relevant: {first[0]}"], ["Not relevant", f"Not relevant: {first[0]}"],
                      ["More like this", f"More like this: {first[0]}"]]  # fmt: skip

    # three tiles relevant (one of them by keyboard) and one not; a mark shows on every tile of that image
    relevant, irrelevant = first[1:], first[0]
    for image_id in relevant[:2]:
        page.click(f"#results-global .tile[data-id='{image_id}'] button.relevant")
    page.focus(f"#results-global .tile[data-id='{relevant[2]}'] button.relevant")
    page.keyboard.press("Space")
    page.click(f"#results-global .tile[data-id='{irrelevant}'] button.irrelevant")
    page.click(f"#results-global .tile[data-id='{irrelevant}'] button.irrelevant")  # toggled off
    page.click(f"#results-global .tile[data-id='{irrelevant}'] button.irrelevant")  # and on again
    expected_marks = {**dict.fromkeys(relevant, "relevant"), irrelevant: "irrelevant"}
    assert marks_shown(page) == expected_marks
    shown_in_class = {t["id"] for t in tiles(page, "class")} & set(expected_marks)
    marked_tiles = page.eval_on_selector_all("#results-class .tile[data-mark]", "ts => ts.map(t => t.dataset.id)")
    assert set(marked_tiles) == shown_in_class  # the class column's tiles of the same images show their marks
    assert "3 relevant, 1 not relevant" in page.inner_text("#marks-summary")

    # Refine, by keyboard: round 2 re-sends the same upload with the marks; the relevant ones come first
    page.focus("#refine")
    page.keyboard.press("Enter")
    wait_for_round(page, "round 2")
    assert "learned from 3 relevant, 1 not relevant" in page.inner_text("#round")
    assert page.evaluate("() => getComputedStyle(document.activeElement).outlineStyle") != "none"  # focus shows
    refined = [t["id"] for t in tiles(page, "global")]
    assert refined != first and set(refined[:3]) == set(relevant)
    # the learned method puts them first in the search over all images and in the predicted class's; the
    # clustered search looks in one cluster, which need not hold all three
    assert set([t["id"] for t in tiles(page, "class")][:3]) == set(relevant)
    decoded = decode_image(query.read_bytes(), served.settings.max_pixels, served.embedder.prepared.draft_to)
    answer = served.answer(decoded.image, TOP_K, feedback=served.feedback(relevant, [irrelevant]))
    assert refined == [match.id for match in answer.results["global"]]  # what the server ranks with those marks
    visible = {t["id"] for mode in ("clustered", "class", "global") for t in tiles(page, mode)}
    assert marks_shown(page) == {i: m for i, m in expected_marks.items() if i in visible}  # kept by id
    assert "refine" in page.eval_on_selector_all("#timings tr", "rows => rows.map(r => r.dataset.step)")

    # marks are kept across rounds: one more relevant, round 3 sends all five marks
    extra = next(t["id"] for mode in ("class", "clustered") for t in tiles(page, mode) if t["id"] not in expected_marks)
    page.click(f".tile[data-id='{extra}'] button.relevant")
    page.click("#refine")
    wait_for_round(page, "round 3")
    assert "learned from 4 relevant, 1 not relevant" in page.inner_text("#round")

    # Start over: no marks, round 1, the first ranking again
    page.click("#start-over")
    wait_for_round(page, "round 1")
    assert marks_shown(page) == {} and page.is_disabled("#refine") and page.is_disabled("#start-over")
    assert [t["id"] for t in tiles(page, "global")] == first

    # More like this: a result becomes the query (left out of its results); the focus moves to the round
    target = first[1]
    page.click(f"#results-global .tile[data-id='{target}'] button.more")
    page.wait_for_function("() => document.querySelector('#query-name').textContent.startsWith('more like')")
    wait_for_results(page)
    assert page.inner_text("#query-name") == f"more like {target} · class red"
    assert all(t["id"] != target for mode in ("clustered", "class", "global") for t in tiles(page, mode))
    assert page.evaluate("() => document.activeElement.id") == "round" and page.inner_text("#round") == "round 1"
    assert query_shown(page).startswith(f"{url}/api/images/")  # its thumbnail, by id
    # and it refines like the others: by its id, with the marks
    page.click(f"#results-global .tile[data-id='{tiles(page, 'global')[0]['id']}'] button.relevant")
    page.click("#refine")
    wait_for_round(page, "round 2")
    assert "learned from 1 relevant, 0 not relevant" in page.inner_text("#round")
    assert page.inner_text("#query-name").startswith(f"more like {target}")
    assert not problems, problems
    page.close()
