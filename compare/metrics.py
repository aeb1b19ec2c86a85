"""Pure functions of (predictions, references): the numbers every backend is judged by.

Labels are strings; `labels` fixes their order (and includes labels that never occur, so that every backend's
tables have the same shape). scikit-learn does the counting.
"""

from __future__ import annotations

import math
from collections import Counter
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


# --- uncertainty: how much a score would move on another sample of texts like these ----------------------------------


def _resample_weights(n: int, n_resamples: int, seed: int) -> np.ndarray:
    """How often each of the `n` examples is drawn in each bootstrap resample: shape (n_resamples, n), rows sum to n.

    Every resampled score is then a weighted sum over the original examples, one matrix product for all resamples.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    draws = np.random.default_rng(seed).integers(0, n, size=(n_resamples, n))
    flat = (draws + n * np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(np.float64)


def _accuracy_rows(weights: np.ndarray, predictions: np.ndarray, references: np.ndarray, labels) -> np.ndarray:
    return weights @ (predictions == references).astype(np.float64) / weights.sum(axis=1)


def _macro_f1_rows(weights: np.ndarray, predictions: np.ndarray, references: np.ndarray, labels) -> np.ndarray:
    # F1 = 2 TP / (2 TP + FP + FN) = 2 TP / (times predicted + times present); 0 when both are 0, as in macro_f1.
    per_label = []
    for label in labels:
        predicted, present = predictions == label, references == label
        tp = weights @ (predicted & present).astype(np.float64)
        either = weights @ (predicted.astype(np.float64) + present)
        per_label.append(np.divide(2 * tp, either, out=np.zeros_like(tp), where=either > 0))
    return np.mean(per_label, axis=0)


_RESAMPLED = {"accuracy": _accuracy_rows, "macro_f1": _macro_f1_rows}


def _percentiles(values: np.ndarray, confidence: float) -> tuple[float, float]:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be between 0 and 1, got {confidence}")
    low, high = np.quantile(values, [(1.0 - confidence) / 2, (1.0 + confidence) / 2])
    return float(low), float(high)


def bootstrap_ci(
    predictions: Sequence[str],
    references: Sequence[str],
    metric: str = "accuracy",
    labels: Sequence[str] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of `metric` ("accuracy" or "macro_f1") over the evaluated examples.

    Draw the n examples n times with replacement, `n_resamples` times (seeded); score each resample; the interval is
    the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of those scores. `labels` as in macro_f1 (default:
    every label seen).

    >>> bootstrap_ci(["a"] * 80 + ["b"] * 20, ["a"] * 100)  # 80 of 100 right
    (0.72, 0.88)
    >>> preds, refs = ["a"] * 45 + ["b"] * 45 + ["a"] * 10, ["a"] * 45 + ["b"] * 55  # macro-F1 0.9
    >>> tuple(round(x, 3) for x in bootstrap_ci(preds, refs, "macro_f1", ["a", "b"]))
    (0.838, 0.96)
    """
    _check(predictions, references)
    if metric not in _RESAMPLED:
        raise ValueError(f"metric must be one of {sorted(_RESAMPLED)}, got {metric!r}")
    preds, refs = np.asarray(predictions, dtype=str), np.asarray(references, dtype=str)
    labels = sorted(set(preds) | set(refs)) if labels is None else list(labels)
    values = _RESAMPLED[metric](_resample_weights(len(refs), n_resamples, seed), preds, refs, labels)
    return _percentiles(values, confidence)


def mcnemar_p(predictions_a: Sequence[str], predictions_b: Sequence[str], references: Sequence[str]) -> float:
    """Exact two-sided McNemar p-value: could two backends scored on the same texts be equally accurate?

    Only the discordant texts count: b = right by A only, c = right by B only. Under "equally accurate" each is a
    fair coin flip, so p = min(1, 2 P(X <= min(b, c))) with X ~ Binomial(b + c, 1/2); p = 1 when b + c = 0.

    >>> refs = ["x"] * 10
    >>> mcnemar_p(["x"] + ["y"] * 9, ["y"] + ["x"] * 9, refs)  # b = 1, c = 9: 2 * (1 + 10) / 2**10
    0.021484375
    """
    _check(predictions_a, references)
    _check(predictions_b, references)
    hit_a = np.asarray(predictions_a, dtype=str) == np.asarray(references, dtype=str)
    hit_b = np.asarray(predictions_b, dtype=str) == np.asarray(references, dtype=str)
    b, c = int(np.sum(hit_a & ~hit_b)), int(np.sum(~hit_a & hit_b))
    if b + c == 0:
        return 1.0
    from scipy.stats import binomtest

    return float(binomtest(min(b, c), b + c, 0.5, alternative="two-sided").pvalue)


