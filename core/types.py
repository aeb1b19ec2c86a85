"""The contract both backends implement: a batch of texts in, one `Prediction` per text out."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from core.limits import MAX_LABEL_CHARS, MAX_LABELS

LABELS: tuple[str, ...] = ("negative", "neutral", "positive")
"""The label names of the reference task (tweet sentiment), in the order of its integer ids (0, 1, 2). Any other
label set works: it comes from the data (see `core.data.label_names`) and travels with every artifact."""

Progress = Callable[[float, str], None]
"""``progress(fraction, message)``: how long work reports how far it got (a UI bar, a log line), fraction in [0, 1]."""

SCORE_TOLERANCE = 1e-4
"""How far from 1 the scores of a prediction may sum (float32 softmax rounding)."""


@dataclass(frozen=True)
class Prediction:
    """One classifier answer for one text.

    Args:
        label: the predicted label, one of the classifier's labels; the highest-scoring one.
        scores: label -> probability, summing to 1; a `gr.Label` shows it as it is.
        evidence: what the answer rests on. Retrieval: the neighbours, each `{"text", "label", "score"}`.
            Fine-tuned models: empty.
    """

    label: str
    scores: dict[str, float]
    evidence: tuple[dict[str, Any], ...] = field(default=())

    def __post_init__(self) -> None:
        if not self.scores:
            raise ValueError("Prediction.scores is empty")
        if self.label not in self.scores:
            raise ValueError(f"Prediction.label {self.label!r} is not one of the scored labels {sorted(self.scores)}")
        bad = {k: v for k, v in self.scores.items() if not (isinstance(v, float) and 0.0 <= v <= 1.0)}
        if bad:
            raise ValueError(f"Prediction.scores must be floats in [0, 1], got {bad}")
        total = math.fsum(self.scores.values())
        if abs(total - 1.0) > SCORE_TOLERANCE:
            raise ValueError(f"Prediction.scores must sum to 1, they sum to {total:.6f}")
        # Accept any sequence of dicts but store an immutable tuple, so a frozen Prediction stays frozen.
        object.__setattr__(self, "evidence", tuple(self.evidence))

    @classmethod
    def from_scores(cls, scores: Mapping[str, float], evidence: Sequence[dict[str, Any]] = ()) -> Prediction:
        """Build a prediction whose label is the arg-max of `scores` (ties go to the first label listed).

        >>> Prediction.from_scores({"negative": 0.2, "neutral": 0.5, "positive": 0.3}).label
        'neutral'
        """
        clean = {str(k): float(v) for k, v in scores.items()}
        return cls(label=max(clean, key=clean.__getitem__), scores=clean, evidence=tuple(evidence))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view: label, scores and evidence."""
        return {"label": self.label, "scores": dict(self.scores), "evidence": [dict(e) for e in self.evidence]}


def check_texts(texts: Sequence[str]) -> list[str]:
    """`texts` as a list, or a TypeError saying what is wrong (a bare string, or items that are not strings).

    >>> check_texts(("a", "b"))
    ['a', 'b']
    """
    if isinstance(texts, str):
        raise TypeError("texts must be a list of strings, not a single string; wrap it: [text]")
    texts = list(texts)
    bad = [type(t).__name__ for t in texts if not isinstance(t, str)]
    if bad:
        raise TypeError(f"texts must be strings, got {sorted(set(bad))}")
    return texts


def normalise_label(name: str) -> str:
    """A label name as stored: trimmed and lower-cased, so ``Positive`` and ``positive`` are one label.

    >>> normalise_label(" Non_Irony ")
    'non_irony'
    """
    return str(name).strip().lower()


def check_labels(labels: Sequence[str]) -> list[str]:
    """`labels` as a list of 2 to MAX_LABELS distinct, non-empty names of at most MAX_LABEL_CHARS characters, or a
    ValueError naming the problem (and at most a few of the names).

    >>> check_labels(("non_irony", "irony"))
    ['non_irony', 'irony']
    """
    if isinstance(labels, str):
        raise ValueError(f"labels must be a list of names, not one string: {labels[:MAX_LABEL_CHARS]!r}")
    names = list(labels)
    if len(names) > MAX_LABELS:
        shown = ", ".join(repr(str(name)[:20]) for name in names[:5])
        raise ValueError(f"at most {MAX_LABELS} labels are allowed, got {len(names):,} ({shown}, ...)")
    bad = [name for name in names if not isinstance(name, str) or not name.strip()]
    if bad:
        raise ValueError(f"label names must be non-empty strings, got {bad}")
    long = [name for name in names if len(name) > MAX_LABEL_CHARS]
    if long:
        raise ValueError(
            f"a label name has at most {MAX_LABEL_CHARS} characters; {long[0][:20]!r}... has {len(long[0]):,}"
        )
    repeated = sorted(name for name, n in Counter(names).items() if n > 1)
    if repeated:
        raise ValueError(f"label names must be distinct, got {repeated} more than once")
    if len(names) < 2:
        raise ValueError(f"a classifier needs at least 2 labels, got {names}")
    return names


def check_same_labels(what: str, expected: Sequence[str], other: str, got: Sequence[str]) -> None:
    """A ValueError when two label sets differ (order aside): nothing trained on one label set is scored, combined
    or compared with another.

    >>> check_same_labels("model", ["a", "b"], "data", ["b", "a"])
    """
    if set(expected) != set(got):
        raise ValueError(
            f"label sets differ: {what} has {list(expected)}, {other} has {list(got)}; a model is only scored "
            "against data, and combined with models, of its own label set"
        )


@runtime_checkable
class Classifier(Protocol):
    """What compare/ and the app see of any backend (fine-tuned model, retrieval vote, hybrid...)."""

    name: str
    labels: list[str]

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """Classify a batch of texts; returns one `Prediction` per text, in the same order."""
        ...
