"""Hostile input, property-based where it fits: arbitrary unicode, control and zero-width characters, markup,
formula injection, wrong JSON types. Every case ends in a defined result or a clear error, and the app keeps serving.
"""

from __future__ import annotations

import csv
import io
import re

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app
from compare.report import csv_safe, disagreements_csv, escape_markdown, render_markdown
from compare.service import MAX_CHARS, InputError, Service, validate_texts
from core.types import LABELS

NASTY = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(
        ["\u200b", "\u200d", "\ufeff", "\u202e", "\x00", "\x1b", "\r", "<", ">", "[", "]", "|", "`", "=", "@"]
    ),
    max_size=300,
)  # fmt: skip
SLOW = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@given(NASTY)
@settings(max_examples=300, deadline=None)
def test_check_texts_accepts_or_explains(text):
    try:
        assert validate_texts([text]) == [text]
    except InputError as err:
        assert "empty" in str(err) or "limit" in str(err)


@given(NASTY)
@settings(max_examples=300, deadline=None)
def test_escaped_markdown_has_no_live_markup(text):
    escaped = escape_markdown(text, limit=10_000)
    assert "\n" not in escaped and "\r" not in escaped
    # every markup character is preceded by a backslash
    assert not re.search(r"(?<!\\)[<>\[\]|`*_#]", escaped.replace("\\\\", ""))


@given(NASTY)
@settings(max_examples=300, deadline=None)
def test_csv_cells_never_start_a_formula(text):
    row = {"text": text, "reference": "neutral", "predictions": {"a": "=1+1", "b": "@x"}}
    report = {"backends": {"a": {}, "b": {}}, "disagreements": [row]}
    rows = list(csv.reader(io.StringIO(disagreements_csv(report))))
    for cell in rows[1]:
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r", "\n"))
    assert csv_safe("=cmd|' /C calc'!A0").startswith("'=")


@given(NASTY.filter(lambda t: t.strip()))
@SLOW
def test_backends_answer_any_unicode(finetuned, rag_built, text):
    for backend in (finetuned, rag_built):
        [p] = backend.predict([text])
        assert p.label in LABELS and sum(p.scores.values()) == pytest.approx(1.0, abs=1e-4)


def test_huge_and_zero_width_texts(finetuned, rag_built):
    texts = ["\u200b" * 5000, "😀" * 20000, "<script>" * 2500, "=cmd|' /C calc'!A0"]
    for backend in (finetuned, rag_built):
        assert [p.label in LABELS for p in backend.predict(texts)] == [True] * 4


def test_report_markdown_from_hostile_tweets_renders_no_html():
    report = {
        "dataset": {"source": "<img src=x onerror=alert(1)>", "split": "test", "n": 1},
        "machine": {"cpu": "x", "cpu_count": 2, "torch_threads": 2},
        "created": "now",
        "latency": {"queries": 1, "batch_size": 1},
        "hourly_price_usd": 0.1,
        "backends": {
            "<b>x</b>": {"accuracy": 1.0, "macro_f1": 1.0, "per_class": {}, "description": "[a](javascript:x)"}
        },
        "disagreements": [],
    }
    text = render_markdown(report)
    assert not re.search(r"(?<!\\)<", text)  # every < is escaped, so no tag survives
    assert "](javascript" not in text


@pytest.fixture()
def client(app_artifacts):
    return TestClient(app.create_app(app.App(Service.start(app_artifacts, build_missing=False))))


@pytest.mark.parametrize(
    "body",
    [
        {"texts": None},
        {"texts": {"a": 1}},
        {"texts": [[1]]},
        {"texts": ["ok"], "backends": "rag"},
        {"texts": ["ok"] * 10_000},
        {"texts": ["x" * (MAX_CHARS + 1)]},
        {"texts": ["\x00\x1b[31m"]},
        {"texts": ["ok"], "labels": ["neutral"], "extra": "ignored"},
    ],
)
def test_api_wrong_types_and_huge_arrays_are_4xx_or_defined(client, body):
    response = client.post("/api/classify", json=body)
    assert response.status_code in {200, 400, 422}
    assert isinstance(response.json(), dict)
    assert client.get("/api/health").json()["status"] == "ok"


def test_api_malformed_json_and_wrong_content_type(client):
    as_json = {"content-type": "application/json"}
    assert client.post("/api/classify", content=b"{not json", headers=as_json).status_code == 422
    assert client.post("/api/classify", content=b"\xff\xfe", headers=as_json).status_code == 422
    assert client.post("/api/teach", json={"texts": ["a"], "labels": [None]}).status_code == 422
    assert client.get("/api/health").status_code == 200


def _upload(client, name: str, content: bytes):
    for prefix in ("/gradio_api", ""):
        response = client.post(f"{prefix}/upload", files={"files": (name, content, "text/csv")})
        if response.status_code != 404:
            return response
    raise AssertionError("no upload route found")


@pytest.mark.parametrize("name", ["../../../../tmp/evil.csv", "..\\..\\evil.csv", "/etc/passwd", "a/../../b.csv"])
def test_uploads_with_traversal_names_stay_in_the_upload_area(client, name):
    import os
    import tempfile
    from pathlib import Path

    response = _upload(client, name, b"text,label\nhello,positive\n")
    assert response.status_code == 200
    [stored] = response.json()
    root = Path(os.environ.get("GRADIO_TEMP_DIR", Path(tempfile.gettempdir()) / "gradio")).resolve()
    assert Path(stored).resolve().is_relative_to(root), stored
    assert Path(stored).name not in {"", ".", ".."} and "\\" not in Path(stored).name  # one plain file name
    assert not Path("/tmp/evil.csv").exists() or Path("/tmp/evil.csv").read_bytes() != b"text,label\nhello,positive\n"


def test_oversize_upload_is_refused_by_the_server(client):
    response = _upload(client, "big.csv", b"x" * (5 * 2**20 + 1))
    assert response.status_code == 413
    assert client.get("/api/health").status_code == 200


def test_llm_errors_are_logged_without_their_message(rag_built, caplog):
    """A provider error can quote the request (and a key); only its type is logged, and the vote answers."""
    from langchain_core.language_models.fake_chat_models import FakeListChatModel

    from rag.chain import LlmRagClassifier

    class Leaky(FakeListChatModel):
        def _call(self, *args, **kwargs):
            raise RuntimeError("401: invalid api key sk-secret-123")

    with caplog.at_level("DEBUG"):
        [answer] = LlmRagClassifier(rag_built, Leaky(responses=["x"])).answer(["is this thing on"])
    assert answer.source == "knn-fallback"
    assert "RuntimeError" in caplog.text and "sk-secret" not in caplog.text
