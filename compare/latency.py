"""Latency and throughput of several backends, measured interleaved so that machine noise hits all of them alike.

Single queries go A, B, A, B... one text at a time; batches go the same way. Warm-up calls are not timed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from core.types import Classifier


def percentiles(ms: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / p99 and the mean of a list of milliseconds.

    >>> percentiles([1.0, 2.0, 3.0, 4.0])["p50"]
    2.5
    """
    values = np.asarray(ms, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no timings")
    return {
        "p50": float(np.percentile(values, 50)),
        "p95": float(np.percentile(values, 95)),
        "p99": float(np.percentile(values, 99)),
        "mean": float(values.mean()),
    }


def measure(
    classifiers: Mapping[str, Classifier],
    queries: Sequence[str],
    *,
    warmup: int = 5,
    batch_size: int = 64,
    batch_rounds: int = 3,
    clock: Callable[[], float] = time.perf_counter,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Single-query latency (every query, interleaved across backends) and batch throughput per backend.

    Args:
        queries: the texts; each is sent alone to every backend, and batches of `batch_size` are cut from them
            (cycling when there are fewer).
        warmup: untimed single calls per backend first (lazy initialisation, caches, thread pools), and one untimed
            batch; 0 makes no untimed call at all.
        batch_rounds: timed batches per backend.

    Returns:
        name -> ``{"latency_ms": {p50, p95, p99, mean}, "samples": [ms...], "samples_per_second", "batch_size"}``.
    """
    if not classifiers:
        raise ValueError("no backends to time")
    queries = list(queries)
    if not queries:
        raise ValueError("no queries to time")
    if batch_size < 1 or batch_rounds < 1 or warmup < 0:
        raise ValueError("batch_size and batch_rounds must be at least 1, warmup at least 0")
    tell = progress or (lambda fraction, message: None)
    names = list(classifiers)
    for name in names:
        for q in queries[:warmup]:  # warmup=0 means none: a cold first call is then part of the figures
            classifiers[name].predict([q])
    single: dict[str, list[float]] = {name: [] for name in names}
    for i, q in enumerate(queries):
        for name in names:
            start = clock()
            classifiers[name].predict([q])
            single[name].append((clock() - start) * 1000.0)
        if i % 10 == 0:
            tell(0.8 * (i + 1) / len(queries), f"single queries {i + 1}/{len(queries)}")
    batch = [queries[i % len(queries)] for i in range(batch_size)]
    if warmup:
        for name in names:
            classifiers[name].predict(batch)  # warm the batch path too
    seconds = dict.fromkeys(names, 0.0)
    for r in range(batch_rounds):
        for name in names:
            start = clock()
            classifiers[name].predict(batch)
            seconds[name] += clock() - start
        tell(0.8 + 0.2 * (r + 1) / batch_rounds, f"batches {r + 1}/{batch_rounds}")
    return {
        name: {
            "latency_ms": percentiles(single[name]),
            "samples": single[name],
            "samples_per_second": batch_size * batch_rounds / seconds[name] if seconds[name] > 0 else float("inf"),
            "batch_size": batch_size,
        }
        for name in names
    }


def p95_interval(ms: Sequence[float], n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95) -> list[float]:
    """A percentile-bootstrap interval of the p95 of `ms` (seeded): two p95s whose intervals overlap differ by less
    than their own measurement noise.

    >>> low, high = p95_interval([10.0] * 50 + [20.0] * 50)
    >>> low <= 20.0 <= high
    True
    """
    values = np.asarray(ms, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no timings")
    rng = np.random.default_rng(seed)
    samples = values[rng.integers(0, values.size, size=(n_resamples, values.size))]
    p95s = np.percentile(samples, 95, axis=1)
    tail = 100 * (1 - confidence) / 2
    return [float(np.percentile(p95s, tail)), float(np.percentile(p95s, 100 - tail))]
