"""A real browser (Playwright driving Debian's Chromium, headless) types a tweet and sees both answers.

Needs ``pip install playwright`` (pinned in requirements-dev.txt) and ``apt-get install chromium``; `.ci/run`
installs both and sets FTRAG_REQUIRE_BROWSER=1, so in CI a missing browser fails instead of skipping.
"""

from __future__ import annotations

import os
import re
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


SCREENSHOTS = Path(__file__).resolve().parents[1] / "artifacts" / "screenshots"
"""Where the browser test leaves its screenshots for a reviewer to look at."""


@pytest.fixture()
def served_app(app_artifacts, serve, data_dir, monkeypatch, tmp_path) -> str:
    monkeypatch.setenv("FTRAG_DATA", str(data_dir))
    state = app.App(Service.start(app_artifacts, build_missing=False), report_dir=tmp_path / "report")
    state.start_comparison(n=60, background=False)  # what `python app.py` does in the background at start-up
    return serve(app.create_app(state))


def expect(locator):
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def _open(browser, url: str):
    page = browser.new_page()  # a browser or a context of its own (another visitor)
    page.set_viewport_size({"width": 1280, "height": 1000})
    # The page keeps a heartbeat connection open (per-visitor state), so wait for the page itself, not network idle.
    page.goto(url, wait_until="load", timeout=60_000)
    page.get_by_label("A tweet").wait_for(timeout=60_000)
    return page


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000


def test_browser_compare_batch_evaluation_and_decide(served_app, tmp_path):
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = _open(browser, served_app)
            page.get_by_label("A tweet").fill("<b>my flight</b> got cancelled again, unbelievable")
            page.get_by_role("button", name="Compare", exact=True).click()
            for name in ("finetune", "rag"):
                page.locator(f"#latency-{name}").get_by_text(" ms").wait_for(timeout=30_000)
            # Each output panel updates on its own; wait for the explanation too, not only the latencies.
            expect(page.locator("#what-rag")).to_contain_text("nearest in meaning", timeout=30_000)
            text = page.locator("body").inner_text()
            assert "Fine-tuned model" in text and "Retrieval (RAG)" in text and "that vote" in text
            assert "<b>" not in page.locator("#latency-rag").inner_html()  # user text never becomes markup
            _shot(page, "compare")

            page.get_by_role("tab", name="Batch evaluation").click()
            upload = tmp_path / "my-tweets.csv"
            upload.write_text("text,label\nI love this,positive\nthis is awful,negative\nbus at 5,neutral\n")
            page.locator("#upload input[type=file]").set_input_files(str(upload))
            expect(page.get_by_label("Use the bundled test split instead")).not_to_be_checked()  # a file: score it
            page.get_by_role("button", name="Evaluate every backend").click()
            page.locator("#scored").get_by_text("all 3 rows of the uploaded file").wait_for(timeout=120_000)
            _shot(page, "batch-evaluation")

            page.get_by_role("tab", name="Decide").click()
            page.get_by_role("button", name="Recommend").click()
            try:
                page.locator("#recommendation").get_by_text("Recommendation:").wait_for(timeout=30_000)
            finally:
                _shot(page, "decide")
            assert "measured at start-up" in page.locator("#recommendation").inner_text()  # out of the box
            _shot(page, "decide")
        finally:
            browser.close()


def test_two_visitors_decide_from_their_own_runs(served_app, tmp_path):
    """Visitor A's batch run shapes A's recommendation only; visitor B, in another context, still sees the shared
    start-up comparison."""
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            a, b = _open(browser.new_context(), served_app), _open(browser.new_context(), served_app)
            a.get_by_role("tab", name="Batch evaluation").click()
            upload = tmp_path / "a.csv"
            upload.write_text("text,label\nI love this,positive\nthis is awful,negative\n")
            a.locator("#upload input[type=file]").set_input_files(str(upload))
            expect(a.get_by_label("Use the bundled test split instead")).not_to_be_checked()
            a.get_by_role("button", name="Evaluate every backend").click()
            a.locator("#scored").get_by_text("all 2 rows").wait_for(timeout=120_000)
            for page in (a, b):
                page.get_by_role("tab", name="Decide").click()
            a.get_by_label("Use my latest batch evaluation").check()
            for page in (a, b):
                page.get_by_role("button", name="Recommend").click()
                page.locator("#recommendation").get_by_text("Based on").wait_for(timeout=30_000)
            assert "all 2 rows of the uploaded file" in a.locator("#recommendation").inner_text()
            assert "measured at start-up" in b.locator("#recommendation").inner_text()
            _shot(b, "decide-second-visitor")
        finally:
            browser.close()


