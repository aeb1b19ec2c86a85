"""The retrieval classifier: embed the query, find its nearest labeled examples, let them vote.

Every answer is explained by real examples (the `evidence`), and new labeled examples count at once (`add`).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from core.files import ArtifactError
from core.settings import screen_name
from core.types import LABELS, Prediction, check_labels, check_texts
from rag.config import WEIGHTINGS, RagConfig
from rag.embed import Embedder, EmbedderError
from rag.index import VectorIndex
from rag.store import (
    FORMAT_VERSION,
    check_embedder,
    read_saved,
    recorded_embedder,
    write_saved,
)
from rag.teachlog import TeachLog

logger = logging.getLogger(__name__)

EVIDENCE_SIZE = 10
"""Neighbours returned as evidence with each prediction (the vote may use more)."""


def vote(
    scores: np.ndarray, ids: np.ndarray, example_labels: np.ndarray, n_labels: int, weighting: str, temperature: float
) -> np.ndarray:
    """Turn neighbour hits into label probabilities, one row per query, each summing to 1.

    Args:
        scores, ids: ``(n, k)`` similarities and example ids, best first (id -1 = no hit).
        example_labels: label index of every example.
        weighting: ``uniform``, ``similarity`` (negative similarities count 0) or ``softmax`` (``exp(s / T)``).

    >>> vote(np.array([[0.9, 0.5, 0.1]]), np.array([[0, 1, 2]]), np.array([1, 0, 0]), 3, "uniform", 1.0).round(3)
    array([[0.667, 0.333, 0.   ]])
    """
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {weighting!r}")
    valid = ids >= 0
    scores = np.where(valid, scores, -np.inf)
    if weighting == "uniform":
        weights = valid.astype(np.float64)
    elif weighting == "similarity":
        weights = np.where(valid, np.clip(scores, 0.0, None), 0.0)
    else:
        top = scores.max(axis=1, keepdims=True)
        weights = np.where(valid, np.exp((scores - top) / temperature), 0.0)
    # A query whose hits all weigh 0 (every similarity negative) falls back to one vote per hit.
    empty = weights.sum(axis=1) <= 0
    weights[empty] = valid[empty]
    probs = np.zeros((len(ids), n_labels), dtype=np.float64)
    rows = np.repeat(np.arange(len(ids)), ids.shape[1])
    np.add.at(probs, (rows, example_labels[np.where(valid, ids, 0)].ravel()), weights.ravel())
    totals = probs.sum(axis=1, keepdims=True)
    return probs / np.where(totals > 0, totals, 1.0)


def label_ids_of(labels: Sequence[str], names: Sequence[str]) -> np.ndarray:
    """Each label's position in `names`, or a ValueError naming the labels outside them.

    >>> label_ids_of(["b", "a", "b"], ["a", "b"])
    array([1, 0, 1])
    """
    lookup = {name: i for i, name in enumerate(names)}
    unknown = sorted({str(label) for label in labels if label not in lookup})
    if unknown:
        raise ValueError(f"unknown label(s) {unknown}; this index knows only {list(names)}")
    return np.array([lookup[label] for label in labels], dtype=np.int64)


class RagClassifier:
    """k-nearest-neighbour vote over labeled examples embedded with sentence-transformers and indexed in FAISS.

    Empty or whitespace-only queries get the label shares of the indexed examples (nothing to retrieve with) and no
    evidence. Long queries are truncated by the embedder to its maximum sequence length (256 tokens for MiniLM).
    `predict` and `add` are safe to call from many threads; `add` calls are serialised and persisted atomically.
    """

    def __init__(
        self,
        embedder: Embedder,
        index: VectorIndex,
        texts: Sequence[str],
        labels: Sequence[str],
        k: int = 50,
        weighting: str = "softmax",
        temperature: float = 0.05,
        label_names: Sequence[str] | None = None,
        name: str = "rag",
        meta: dict[str, Any] | None = None,
        directory: str | Path | None = None,
        teach_ids: Sequence[int] | None = None,
    ) -> None:
        if len(texts) != len(labels) or len(texts) != len(index):
            raise ValueError(f"{len(texts)} texts, {len(labels)} labels and {len(index)} vectors must be as many")
        if index.dim != embedder.dim:
            raise EmbedderError(
                f"the index holds {index.dim}-d vectors but the embedder {embedder.name} makes {embedder.dim}-d ones"
            )
        RagConfig(k=k, weighting=weighting, temperature=temperature)  # validates the voting parameters
        self.name = name
        self.labels = check_labels(sorted(set(labels)) if label_names is None else label_names)
        self.embedder = embedder
        self.index = index
        self.k = int(k)
        self.weighting = weighting
        self.temperature = float(temperature)
        self.meta = dict(meta or {})
        self.directory = Path(directory) if directory is not None else None
        self._texts = list(texts)
        self._label_ids = self._to_ids(labels)
        # The teach-log id of each row (-1: an example the index was built with); see `teach` and `forget`.
        self._teach_ids = np.full(len(texts), -1, dtype=np.int64) if teach_ids is None else np.asarray(teach_ids)
        self.log: TeachLog | None = None
        self._forgotten: set[int] = set()  # removed taught ids, so that a teach racing a removal cannot revive one
        self._lock = threading.RLock()

    # --- the Classifier contract ---------------------------------------------------------------------------------

    def predict(self, texts: Sequence[str], *, exclude_identical: bool = False) -> list[Prediction]:
        """Label each text by a weighted vote of its `k` nearest examples; evidence = the closest of them.

        Args:
            exclude_identical: leave out examples whose text equals the query (leave-one-out scoring of texts the
                index holds, e.g. to tune something on a slice of the training data).
        """
        texts = check_texts(texts)
        if not texts:
            return []
        wanted = [i for i, t in enumerate(texts) if t.strip()]
        vectors = self.embedder.encode([texts[i] for i in wanted])  # the slow part, outside the lock
        with self._lock:
            results: list[Prediction | None] = [None] * len(texts)
            if wanted:
                if exclude_identical:
                    scores, ids = self._search_excluding([texts[i] for i in wanted], vectors)
                else:
                    scores, ids = self.index.search(vectors, self.k)
                probs = vote(scores, ids, self._label_ids, len(self.labels), self.weighting, self.temperature)
                for row, i in enumerate(wanted):
                    evidence = self._hits(scores[row, :EVIDENCE_SIZE], ids[row, :EVIDENCE_SIZE])
                    results[i] = Prediction.from_scores(
                        dict(zip(self.labels, probs[row].tolist(), strict=True)), evidence
                    )
            if len(wanted) == len(texts):
                return results  # type: ignore[return-value]
            prior = self._prior()  # only blank queries need it: a count over every example
            return [r if r is not None else prior for r in results]

    def predict_with(self, texts: Sequence[str], extra: Sequence[dict[str, Any]]) -> list[Prediction]:
        """`predict` as if the index also held the `extra` examples (``{"text", "label", "vector"}``, e.g. one
        visitor's own taught examples, see `embed_example`), without changing the index that everyone else uses.

        The extra examples compete with the indexed ones for the `k` nearest places, exactly as if added.
        """
        if not extra:
            return self.predict(texts)
        texts = check_texts(texts)
        own_vectors = np.asarray([e["vector"] for e in extra], dtype=np.float32)
        own_labels = self._to_ids([e["label"] for e in extra])
        wanted = [i for i, t in enumerate(texts) if t.strip()]
        if not wanted:
            return self.predict(texts)
        vectors = self.embedder.encode([texts[i] for i in wanted])
        with self._lock:
            scores, ids = self.index.search(vectors, self.k)
            base = len(self._texts)
            own_scores = vectors @ own_vectors.T  # cosine: every vector is L2-normalised
            scores = np.concatenate([np.where(ids >= 0, scores, -np.inf), own_scores], axis=1)
            ids = np.concatenate([ids, np.broadcast_to(base + np.arange(len(extra)), own_scores.shape)], axis=1)
            order = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]
            scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
            label_ids = np.concatenate([self._label_ids, own_labels])
            probs = vote(scores, ids, label_ids, len(self.labels), self.weighting, self.temperature)
            prior = self._prior() if len(wanted) < len(texts) else None  # only blank queries need it, as in predict
            results: list[Prediction] = [prior] * len(texts)  # type: ignore[list-item]
            for row, i in enumerate(wanted):
                evidence = []
                for score, j in zip(scores[row, :EVIDENCE_SIZE], ids[row, :EVIDENCE_SIZE], strict=True):
                    if j >= base:
                        own = extra[j - base]
                        evidence.append(
                            {"text": own["text"], "label": own["label"], "score": float(score), "own": True}
                        )
                    elif j >= 0:
                        evidence.extend(self._hits(np.array([score]), np.array([j])))
                results[i] = Prediction.from_scores(dict(zip(self.labels, probs[row].tolist(), strict=True)), evidence)
            return results

    def embed_example(self, text: str, label: str) -> dict[str, Any]:
        """``{"text", "label", "vector"}`` for `predict_with`: the example embedded once, its label checked."""
        [text] = check_texts([text])
        if not text.strip():
            raise ValueError("an example needs some text")
        self._to_ids([label])  # raises on a label outside the index's label set
        return {"text": text, "label": label, "vector": self.embedder.encode([text])[0].tolist()}

    def _search_excluding(self, queries: list[str], vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        extra = 8  # room for duplicates of the query in the index
        scores, ids = self.index.search(vectors, self.k + extra)
        out_scores = np.full((len(queries), self.k), -np.inf, dtype=scores.dtype)
        out_ids = np.full((len(queries), self.k), -1, dtype=ids.dtype)
        for row, query in enumerate(queries):
            keep = [c for c, j in enumerate(ids[row]) if j >= 0 and self._texts[j] != query][: self.k]
            out_scores[row, : len(keep)] = scores[row, keep]
            out_ids[row, : len(keep)] = ids[row, keep]
        return out_scores, out_ids

    def retrieve(self, query: str, k: int = EVIDENCE_SIZE) -> list[dict[str, Any]]:
        """The `k` labeled examples nearest to `query`, best first, as ``{"text", "label", "score"}``."""
        if not query.strip():
            return []
        vector = self.embedder.encode([query])
        with self._lock:
            scores, ids = self.index.search(vector, k)
            return self._hits(scores[0], ids[0])

    def _hits(self, scores: np.ndarray, ids: np.ndarray) -> list[dict[str, Any]]:
        return [
            {"text": self._texts[j], "label": self.labels[self._label_ids[j]], "score": float(s)}
            for s, j in zip(scores, ids, strict=True)
            if j >= 0
        ]

    def _prior(self) -> Prediction:
        counts = np.bincount(self._label_ids, minlength=len(self.labels)).astype(np.float64)
        return Prediction.from_scores(dict(zip(self.labels, (counts / counts.sum()).tolist(), strict=True)))

    # --- live updates --------------------------------------------------------------------------------------------

    def add(self, texts: Sequence[str], labels: Sequence[str]) -> int:
        """Add labeled examples: searchable as soon as this returns, and saved first when the index has a directory.

        All or nothing: if embedding or saving fails, neither memory nor disk changes. Returns the new size.
        """
        texts = check_texts(texts)
        labels = list(labels) if not isinstance(labels, str) else [labels]
        if len(texts) != len(labels):
            raise ValueError(f"add() got {len(texts)} texts but {len(labels)} labels")
        if not texts:
            raise ValueError("add() needs at least one labeled example")
        blank = [i for i, t in enumerate(texts) if not t.strip()]
        if blank:
            raise ValueError(f"add() got empty text at position(s) {blank[:10]}")
        self._to_ids(labels)  # unknown labels are refused before the embedder runs
        vectors = self.embedder.encode(texts)
        with self._lock:
            before, meta = len(self._texts), self.meta
            try:
                self._append(vectors, texts, labels, [-1] * len(texts))  # in place: the index is never copied
                self.meta = {**meta, "size": len(self._texts), "added": meta.get("added", 0) + len(texts)}
                if self.directory is not None:
                    self._write(self.directory, self.index, self._texts, self._label_ids, self.meta, self._teach_ids)
            except BaseException:  # all or nothing: take the new rows out again
                self._truncate(before)
                self.meta = meta
                raise
            return len(self._texts)

    # --- taught examples: an append-only log, replayed at load ---------------------------------------------------

    def open_log(self, path: str | Path | None = None) -> TeachLog:
        """Open (or create) the teach log, by default beside the index directory, and replay it into memory."""
        if path is None:
            if self.directory is None:
                raise ValueError("an index without a directory needs an explicit teach log path")
            path = teach_log_path(self.directory)
        log = TeachLog(path, embedder=self.embedder.name)
        self._replay(log)
        self.log = log
        return log

    def _replay(self, log: TeachLog) -> None:
        rows = log.rows()
        removed = {r.id for r in rows if r.removed}
        with self._lock:
            present = self._taught_ids()
            try:
                self._drop(removed & present)
            except ValueError as err:  # an approximate index cannot remove them: serve, and say so
                logger.warning("%s; %d removed examples still vote", err, len(removed & present))
            fresh = [r for r in rows if not r.removed and r.id not in present and r.label in self.labels]
            if not fresh:
                return
            if log.embedder == self.embedder.name and all(r.vector.shape == (self.index.dim,) for r in fresh):
                vectors = np.stack([r.vector for r in fresh])
            else:  # written with another embedder: its vectors do not fit this index
                logger.warning("The teach log was written with another embedder; re-embedding %d examples", len(fresh))
                vectors = self.embedder.encode([r.text for r in fresh])
            self._append(vectors, [r.text for r in fresh], [r.label for r in fresh], [r.id for r in fresh])

    def teach(self, texts: Sequence[str], labels: Sequence[str], client: str = "") -> list[dict[str, Any]]:
        """Add labeled examples through the teach log: recorded on disk (one small fsynced insert), then searchable.

        Never rewrites the index files and holds the query lock only to append the new vectors. An example whose
        text and label are already taught is merged (no second vote). Returns ``{"id", "merged"}`` per example.
        """
        if self.log is None:
            raise ValueError("open the teach log first (open_log)")
        texts = check_texts(texts)
        labels = list(labels)
        self._to_ids(labels)  # unknown labels are refused before anything is written
        vectors = self.embedder.encode(texts)  # the slow part, outside the lock
        written = self.log.append(texts, labels, vectors, client=client)
        new = [i for i, (_, merged) in enumerate(written) if not merged]
        with self._lock:  # an id forgotten between the log write and here must not come back
            present = self._taught_ids() | self._forgotten
            new = [i for i in new if written[i][0] not in present]
            if new:
                rows = [(texts[i], labels[i], written[i][0]) for i in new]
                self._append(vectors[new], *(list(column) for column in zip(*rows, strict=True)))
        return [{"id": teach_id, "merged": merged} for teach_id, merged in written]

    def forget(self, teach_id: int) -> bool:
        """Remove taught example `teach_id` (recorded in the log first); False when there is no such live example.

        Taught examples sit in the index's exact delta (or the engine), so any index removes them, unless an
        approximate index was rebuilt with them inside.

        Raises:
            ValueError: the example is inside an approximate (hnsw, ivf) main index: it cannot remove single rows.
        """
        with self._lock:
            positions = self._positions({int(teach_id)})
            if len(positions) and not self.index.removable(positions):
                kind = self.index.kind
                raise ValueError(f"this taught example is in the {kind} index itself, which cannot remove it")
        if self.log is None or self.log.remove(int(teach_id)) is None:
            return False
        with self._lock:
            self._forgotten.add(int(teach_id))
            self._drop({int(teach_id)})
        return True

    def _taught_ids(self) -> set[int]:
        """The teach-log ids of the examples held in memory now."""
        return set(self._teach_ids[self._teach_ids >= 0].tolist())

    def _append(self, vectors: np.ndarray, texts: list[str], labels: list[str], teach_ids: list[int]) -> None:
        payloads = None
        if self.index.stores_examples:  # an engine keeps each example's text and label with its vector
            rows = zip(texts, labels, teach_ids, strict=True)
            payloads = [{"text": t, "label": lb, "teach_id": int(i)} for t, lb, i in rows]
        self.index.add(vectors, payloads)
        self._texts.extend(texts)
        self._label_ids = np.concatenate([self._label_ids, self._to_ids(labels)])
        self._teach_ids = np.concatenate([self._teach_ids, np.asarray(teach_ids, dtype=np.int64)])

    def _truncate(self, size: int) -> None:
        """Take out every row after the first `size` (undo an `add` that could not be saved)."""
        self.index.truncate(size)
        del self._texts[size:]
        self._label_ids, self._teach_ids = self._label_ids[:size], self._teach_ids[:size]

    def _positions(self, teach_ids: set[int]) -> np.ndarray:
        return np.flatnonzero(np.isin(self._teach_ids, list(teach_ids))) if teach_ids else np.zeros(0, np.int64)

    def _drop(self, teach_ids: set[int]) -> None:
        positions = self._positions(teach_ids)
        if len(positions) == 0:
            return
        if not self.index.removable(positions):
            kind = self.index.kind
            raise ValueError(f"these taught examples are in the {kind} index itself, which cannot remove them")
        self.index.remove_ids(positions)  # later rows move up, as here
        gone = set(positions.tolist())
        self._texts = [t for i, t in enumerate(self._texts) if i not in gone]
        self._label_ids = np.delete(self._label_ids, positions)
        self._teach_ids = np.delete(self._teach_ids, positions)

    def compact(self) -> int:
        """Fold taught examples into the saved index files, so the log has less to replay; returns the rows saved.

        The files are written from a snapshot outside the query lock; teaches and removals that happen meanwhile
        stay in the log and are replayed correctly at the next load.
        """
        if self.log is None or self.directory is None:
            return 0
        with self._lock:
            index = self.index.snapshot()  # shares the main index, copies only the delta
            texts, label_ids, teach_ids = list(self._texts), self._label_ids.copy(), self._teach_ids.copy()
            meta = dict(self.meta)
        self._write(self.directory, index, texts, label_ids, {**meta, "size": len(texts)}, teach_ids)
        self.log.folded(teach_ids[teach_ids >= 0].tolist())
        return len(texts)

    def describe(self) -> str:
        """One line that says what this classifier is: the vote, the corpus and the embedder."""
        vote_kind = f"{self.weighting}" + (f" T={self.temperature:g}" if self.weighting == "softmax" else "")
        embedder = screen_name(self.embedder.name)
        return (
            f"kNN vote (k={self.k}, {vote_kind}) over {self.size:,} labeled examples embedded with {embedder} "
            f"({self.index_summary()})"
        )

    def index_summary(self) -> str:
        """Where the examples are searched and, for approximate search, how close to exact it measured at build:
        ``hnsw index, recall@300 0.97, vote agreement 99.6% vs exact``."""
        kind = self.index.kind
        where = f"Qdrant collection {self.index.collection}" if self.index.stores_examples else f"{kind} index"
        measured = self.meta.get("approximate") or {}
        if measured.get("recall_at_k") is None:
            return where
        return (
            f"{where}, recall@{measured['k']} {measured['recall_at_k']:.3f}, vote agreement "
            f"{100 * measured['vote_agreement']:.1f}% vs exact"
        )

    def copy(self) -> RagClassifier:
        """An independent in-memory copy (same embedder, no directory): `add` on it saves nothing and changes only
        the copy. The main index is shared, not copied (neither changes it in place; see `VectorIndex.snapshot`)."""
        with self._lock:
            return RagClassifier(
                self.embedder,
                self.index.snapshot(),
                list(self._texts),
                [self.labels[i] for i in self._label_ids],
                k=self.k,
                weighting=self.weighting,
                temperature=self.temperature,
                label_names=self.labels,
                name=self.name,
                meta=dict(self.meta),
            )

    def memory_bytes(self) -> int:
        """Approximate memory held: the index vectors, the example texts and the embedder's weights
        (`Embedder.weight_bytes`)."""
        vectors = self.index.nbytes()
        texts = sum(len(t.encode("utf-8")) for t in self._texts)
        return int(vectors + texts + self.embedder.weight_bytes())

    def _to_ids(self, labels: Sequence[str]) -> np.ndarray:
        return label_ids_of(labels, self.labels)

    @property
    def size(self) -> int:
        return len(self._texts)

    def examples(self) -> tuple[list[str], list[str]]:
        """Copies of the indexed texts and their labels, in index order."""
        with self._lock:
            return list(self._texts), [self.labels[i] for i in self._label_ids]

    # --- files ---------------------------------------------------------------------------------------------------

    def save(self, directory: str | Path) -> Path:
        """Write ``index.faiss``, ``examples.parquet`` and ``run.json`` to `directory` as one atomic unit."""
        with self._lock:
            self._write(Path(directory), self.index, self._texts, self._label_ids, self.meta, self._teach_ids)
        return Path(directory)

    def _write(
        self,
        directory: Path,
        index: VectorIndex,
        texts: list[str],
        label_ids: np.ndarray,
        meta: dict,
        teach_ids: np.ndarray | None = None,
    ) -> None:
        run = {
            **meta,
            "format_version": FORMAT_VERSION,
            "backend": "rag",
            "embedder": self.embedder.name,
            "embedding_dim": index.dim,
            "index_type": index.kind,
            "search_effort": index.effort,
            "search_rerank": index.rerank,
            "size": len(texts),
            "k": self.k,
            "weighting": self.weighting,
            "temperature": self.temperature,
            "labels": self.labels,
            "probe_embedding": self.embedder.probe.round(6).tolist(),
            "saved_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        labels = [self.labels[i] for i in label_ids]
        write_saved(directory, run, index, texts, labels, teach_ids, also=self.index)

    @classmethod
    def load(cls, directory: str | Path, embedder: Embedder | str | None = None) -> RagClassifier:
        """Load a saved index. `embedder` defaults to the one recorded in run.json (re-resolved on this machine).

        Raises:
            ArtifactError: a missing or unreadable file, files that do not belong together, an embedder that is not
                the one the index was built with, labels outside the recorded label set.
        """
        directory, run, index, texts, labels, teach_ids = read_saved(directory)
        if not isinstance(embedder, Embedder):
            embedder = Embedder.load(embedder or recorded_embedder(run))
        check_embedder(directory, run, index.dim, embedder)
        try:
            classifier = cls(
                embedder,
                index,
                texts,
                labels,
                k=run["k"],
                weighting=run["weighting"],
                temperature=run["temperature"],
                label_names=run.get("labels", LABELS),
                meta={k: v for k, v in run.items() if k != "probe_embedding"},
                directory=directory,
                teach_ids=None if teach_ids is None else [-1 if i is None else int(i) for i in teach_ids],
            )
        except (KeyError, TypeError, ValueError) as err:  # labels outside the recorded set, bad voting parameters
            raise ArtifactError(f"{directory}: the saved index does not fit together: {err}") from err
        if teach_log_path(directory).exists():  # examples taught since the files were written
            classifier.open_log()
        return classifier


def teach_log_path(directory: str | Path) -> Path:
    """Where the teach log of the index in `directory` lives: beside it (the directory is replaced as a whole)."""
    directory = Path(directory)
    return directory.with_name(directory.name + ".teach.sqlite")
