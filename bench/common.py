"""Helpers shared by the benchmark scripts: the machine, timed calls and tables (percentiles and the table drawing
come from `compare`, so that a bench and a report count and draw the same way)."""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence

import numpy as np

from compare.report import markdown_table


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


def table(rows: list[dict], columns: Sequence[str] | None = None) -> str:
    """A Markdown table of `rows` (floats with 3 significant decimals), drawn by `compare.report.markdown_table`."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 10 else f"{value:.1f}"
        return str(value)

    columns = list(columns or rows[0].keys())
    return markdown_table([{c: cell(row.get(c, "")) for c in columns} for row in rows], columns=columns, escape=False)