def test_the_page_is_served_while_the_backends_build(app_artifacts, ft_dir, serve, data_dir, monkeypatch, tmp_path):
    """The page comes up before the fine-tune exists: a progress bar per backend, retrieval already answering; the
    fine-tune's column fills in by itself once it is ready."""
    import shutil
    import threading

    import serving.build

    sync_playwright = _require_browser()
    monkeypatch.setenv("FTRAG_DATA", str(data_dir))
    shutil.rmtree(app_artifacts / "finetune")
    release = threading.Event()

    def slow_finetune(out, progress, data):  # a fine-tune that takes as long as the test wants
        progress(0.4, "step 40/100, epoch 0.40")
        release.wait(120)
        shutil.copytree(ft_dir, out)

    monkeypatch.setattr(serving.build, "build_demo_finetune", slow_finetune)
    service = Service.start(app_artifacts, background=True)
    url = serve(app.create_app(app.App(service, report_dir=tmp_path / "report")))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = _open(browser, url)
            page.locator("#start-up").get_by_text("step 40/100").wait_for(timeout=30_000)
            assert page.locator("#start-up progress").count() == 3  # rag, finetune, hybrid: one bar each
            expect(page.locator("#what-finetune")).to_contain_text("building: 40%", timeout=30_000)
            page.get_by_label("A tweet").fill("the bus is late again")
            page.get_by_role("button", name="Compare", exact=True).click()
            page.locator("#latency-rag").get_by_text(" ms").wait_for(timeout=30_000)  # retrieval answers already
            expect(page.locator("#latency-finetune")).to_contain_text("still building", timeout=30_000)
            _shot(page, "starting")
            release.set()
            expect(page.locator("#what-finetune")).to_contain_text("fine-tuned on", timeout=120_000)  # a busy machine
            expect(page.locator("#start-up")).to_have_count(0, timeout=30_000)  # the bars go once all are up
            page.get_by_role("button", name="Compare", exact=True).click()
            page.locator("#latency-finetune").get_by_text(" ms").wait_for(timeout=30_000)
            _shot(page, "started")
        finally:
            release.set()
            browser.close()


def test_your_data_in_the_browser(app_artifacts, serve, shared_dir, monkeypatch, tmp_path):
    """A visitor uploads their own 4-label data, sees the preview, runs a study and reads its verdict."""
    from core.data import load_tweets
    from serving.studies import StudyQueue

    sync_playwright = _require_browser()
    monkeypatch.setenv("FTRAG_BASE_MODEL", str(shared_dir / "models" / "tiny-random-gpt2"))
    emotion = load_tweets(str(shared_dir / "data" / "tweeteval_emotion"), split="train", limit=120, seed=1)
    upload = tmp_path / "my-emotions.csv"
    emotion.to_pandas().to_csv(upload, index=False)
    state = app.App(Service.start(app_artifacts, build_missing=False), report_dir=tmp_path / "report")
    state._studies = StudyQueue(tmp_path / "studies", tune_steps=2, curve=False, latency_queries=5, min_steps=20)
    url = serve(app.create_app(state))
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = _open(browser, url)
            page.get_by_role("tab", name="Your data").click()
            page.locator("#study-upload input[type=file]").set_input_files(str(upload))
            page.locator("#study-preview").get_by_text("120 rows").wait_for(timeout=60_000)
            expect(page.locator("#study-preview")).to_contain_text("4 labels", timeout=30_000)
            page.get_by_role("button", name="Run the study").click()
            page.locator("#study-status").get_by_text(re.compile(r"stage \d of 8")).wait_for(timeout=60_000)
            page.reload()  # mid-study: the browser keeps the study's id, and the page finds the study again
            page.get_by_role("tab", name="Your data").click()
            page.get_by_role("button", name="Refresh").click()
            page.locator("#study-status strong").get_by_text(re.compile("Running|Done")).first.wait_for(timeout=60_000)
            try:
                page.locator("#study-verdict").get_by_text("Recommendation:").wait_for(timeout=240_000)
            finally:
                _shot(page, "your-data")
            expect(page.locator("#study-status")).to_contain_text("Done", timeout=30_000)
        finally:
            browser.close()


