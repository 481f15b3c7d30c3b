"""The fixtures of every test: a precision trial cache of the session's own, a generated image folder, Chromium.

The end-to-end runs' fixtures are in tests/workflow/conftest.py; the helpers in tests/helpers.py."""

from __future__ import annotations

import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers import CHROMIUM_ARGS, browser_problem, chromium_path, make_image_folder


@pytest.fixture(scope="session", autouse=True)
def precision_trial_cache(tmp_path_factory) -> Iterator[Path]:
    """A cache of `precision: auto` trials of this test session alone (also for the workflows it runs)."""
    folder = tmp_path_factory.mktemp("cbir-cache")
    previous = os.environ.get("CBIR_CACHE_DIR")
    os.environ["CBIR_CACHE_DIR"] = str(folder)
    yield folder
    if previous is None:
        os.environ.pop("CBIR_CACHE_DIR", None)
    else:
        os.environ["CBIR_CACHE_DIR"] = previous


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    return make_image_folder(tmp_path / "images")


@pytest.fixture
def downloads(monkeypatch) -> list[str]:
    """Every URL opened through urllib, in order."""
    opened: list[str] = []
    real = urllib.request.urlopen

    def counting(url, *args, **kwargs):
        opened.append(url)
        return real(url, *args, **kwargs)

    monkeypatch.setattr(urllib.request, "urlopen", counting)
    return opened


@pytest.fixture(scope="session")
def browser():
    """Headless Chromium; skipped with the reason where it cannot run, failed instead with CBIR_REQUIRE_BROWSER=1
    (CI, whose .ci/run installs chromium)."""
    problem = browser_problem()
    if problem is not None:
        if os.environ.get("CBIR_REQUIRE_BROWSER") == "1":
            pytest.fail(f"the browser test is required (CBIR_REQUIRE_BROWSER=1) but cannot run: {problem}")
        pytest.skip(problem)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()
