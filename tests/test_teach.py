"""Teaching the shared index: the log, removal, who may teach and how fast, and what survives a kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from fastapi.testclient import TestClient

import app
import rag
from serving.access import RateLimiter, Refused, TeachPolicy
from serving.service import Service

EXAMPLE = "the zorblax gadget is absolutely wonderful"


@pytest.fixture()
def service(app_artifacts) -> Service:
    return Service.start(app_artifacts, build_missing=False)


def _top_neighbour(service: Service, text: str) -> str:
    return service.classify([text], ["rag"])[0]["results"]["rag"]["evidence"][0]["text"]


def test_teach_writes_the_log_not_the_index_and_forget_undoes_it(service, app_artifacts):
    index_file = app_artifacts / "rag" / "index.faiss"
    before = index_file.stat().st_mtime_ns, index_file.read_bytes()
    result = service.teach([EXAMPLE, "llamas are fine I guess"], ["positive", "neutral"])
    assert result["added"] == 2 and result["index_size"] == 302 and len(set(result["ids"])) == 2
    assert (index_file.stat().st_mtime_ns, index_file.read_bytes()) == before  # the index files were not rewritten
    assert (app_artifacts / "rag.teach.sqlite").exists()
    assert _top_neighbour(service, "zorblax gadget") == EXAMPLE

    assert service.forget(result["ids"][0])["index_size"] == 301
    assert _top_neighbour(service, "zorblax gadget") != EXAMPLE
    with pytest.raises(Refused) as missing:
        service.forget(result["ids"][0])
    assert missing.value.status == 404


def test_exact_duplicates_are_merged_into_one_vote(service):
    first = service.teach([EXAMPLE], ["positive"])
    again = service.teach([EXAMPLE] * 5, ["positive"] * 5)
    assert again["added"] == 0 and again["merged"] == 5 and set(again["ids"]) == set(first["ids"])
    assert again["index_size"] == first["index_size"]
    other = service.teach([EXAMPLE], ["negative"])  # the same text with another label is a new example
    assert other["added"] == 1


def test_taught_and_removed_examples_survive_a_reload_and_a_compaction(service, app_artifacts):
    kept = service.teach([EXAMPLE], ["positive"])["ids"][0]
    gone = service.teach(["a sentence about marmalade trains"], ["negative"])["ids"][0]
    service.forget(gone)
    reloaded = rag.load(app_artifacts / "rag")
    texts = reloaded.examples()[0]
    assert EXAMPLE in texts and "a sentence about marmalade trains" not in texts and len(texts) == 301

    assert service.compact_when_changed() and not service.compact_when_changed()  # nothing changed since
    service.forget(kept)  # removing an example that is now in the saved files
    reloaded = rag.load(app_artifacts / "rag")
    assert EXAMPLE not in reloaded.examples()[0] and reloaded.size == 300


def test_a_loaded_index_refuses_labels_outside_its_set(service):
    with pytest.raises(ValueError, match="unknown label"):
        service.teach(["x"], ["hacker"])
    with pytest.raises(ValueError, match="unknown label"):
        service.backends["rag"].teach(["x"], ["hacker"])


# --- who may teach ---------------------------------------------------------------------------------------------------


def _client(service: Service) -> TestClient:
    return TestClient(app.create_app(app.App(service)))


def test_with_a_token_teaching_needs_it(service):
    service.teach_policy = TeachPolicy(token="s3cret")
    client = _client(service)
    body = {"texts": [EXAMPLE], "labels": ["positive"]}
    assert client.post("/api/teach", json=body).status_code == 401
    assert client.post("/api/teach", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.post("/api/teach", json=body, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200, ok.text
    teach_id = ok.json()["ids"][0]
    assert client.delete(f"/api/teach/{teach_id}").status_code == 401
    assert client.delete(f"/api/teach/{teach_id}", headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.delete(f"/api/teach/{teach_id}", headers={"Authorization": "Bearer s3cret"}).status_code == 404


def test_on_a_public_space_without_a_token_nobody_teaches(service, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "org/space")
    monkeypatch.delenv("FTRAG_TEACH_TOKEN", raising=False)
    monkeypatch.setenv("FTRAG_TEACH_SHARED", "1")  # even when the operator allowed it: never tokenless on a Space
    service.teach_policy = TeachPolicy.from_env()
    response = _client(service).post("/api/teach", json={"texts": [EXAMPLE], "labels": ["positive"]})
    assert response.status_code == 403 and "off on this app (the operator can set a token)" in response.json()["error"]
    assert service.backends["rag"].size == 300


def test_the_shared_index_is_taught_only_when_the_operator_allows_it(service, monkeypatch):
    monkeypatch.delenv("SPACE_ID", raising=False)
    monkeypatch.delenv("FTRAG_TEACH_TOKEN", raising=False)
    monkeypatch.delenv("FTRAG_TEACH_SHARED", raising=False)
    service.teach_policy = TeachPolicy.from_env()  # the default: off
    response = _client(service).post("/api/teach", json={"texts": [EXAMPLE], "labels": ["positive"]})
    assert response.status_code == 403 and "FTRAG_TEACH_SHARED=1" in response.json()["error"]
    assert service.backends["rag"].size == 300
    monkeypatch.setenv("FTRAG_TEACH_SHARED", "1")
    service.teach_policy = TeachPolicy.from_env()
    assert _client(service).post("/api/teach", json={"texts": [EXAMPLE], "labels": ["positive"]}).status_code == 200
    assert service.backends["rag"].size == 301


def test_each_client_is_rate_limited(service):
    service.teach_policy = TeachPolicy(shared=True, limiter=RateLimiter(per_minute=3))
    client = _client(service)
    statuses = [
        client.post("/api/teach", json={"texts": [f"example number {i}"], "labels": ["neutral"]}).status_code
        for i in range(5)
    ]
    assert statuses == [200, 200, 200, 429, 429]
    refused = client.post("/api/teach", json={"texts": ["one more"], "labels": ["neutral"]})
    assert int(refused.headers["Retry-After"]) >= 1


def test_the_teach_tab_takes_the_token_too(service):
    service.teach_policy = TeachPolicy(token="s3cret")
    demo = app.build_demo(app.App(service))
    teach = next(dep.fn for dep in demo.fns.values() if dep.api_name == "teach")
    import gradio as gr

    with pytest.raises(gr.Error, match="token"):
        teach(EXAMPLE, "positive", "zorblax", True, "", [], None)
    message, *_ = teach(EXAMPLE, "positive", "zorblax", True, "s3cret", [], None)
    assert "added to the shared index (id " in message and service.backends["rag"].size == 301
    message, *_ = teach(EXAMPLE, "positive", "zorblax", False, "", [], None)  # one's own session needs no token
    assert "added to your session" in message and service.backends["rag"].size == 301


# --- kill -9 ---------------------------------------------------------------------------------------------------------


def test_teach_delete_kill_restart_keeps_exactly_the_acknowledged_state(app_artifacts):
    script = textwrap.dedent(
        f"""
        import sys, time
        from serving.service import Service
        service = Service.start({str(app_artifacts)!r}, build_missing=False)
        ids = service.teach(["kept example one", "deleted example two", "kept example three"],
                            ["positive", "negative", "neutral"])["ids"]
        service.forget(ids[1])
        print("acknowledged", flush=True)
        time.sleep(600)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert process.stdout.readline().strip() == "acknowledged"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    texts = Service.start(app_artifacts, build_missing=False).backends["rag"].examples()[0]
    assert "kept example one" in texts and "kept example three" in texts
    assert "deleted example two" not in texts and len(texts) == 302