TABS = ("Compare", "Batch evaluation", "Decide", "Your data", "Teach", "Models")
SCREENS = {"desktop": {"width": 1400, "height": 900}, "phone": {"width": 390, "height": 844}}


def _tab(page, name: str) -> None:
    """Open a tab with one tap: its button must be in view, not folded behind a "..." menu."""
    button = page.locator("[role=tablist] button, .overflow-dropdown button").filter(
        has_text=re.compile(f"^{re.escape(name)}$")
    )
    expect(button.first).to_be_visible()
    button.first.click()


def _answer(page, name: str) -> str:
    """The label a Compare column answered ("neutral in 12.3 ms" -> "neutral")."""
    return page.locator(f"#latency-{name}").inner_text().split()[0]


def _no_error_badge(page) -> None:
    """Gradio marks the outputs of an event that raised with an "Error" badge (and a popup): the page never does."""
    assert page.get_by_text("Error", exact=True).count() == 0
    assert page.locator(".toast-body").count() == 0


def test_a_stakeholder_reads_every_tab_on_any_screen(served_app, tmp_path):
    """Every tab at desktop and phone size, light and dark, screenshotted; the landing names the data and the
    verdict; nothing says "building" once all is up; on the phone every tab is one tap away."""
    import time

    from serving.ui import START_UP_POLL_S

    sync_playwright = _require_browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for screen, size in SCREENS.items():
                for scheme in ("light", "dark"):
                    context = browser.new_context(viewport=size, color_scheme=scheme)
                    page = context.new_page()
                    page.goto(served_app + ("?__theme=dark" if scheme == "dark" else ""), wait_until="load")
                    page.get_by_label("A tweet").wait_for(timeout=60_000)
                    verdict = page.locator("#verdict")
                    expect(verdict).to_contain_text("Build: ", timeout=30_000)
                    said = verdict.inner_text()
                    assert "Compared:" in said and "Tweet sentiment extraction" in said and "negative" in said
                    assert re.search(r"\d+\.\d% \[\d+\.\d, \d+\.\d\]", said)  # a value with its interval
                    assert verdict.bounding_box()["y"] < size["height"]  # above the fold
                    time.sleep(START_UP_POLL_S + 1)  # a poll would have come by now
                    assert "building" not in page.locator("body").inner_text().lower()
                    for tab in TABS:
                        _tab(page, tab)
                        _shot(page, f"{screen}-{scheme}-{tab.lower().replace(' ', '-')}")
                    context.close()
        finally:
            browser.close()


