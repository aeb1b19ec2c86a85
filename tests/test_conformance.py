"""One conformance test over every backend: the `Classifier` contract, checked the same way for each."""

from __future__ import annotations

import pytest

import rag
from core.types import Classifier, Prediction

BACKENDS = ["rag_built", "finetuned", "emotion_rag", "emotion_finetuned", "rag_engine", "rag_hnsw"]
QUERIES = ["I love this so much!", "worst service ever", "the bus leaves at 5", "", "ok " * 7000, "<script>x</script>"]


@pytest.fixture(scope="module")
def rag_engine(small_train, embedder) -> Classifier:
    """Retrieval whose examples live in the vector engine (Qdrant's local mode in this process)."""
    from rag import RagConfig
    from rag.build import build_classifier

    cfg = RagConfig(tune=False, k=10, vector_store="memory://conformance")
    return build_classifier(cfg, small_train, embedder=embedder, show_progress=False, overwrite=True)


@pytest.fixture(scope="module")
def rag_hnsw(small_train, embedder) -> Classifier:
    """Retrieval over an approximate (HNSW) index, its recall measured at build."""
    from rag import RagConfig

    cfg = RagConfig(tune=False, k=10, index_type="hnsw", recall_queries=30)
    return rag.build_index(cfg, small_train, embedder=embedder, show_progress=False)


@pytest.fixture(params=BACKENDS)
def backend(request) -> Classifier:
    return request.getfixturevalue(request.param)


def test_backend_implements_the_contract(backend):
    assert isinstance(backend, Classifier)
    assert isinstance(backend.name, str) and backend.name
    predictions = backend.predict(QUERIES)
    assert len(predictions) == len(QUERIES)
    for p in predictions:
        assert isinstance(p, Prediction)
        assert p.label in backend.labels
        assert set(p.scores) == set(backend.labels)
        assert sum(p.scores.values()) == pytest.approx(1.0, abs=1e-4)
        assert p.label == max(p.scores, key=p.scores.get)


def test_backend_is_deterministic_and_batch_independent(backend):
    batch = backend.predict(QUERIES)
    again = backend.predict(QUERIES)
    one_by_one = [backend.predict([q])[0] for q in QUERIES]
    for a, b, c in zip(batch, again, one_by_one, strict=True):
        assert a.label == b.label == c.label
        assert a.scores == pytest.approx(b.scores, abs=1e-6)
        assert a.scores == pytest.approx(c.scores, abs=1e-4)
