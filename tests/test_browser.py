"""A real browser (Playwright driving Debian's Chromium, headless) types a tweet and sees both answers.

Needs ``pip install playwright`` (pinned in requirements-dev.txt) and ``apt-get install chromium``; `.ci/run`
installs both and sets FTRAG_REQUIRE_BROWSER=1, so in CI a missing browser fails instead of skipping.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import app
from serving.service import Service

CHROMIUM = os.environ.get("FTRAG_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _require_browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    missing = [] if sync_playwright else ["the playwright package"]
    if not Path(CHROMIUM).exists():
        missing.append(f"Chromium at {CHROMIUM}")
    if missing:
        message = f"browser test needs {' and '.join(missing)} (apt-get install chromium; pip install playwright)"
        if os.environ.get("FTRAG_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    return sync_playwright


@pytest.fixture()
def served_app(app_artifacts, serve) -> str:
    return serve(app.create_app(app.App(Service.start(app_artifacts, build_missing=False))))


def test_browser_types_a_tweet_and_sees_both_answers(served_app, tmp_path):
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(served_app, wait_until="networkidle", timeout=60_000)
            page.get_by_label("A tweet").fill("<b>my flight</b> got cancelled again, unbelievable")
            page.get_by_role("button", name="Compare", exact=True).click()
            for name in ("finetune", "rag"):
                page.locator(f"#latency-{name}").get_by_text(" ms").wait_for(timeout=30_000)
            text = page.locator("body").inner_text()
            assert "Fine-tuned model" in text and "Retrieval (RAG)" in text
            assert "kNN vote" in page.locator("#what-rag").inner_text()
            assert "<b>" not in page.locator("#latency-rag").inner_html()  # user text never becomes markup
            shot = tmp_path / "compare.png"
            page.screenshot(path=str(shot), full_page=True)
            assert shot.stat().st_size > 10_000
        finally:
            browser.close()
