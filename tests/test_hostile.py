"""Hostile input, property-based where it fits: arbitrary unicode, control and zero-width characters, markup,
formula injection, wrong JSON types. Every case ends in a defined result or a clear error, and the app keeps serving.
"""

from __future__ import annotations

import csv
import io
import json
import re

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import app
from compare.report import csv_safe, disagreements_csv, escape_markdown, render_markdown
from core.limits import MAX_CHARS
from core.types import LABELS
from serving.inputs import InputError, validate_texts
from serving.service import Service

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
    ("body", "status"),
    [
        ({"texts": None}, 422),
        ({"texts": {"a": 1}}, 422),
        ({"texts": [[1]]}, 422),
        ({"texts": ["ok"], "backends": "rag"}, 422),
        ({"texts": ["ok"] * 10_000}, 422),
        ({"texts": ["x" * (MAX_CHARS + 1)]}, 400),
        ({"texts": ["\x00\x1b[31m"]}, 200),
        ({"texts": ["ok"], "labels": ["neutral"], "extra": "refused"}, 422),
    ],
)
def test_api_wrong_types_and_huge_arrays_are_4xx_or_defined(client, body, status):
    response = client.post("/api/classify", json=body)
    assert response.status_code == status, response.text
    answer = response.json()
    assert ("results" in answer) if status == 200 else ("error" in answer and "results" not in answer)
    assert len(response.content) < 5_000 or status == 200  # errors never echo the input back
    assert client.get("/api/health").json()["status"] == "ok"


