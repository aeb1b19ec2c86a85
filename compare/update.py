"""What it costs each backend to absorb new labeled examples, and what it changes.

Retrieval: `add` them to a copy of the index (nothing saved), timed, and score a held-out slice before and after.
Fine-tuning: the model learns nothing until it is retrained; the retraining time is estimated from its run.json
(the examples it would train on, the epochs it ran, the throughput it measured), and said to be an estimate.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from compare.metrics import accuracy


def knowledge_update(
    rag=None,
    finetune_meta: dict[str, Any] | None = None,
    new_texts: Sequence[str] = (),
    new_labels: Sequence[str] = (),
    heldout_texts: Sequence[str] = (),
    heldout_labels: Sequence[str] = (),
) -> dict[str, Any]:
    """Measure the update for the retrieval backend `rag` and estimate it for the fine-tuned model.

    Raises:
        ValueError: no new examples or no held-out slice, or lengths that do not match.
    """
    if not new_texts or len(new_texts) != len(new_labels):
        raise ValueError(f"need new labeled examples, got {len(new_texts)} texts and {len(new_labels)} labels")
    if not heldout_texts or len(heldout_texts) != len(heldout_labels):
        raise ValueError("need a held-out slice with one label per text")
    out: dict[str, Any] = {"new_examples": len(new_texts), "heldout": len(heldout_texts)}
    parts = []
    if rag is not None:
        sandbox = rag.copy()
        before = accuracy([p.label for p in sandbox.predict(list(heldout_texts))], list(heldout_labels))
        start = time.perf_counter()
        sandbox.add(list(new_texts), list(new_labels))
        seconds = time.perf_counter() - start
        after = accuracy([p.label for p in sandbox.predict(list(heldout_texts))], list(heldout_labels))
        out["rag"] = {
            "seconds": round(seconds, 3),
            "accuracy_before": before,
            "accuracy_after": after,
            "accuracy_change": after - before,
            "measured": True,
        }
        parts.append(
            f"RAG absorbed {len(new_texts)} new labeled examples in {seconds:.1f} s (measured); held-out accuracy "
            f"went from {before:.4f} to {after:.4f} ({100 * (after - before):+.2f} points)."
        )
    if finetune_meta:
        size = int(finetune_meta.get("train_size") or 0) + len(new_texts)
        epochs = float(finetune_meta.get("epochs_run") or finetune_meta.get("config", {}).get("epochs") or 1.0)
        speed = finetune_meta.get("train_samples_per_second")
        estimate = size * epochs / speed if speed else None
        out["finetune"] = {
            "seconds": round(estimate, 1) if estimate is not None else None,
            "accuracy_change": 0.0,
            "measured": False,
            "how": f"a full retrain on {size} examples for {epochs:g} epochs at the {speed} samples/s recorded in "
            "its run.json (estimate)",
        }
        retrain = f"about {estimate / 60:.1f} min (estimated" if estimate is not None else "an unknown time ("
        parts.append(
            f"The fine-tuned model learns nothing from them until it is retrained: {retrain} from its run.json: "
            f"{size} examples x {epochs:g} epochs at {speed} samples/s)."
        )
    out["summary"] = " ".join(parts)
    return out
