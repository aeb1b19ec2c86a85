"""Run the same labeled queries through every backend and collect what the decision needs.

`evaluate` returns the report: per backend the metrics with bootstrap intervals, calibration, latency, throughput
and cost; for every pair of backends the accuracy difference with its interval and a McNemar test; agreement
between backends and the examples where they disagree. `render_markdown` and `plot` turn it into report.md and
PNGs. Nothing here knows how a backend works inside: only the `Classifier` contract and its ``meta``.
"""

from __future__ import annotations

import datetime as dt
import itertools
import logging
import os
import platform
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from compare.latency import measure
from compare.metrics import agreement, bootstrap_ci, learning_check, macro_f1, paired_difference, summary
from core.types import Classifier, Progress

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Bumped only for a change old readers cannot cope with; keys added since (the intervals, ``pairwise``) are
optional to every reader, which shows "n/a" where a report predates them."""
DEFAULT_HOURLY_PRICE_USD = 0.10
"""On-demand price of a small 2-vCPU cloud machine like the one measured here (pass your own)."""


INTERVALS = {
    "method": "percentile bootstrap",
    "resamples": 1000,
    "seed": 0,
    "confidence": 0.95,
    "paired_test": "exact McNemar",
}
"""How every interval in a report is computed: resampling the evaluated texts, seeded, so a re-run gives the same."""


def check_backends(classifiers: Mapping[str, Classifier], dataset_labels: Sequence[str] = ()) -> list[str]:
    """The shared label list, or a ValueError when backends disagree on labels or the data has labels none knows."""
    if not classifiers:
        raise ValueError("no backends to compare")
    items = list(classifiers.items())
    labels = list(items[0][1].labels)
    for name, clf in items[1:]:
        if set(clf.labels) != set(labels):
            raise ValueError(
                f"backends have different label sets: {items[0][0]} has {sorted(labels)}, {name} has "
                f"{sorted(clf.labels)}"
            )
    unknown = sorted(set(dataset_labels) - set(labels))
    if unknown:
        raise ValueError(f"the data has labels {unknown} that the backends do not know (they know {labels})")
    return labels


def cost(samples_per_second: float, one_off_seconds: float | None, hourly_price: float) -> dict[str, float | None]:
    """Serving cost per million queries at the measured batch throughput, and the one-off build/training cost.

    >>> cost(100.0, 3600.0, 0.10)
    {'per_million_queries_usd': 0.2778, 'one_off_usd': 0.1, 'hourly_price_usd': 0.1}
    """
    per_million = hourly_price * 1e6 / (samples_per_second * 3600.0) if samples_per_second > 0 else None
    return {
        "per_million_queries_usd": round(per_million, 4) if per_million is not None else None,
        "one_off_usd": round(hourly_price * one_off_seconds / 3600.0, 4) if one_off_seconds is not None else None,
        "hourly_price_usd": hourly_price,
    }


def _size_on_disk(directory: Path | None) -> float | None:
    if directory is None or not Path(directory).is_dir():
        return None
    return round(sum(f.stat().st_size for f in Path(directory).rglob("*") if f.is_file()) / 2**20, 2)


def _describe(clf: Classifier) -> dict[str, Any]:
    from core.precision import served

    meta = getattr(clf, "meta", {}) or {}
    describe = getattr(clf, "describe", None)
    one_off = meta.get("train_seconds", meta.get("build_seconds"))
    memory = getattr(clf, "memory_bytes", None)
    return {
        "description": describe() if callable(describe) else clf.name,
        "from_scratch": bool(meta.get("from_scratch", False)),
        "notice": meta.get("notice"),
        "data_source": meta.get("data_source"),
        "train_size": meta.get("train_size", meta.get("size")),
        "one_off_seconds": one_off,
        "one_off_kind": "train" if "train_seconds" in meta else ("build" if "build_seconds" in meta else None),
        "size_on_disk_mb": _size_on_disk(getattr(clf, "directory", None)),
        "memory_mb": round(memory() / 2**20, 1) if callable(memory) else None,
        "serving": served(clf),  # the precision and runtime every figure of this row was measured on
        **({"training": _training(meta)} if meta.get("history") else {}),
    }


def _training(meta: dict[str, Any]) -> dict[str, Any]:
    """A fine-tune's training curve for the report (see finetune.history): evaluations, losses, the kept step."""
    from finetune.history import overfitting_note

    return {"history": meta["history"], "train_history": meta.get("train_history") or [],
            "best_checkpoint_step": meta.get("best_checkpoint_step"), "note": overfitting_note(meta)}  # fmt: skip


