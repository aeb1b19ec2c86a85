from __future__ import annotations

import dataclasses

import pytest

from core.types import LABELS, Classifier, Prediction


def test_labels_follow_dataset_ids():
    assert LABELS == ("negative", "neutral", "positive")


def test_prediction_accepts_scores_that_sum_to_one():
    p = Prediction("positive", {"negative": 0.1, "neutral": 0.2, "positive": 0.7})
    assert p.label == "positive"
    assert p.evidence == ()
    assert p.to_dict() == {
        "label": "positive",
        "scores": {"negative": 0.1, "neutral": 0.2, "positive": 0.7},
        "evidence": [],
    }


@pytest.mark.parametrize(
    ("label", "scores", "message"),
    [
        ("positive", {"negative": 0.5, "positive": 0.6}, "sum to 1"),
        ("neutral", {"negative": 0.5, "positive": 0.5}, "not one of the scored labels"),
        ("negative", {}, "empty"),
        ("negative", {"negative": 1.5, "positive": -0.5}, "floats in"),
        ("negative", {"negative": 1, "positive": 0}, "floats in"),
    ],
)
def test_prediction_rejects_bad_scores(label, scores, message):
    with pytest.raises(ValueError, match=message):
        Prediction(label, scores)


def test_prediction_is_frozen_and_evidence_immutable():
    evidence = [{"text": "good day", "label": "positive", "score": 0.9}]
    p = Prediction.from_scores({"negative": 0.25, "neutral": 0.25, "positive": 0.5}, evidence)
    evidence.append({"text": "later", "label": "negative", "score": 0.1})
    assert len(p.evidence) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.label = "negative"  # type: ignore[misc]


def test_from_scores_takes_argmax_and_converts_numpy_floats():
    np = pytest.importorskip("numpy")
    p = Prediction.from_scores({"negative": np.float32(0.6), "neutral": np.float32(0.3), "positive": np.float32(0.1)})
    assert p.label == "negative"
    assert all(type(v) is float for v in p.scores.values())


def test_classifier_protocol_is_structural():
    class Always:
        name = "always-neutral"
        labels = list(LABELS)

        def predict(self, texts):
            return [Prediction("neutral", {"negative": 0.0, "neutral": 1.0, "positive": 0.0}) for _ in texts]

    assert isinstance(Always(), Classifier)
    assert not isinstance(object(), Classifier)
