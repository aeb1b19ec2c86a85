"""Reading a learning curve (curve.json, made by `jobs.curve`): each contender's series, where the fine-tune overtakes
retrieval and over what range, and the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.files import atomic_write

LINE_NAMES = {"finetune": "fine-tune", "rag": "RAG (kNN vote)", "rag-tuned": "RAG over a tuned embedder"}
"""Each contender's line in the plot's legend."""


def series(curve: dict[str, Any], backend: str) -> list[tuple[int, float, float]]:
    """``(size, mean, std)`` of `backend` at every size it was measured; a curve of the format before seeds (a list
    of accuracies per backend) reads as one seed with no spread.

    >>> series({"sizes": [10, 20], "backends": {"rag": [0.5, 0.6]}}, "rag")
    [(10, 0.5, 0.0), (20, 0.6, 0.0)]
    """
    entry = (curve.get("backends") or {}).get(backend)
    if isinstance(entry, dict):
        means, stds = entry.get("mean") or [], entry.get("std") or []
    elif isinstance(entry, list):
        means, stds = entry, [0.0] * len(entry)
    else:
        return []
    sizes = curve.get("sizes") or []
    return [(int(n), m, sd or 0.0) for n, m, sd in zip(sizes, means, stds, strict=False) if m is not None]


def _from_which(points: list[tuple[int, bool]]) -> int | None:
    """The smallest size from which the condition holds at that size and every larger one."""
    found = None
    for size, holds in reversed(points):
        if not holds:
            break
        found = size
    return found


def _paired(curve: dict[str, Any], a: str, b: str) -> list[tuple[int, float, float, float, float]]:
    other = {n: (m, sd) for n, m, sd in series(curve, b)}
    return [(n, m, sd, *other[n]) for n, m, sd in series(curve, a) if n in other]


def crossover(curve: dict[str, Any], a: str = "finetune", b: str = "rag") -> int | None:
    """The smallest size from which `a`'s mean accuracy stays above `b`'s at every larger size; None if never.

    >>> crossover({"sizes": [1, 2, 3], "backends": {"finetune": [0.2, 0.6, 0.7], "rag": [0.5, 0.5, 0.5]}})
    2
    """
    return _from_which([(n, ma > mb) for n, ma, _, mb, _ in _paired(curve, a, b)])


def crossover_range(curve: dict[str, Any], a: str = "finetune", b: str = "rag") -> list[int | None] | None:
    """``[low, high]``: from `low` on, `a`'s band (mean ± std) reaches `b`'s at every size; from `high` on, it lies
    wholly above it (None: not by the largest size). None when `a` is clearly behind at the largest size. Equal
    ends mean the bands do not overlap where the lines cross.

    >>> crossover_range({"sizes": [1, 2, 3], "backends": {"finetune": {"mean": [0.2, 0.5, 0.7], "std": [0, .1, 0]},
    ...                                                  "rag": {"mean": [0.5, 0.45, 0.5], "std": [0, 0, 0]}}})
    [2, 3]
    """
    paired = _paired(curve, a, b)
    low = _from_which([(n, ma + sa >= mb - sb) for n, ma, sa, mb, sb in paired])
    if low is None:
        return None
    return [low, _from_which([(n, ma - sa > mb + sb) for n, ma, sa, mb, sb in paired])]


def describe_crossover(curve: dict[str, Any]) -> str:
    """One line on where the fine-tune overtakes retrieval, with the range when the bands overlap."""
    point, span = curve.get("crossover"), curve.get("crossover_range")
    if point is None:
        return "the fine-tune does not stay ahead of retrieval at the sizes measured"
    if not span or span[0] == span[1]:
        return f"the fine-tune is ahead of retrieval from {point} labeled examples"
    high = f"{span[1]}" if span[1] is not None else f"beyond {max(curve['sizes'])}"
    return f"the fine-tune is ahead of retrieval from {point} labeled examples (bands overlap: {span[0]} to {high})"


def plot_curve(curve: dict[str, Any], path: str | Path) -> Path:
    """curve.png: mean accuracy per contender with a band of one standard deviation, and the crossover."""
    from core.plots import plotting

    with plotting() as plt:
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for key, label in LINE_NAMES.items():
            points = series(curve, key)
            if points:
                sizes, means, stds = (list(column) for column in zip(*points, strict=True))
                ax.plot(sizes, means, "o-", label=label)
                ax.fill_between(sizes, [m - s for m, s in zip(means, stds, strict=True)],
                                [m + s for m, s in zip(means, stds, strict=True)], alpha=0.2)  # fmt: skip
        span = curve.get("crossover_range")
        if curve.get("crossover") is not None and span:
            ax.axvspan(span[0], span[1] or max(curve["sizes"]), color="grey", alpha=0.12, lw=0)
            ax.axvline(curve["crossover"], color="grey", ls="--", lw=1)
        seeds = len(curve.get("seeds") or [0])
        spread = f"mean ± std over {seeds} seeds" if seeds > 1 else "one seed"
        ax.set_xscale("log")
        ax.set(xlabel="labeled examples", ylabel=f"test accuracy ({curve['test_size']} texts)",
               title=f"Learning curve ({spread})")  # fmt: skip
        ax.grid(alpha=0.3)
        ax.legend(title=describe_crossover(curve) if curve.get("crossover") else None, title_fontsize=7, fontsize=8)
        fig.tight_layout()
        path = Path(path)
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
        plt.close(fig)
    return path