@pytest.mark.parametrize(
    ("route", "raw"),
    [
        ("/api/recommend", b'{"accuracy_target": NaN}'),
        ("/api/recommend", b'{"latency_budget_ms": Infinity}'),
        ("/api/recommend", b'{"latency_budget_ms": 1e999}'),
        ("/api/recommend", b'{"labeled_examples": -Infinity}'),
    ],
)
def test_non_finite_numbers_are_422_not_500(client, route, raw):
    response = client.post(route, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "finite" in response.json()["error"] or "valid" in response.json()["error"]


@pytest.mark.parametrize("route", ["/api/classify", "/api/compare", "/api/teach"])
def test_a_lone_surrogate_is_a_400_with_a_reason(client, route):
    labels = b', "labels": ["neutral", "neutral"]' if route != "/api/classify" else b""
    raw = b'{"texts": ["fine", "\\ud800 broken"]' + labels + b"}"
    response = client.post(route, content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 400, response.text
    assert "text 2 is not valid Unicode" in response.json()["error"] or "example 2" in response.json()["error"]


def test_a_huge_body_is_413_before_it_is_read(client):
    big = b'{"texts": ["' + b"a" * (60 * 2**20) + b'"]}'
    response = client.post("/api/classify", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413 and len(response.content) < 500
    assert "limit" in response.json()["error"]


def test_a_streamed_huge_body_is_cut_off_and_memory_stays_flat(app_artifacts, serve):
    """50 MB sent chunked (no Content-Length): refused once past the limit; the server's memory barely moves."""
    import httpx
    import psutil

    url = serve(app.create_app(app.App(Service.start(app_artifacts, build_missing=False))))
    process = psutil.Process()
    chunk = b"a" * 2**20
    before = process.memory_info().rss

    def body():
        yield b'{"texts": ["'
        for _ in range(50):
            yield chunk
        yield b'"]}'

    try:
        response = httpx.post(url + "api/classify", content=body(), headers={"content-type": "application/json"},
                              timeout=60)  # fmt: skip
        status = response.status_code
    except httpx.HTTPError:  # the server may close the connection while the client is still sending
        status = 413
    assert status == 413
    assert process.memory_info().rss - before < 100 * 2**20
    assert httpx.get(url + "api/health", timeout=10).json()["status"] == "ok"


def test_answers_name_no_server_path(client, app_artifacts):
    models = client.get("/api/models").text
    assert str(app_artifacts) not in models and "/tmp/" not in models
    (app_artifacts / "rag" / "index.faiss").unlink()
    broken = Service.start(app_artifacts, build_missing=False)
    assert str(app_artifacts) not in broken.unavailable["rag"] and "index.faiss" in broken.unavailable["rag"]


def _gradio_call(url: str, api_name: str, data: list) -> str:
    """POST a raw Gradio API call and read its event stream to the end."""
    import httpx

    event = httpx.post(f"{url}gradio_api/call/{api_name}", json={"data": data}, timeout=30).json()["event_id"]
    return httpx.get(f"{url}gradio_api/call/{api_name}/{event}", timeout=60).text


@pytest.fixture()
def served(app_artifacts, serve):
    return serve(app.create_app(app.App(Service.start(app_artifacts, build_missing=False))))


def test_evaluate_refuses_a_server_path_that_was_never_uploaded(served, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_text("text,label\nTOPSECRET tweet,positive\nanother TOPSECRET,negative\n")
    headers = tmp_path / "headers.csv"
    headers.write_text("private_column_a,private_column_b\n1,2\n")
    for path in (secret, headers, "/etc/passwd", str(tmp_path / ".." / tmp_path.name / "secret.csv")):
        stream = _gradio_call(
            served, "evaluate", [{"path": str(path), "meta": {"_type": "gradio.FileData"}}, False, 50]
        )
        assert "event: error" in stream
        assert "TOPSECRET" not in stream and "private_column" not in stream and "root:" not in stream
    with pytest.raises(InputError, match="not uploaded here") as refused:  # the handler's own check, behind Gradio's
        app.App(Service(), upload_root=tmp_path / "uploads").evaluate_file(str(secret), False, 50)
    assert "TOPSECRET" not in str(refused.value) and str(tmp_path) not in str(refused.value)


def _upload_to(url: str, name: str, content: bytes) -> str:
    import httpx

    [stored] = httpx.post(f"{url}gradio_api/upload", files={"files": (name, content, "text/csv")}, timeout=30).json()
    return stored


def test_an_uploaded_4_million_character_cell_is_refused_in_seconds(served):
    import time

    import httpx

    stored = _upload_to(served, "huge-cell.csv", b"text,label\n" + b"x" * 4_000_000 + b",positive\nok,neutral\n")
    start = time.perf_counter()
    stream = _gradio_call(served, "evaluate", [{"path": stored, "meta": {"_type": "gradio.FileData"}}, False, 50])
    assert time.perf_counter() - start < 30  # it once ran for half an hour
    assert "event: error" in stream and "more than 2,000 characters" in stream and "4,000,000" in stream
    assert httpx.post(served + "api/classify", json={"texts": ["still serving?"]}, timeout=10).status_code == 200


def test_an_upload_with_the_test_split_ticked_is_ambiguous(served):
    stored = _upload_to(served, "mine.csv", b"text,label\nI love it,positive\nawful,negative\n")
    stream = _gradio_call(served, "evaluate", [{"path": stored, "meta": {"_type": "gradio.FileData"}}, True, 50])
    assert "event: error" in stream and "both a file and the bundled test split" in stream
    stream = _gradio_call(served, "evaluate", [{"path": stored, "meta": {"_type": "gradio.FileData"}}, False, 50])
    assert "event: complete" in stream


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


def test_decide_cli_gives_one_line_errors_for_a_directory_or_a_broken_report(tmp_path, capsys):
    from compare.decide import main as decide_main

    assert decide_main(["--report", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    broken = tmp_path / "report.json"
    broken.write_text('{"format_version": 1, "backends": {"rag": {"latency_ms": {}}}}')
    assert decide_main(["--report", str(broken)]) == 2
    assert "dataset.n" in capsys.readouterr().err


def test_a_saved_report_with_missing_keys_is_ignored_not_a_500(app_artifacts):
    (app_artifacts / "report").mkdir()
    (app_artifacts / "report" / "report.json").write_text('{"format_version": 1, "backends": {"rag": {}}}')
    state = app.App(Service.start(app_artifacts, build_missing=False), report_dir=app_artifacts / "report")
    response = TestClient(app.create_app(state)).post("/api/recommend", json={})
    assert response.status_code == 400 and "no comparison report yet" in response.json()["error"]


def test_rag_build_refuses_an_unwritable_out_before_embedding(tmp_path, capsys, monkeypatch):
    from rag import build

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(build, "build_classifier", lambda *a, **k: pytest.fail("embedded before checking --out"))
    assert build.main(["--out", str(blocker / "index"), "--train-size", "50"]) == 2
    assert "cannot write an index" in capsys.readouterr().err


def test_sigterm_stops_the_app_within_seconds_even_mid_evaluation(app_artifacts, data_dir):
    import contextlib
    import os
    import signal
    import socket
    import subprocess
    import sys
    import threading
    import time

    import httpx

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/"
    env = {**os.environ, "FTRAG_DATA": str(data_dir), "FTRAG_COMPACT_SECONDS": "0"}
    command = [sys.executable, "app.py", "--artifacts", str(app_artifacts), "--no-build", "--port", str(port)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        started = threading.Event()

        def long_evaluation() -> None:
            started.set()
            with contextlib.suppress(Exception):  # the server goes away mid-stream: that is the point
                _gradio_call(url, "evaluate", [None, True, 2000])

        threading.Thread(target=long_evaluation, daemon=True).start()
        started.wait()
        time.sleep(3)  # the evaluation is under way
        assert process.poll() is None
        process.send_signal(signal.SIGTERM)
        start = time.time()
        process.wait(timeout=30)
        assert time.time() - start < 10
    finally:
        if process.poll() is None:
            process.kill()


def test_an_index_whose_examples_have_a_label_outside_its_set_is_refused(rag_dir):
    import pyarrow as pa
    import pyarrow.parquet as pq

    import rag
    from core.files import ArtifactError

    table = pq.read_table(rag_dir / "examples.parquet")
    labels = table.column("label").to_pylist()
    labels[0] = "hacker"
    pq.write_table(table.set_column(1, "label", pa.array(labels)), rag_dir / "examples.parquet")
    with pytest.raises(ArtifactError, match="hacker"):
        rag.load(rag_dir)


def test_an_evaluated_upload_leaves_nothing_in_the_datasets_cache(tmp_path):
    import os
    from pathlib import Path

    from serving.inputs import load_upload, uploaded_file

    cache = Path(os.environ["HF_DATASETS_CACHE"])
    before = sorted(cache.rglob("*")) if cache.exists() else []
    upload = tmp_path / "mine.csv"
    upload.write_text("text,label\nI love it,positive\nawful,negative\nthe bus is at 5,neutral\n")
    dataset, note = load_upload(uploaded_file(upload, tmp_path))
    assert dataset["text"] == ["I love it", "awful", "the bus is at 5"] and note == "all 3 rows of the uploaded file"
    assert (sorted(cache.rglob("*")) if cache.exists() else []) == before


def test_an_upload_may_hold_a_subset_of_the_labels_and_integer_ids(tmp_path):
    from serving.inputs import load_upload, uploaded_file

    subset = tmp_path / "subset.csv"
    subset.write_text("text,label\nI love it,positive\nsuper,positive\n")
    assert load_upload(uploaded_file(subset, tmp_path), labels=["negative", "neutral", "positive"])[0]["label"] == [
        "positive",
        "positive",
    ]
    ids = tmp_path / "ids.csv"
    ids.write_text("text,label\nI love it,2\nawful,0\n")
    assert load_upload(uploaded_file(ids, tmp_path), labels=["negative", "neutral", "positive"])[0]["label"] == [
        "positive",
        "negative",
    ]


def test_gradio_api_bodies_are_bounded_too(client):
    big = b'{"data": ["' + b"a" * (3 * 2**20) + b'"]}'
    response = client.post("/gradio_api/call/classify", content=big, headers={"content-type": "application/json"})
    assert response.status_code == 413


def test_errors_echo_at_most_a_little_of_the_input(client):
    response = client.post("/api/classify", json={"texts": ["ok"], "backends": ["x" * 100_000]})
    assert response.status_code == 422 and len(response.content) < 1_000  # longer than any name may be
    response = client.post("/api/classify", json={"texts": ["ok"], "backends": ["x" * 64] * 8})
    assert response.status_code == 400 and len(response.content) < 1_000
    response = client.post("/api/compare", json={"texts": ["ok"], "labels": ["y" * 64]})
    assert response.status_code == 400 and len(response.content) < 1_000


# --- the red team's second round -------------------------------------------------------------------------------------


@pytest.mark.parametrize("field", ["hardware", "updates"])
def test_a_2_mb_option_value_is_not_echoed_back(client, field):
    response = client.post("/api/recommend", json={field: "x" * 2_000_000})
    assert response.status_code == 422 and len(response.content) < 2_000, len(response.content)
    assert field in response.json()["error"]


@pytest.mark.parametrize(
    ("route", "body", "field"),
    [
        ("/api/recommend", {"labeled_examples": "300"}, "labeled_examples"),
        ("/api/recommend", {"labeled_examples": True}, "labeled_examples"),
        ("/api/recommend", {"need_evidence": 1}, "need_evidence"),
        ("/api/recommend", {"latency_budget": 50}, "latency_budget"),
        ("/api/classify", {"texts": ["ok"], "backend": "rag"}, "backend"),
        ("/api/teach", {"texts": ["ok"], "labels": ["neutral"], "token": "guess"}, "token"),
    ],
)
def test_bodies_are_strict_unknown_fields_and_coerced_types_are_422(client, route, body, field):
    response = client.post(route, json=body)
    assert response.status_code == 422 and len(response.content) < 2_000, response.text
    assert field in response.json()["error"]


@pytest.mark.parametrize("raw", [b'{"texts": ["ok"], "backends": ["\\ud800"]}', b'{"texts": ["ok"], "\\ud800": 1}'])
def test_a_lone_surrogate_anywhere_is_a_4xx_with_a_readable_body(client, raw):
    response = client.post("/api/classify", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 422 and "unicode string" in response.json()["error"]  # not a 500


def test_error_bodies_are_cut_whatever_the_message():
    from serving.api import error_response

    response = error_response(400, "unknown value " + "y" * 1_000_000 + " \ud800")
    assert len(response.body) < 1_100 and json.loads(response.body)["error"].startswith("unknown value yyy")


def _served_as_the_app_serves(asgi_app, servers: list) -> str:
    """`asgi_app` under uvicorn with the app's own settings (`app.server_config`), on a free local port."""
    import socket
    import threading
    import time

    import uvicorn

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(app.server_config(asgi_app, "127.0.0.1", port))
    threading.Thread(target=server.run, daemon=True).start()
    servers.append(server)
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/"


@pytest.mark.parametrize(("proxies", "second_teach"), [(None, 429), ("127.0.0.1", 200)])
def test_x_forwarded_for_names_the_client_only_behind_a_trusted_proxy(app_artifacts, monkeypatch, proxies,
                                                                       second_teach):  # fmt: skip
    """A peer that forges X-Forwarded-For per request gets no new allowance (uvicorn's default trusts 127.0.0.1)."""
    import httpx

    monkeypatch.setenv("FTRAG_TEACH_PER_MINUTE", "1")
    if proxies:
        monkeypatch.setenv("FTRAG_TRUSTED_PROXIES", proxies)
    else:
        monkeypatch.delenv("FTRAG_TRUSTED_PROXIES", raising=False)
    servers: list = []
    try:
        url = _served_as_the_app_serves(app.create_app(app.App(Service.start(app_artifacts, build_missing=False))),
                                        servers)  # fmt: skip
        statuses = [
            httpx.post(url + "api/teach", json={"texts": [f"forged {i}"], "labels": ["neutral"]},
                       headers={"X-Forwarded-For": f"10.0.0.{i}"}, timeout=30).status_code
            for i in (1, 2)
        ]  # fmt: skip
    finally:
        for server in servers:
            server.should_exit = server.force_exit = True
    assert statuses == [200, second_teach]
    config = app.server_config(None, "127.0.0.1", 0)
    assert config.timeout_keep_alive == app.KEEP_ALIVE_S and config.limit_concurrency == app.MAX_CONNECTIONS


def test_security_headers_and_framing_is_the_operators_choice(app_artifacts, monkeypatch):
    monkeypatch.delenv("FTRAG_FRAME_ANCESTORS", raising=False)
    service = Service.start(app_artifacts, build_missing=False)
    client = TestClient(app.create_app(app.App(service)))
    for path in ("/api/health", "/", "/docs"):
        response = client.get(path)
        assert response.status_code == 200, path
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "strict-origin-when-cross-origin"
        # Hugging Face Spaces shows the app in an iframe: framing is allowed unless the operator says otherwise
        assert "x-frame-options" not in response.headers
        assert "frame-ancestors" not in response.headers.get("content-security-policy", "")
    monkeypatch.setenv("FTRAG_FRAME_ANCESTORS", "'self'")
    response = TestClient(app.create_app(app.App(service))).get("/")
    assert response.headers["content-security-policy"] == "frame-ancestors 'self'"
    assert response.headers["x-frame-options"] == "SAMEORIGIN"


def test_the_teach_token_is_checked_before_the_index_is(tmp_path, monkeypatch):
    monkeypatch.setenv("FTRAG_TEACH_TOKEN", "s3cret")
    service = Service.start(tmp_path / "no-artifacts", build_missing=False)  # no index here
    client = TestClient(app.create_app(app.App(service)))
    teach = {"texts": ["hello"], "labels": ["neutral"]}
    assert client.post("/api/teach", json=teach).status_code == 401  # nothing said about the index without it
    assert client.delete("/api/teach/1").status_code == 401
    answer = client.post("/api/teach", json=teach, headers={"Authorization": "Bearer s3cret"})
    assert answer.status_code == 400 and "retrieval backend is not available" in answer.json()["error"]


def test_hide_paths_hides_server_paths_and_leaves_user_text_alone(tmp_path):
    from serving.inputs import hide_paths

    assert hide_paths("$5 per /month") == "$5 per /month"
    assert hide_paths("see /r/funny/comments/abc") == "see /r/funny/comments/abc"
    assert hide_paths(f"{tmp_path}/rag/index.faiss is missing") == "rag/index.faiss is missing"
    assert hide_paths("read /etc/passwd") == "read etc/passwd"


def test_compare_run_refuses_an_unwritable_out_before_any_work(tmp_path, capsys, monkeypatch):
    import jobs.run

    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    monkeypatch.setattr(jobs.run, "run", lambda args: pytest.fail("evaluated before checking --out"))
    for out in (blocker / "report", "/proc/ftrag-report"):
        assert jobs.run.main(["--rag", str(tmp_path / "index"), "--out", str(out)]) == 2
        error = capsys.readouterr().err
        assert error.startswith("error: cannot write the report to") and error.count("\n") == 1, error


def test_studies_can_be_cancelled_are_capped_per_client_and_share_one_bounded_root(tmp_path, monkeypatch):
    import threading
    import time

    import serving.studies as studies
    from serving.access import Refused
    from serving.state import studies_root

    data = tmp_path / "data.csv"
    data.write_text("text,label\n" + "".join(f"tweet {i},{'ab'[i % 2]}\n" for i in range(80)))
    root = tmp_path / "studies"
    left_over = root / ("x" * 22)  # a job folder of the app's previous run
    left_over.mkdir(parents=True)
    (root / "keep-me").mkdir()  # not a job folder: never deleted
    started, release = threading.Event(), threading.Event()

    def long_study(self, job):  # a study that says something every 10 ms until it is released or cancelled
        started.set()
        try:
            while not release.wait(0.01):
                job.progress("training")
            job.state = "done"
        except studies.Cancelled:
            job.state = "cancelled"
        job.finished = time.time()

    monkeypatch.setattr(studies.StudyQueue, "_run", long_study)
    monkeypatch.setenv("FTRAG_STUDIES_PER_CLIENT", "2")
    queue = studies.StudyQueue.from_env(root)
    assert not left_over.exists() and (root / "keep-me").is_dir()
    running = queue.submit(data, 2, 80, client="1.2.3.4")
    waiting = queue.submit(data, 2, 80, client="1.2.3.4")
    with pytest.raises(Refused, match="2 studies of yours already queued or running"):
        queue.submit(data, 2, 80, client="1.2.3.4")
    assert started.wait(10) and waiting.state == "queued"
    assert queue.cancel(waiting.id).state == "cancelled" and queue.position(waiting) == 0
    queue.cancel(running.id)
    for _ in range(200):
        if running.state == "cancelled":
            break
        time.sleep(0.02)
    assert running.state == "cancelled"
    with pytest.raises(InputError, match="nothing to cancel"):
        queue.cancel(running.id)
    with pytest.raises(InputError, match="no such study"):
        queue.cancel("a-guessed-id")
    # finished studies go, oldest first, once the folders hold more than the cap (not only after KEEP_HOURS)
    queue.max_bytes = 1
    queue.clean()
    assert queue.find(running.id) is None and not running.folder.exists() and not waiting.folder.exists()
    monkeypatch.delenv("FTRAG_STUDIES_DIR", raising=False)
    assert studies_root(tmp_path / "artifacts") == tmp_path / "artifacts" / "studies"  # one root, not one per start
