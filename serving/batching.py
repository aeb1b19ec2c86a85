"""Dynamic micro-batching: concurrent single-text requests to one backend become one batched `predict`.

Each backend gets one worker thread. A request puts its text on the worker's queue and waits; the worker takes the
first waiting text, gathers whatever else arrives within ``wait_ms`` (up to ``max_batch`` texts), and answers all of
them with one `predict` call. Under a crowd that turns many small forward passes (each paying the model's fixed
per-call cost) into a few larger ones. The worker waits only when there is a crowd (more than one text queued, or a
last batch of several): a lone request is answered at once, with no wait.
``FTRAG_BATCH_WAIT_MS`` sets the wait (0 turns batching off).

Each worker can run its model on fewer intra-op threads (`threads`): the app gives each backend's worker its share of
the cores (one each for two backends on 2 cores), so the backends compute side by side instead of four threads
fighting over two cores. Measured under 32 clients on 2 cores: 13% more requests a second and a lone request 2 ms
faster than with two threads each (docs/results.md, "The app under load").
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future

from core.types import Classifier, Prediction

logger = logging.getLogger(__name__)

DEFAULT_WAIT_MS = 5.0
MAX_BATCH = 64


def wait_ms_from_env() -> float:
    """``FTRAG_BATCH_WAIT_MS`` (default 5 ms); 0 means no batching."""
    value = float(os.environ.get("FTRAG_BATCH_WAIT_MS", DEFAULT_WAIT_MS))
    if not 0 <= value <= 1000:
        raise ValueError(f"FTRAG_BATCH_WAIT_MS must be between 0 and 1000, got {value}")
    return value


class MicroBatcher:
    """Answers `predict_one` calls from many threads with batched `predict` calls of one classifier.

    Args:
        classifier: any `Classifier` (thread-safe, as every backend here is: other callers use it directly too).
        wait_ms: how long the worker waits for more texts once it has one.
        max_batch: the most texts in one `predict` call.
        threads: PyTorch intra-op threads for the worker's model calls (None: the process's setting); other threads
            keep theirs.
    """

    def __init__(
        self,
        classifier: Classifier,
        wait_ms: float = DEFAULT_WAIT_MS,
        max_batch: int = MAX_BATCH,
        threads: int | None = None,
    ) -> None:
        if wait_ms < 0 or max_batch < 1 or (threads is not None and threads < 1):
            raise ValueError(f"need wait_ms >= 0, max_batch >= 1, threads >= 1; got {wait_ms}, {max_batch}, {threads}")
        self.classifier = classifier
        self.wait_s = wait_ms / 1000.0
        self.max_batch = max_batch
        self.batches = 0
        self.texts = 0
        self._queue: list[tuple[str, Future]] = []
        self._last_batch = 0
        self._ready = threading.Condition()
        self._closed = False
        self.threads = threads
        self._worker = threading.Thread(target=self._run, name=f"batcher-{classifier.name}", daemon=True)
        self._pinned = threading.Event()
        if threads is None:
            self._worker.start()
        else:
            import torch

            with _THREADS_LOCK:
                before = torch.get_num_threads()
                self._worker.start()
                self._pinned.wait()  # set by the worker whether or not pinning worked
                torch.set_num_threads(before)

    def submit(self, text: str) -> Future:
        """Queue one text; the future resolves to its `Prediction` (or the error `predict` raised)."""
        future: Future = Future()
        with self._ready:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._queue.append((text, future))
            self._ready.notify()
        return future

    def predict_one(self, text: str) -> Prediction:
        return self.submit(text).result()

    def close(self) -> None:
        with self._ready:
            self._closed = True
            self._ready.notify()

    def _take(self) -> list[tuple[str, Future]]:
        with self._ready:
            while not self._queue and not self._closed:
                self._ready.wait()
            # Wait for company only when there is a crowd: more than this text queued, or a last batch of several.
            # A lone request is answered at once; under load the queue fills while the model runs anyway.
            crowded = len(self._queue) > 1 or self._last_batch > 1
            deadline = time.monotonic() + (self.wait_s if crowded else 0.0)
            while len(self._queue) < self.max_batch and not self._closed:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._ready.wait(left)
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch :]
            self._last_batch = len(batch)
            return batch

    def _run(self) -> None:
        if self.threads is not None:
            try:
                _use_torch_threads(self.threads)
            except Exception:  # the worker serves on the process's thread count rather than not at all
                logger.exception("Could not set the %s batcher's threads", self.classifier.name)
            finally:
                self._pinned.set()
        while True:
            batch = self._take()
            if not batch:
                return  # closed and drained
            self._answer(batch)

    def _answer(self, batch: Sequence[tuple[str, Future]]) -> None:
        try:
            predictions = self.classifier.predict([text for text, _ in batch])
            if len(predictions) != len(batch):
                raise RuntimeError(f"{self.classifier.name} answered {len(predictions)} of {len(batch)} texts")
        except Exception as err:  # every waiting caller gets it (and re-raises it); the worker goes on
            if len(batch) > 1:  # one bad text must not fail everyone else's request: answer each alone
                for item in batch:
                    self._answer([item])
                return
            for _, future in batch:
                future.set_exception(err)
            return
        self.batches += 1
        self.texts += len(batch)
        for (_, future), prediction in zip(batch, predictions, strict=True):
            future.set_result(prediction)


_THREADS_LOCK = threading.Lock()


def _use_torch_threads(threads: int) -> None:
    """Make the calling thread's PyTorch ops use `threads` intra-op threads.

    PyTorch keeps one process-wide count, which each thread copies into its own OpenMP setting at its first parallel
    op. So this sets the count and runs a parallel op at once: the calling thread's copy is then `threads`. The
    caller (`MicroBatcher.__init__`) sets the count back afterwards, so every other thread keeps the old one. A thread
    whose first parallel op falls within those few microseconds would keep `threads` too: a matter of speed only.
    """
    import torch

    torch.set_num_threads(threads)
    torch.ones(1 << 16).sum()  # a parallel op: this thread's count is fixed from here on
