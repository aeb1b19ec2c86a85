"""Teaching retrieval: labeled examples added to the shared index (when the operator's `TeachPolicy` allows the
client) or kept in one visitor's session, undone, and folded into the index files in the background. Mixed into
`serving.service.Service`, whose backends it teaches."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Sequence
from typing import Any

from serving.access import Refused
from serving.inputs import InputError, still_building, validate_labels, validate_texts

logger = logging.getLogger(__name__)

MAX_SESSION_EXAMPLES = 50
"""Examples one visitor may teach in their own session (each one is a vector held in that session)."""


class Teaching:
    """`Service`'s teaching: it uses the service's `backends`, `unavailable`, `ready`, `teach_policy`, `_changes`
    (edits since the last compaction) and `_stop`."""

    def teach(self, texts: Any, labels: Any, token: str | None = None, client: str = "") -> dict[str, Any]:
        """Add labeled examples to the shared retrieval index, if `teach_policy` allows this client.

        Recorded in the teach log first (one fsynced insert), searchable as soon as this returns; exact duplicates
        of a taught example are merged. Returns the ids (for `forget`), and what retraining the fine-tune would cost.
        """
        texts = validate_texts(texts, "example")
        self.teach_policy.check(token, client, examples=len(texts))  # who may, before anything about the index
        rag = self._teachable()
        labels = validate_labels([labels] if isinstance(labels, str) else labels, len(texts), rag.labels, "example")
        start = time.perf_counter()
        written = rag.teach(list(texts), list(labels), client=client)
        seconds = time.perf_counter() - start
        self._changes += 1
        merged = sum(w["merged"] for w in written)
        return {
            "added": len(texts) - merged,
            "merged": merged,
            "ids": [w["id"] for w in written],
            "index_size": rag.size,
            "seconds": round(seconds, 4),
            **self.retrain_cost(),
        }

    def forget(self, teach_id: Any, token: str | None = None, client: str = "") -> dict[str, Any]:
        """Remove one taught example from the shared index (the undo of `teach`), if `teach_policy` allows it."""
        if isinstance(teach_id, bool) or not isinstance(teach_id, int) or teach_id < 1:
            raise InputError(f"a taught example's id is a positive integer, got {str(teach_id)[:40]!r}")
        self.teach_policy.check(token, client, examples=1)
        rag = self._teachable()
        try:
            forgotten = rag.forget(teach_id)
        except ValueError as err:  # an index that cannot remove examples (approximate ones)
            raise InputError(str(err)) from err
        if not forgotten:
            raise Refused(f"no taught example has id {teach_id} (or it was already removed)", 404)
        self._changes += 1
        return {"removed": teach_id, "index_size": rag.size}

    def teach_session(self, text: Any, label: Any, own: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """A visitor's own taught examples, `own`, plus this one: embedded once, checked, never in the shared index.

        The page keeps the list in the visitor's session; `compare_session` answers with it. At most
        MAX_SESSION_EXAMPLES per session.
        """
        rag = self._retrieval()
        [text] = validate_texts([text], "example")
        [label] = validate_labels([label], 1, rag.labels, "example")
        if len(own) >= MAX_SESSION_EXAMPLES:
            raise InputError(f"a session holds at most {MAX_SESSION_EXAMPLES} taught examples; undo some first")
        return [*own, rag.embed_example(text, label)]

    def compare_session(self, query: Any, own: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The retrieval answer for `query` before and after the visitor's own examples `own` (see `teach_session`)."""
        rag = self._retrieval()
        [query] = validate_texts([query], "query")
        before = rag.predict([query])[0]
        after = rag.predict_with([query], list(own))[0]
        return {"before": before.to_dict(), "after": after.to_dict()}

    def _retrieval(self):
        rag = self.backends.get("rag")
        if rag is None:
            if "rag" not in self.unavailable and not self.ready.is_set():
                raise still_building()
            why = self.unavailable.get("rag", "not served")
            raise InputError(f"the retrieval backend is not available: {why}")
        return rag

    def _teachable(self):
        """The shared index to teach; callers check `teach_policy` first, so a caller without the right to teach
        learns nothing about the index (401 or 403, not 400 or 503)."""
        rag = self._retrieval()
        if getattr(rag, "log", None) is None:
            raise InputError("this retrieval index has no teach log (it was loaded without a directory)")
        return rag

    def start_compactor(self, interval_s: float) -> threading.Thread | None:
        """Every `interval_s` seconds, in a background thread, `compact_when_changed` (0 = never)."""
        if interval_s <= 0:
            return None

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.compact_when_changed()
                except (OSError, ValueError, sqlite3.Error) as err:  # a full disk, a busy log: it holds all; try later
                    logger.warning("Compacting the teach log failed (%s); it stays as it is", err)

        thread = threading.Thread(target=loop, name="teach-log-compactor", daemon=True)
        thread.start()
        return thread

    def compact_when_changed(self) -> bool:
        """Fold the teach log into the index files if anything was taught or removed since the last time."""
        rag = self.backends.get("rag")
        if not self._changes or rag is None or getattr(rag, "log", None) is None:
            return False
        changes = self._changes
        rag.compact()
        self._changes -= changes  # what happened during the compaction waits for the next one
        return True

    def retrain_cost(self) -> dict[str, Any]:
        """What the fine-tuned model would need to learn the same examples: a retrain, of the measured length."""
        meta = getattr(self.backends.get("finetune"), "meta", None) or {}
        seconds = meta.get("train_seconds")
        return {
            "finetune_retrain_seconds": seconds,
            "finetune_note": (
                f"the fine-tuned model does not learn taught examples until it is retrained: its last training took "
                f"{seconds:.0f} s on {meta.get('train_size')} examples ({meta.get('device', 'cpu')})"
                if seconds is not None
                else "the fine-tuned model does not learn taught examples until it is retrained"
            ),
        }
