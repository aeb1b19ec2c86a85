"""The LangChain mode, driven by LangChain's fake chat models: prompt building, parsing and fallback only.

Fake models answer what they are told to, so nothing here measures accuracy.
"""

from __future__ import annotations

import pytest
from langchain_core.language_models.fake_chat_models import FakeListChatModel

from rag.chain import FEW_SHOT, IndexRetriever, LabelParser, LlmRagClassifier, LlmUnavailable, llm_from_env


@pytest.mark.parametrize(
    ("answer", "label"),
    [
        ("positive", "positive"),
        ("  Negative.\n", "negative"),
        ("The sentiment is NEUTRAL", "neutral"),
        ("positive or negative", None),
        ("I cannot tell", None),
        ("", None),
        ("nonpositive", None),
    ],
)
def test_label_parser(answer, label):
    assert LabelParser(labels=["negative", "neutral", "positive"]).parse(answer) == label


def test_retriever_returns_labeled_documents_best_first(rag_built, small_train):
    docs = IndexRetriever(classifier=rag_built, k=5).invoke(small_train["text"][3])
    assert len(docs) == 5
    assert docs[0].page_content == small_train["text"][3]
    assert docs[0].metadata["label"] == small_train["label"][3]
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True)


def test_prompt_puts_retrieved_examples_before_the_query(rag_built):
    clf = LlmRagClassifier(rag_built, FakeListChatModel(responses=["positive"]))
    query = "what a lovely\nmorning"
    system, human = clf.prompt_messages(query)
    assert "negative, neutral, positive" in system.content
    examples, _, tail = human.content.partition("\n\nTweet: ")
    assert tail == "what a lovely morning\nLabel:"
    lines = examples.splitlines()[1:]
    hits = rag_built.retrieve(query, FEW_SHOT)
    assert lines == [f"- [{h['label']}] {' '.join(h['text'].split())}" for h in hits]


def test_llm_answer_is_used_when_it_is_a_label(rag_built):
    clf = LlmRagClassifier(rag_built, FakeListChatModel(responses=["Negative", "neutral"]))
    answers = clf.answer(["great day", "ok then"])
    assert [a.source for a in answers] == ["llm", "llm"]
    assert [a.prediction.label for a in answers] == ["negative", "neutral"]
    assert answers[0].prediction.scores == {"negative": 1.0, "neutral": 0.0, "positive": 0.0}
    assert answers[0].prediction.evidence  # the retrieved examples stay as evidence


def test_unusable_answers_fall_back_to_the_vote_and_say_so(rag_built, caplog):
    clf = LlmRagClassifier(rag_built, FakeListChatModel(responses=["I'd rather not say", "positive-ish or negative"]))
    texts = ["great day", "awful day", ""]
    answers = clf.answer(texts)
    votes = rag_built.predict(texts)
    assert [a.source for a in answers] == ["knn-fallback"] * 3
    for answer, vote in zip(answers, votes, strict=True):  # each text embedded alone vs in a batch: float noise
        assert answer.prediction.label == vote.label
        assert [e["text"] for e in answer.prediction.evidence] == [e["text"] for e in vote.evidence]
        assert answer.prediction.scores == pytest.approx(vote.scores, abs=1e-5)
    assert answers[0].raw == "I'd rather not say"
    assert "answering with the kNN vote" in caplog.text


def test_a_failing_llm_falls_back(rag_built):
    class Broken(FakeListChatModel):
        def _call(self, *args, **kwargs):
            raise ConnectionError("endpoint down")

    answers = LlmRagClassifier(rag_built, Broken(responses=["positive"])).answer(["hello"])
    assert answers[0].source == "knn-fallback"
    assert answers[0].prediction == rag_built.predict(["hello"])[0]