def test_a_visitor_errs_teaches_and_reads_the_tables(served_app, tmp_path):
    """A bad input is one dismissable line that leaves the answers in place; a long paste and a Spanish tweet are
    said; one taught example changes retrieval's answer, in Teach and in Compare; the tables show each backend's
    answer and the label column; every plot keeps its shape; /redoc asks no other site for anything."""
    sync_playwright = _require_browser()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            for screen, size in SCREENS.items():
                page = browser.new_context(viewport=size).new_page()
                page.goto(served_app, wait_until="load")
                query = "not sure how I feel about the new update tbh"
                page.get_by_label("A tweet").fill(query)
                page.get_by_role("button", name="Compare", exact=True).click()
                page.locator("#latency-rag").get_by_text(" ms").wait_for(timeout=30_000)
                before = _answer(page, "rag")
                page.get_by_label("A tweet").fill("   ")
                page.get_by_role("button", name="Compare", exact=True).click()
                expect(page.locator("#compare-error")).to_contain_text("empty", timeout=30_000)
                assert _answer(page, "rag") == before  # the earlier answer stays
                _no_error_badge(page)
                _shot(page, f"{screen}-compare-error")
                page.locator("#compare-error").get_by_role("button", name="Dismiss").click()
                expect(page.locator("#compare-error")).to_be_hidden()

                page.get_by_label("A tweet").fill("x" * 10_000)
                page.get_by_role("button", name="Compare", exact=True).click()
                expect(page.locator("#compare-note")).to_contain_text("10,000 characters", timeout=30_000)
                page.get_by_label("A tweet").fill("el servicio fue horrible y nadie me ayudó con la maleta")
                page.get_by_role("button", name="Compare", exact=True).click()
                expect(page.locator("#compare-note")).to_contain_text("Spanish", timeout=30_000)
                _shot(page, f"{screen}-compare-notes")

                taught = next(label for label in ("positive", "negative", "neutral") if label != before)
                _tab(page, "Teach")
                page.get_by_role("textbox", name="Example").fill(query)
                page.get_by_role("radio", name=taught).check()
                page.get_by_role("button", name="Teach", exact=True).click()
                expect(page.locator("#teach-message")).to_contain_text(f"Retrieval now says {taught}", timeout=30_000)
                teach_table = page.locator("#teach-neighbours")
                for header in ("label", "taught by you"):  # the columns that matter, in view
                    box = teach_table.get_by_role("columnheader", name=header).first.bounding_box()
                    assert box and box["x"] + box["width"] <= size["width"]
                _shot(page, f"{screen}-teach")
                _tab(page, "Compare")
                page.get_by_label("A tweet").fill(query)
                page.get_by_role("button", name="Compare", exact=True).click()
                expect(page.locator("#compare-note")).to_contain_text("you taught", timeout=30_000)
                assert _answer(page, "rag") == taught  # Compare in the same session uses it

                _tab(page, "Batch evaluation")
                page.get_by_role("button", name="Evaluate every backend").click()
                page.locator("#scored").get_by_text("Scored").wait_for(timeout=180_000)
                table = page.locator("#disagreements")
                for name in ("reference", "rag", "finetune"):  # each backend's answer, in view on a desktop
                    box = table.get_by_role("columnheader", name=name, exact=True).first.bounding_box()
                    assert box and (screen == "phone" or box["x"] + box["width"] <= size["width"])
                expect(page.locator("#pairs")).to_contain_text("rag vs finetune")
                image = page.locator("#confusion-plot img")
                ratio = image.evaluate("i => (i.naturalWidth / i.naturalHeight) / (i.width / i.height)")
                assert abs(ratio - 1) < 0.02  # drawn whole, not cropped
                _shot(page, f"{screen}-batch-evaluation-run")
                _tab(page, "Your data")
                mine = tmp_path / "mine.csv"
                long_text = "a rather long tweet about the weather and the bus and everything else today"
                mine.write_text("text,label\n" + "".join(f"{long_text} {i},{'ab'[i % 2]}\n" for i in range(80)))
                page.locator("#study-upload input[type=file]").set_input_files(str(mine))
                page.locator("#study-preview").get_by_text("80 rows").wait_for(timeout=60_000)
                box = page.locator("#study-first-rows").get_by_role("columnheader", name="label").first.bounding_box()
                assert box and box["x"] + box["width"] <= size["width"]  # the label column is in view
                _tab(page, "Models")
                curve = page.locator("#training-curve-0 img")
                expect(curve).to_be_visible()
                assert abs(curve.evaluate("i => (i.naturalWidth / i.naturalHeight) / (i.width / i.height)") - 1) < 0.02
                page.context.close()

            finished: list[str] = []
            failed: list[tuple[str, str]] = []
            page = browser.new_page()
            page.on("requestfinished", lambda request: finished.append(request.url))
            page.on("requestfailed", lambda request: failed.append((request.url, request.failure or "")))
            page.goto(served_app + "redoc", wait_until="networkidle")
            page.get_by_text("API docs by Redocly").wait_for(timeout=30_000)  # the sidebar whose logo is on a CDN
            ours = (served_app, "blob:", "data:")
            assert finished and all(url.startswith(ours) for url in finished), finished
            # Redocly's logo is never fetched: the page's policy blocks it in the browser (no network needed to fail).
            assert all("csp" in why.lower() for url, why in failed if not url.startswith(ours)), failed
        finally:
            browser.close()
