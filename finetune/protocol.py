"""The fine-tune's one training protocol: the budget a practitioner gives a model at any size of data.

Every path that fine-tunes (`finetune.train`, and through it the study, the learning curve, the app's start-up;
`finetune.search` for its trials) gets it by default, so that a small data set never gets a token model:

- at least `min_steps` optimizer steps (``FinetuneConfig.min_steps``, MIN_STEPS by default): the epochs are raised
  to reach them. Measured on tweets with the pretrained MiniLM: 20 steps at 100 examples learned nothing (the
  majority-class rate), 200 steps did (0.677 to 0.690).
- on small data (fewer than SMALL_DATA_EXAMPLES fitting examples) a pretrained model without a set learning rate gets
  SMALL_DATA_LR (1e-4 beat 5e-5 at 100 examples and 200 steps), and the run is evaluated EVALUATIONS times over its
  steps, the best checkpoint kept, with no early stop (the budget is the budget).
- larger data is trained exactly as configured (one evaluation per epoch, early stopping by ``patience``).
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from finetune.config import FinetuneConfig

MIN_STEPS = 200
"""Fewest fine-tuning optimizer steps at any size (on tweets, 20 steps at 100 examples learned nothing, 200 did)."""
SMALL_DATA_LR = 1e-4
"""Learning rate for a pretrained model on small data (on tweets, 1e-4 beat 5e-5 at 100 examples and 200 steps)."""
SMALL_DATA_EXAMPLES = 5000
"""Below this many fitting examples the data is small: the small-data learning rate and EVALUATIONS evaluations."""
EVALUATIONS = 5
"""Validation passes of a small-data run: the best of them is kept."""


def steps_per_epoch(fit_size: int, batch_size: int, world_size: int = 1) -> int:
    """Optimizer steps of one epoch over `fit_size` examples in batches of `batch_size` per process.

    >>> steps_per_epoch(100, 16), steps_per_epoch(100, 16, world_size=2)
    (7, 4)
    """
    return max(1, math.ceil(fit_size / (batch_size * world_size)))


def protocol_epochs(epochs: float, fit_size: int, batch_size: int, min_steps: int, world_size: int = 1) -> float:
    """`epochs`, raised (to whole epochs) where they make fewer than `min_steps` optimizer steps.

    >>> protocol_epochs(3, 80, 16, 200), protocol_epochs(3, 10_000, 16, 200), protocol_epochs(0.5, 10_000, 16, 200)
    (40.0, 3.0, 0.5)
    """
    per_epoch = steps_per_epoch(fit_size, batch_size, world_size)
    if math.ceil(epochs * per_epoch) >= min_steps:
        return float(epochs)
    return float(math.ceil(min_steps / per_epoch))


def apply_protocol(cfg: FinetuneConfig, fit_size: int, world_size: int = 1) -> tuple[FinetuneConfig, dict[str, Any]]:
    """`cfg` under the protocol for `fit_size` fitting examples; returns ``(config, record)``.

    The record (run.json's ``protocol``) says the optimizer steps, epochs and learning rate used, and why.

    >>> from finetune.config import FinetuneConfig
    >>> _, r = apply_protocol(FinetuneConfig(epochs=3, batch_size=16), 80)
    >>> r["steps"], r["epochs"], r["learning_rate"], r["evaluations"]
    (200, 40.0, 0.0001, 5)
    >>> _, r = apply_protocol(FinetuneConfig(epochs=1, batch_size=32), 10_000)
    >>> r["steps"], r["epochs"], r["learning_rate"], r["small_data"]
    (313, 1.0, 5e-05, False)
    """
    per_epoch = steps_per_epoch(fit_size, cfg.batch_size, world_size)
    if not cfg.protocol:
        record = {
            "steps": math.ceil(cfg.epochs * per_epoch),
            "epochs": cfg.epochs,
            "learning_rate": cfg.lr,
            "batch_size": cfg.batch_size,
            "fit_size": fit_size,
            "why": "protocol off: trained as configured",
        }
        return cfg, record
    epochs = protocol_epochs(cfg.epochs, fit_size, cfg.batch_size, cfg.min_steps, world_size)
    steps = math.ceil(epochs * per_epoch)
    small = fit_size < SMALL_DATA_EXAMPLES
    lr = cfg.learning_rate or (SMALL_DATA_LR if small and not cfg.from_scratch else cfg.lr)
    changes: dict[str, Any] = {"epochs": epochs, "learning_rate": lr}
    evaluations = None
    if small and cfg.checkpoint_every is None:
        evaluations = EVALUATIONS
        changes.update(patience=0, checkpoint_every=max(1, math.ceil(steps / EVALUATIONS)))
    why = []
    if epochs > cfg.epochs:
        why.append(f"epochs raised from {cfg.epochs:g} to {epochs:g} to reach {cfg.min_steps} optimizer steps")
    if small and cfg.learning_rate is None and not cfg.from_scratch:
        why.append(f"small data ({fit_size} examples): learning rate {lr:g}")
    if evaluations:
        why.append(f"evaluated {evaluations} times, the best checkpoint kept, no early stop")
    record = {
        "min_steps": cfg.min_steps,
        "steps": steps,
        "epochs": epochs,
        "epochs_asked": cfg.epochs,
        "learning_rate": lr,
        "batch_size": cfg.batch_size,
        "fit_size": fit_size,
        "small_data": small,
        "evaluations": evaluations,
        "why": "; ".join(why) or "trained as configured",
    }
    return dataclasses.replace(cfg, **changes), record
