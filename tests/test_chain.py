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
    assert [a.prediction for a in answers] == votes
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