def paired_difference(
    predictions_a: Sequence[str],
    predictions_b: Sequence[str],
    references: Sequence[str],
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, Any]:
    """Accuracy of A minus accuracy of B on the same texts, its paired bootstrap interval and the McNemar p-value.

    Paired: each resample draws the same texts for both, so the interval is of the difference itself (narrower than
    two separate intervals suggest when the backends tend to fail on the same texts). A difference whose interval
    contains 0 is within noise.

    >>> refs = ["x"] * 100
    >>> a, b = ["x"] * 80 + ["y"] * 20, ["x"] * 70 + ["y"] * 30  # A is right on every text B gets right, and 10 more
    >>> result = paired_difference(a, b, refs)
    >>> result["accuracy_diff"], result["diff_ci95"], round(result["mcnemar_p"], 5)
    (0.1, (0.04, 0.16), 0.00195)
    """
    _check(predictions_a, references)
    _check(predictions_b, references)
    refs = np.asarray(references, dtype=str)
    hit_a = (np.asarray(predictions_a, dtype=str) == refs).astype(np.float64)
    hit_b = (np.asarray(predictions_b, dtype=str) == refs).astype(np.float64)
    weights = _resample_weights(len(refs), n_resamples, seed)
    diffs = weights @ (hit_a - hit_b) / len(refs)
    return {
        "accuracy_diff": float(np.mean(hit_a - hit_b)),
        "diff_ci95": _percentiles(diffs, confidence),
        "mcnemar_p": mcnemar_p(predictions_a, predictions_b, references),
    }


COLLAPSE_SHARE = 0.95
"""A contender that answers one label for at least this share of the texts has collapsed (unless the references are
that lopsided themselves)."""
LEARNING_MARGIN = 0.02
"""How far above the majority-class baseline (accuracy or macro-F1) a contender must be to have learned something, at
least; on few texts the margin is 1/(2 sqrt(n)) (about one standard error of an accuracy near 0.5), so that luck on
a small validation part is not taken for learning (collapse is caught whatever the margin)."""


def learning_check(predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]) -> dict[str, Any]:
    """Whether a contender learned anything: it must beat always answering the commonest reference label by
    LEARNING_MARGIN (or 1/(2 sqrt(n)) on n texts, if more) on accuracy or macro-F1, and must not have collapsed onto
    one label (COLLAPSE_SHARE).

    Returns ``learned``, ``why`` (None when it learned), its accuracy and macro-F1, the ``majority`` baseline's, and
    the share of its commonest answer.

    >>> check = learning_check(["a"] * 10, ["a"] * 5 + ["b"] * 5, ["a", "b"])
    >>> check["learned"], check["why"]
    (False, "answers 'a' for 100% of the 10 texts, where the commonest label is 50% of them")
    >>> learning_check(["a", "b"] * 50, ["a", "b"] * 45 + ["a", "a"] * 5, ["a", "b"])["learned"]
    True
    """
    _check(predictions, references)
    n = len(references)
    majority, majority_n = Counter(references).most_common(1)[0]
    top, top_n = Counter(predictions).most_common(1)[0]
    base = {"label": majority, "accuracy": majority_n / n, "macro_f1": macro_f1([majority] * n, references, labels)}
    acc, f1, share = accuracy(predictions, references), macro_f1(predictions, references, labels), top_n / n
    why, margin = None, max(LEARNING_MARGIN, 0.5 / math.sqrt(n))
    if share >= max(COLLAPSE_SHARE, base["accuracy"] + LEARNING_MARGIN):
        why = f"answers {top!r} for {share:.0%} of the {n} texts, where the commonest label is {base['accuracy']:.0%}"
        why += " of them"
    elif acc <= base["accuracy"] + margin and f1 <= base["macro_f1"] + margin:
        why = (
            f"accuracy {acc:.3f} and macro-F1 {f1:.3f} on {n} texts are within {margin:.3f} of always answering "
            f"{majority!r} ({base['accuracy']:.3f} and {base['macro_f1']:.3f})"
        )
    rounded = {k: round(v, 4) if isinstance(v, float) else v for k, v in base.items()}
    return {"learned": why is None, "why": why, "accuracy": round(acc, 4), "macro_f1": round(f1, 4),
            "majority": rounded, "top_answer_share": round(share, 4), "n": n}  # fmt: skip
