"""A hybrid backend built only from two others through the `Classifier` contract.

Two ways to combine a fine-tuned model (``primary``) with the retrieval vote (``secondary``):

- ``gate``: the primary's answer when its top score reaches ``threshold``, else the secondary's;
- ``mix``: ``weight * primary scores + (1 - weight) * secondary scores``.

`fit_hybrid` chooses the mode and its parameter on a validation slice (never the test split). The retrieval
neighbours are kept as evidence whenever the secondary was consulted.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from core.types import Classifier, Prediction, check_texts

logger = logging.getLogger(__name__)

MODES = ("gate", "mix")
HYBRID_VALIDATION_MAX = 1000
"""Texts of the fine-tune's evaluation slice the hybrid is fitted on, at most."""
THRESHOLDS = tuple(round(t, 2) for t in np.arange(0.35, 1.0001, 0.05))
WEIGHTS = tuple(round(w, 2) for w in np.arange(0.0, 1.0001, 0.1))


class HybridClassifier:
    """Combine two classifiers with the same labels (see the module docstring)."""

    def __init__(
        self,
        primary: Classifier,
        secondary: Classifier,
        mode: str = "gate",
        threshold: float = 0.7,
        weight: float = 0.5,
        name: str = "hybrid",
        meta: dict[str, Any] | None = None,
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if not 0.0 <= threshold <= 1.0 or not 0.0 <= weight <= 1.0:
            raise ValueError(f"threshold and weight must be in [0, 1], got {threshold} and {weight}")
        if set(primary.labels) != set(secondary.labels):  # the order may differ: scores are read by name
            raise ValueError(
                f"cannot combine backends with different labels: {primary.name} has {list(primary.labels)}, "
                f"{secondary.name} has {list(secondary.labels)}"
            )
        self.primary, self.secondary = primary, secondary
        self.mode, self.threshold, self.weight = mode, float(threshold), float(weight)
        self.name = name
        self.labels = list(primary.labels)
        self.meta = dict(meta or {})

    def describe(self) -> str:
        if self.mode == "gate":
            return (
                f"{self.primary.name} when its confidence is >= {self.threshold:.2f}, otherwise {self.secondary.name}"
            )
        return f"{self.weight:.1f} x {self.primary.name} + {1 - self.weight:.1f} x {self.secondary.name} scores"

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        texts = check_texts(texts)
        if not texts:
            return []
        first = self.primary.predict(texts)
        if self.mode == "gate":  # the secondary runs only on the texts the primary is unsure of
            unsure = [i for i, p in enumerate(first) if not self.sure(p)]
            second = self.secondary.predict([texts[i] for i in unsure]) if unsure else []
            replaced = dict(zip(unsure, second, strict=True))
            return [replaced.get(i, p) for i, p in enumerate(first)]
        second = self.secondary.predict(texts)
        return [self.merge(a, b) for a, b in zip(first, second, strict=True)]

    def sure(self, first: Prediction) -> bool:
        """Gate mode: whether the primary's answer is confident enough to be the hybrid's."""
        return max(first.scores.values()) >= self.threshold

    def merge(self, first: Prediction, second: Prediction) -> Prediction:
        """The hybrid's answer to a text from the primary's (`first`) and the secondary's (`second`) answers to it:
        what `predict` returns for that text. The app uses it when it runs both parts anyway, so the hybrid costs no
        second pass through either model."""
        if self.mode == "gate":
            return first if self.sure(first) else second
        return combine(first, second, self.weight, self.labels)


def combine(a: Prediction, b: Prediction, weight: float, labels: Sequence[str]) -> Prediction:
    """``weight * a + (1 - weight) * b`` over `labels`; the evidence of both is kept.

    >>> a = Prediction.from_scores({"x": 0.8, "y": 0.2})
    >>> b = Prediction.from_scores({"x": 0.2, "y": 0.8})
    >>> combine(a, b, 0.25, ["x", "y"]).scores
    {'x': 0.35, 'y': 0.65}
    """
    mixed = {label: weight * a.scores[label] + (1.0 - weight) * b.scores[label] for label in labels}
    total = sum(mixed.values())
    return Prediction.from_scores({k: v / total for k, v in mixed.items()}, (*a.evidence, *b.evidence))


def fit_hybrid(
    primary: Classifier,
    secondary: Classifier,
    texts: Sequence[str],
    references: Sequence[str],
    secondary_predictions: Sequence[Prediction] | None = None,
) -> HybridClassifier:
    """Choose the mode and its threshold / weight that give the best accuracy on a validation slice.

    Args:
        texts, references: the validation slice (texts neither backend was fitted on, or scored leave-one-out).
        secondary_predictions: the secondary's predictions for `texts` when they must be computed specially (the
            retrieval vote with the query itself left out of the index); default: ``secondary.predict(texts)``.

    The chosen parameters and the whole grid go to ``meta["fit"]``.
    """
    texts, references = check_texts(texts), list(references)
    if not texts or len(texts) != len(references):
        raise ValueError(f"need a non-empty validation slice with one reference per text, got {len(texts)} texts")
    labels = list(primary.labels)
    unknown = sorted(set(references) - set(labels))
    if unknown:
        raise ValueError(f"the validation slice has labels {unknown} that {primary.name} does not know ({labels})")
    first = primary.predict(texts)
    second = list(secondary_predictions) if secondary_predictions is not None else secondary.predict(texts)
    p1 = np.array([[p.scores[label] for label in labels] for p in first])
    p2 = np.array([[p.scores[label] for label in labels] for p in second])
    truth = np.array([labels.index(r) for r in references])
    grid: list[dict[str, Any]] = []
    confidence = p1.max(axis=1)
    for threshold in THRESHOLDS:
        chosen = np.where((confidence >= threshold)[:, None], p1, p2)
        grid.append({"mode": "gate", "threshold": threshold, "accuracy": float((chosen.argmax(1) == truth).mean())})
    for weight in WEIGHTS:
        mixed = weight * p1 + (1 - weight) * p2
        grid.append({"mode": "mix", "weight": weight, "accuracy": float((mixed.argmax(1) == truth).mean())})
    best = max(grid, key=lambda row: row["accuracy"])
    fit = {
        "chosen": best,
        "validation_size": len(texts),
        "primary_accuracy": float((p1.argmax(1) == truth).mean()),
        "secondary_accuracy": float((p2.argmax(1) == truth).mean()),
        "grid": grid,
    }
    return HybridClassifier(
        primary,
        secondary,
        mode=best["mode"],
        threshold=best.get("threshold", 0.7),
        weight=best.get("weight", 0.5),
        meta={"fit": fit, "components": [primary.name, secondary.name]},
    )


# --- the hybrid of a fine-tune and an index, fitted where neither learned -------------------------------------------


def hybrid_validation(finetune: Any, data: str | None) -> tuple[list[str], list[str]] | None:
    """The fine-tune's validation part (the rows of its saved split.json), at most HYBRID_VALIDATION_MAX texts; None
    when the model keeps no split (trained on an in-memory dataset or with a caller's own slice, or saved before
    splits were recorded).

    Raises:
        DataError: the data at hand is not the data the model was trained on (another number of rows).
    """
    from core.data import load_tweets
    from core.split import SPLIT_FILE, Split

    meta = getattr(finetune, "meta", None) or {}
    directory = getattr(finetune, "directory", None)
    config = meta.get("config") or {}
    if meta.get("data_source") == "in-memory dataset" or directory is None or not (directory / SPLIT_FILE).is_file():
        return None
    split = Split.load(directory / SPLIT_FILE)
    train = load_tweets(config.get("data") or data, split="train", seed=config.get("seed", 0),
                        labels=config.get("labels"))  # fmt: skip
    _, validation = split.parts(train)
    texts, labels = list(validation["text"]), list(validation["label"])
    return texts[:HYBRID_VALIDATION_MAX], labels[:HYBRID_VALIDATION_MAX]


def default_hybrid(finetune: Classifier, rag: Any, data: str | None = None) -> HybridClassifier | None:
    """The hybrid of a fine-tune and a retrieval index, fitted on the fine-tune's validation part (its split.json);
    None when the model keeps no split.

    The retrieval vote on the slice leaves each text's identical copy out of the index, so an index that holds the
    slice (built on the whole train split) does not answer from the text's own label.
    """
    slice_ = hybrid_validation(finetune, data)
    if slice_ is None:
        return None
    texts, labels = slice_
    logger.info("Fitting the hybrid on %d texts of the fine-tune's evaluation slice", len(texts))
    left_out = rag.predict(texts, exclude_identical=True)
    return fit_hybrid(finetune, rag, texts, labels, left_out)
