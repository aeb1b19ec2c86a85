"""Helpers shared by the benchmark scripts: timing percentiles and plain-text tables."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence

import numpy as np


def machine() -> str:
    import os

    import torch

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs, torch {torch.__version__} ({torch.get_num_threads()} threads)"


def time_calls(fn: Callable[[object], object], items: Sequence, warmup: int = 5) -> np.ndarray:
    """Milliseconds per call of ``fn(item)`` over `items`, after `warmup` untimed calls."""
    for item in items[:warmup]:
        fn(item)
    out = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - start) * 1000)
    return np.array(out)


def percentiles(ms: np.ndarray) -> dict[str, float]:
    return {f"p{q}": float(np.percentile(ms, q)) for q in (50, 95, 99)}


def table(rows: list[dict], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of `rows` (floats with 3 significant decimals)."""
    columns = list(columns or rows[0].keys())

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)
