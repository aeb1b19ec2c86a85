"""Pure functions of (predictions, references): the numbers every backend is judged by.

Labels are strings; `labels` fixes their order (and includes labels that never occur, so that every backend's
tables have the same shape). scikit-learn does the counting.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support


def _check(predictions: Sequence[str], references: Sequence[str]) -> None:
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not references:
        raise ValueError("no examples to score")


def accuracy(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Share of predictions equal to the reference.

    >>> accuracy(["a", "b", "b", "a"], ["a", "b", "a", "a"])
    0.75
    """
    _check(predictions, references)
    return float(accuracy_score(references, predictions))


def macro_f1(predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]) -> float:
    """F1 averaged over `labels` with equal weight (a label never predicted nor present scores 0).

    >>> round(macro_f1(["a", "b", "b", "a"], ["a", "b", "a", "a"], ["a", "b"]), 4)
    0.7333
    """
    _check(predictions, references)
    return float(f1_score(references, predictions, labels=list(labels), average="macro", zero_division=0))


def per_class(predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support of each label.

    >>> per_class(["a", "b", "b", "a"], ["a", "b", "a", "a"], ["a", "b"])["b"]
    {'precision': 0.5, 'recall': 1.0, 'f1': 0.6666666666666666, 'support': 1}
    """
    _check(predictions, references)
    p, r, f, s = precision_recall_fscore_support(references, predictions, labels=list(labels), zero_division=0)
    return {
        label: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
        for i, label in enumerate(labels)
    }


def confusion(predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]) -> list[list[int]]:
    """Counts with rows = reference label, columns = predicted label, both in `labels` order.

    >>> confusion(["a", "b", "b", "a"], ["a", "b", "a", "a"], ["a", "b"])
    [[2, 1], [0, 1]]
    """
    _check(predictions, references)
    return confusion_matrix(references, predictions, labels=list(labels)).tolist()


def agreement(a: Sequence[str], b: Sequence[str]) -> float:
    """Share of examples on which two backends give the same label.

    >>> agreement(["x", "y", "z"], ["x", "y", "y"])
    0.6666666666666666
    """
    if len(a) != len(b):
        raise ValueError(f"cannot compare {len(a)} predictions with {len(b)}")
    if not a:
        raise ValueError("no predictions to compare")
    return float(np.mean([x == y for x, y in zip(a, b, strict=True)]))


def calibration(confidences: Sequence[float], correct: Sequence[bool], n_bins: int = 10) -> dict[str, Any]:
    """Expected calibration error and the reliability diagram's bins (equal-width confidence bins).

    ECE = sum over bins of (share of examples in the bin) x |accuracy in the bin - mean confidence in the bin|:
    how far "90% sure" is from being right 90% of the time.

    >>> result = calibration([0.9, 0.9, 0.6, 0.6], [True, False, True, True], n_bins=10)
    >>> round(result["ece"], 3)
    0.4
    >>> [(b["count"], b["accuracy"]) for b in result["bins"] if b["count"]]
    [(2, 1.0), (2, 0.5)]
    """
    conf = np.asarray(confidences, dtype=np.float64)
    hit = np.asarray(correct, dtype=np.float64)
    if conf.shape != hit.shape or conf.ndim != 1:
        raise ValueError(f"{conf.size} confidences for {hit.size} outcomes")
    if conf.size == 0:
        raise ValueError("no predictions to calibrate")
    if n_bins < 1:
        raise ValueError(f"n_bins must be at least 1, got {n_bins}")
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, n_bins - 1)
    bins, ece = [], 0.0
    for i in range(n_bins):
        mask = which == i
        count = int(mask.sum())
        acc = float(hit[mask].mean()) if count else None
        mean_conf = float(conf[mask].mean()) if count else None
        if count:
            ece += count / conf.size * abs(acc - mean_conf)
        bins.append({"lower": float(edges[i]), "upper": float(edges[i + 1]), "count": count,
                     "accuracy": acc, "confidence": mean_conf})  # fmt: skip
    return {"ece": float(ece), "n_bins": n_bins, "bins": bins}


def summary(
    predictions: Sequence[str],
    references: Sequence[str],
    labels: Sequence[str],
    confidences: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Every metric above for one backend, as a JSON-ready dict."""
    out: dict[str, Any] = {
        "n": len(references),
        "accuracy": accuracy(predictions, references),
        "macro_f1": macro_f1(predictions, references, labels),
        "per_class": per_class(predictions, references, labels),
        "confusion_matrix": confusion(predictions, references, labels),
    }
    if confidences is not None:
        out["calibration"] = calibration(confidences, [p == r for p, r in zip(predictions, references, strict=True)])
    return out