def backend_intervals(predictions: Sequence[str], references: Sequence[str], labels: Sequence[str]) -> dict:
    """``accuracy_ci95`` and ``macro_f1_ci95`` of one backend as [low, high], computed as INTERVALS says."""
    kw = {"n_resamples": INTERVALS["resamples"], "seed": INTERVALS["seed"], "confidence": INTERVALS["confidence"]}
    return {
        f"{metric}_ci95": [round(x, 4) for x in bootstrap_ci(predictions, references, metric, labels, **kw)]
        for metric in ("accuracy", "macro_f1")
    }


def pairwise(predictions: Mapping[str, Sequence[str]], references: Sequence[str]) -> list[dict[str, Any]]:
    """For every pair of backends (in report order): accuracy of a minus b on the same texts, its paired interval, and
    the exact McNemar p-value.
    """
    kw = {"n_resamples": INTERVALS["resamples"], "seed": INTERVALS["seed"], "confidence": INTERVALS["confidence"]}
    rows = []
    for a, b in itertools.combinations(predictions, 2):
        result = paired_difference(predictions[a], predictions[b], references, **kw)
        rows.append(
            {
                "a": a,
                "b": b,
                "accuracy_diff": round(result["accuracy_diff"], 4),
                "diff_ci95": [round(x, 4) for x in result["diff_ci95"]],
                "mcnemar_p": float(f"{result['mcnemar_p']:.4g}"),  # significant digits: a tiny p must not read as 0
            }
        )
    return rows


