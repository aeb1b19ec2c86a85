"""`auto` precision: each candidate precision and runtime of a served model (`core.precision`) scored on the validation
part, and the fastest that answers like fp32 chosen. An evaluation of the variants, so it lives with the evaluation
library; the backends only know how to serve a variant (`serve_as`)."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from compare.metrics import bootstrap_ci
from core.precision import FP32, MIN_AGREEMENT, TIMED_BATCH, TIMED_TEXTS, Hardware, Variant, candidates

logger = logging.getLogger(__name__)


@dataclass
class Trial:
    """One candidate measured on the validation part."""

    variant: str
    precision: str
    runtime: str
    accuracy: float | None = None
    agreement: float | None = None
    ms_single: float | None = None
    ms_batched: float | None = None
    refused: str | None = None

    @property
    def ms(self) -> float:
        """Its time per text: the geometric mean of one text alone and a text in a batch of `TIMED_BATCH`."""
        return float(np.sqrt(self.ms_single * self.ms_batched))


def choose(
    serve_as: Callable[[Variant], str | None],
    predict: Callable[[Sequence[str]], list[Any]],
    texts: Sequence[str],
    labels: Sequence[str],
    hardware: Hardware | None = None,
    variants: Sequence[Variant] | None = None,
    threads: int | None = None,
) -> tuple[Variant, dict[str, Any]]:
    """`auto`: score each candidate on the validation part and pick the fastest that answers like fp32.

    Args:
        serve_as: switches the backend to a variant; returns None, or why it could not (the backend then runs fp32).
        predict: the backend's ``predict`` (as served: the candidate's accuracy and time are the backend's own).
        texts, labels: the validation part.
        threads: the intra-op threads the backend will be served on (its batcher's share of the cores), which the
            candidates are timed on: a variant's gain on two threads is not its gain on one. None = as set now.

    Returns:
        the chosen variant (the backend is left serving it) and the record of the choice: ``served``, ``why`` and
        every candidate's `Trial` (accuracy, agreement with fp32, ms per text, or why it was refused).
    """
    hardware = hardware or Hardware.detect()
    timed = threads or torch.get_num_threads()
    texts, labels = list(texts), list(labels)
    trials: list[Trial] = []
    reference: list[str] | None = None
    interval: list[float] = [0.0, 1.0]
    for variant in variants or candidates():
        trial = Trial(variant.name, variant.precision, variant.runtime)
        trials.append(trial)
        trial.refused = hardware.missing(variant)
        if trial.refused is None:
            trial.refused = serve_as(variant)
        if trial.refused is not None:
            continue
        answers = [p.label for p in predict(texts)]
        trial.accuracy = float(np.mean([a == b for a, b in zip(answers, labels, strict=True)]))
        if reference is None:  # fp32 comes first: the reference
            reference = answers
            interval = [float(x) for x in bootstrap_ci(answers, labels, "accuracy", sorted(set(labels)), seed=0)]
        trial.agreement = float(np.mean([a == b for a, b in zip(answers, reference, strict=True)]))
        with served_threads(threads):
            trial.ms_single, trial.ms_batched = _time_per_text(predict, texts[:TIMED_TEXTS])
        if trial.accuracy < interval[0]:
            trial.refused = (
                f"accuracy {trial.accuracy:.4f} is below fp32's interval [{interval[0]:.4f}, {interval[1]:.4f}]"
            )
        elif trial.agreement < MIN_AGREEMENT:
            trial.refused = f"it gives fp32's label on {trial.agreement:.1%} of the texts (< {MIN_AGREEMENT:.0%})"
    fine = [t for t in trials if t.refused is None]
    best = min(fine, key=lambda t: t.ms) if fine else None
    chosen = Variant(best.precision, best.runtime) if best else FP32
    serve_as(chosen)
    if best is None:
        why = "auto: no candidate could be measured; serving fp32"
    else:
        fp32 = next((t for t in trials if t.variant == FP32.name and t.refused is None), None)
        speed = f", {fp32.ms / best.ms:.2f}x fp32's speed" if fp32 and best is not fp32 else ""
        why = (
            f"auto: {best.variant} is the fastest candidate within fp32's accuracy interval [{interval[0]:.4f}, "
            f"{interval[1]:.4f}] on {len(texts):,} validation texts (accuracy {best.accuracy:.4f}, fp32's label on "
            f"{best.agreement:.1%}, {best.ms:.2f} ms per text{speed} on {timed} thread{'s' * (timed != 1)}; "
            f"{hardware.describe()})"
        )
    logger.info("%s", why)
    return chosen, {"served": chosen.name, "why": why, "fp32_interval": interval, "validation_size": len(texts),
                    "timed_threads": timed, "candidates": [asdict(t) for t in trials]}  # fmt: skip


@contextlib.contextmanager
def served_threads(threads: int | None) -> Iterator[None]:
    """PyTorch's intra-op threads set to `threads` inside (None: left as they are), restored after."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _time_per_text(predict: Callable[[Sequence[str]], Any], texts: list[str]) -> tuple[float, float]:
    """ms per text one at a time (median) and in batches of `TIMED_BATCH` (total over the batches), after warm-ups."""
    predict(texts[:1])
    predict(texts[:TIMED_BATCH])
    single = []
    for text in texts:
        start = time.perf_counter()
        predict([text])
        single.append((time.perf_counter() - start) * 1000)
    start = time.perf_counter()
    for i in range(0, len(texts), TIMED_BATCH):
        predict(texts[i : i + TIMED_BATCH])
    batched = (time.perf_counter() - start) * 1000 / len(texts)
    return float(np.median(single)), batched
