"""A fine-tune's training curve, read from its run.json: the training loss per logging step, the evaluation loss and
accuracy per evaluation, the kept (best) checkpoint, and a plain-words note when the two losses part (overfitting).

Used by the app's Models tab, the model card and compare's report, so that the curve is where people look.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

GAP_RISES = 2
"""Evaluations in a row whose eval loss rises while the training loss falls before the note calls it overfitting."""


def curve(run: dict[str, Any]) -> dict[str, Any]:
    """``{"train": [(step, loss)], "eval": [(step, eval_loss, eval_accuracy)], "best_step"}`` from a run.json
    (``train_history`` holds the training losses; ``history`` the evaluations).

    >>> curve({"history": [{"step": 10, "eval_loss": 0.9, "eval_accuracy": 0.5}], "best_checkpoint_step": 10})
    {'train': [], 'eval': [(10, 0.9, 0.5)], 'best_step': 10}
    """
    train = [(int(r["step"]), float(r["loss"])) for r in run.get("train_history") or [] if r.get("loss") is not None]
    evals = [(int(r["step"]), float(r["eval_loss"]), float(r["eval_accuracy"]))
             for r in run.get("history") or [] if r.get("eval_loss") is not None]  # fmt: skip
    return {"train": train, "eval": evals, "best_step": run.get("best_checkpoint_step")}


def overfitting_note(run: dict[str, Any]) -> str | None:
    """A sentence when the evaluation loss rose for GAP_RISES evaluations in a row while the training loss fell
    (the model memorises its training examples); None otherwise.

    >>> run = {"history": [{"step": s, "eval_loss": l, "eval_accuracy": 0.7} for s, l in [(1, .6), (2, .7), (3, .8)]],
    ...        "train_history": [{"step": s, "loss": l} for s, l in [(1, .9), (2, .5), (3, .3)]],
    ...        "best_checkpoint_step": 1}
    >>> overfitting_note(run)[:80]
    'overfitting: the evaluation loss rose from 0.600 (step 1) to 0.800 (step 3) whil'
    """
    points = curve(run)
    evals, train = points["eval"], points["train"]
    if len(evals) <= GAP_RISES or not train:
        return None
    last = evals[-(GAP_RISES + 1) :]
    rising = all(b[1] > a[1] for a, b in itertools.pairwise(last))
    before = [loss for step, loss in train if step <= last[0][0]]
    falling = bool(before) and train[-1][1] < before[-1]
    if not (rising and falling):
        return None
    kept = f"; the kept checkpoint is step {points['best_step']}" if points["best_step"] is not None else ""
    return (f"overfitting: the evaluation loss rose from {last[0][1]:.3f} (step {last[0][0]}) to {last[-1][1]:.3f} "
            f"(step {last[-1][0]}) while the training loss fell to {train[-1][1]:.3f}{kept}")  # fmt: skip


def plot(run: dict[str, Any], path: str | Path, title: str = "Training curve") -> Path | None:
    """A PNG of the losses (left) and the evaluation accuracy (right) per step, the kept checkpoint marked; None when
    the run recorded no evaluation."""
    from core.plots import plotting, save_figure

    points = curve(run)
    if not points["eval"]:
        return None
    with plotting() as plt:
        fig, (losses, accuracy) = plt.subplots(1, 2, figsize=(9, 3.6))
        if points["train"]:
            losses.plot(*zip(*points["train"], strict=True), label="training loss", lw=1)
        steps = [p[0] for p in points["eval"]]
        losses.plot(steps, [p[1] for p in points["eval"]], "o-", label="evaluation loss")
        accuracy.plot(steps, [p[2] for p in points["eval"]], "o-", color="tab:green")
        if points["best_step"] is not None:
            for ax in (losses, accuracy):
                ax.axvline(points["best_step"], color="grey", ls="--", lw=1, label="kept checkpoint")
        losses.set(xlabel="step", ylabel="loss", title="Loss")
        losses.legend(fontsize=8)
        accuracy.set(xlabel="step", ylabel="accuracy", title="Evaluation accuracy")
        note = overfitting_note(run)
        fig.suptitle(title + (" (overfitting: see the note)" if note else ""), fontsize=10)
        return save_figure(fig, Path(path))