def _score(
    classifiers: Mapping[str, Classifier],
    texts: list[str],
    references: list[str],
    labels: list[str],
    report_progress: Progress,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    """Classify every text with every backend: each backend's metrics and description, and its predicted labels."""
    backends: dict[str, dict[str, Any]] = {}
    predictions: dict[str, list[str]] = {}
    for i, (name, clf) in enumerate(classifiers.items()):
        report_progress(0.6 * i / len(classifiers), f"{name}: classifying {len(texts)} texts")
        start = time.perf_counter()
        answers = clf.predict(texts)
        seconds = time.perf_counter() - start
        predictions[name] = [p.label for p in answers]
        confidences = [max(p.scores.values()) for p in answers]
        backends[name] = {
            **summary(predictions[name], references, labels, confidences),
            **backend_intervals(predictions[name], references, labels),
            "evaluation_seconds": round(seconds, 3),
            **_describe(clf),
        }
        logger.info("%s: accuracy %.4f on %d texts", name, backends[name]["accuracy"], len(texts))
    return backends, predictions


def _timings(timed: dict[str, Any], one_off_seconds: float | None, hourly_price: float) -> dict[str, Any]:
    return {
        "latency_ms": {k: round(v, 3) for k, v in timed["latency_ms"].items()},
        "latency_samples_ms": [round(v, 3) for v in timed["samples"]],
        "samples_per_second": round(timed["samples_per_second"], 2),
        "cost": cost(timed["samples_per_second"], one_off_seconds, hourly_price),
    }


def _disagreements(texts: list[str], references: list[str], predictions: dict[str, list[str]]) -> list[dict]:
    return [
        {"text": text, "reference": ref, "predictions": {name: predictions[name][i] for name in predictions}}
        for i, (text, ref) in enumerate(zip(texts, references, strict=True))
        if len({predictions[name][i] for name in predictions}) > 1
    ]


def evaluate(
    classifiers: Mapping[str, Classifier] | Sequence[Classifier],
    dataset,
    *,
    data_source: str | None = None,
    split: str | None = None,
    latency_queries: int = 100,
    batch_size: int = 64,
    batch_rounds: int = 3,
    hourly_price: float = DEFAULT_HOURLY_PRICE_USD,
    max_disagreements: int = 25,
    learning: Mapping[str, dict[str, Any]] | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Score every backend on `dataset` (``text`` / ``label``) and time them; returns the report dict.

    Every backend's entry says whether it ``learned`` (and ``why`` not: `compare.metrics.learning_check`), from
    `learning` where the caller checked it on a validation part (``{name: check}``), else on these texts; the report's
    ``baseline`` is the majority class scored on the same texts.

    Raises:
        ValueError: no backends, different label sets, labels the backends do not know, an empty dataset, a
            non-positive price.
    """
    if not isinstance(classifiers, Mapping):
        classifiers = {clf.name: clf for clf in classifiers}
    texts, references = list(dataset["text"]), list(dataset["label"])
    if not texts:
        raise ValueError("the evaluation slice is empty")
    if not hourly_price > 0:
        raise ValueError(f"hourly_price must be positive, got {hourly_price}")
    labels = check_backends(classifiers, references)
    report_progress = progress or (lambda fraction, message: None)
    backends, predictions = _score(classifiers, texts, references, labels, report_progress)
    report_progress(0.6, "timing single queries and batches")
    _add_timings(backends, classifiers, texts[:latency_queries], batch_size=batch_size, batch_rounds=batch_rounds,
                 hourly_price=hourly_price, report_progress=report_progress)  # fmt: skip
    comparisons = _comparisons(texts, references, predictions, max_disagreements)
    for name, b in backends.items():
        b.update(learned_entry((learning or {}).get(name), predictions[name], references, labels))
    report_progress(1.0, "done")
    return {
        "format_version": FORMAT_VERSION,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "dataset": {"source": data_source, "split": split, "n": len(texts), "label_counts": dict(Counter(references))},
        "labels": labels,
        "machine": machine(),
        "latency": {"queries": min(latency_queries, len(texts)), "batch_size": batch_size, "interleaved": True},
        "intervals": dict(INTERVALS),
        "hourly_price_usd": hourly_price,
        "backends": backends,
        "baseline": majority_baseline(references, labels),
        **comparisons,
    }


def learned_entry(check: dict[str, Any] | None, predictions: list[str], references: list[str], labels) -> dict:
    """A backend's ``learned``, ``why`` and ``learning_check`` (what it was checked on): the caller's check on a
    validation part when given, else one on the evaluated texts."""
    on = "the validation part"
    if check is None:
        check, on = learning_check(predictions, references, labels), "the evaluated texts"
    return {"learned": check["learned"], "why": check["why"], "learning_check": {**check, "on": check.get("on", on)}}


def majority_baseline(references: list[str], labels: Sequence[str]) -> dict[str, Any]:
    """The floor every contender must clear: always answering the commonest label of the evaluated texts, with the
    same intervals as the backends."""
    label = Counter(references).most_common(1)[0][0]
    answers = [label] * len(references)
    return {
        "name": "majority class",
        "description": f"always answers {label!r}, the commonest label of the evaluated texts",
        "label": label,
        "accuracy": round(sum(r == label for r in references) / len(references), 4),
        "macro_f1": round(macro_f1(answers, references, labels), 4),
        **backend_intervals(answers, references, labels),
    }


def _add_timings(
    backends: dict[str, dict[str, Any]],
    classifiers: Mapping[str, Classifier],
    queries: list[str],
    *,
    batch_size: int,
    batch_rounds: int,
    hourly_price: float,
    report_progress: Progress,
) -> None:
    """Time every backend on `queries` (single queries and batches, interleaved: `compare.latency.measure`) and add
    its latency, throughput and cost to its entry in `backends`."""
    timed = measure(
        classifiers,
        queries,
        batch_size=batch_size,
        batch_rounds=batch_rounds,
        progress=lambda f, m: report_progress(0.6 + 0.35 * f, m),
    )
    for name, t in timed.items():
        backends[name].update(_timings(t, backends[name]["one_off_seconds"], hourly_price))


def _comparisons(
    texts: list[str], references: list[str], predictions: dict[str, list[str]], max_disagreements: int
) -> dict[str, Any]:
    """The report's sections about pairs of backends: accuracy differences with McNemar tests, agreement rates, and
    the texts they label differently (the first `max_disagreements` of them, and how many there are)."""
    disagreements = _disagreements(texts, references, predictions)
    return {
        "pairwise": pairwise(predictions, references),
        "agreement": {
            f"{a} vs {b}": agreement(predictions[a], predictions[b]) for a, b in itertools.combinations(predictions, 2)
        },
        "disagreement_count": len(disagreements),
        "disagreements": disagreements[:max_disagreements],
    }


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def check_report(report: Any) -> dict[str, Any]:
    """A report as written by this version, or a ValueError saying what is wrong with it."""
    if not isinstance(report, dict) or "backends" not in report:
        raise ValueError("not a comparison report (no 'backends')")
    version = report.get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(
            f"report format {version!r} is not supported (this version reads format {FORMAT_VERSION}); "
            "re-run `python -m jobs.run` to regenerate it"
        )
    if not isinstance(report["backends"], dict) or not report["backends"]:
        raise ValueError("the report has no backends")
    n = (report.get("dataset") or {}).get("n") if isinstance(report.get("dataset"), dict) else None
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError("the report does not say how many texts were scored (dataset.n)")
    for name, b in report["backends"].items():
        accuracy = b.get("accuracy") if isinstance(b, dict) else None
        if isinstance(accuracy, bool) or not isinstance(accuracy, (int, float)) or not 0 <= accuracy <= 1:
            raise ValueError(f"the report's backend {name!r} has no accuracy between 0 and 1")
        if not isinstance(b.get("latency_ms", {}), dict):
            raise ValueError(f"the report's backend {name!r} has latency_ms that is not a table of percentiles")
    return report