def test_a_local_transformers_pipeline_plugs_in(rag_built, shared_dir):
    # The tiny random GPT-2 writes noise: whatever it says, the answer is a valid prediction with its source.
    llm = llm_from_env(f"hf:{shared_dir / 'models' / 'tiny-random-gpt2'}")
    (answer,) = LlmRagClassifier(rag_built, llm).answer(["what a day"])
    [vote] = rag_built.predict(["what a day"])
    assert answer.prediction.evidence == vote.evidence  # the answer rests on the retrieved examples either way
    if answer.source == "llm":  # the label was parsed from what the model wrote, and is all of the score
        assert answer.prediction.label in answer.raw.lower() and answer.prediction.scores[answer.prediction.label] == 1
    else:
        assert answer.source == "knn-fallback" and answer.prediction == vote


def test_without_a_configured_llm_the_mode_is_unavailable(monkeypatch):
    monkeypatch.delenv("FTRAG_LLM", raising=False)
    with pytest.raises(LlmUnavailable, match="no LLM is configured. Set FTRAG_LLM"):
        llm_from_env()
    with pytest.raises(LlmUnavailable, match="unknown provider 'bard'"):
        llm_from_env("bard:x")
    with pytest.raises(LlmUnavailable, match="expected <provider>:<model>"):
        llm_from_env("ollama")
    with pytest.raises(LlmUnavailable, match="not a local model directory"):
        llm_from_env("hf:/no/such/model")


def test_each_text_is_embedded_once(rag_built, monkeypatch):
    clf = LlmRagClassifier(rag_built, FakeListChatModel(responses=["positive", "negative"]))
    calls = []
    encode = rag_built.embedder.encode
    monkeypatch.setattr(rag_built.embedder, "encode", lambda texts, **kw: calls.append(list(texts)) or encode(texts))
    clf.answer(["great day", "awful day"])
    assert calls == [["great day"], ["awful day"]]


def test_a_prompt_bug_raises_instead_of_falling_back(rag_built):
    class Buggy(LlmRagClassifier):
        def _inputs(self, state):
            return {"labels": "x", "query": state["query"]}  # "examples" forgotten: the template cannot fill

    with pytest.raises(KeyError):
        Buggy(rag_built, FakeListChatModel(responses=["positive"])).answer(["hello"])


def test_compare_run_rag_llm_writes_a_report_with_an_llm_row(rag_dir, data_dir, shared_dir, tmp_path, monkeypatch):
    import json

    from jobs.run import main as run_main

    monkeypatch.setenv("FTRAG_LLM", f"hf:{shared_dir / 'models' / 'tiny-random-gpt2'}")
    out = tmp_path / "report"
    argv = ["--rag", str(rag_dir), "--rag-llm", "--data", str(data_dir), "--limit", "24", "--latency-queries", "3",
            "--update-examples", "0", "--out", str(out)]  # fmt: skip
    assert run_main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    row = report["backends"]["rag-llm"]
    assert row["llm"]["model"].startswith("hf:") and row["llm"]["answers"] >= 24
    assert 0 <= row["llm"]["knn_fallbacks"] <= row["llm"]["answers"]
    assert "rag-llm" in (out / "report.md").read_text()


def test_compare_run_rag_llm_without_an_llm_is_a_one_line_error(rag_dir, data_dir, tmp_path, monkeypatch, capsys):
    from jobs.run import main as run_main

    monkeypatch.delenv("FTRAG_LLM", raising=False)
    assert run_main(["--rag", str(rag_dir), "--rag-llm", "--data", str(data_dir), "--out", str(tmp_path / "r")]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: The LLM mode is unavailable")


def test_the_app_serves_an_llm_column_when_one_is_configured(app_artifacts, shared_dir, monkeypatch):
    from serving.service import Service

    monkeypatch.setenv("FTRAG_LLM", f"hf:{shared_dir / 'models' / 'tiny-random-gpt2'}")
    service = Service.start(app_artifacts, build_missing=False)
    assert set(service.backends) == {"finetune", "rag", "rag-llm"}
    [row] = service.classify(["what a day"])
    assert row["results"]["rag-llm"]["label"] in service.labels() and row["results"]["rag-llm"]["evidence"]
    monkeypatch.setenv("FTRAG_LLM", "bard:x")
    assert "unknown provider" in Service.start(app_artifacts, build_missing=False).unavailable["rag-llm"]
