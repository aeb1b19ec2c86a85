"""The page's own logic (serving.ui) without a browser: the landing's verdict, what the page says about a long or
foreign text, the inline errors, what a load shows once all is up. The browser test (test_browser.py) looks at it."""

from __future__ import annotations

import logging
from pathlib import Path

import gradio as gr
import pytest
from fastapi.testclient import TestClient

import app
from core.limits import MAX_CHARS
from serving.inputs import InputError
from serving.service import Service
from serving.ui import (
    Notice,
    bounded_text,
    busy,
    language_note,
    models_markdown,
    operator_markdown,
    verdict_html,
    what_is,
)


@pytest.fixture()
def state(app_artifacts, data_dir, monkeypatch) -> app.App:
    monkeypatch.setenv("FTRAG_DATA", str(data_dir))
    return app.App(Service.start(app_artifacts, build_missing=False), report_dir=app_artifacts / "report")


def test_the_landing_names_the_data_the_contenders_and_the_verdict(state):
    assert "No comparison yet" in verdict_html(state)
    state.comparing = "40%: timing single queries"
    assert "40%: timing single queries" in verdict_html(state) and busy(state)
    state.start_comparison(n=60, background=False)
    shown = verdict_html(state)
    assert "Compared:" in shown and "Retrieval (RAG)" in shown and "Fine-tuned model" in shown
    assert "60 texts of Tweet sentiment extraction (labels: negative, neutral, positive)" in shown
    assert "Build: " in shown and shown.count("class='row'") == 3  # rag, the fine-tune, the majority-class floor
    rag = state.report["backends"]["rag"]
    assert f"{100 * rag['accuracy']:.1f}% <small>[{100 * rag['accuracy_ci95'][0]:.1f}" in shown  # value, interval
    assert not busy(state)


def test_once_all_is_up_nothing_says_building(state):
    """What a page shows when it loads after the start-up: no progress, no "building" under any column."""
    state.start_comparison(n=60, background=False)
    demo = app.build_demo(state)
    [live] = [dep.fn for dep in demo.fns.values() if getattr(dep.fn, "__name__", "") == "live"][:1]
    shown = live()
    texts = " ".join(str(x) for x in shown if isinstance(x, str))
    assert shown[1]["visible"] is False and "building" not in texts.lower()
    assert shown[-1].active is False  # nothing to poll
    assert "nearest in meaning" in what_is(state.service, "rag") and "fine-tuned on" in what_is(
        state.service, "finetune"
    )
    visitor = verdict_html(state) + models_markdown(state.service) + what_is(state.service, "rag")
    assert "kNN" not in visitor and "(local" not in visitor  # operator words stay on the Models tab's fold
    assert "kNN" in operator_markdown(state.service)


def test_a_start_up_that_ends_while_a_poll_renders_gets_one_more_poll(state, monkeypatch):
    """The poll that shows the last progress bars must not also be the last poll: the page would say "building"
    forever. Here the start-up ends right after the bars are drawn."""
    import serving.ui

    demo = app.build_demo(state)
    [live] = [dep.fn for dep in demo.fns.values() if getattr(dep.fn, "__name__", "") == "live"][:1]
    state.service.ready.clear()
    drawn = serving.ui.start_up_html

    def bars_then_ready(service):
        shown = drawn(service)
        service.ready.set()
        return shown

    monkeypatch.setattr(serving.ui, "start_up_html", bars_then_ready)
    shown = live()
    assert "Building the backends" in shown[1]["value"] and shown[-1].active is True


def test_a_long_text_is_cut_and_said_a_foreign_one_is_flagged():
    text, said = bounded_text("x" * 10_000)
    assert len(text) == MAX_CHARS and "10,000 characters" in said and f"first {MAX_CHARS:,}" in said
    assert bounded_text("a tweet") == ("a tweet", "")
    assert "Spanish" in language_note("el servicio fue horrible y nadie me ayudó con nada")
    assert language_note("my flight got cancelled again and nobody at the desk will tell us anything") == ""
    assert language_note("lol") == ""  # too short to tell


def test_an_error_becomes_one_inline_line_and_leaves_the_outputs(caplog):
    with gr.Blocks():
        notice = Notice("test-error")

    def handler(text):
        if not text:
            raise InputError("the text is empty; type something to classify")
        return "answer", 42

    page = notice.guard(handler, 2)
    with caplog.at_level(logging.INFO, logger="serving.ui"):
        shown, said, *rest = page("")
    assert shown["visible"] is True and "the text is empty" in said
    assert rest == [gr.skip(), gr.skip()]  # every other output keeps what it showed
    assert len(caplog.records) == 1 and caplog.records[0].exc_info is None  # one line, no traceback
    hidden, _, *answer = page("hello")
    assert hidden["visible"] is False and answer == ["answer", 42]


def test_redoc_fetches_nothing_from_a_cdn(state):
    page = TestClient(app.create_app(state)).get("/redoc")
    assert page.status_code == 200 and "img-src 'self' data:" in page.headers["content-security-policy"]


def test_the_files_the_page_hands_out_are_deleted_when_the_app_exits(tmp_path):
    """Report zips and training-curve plots go in one folder of the process's own, gone once the process ends (a
    restarted app used to leave a folder behind in /tmp each time)."""
    import subprocess
    import sys

    code = (
        "from serving.ui import scratch, report_zip\n"
        "(scratch() / 'curve-finetune.png').write_bytes(b'png')\n"
        "print(scratch())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    folder = Path(done.stdout.strip().splitlines()[-1])
    assert folder.name.startswith("ftrag-app-") and not folder.exists()