def test_guessing_the_token_is_rate_limited_too(service):
    service.teach_policy = TeachPolicy(token="s3cret", limiter=RateLimiter(per_minute=3))
    client = _client(service)
    body = {"texts": [EXAMPLE], "labels": ["positive"]}
    wrong = {"Authorization": "Bearer guess"}
    assert [client.post("/api/teach", json=body, headers=wrong).status_code for _ in range(4)] == [401, 401, 401, 429]


def test_teach_racing_a_removal_cannot_revive_the_example(service):
    """forget() lands between the teach's log write and its in-memory append: the example stays gone."""
    rag_index = service.backends["rag"]
    log_append = rag_index.log.append

    def append_then_forget(*args, **kwargs):
        written = log_append(*args, **kwargs)
        rag_index.forget(written[0][0])  # what another request could do at this very moment
        return written

    rag_index.log.append = append_then_forget
    result = service.teach([EXAMPLE], ["positive"])
    assert result["index_size"] == 300 and EXAMPLE not in rag_index.examples()[0]


def test_an_approximate_index_forgets_taught_examples_and_refuses_its_own_rows_cleanly(
    embedder, small_train, tmp_path
):
    from rag import RagClassifier, RagConfig

    hnsw = rag.build_index(
        RagConfig(index_type="hnsw", tune=False), small_train.select(range(60)), embedder=embedder, show_progress=False
    )
    hnsw.open_log(tmp_path / "log.sqlite")
    [taught] = hnsw.teach([EXAMPLE], ["positive"])
    assert hnsw.forget(taught["id"])  # taught examples sit in the exact delta beside the HNSW graph
    assert EXAMPLE not in hnsw.examples()[0]
    # A taught example inside the HNSW graph itself (an index rebuilt with it) cannot be taken out of it.
    texts, labels = hnsw.examples()
    inside = RagClassifier(
        embedder, hnsw.index, texts, labels, label_names=hnsw.labels, teach_ids=[-1] * (len(texts) - 1) + [7]
    )
    inside.open_log(tmp_path / "log2.sqlite")
    with pytest.raises(ValueError, match="hnsw index itself, which cannot remove it"):
        inside.forget(7)
    assert inside.size == len(texts)  # nothing half-done
