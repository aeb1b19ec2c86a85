"""The teach log: every example taught to a live index, appended to SQLite (WAL, fsynced) with its vector.

A teach is then one small committed insert (milliseconds) instead of a rewrite of the whole index; the index
replays the log when it loads (no re-embedding: the vectors are stored). Each taught example has an id and can be
removed; removal is recorded, never lost at a crash. `RagClassifier.compact` folds taught examples into the saved
index files from time to time, and the log then forgets what no longer needs replaying.

Row states: *live* (replayed at load), *folded* (already in the saved index, which marks it with its ``teach_id``),
*removed* (gone: the load takes it out of the saved index's rows when they hold it; a compaction forgets it once
the saved index no longer does).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SCHEMA = """
CREATE TABLE IF NOT EXISTS taught (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    text TEXT NOT NULL,
    label TEXT NOT NULL,
    vector BLOB NOT NULL,
    client TEXT,
    created REAL NOT NULL,
    removed INTEGER NOT NULL DEFAULT 0,
    folded INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS taught_text ON taught (text, label) WHERE removed = 0;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(frozen=True)
class Taught:
    """One row of the log."""

    id: int
    text: str
    label: str
    vector: np.ndarray
    removed: bool = False
    folded: bool = False


class TeachLog:
    """An append-only record of taught examples in one SQLite file (safe to share between threads).

    Args:
        path: the database file (created with its folder when missing).
        embedder: the embedder's name, stored once; vectors in a log written by another embedder are not reused.
    """

    def __init__(self, path: str | Path, embedder: str = "") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")  # each commit is on disk before the teach is acknowledged
            self._db.executescript(SCHEMA)
            row = self._db.execute("SELECT value FROM meta WHERE key = 'embedder'").fetchone()
            if row is None:
                self._db.execute("INSERT INTO meta VALUES ('embedder', ?)", (embedder,))
            self.embedder = row[0] if row else embedder

    def append(
        self, texts: Sequence[str], labels: Sequence[str], vectors: np.ndarray, client: str = ""
    ) -> list[tuple[int, bool]]:
        """Record labeled examples in one transaction; returns ``(id, merged)`` per example.

        An example whose text and label a live row already holds is merged into it (its id is returned, nothing is
        written), so repeating an example does not give it more votes.
        """
        out: list[tuple[int, bool]] = []
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                for text, label, vector in zip(texts, labels, vectors, strict=True):
                    found = self._db.execute(
                        "SELECT id FROM taught WHERE text = ? AND label = ? AND removed = 0", (text, label)
                    ).fetchone()
                    if found:
                        out.append((int(found[0]), True))
                        continue
                    cursor = self._db.execute(
                        "INSERT INTO taught (text, label, vector, client, created) VALUES (?, ?, ?, ?, ?)",
                        (text, label, vector.tobytes(), client, time.time()),
                    )
                    out.append((int(cursor.lastrowid), False))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return out

    def remove(self, teach_id: int) -> Taught | None:
        """Mark example `teach_id` removed; returns it, or None when there is no such live example."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, text, label, vector, removed, folded FROM taught WHERE id = ? AND removed = 0", (teach_id,)
            ).fetchone()
            if row is None:
                return None
            self._db.execute("UPDATE taught SET removed = 1 WHERE id = ?", (teach_id,))
        return _row(row)

    def rows(self) -> list[Taught]:
        """Every row, oldest first: live ones are replayed at load, removed ones are taken out of the saved rows.

        After a compaction the removed rows that remain are only those the saved index still holds.
        """
        with self._lock:
            rows = self._db.execute(
                "SELECT id, text, label, vector, removed, folded FROM taught ORDER BY id"
            ).fetchall()
        return [_row(r) for r in rows]

    def folded(self, ids: Sequence[int]) -> None:
        """Record that the saved index now holds examples `ids`; drop removed rows the saved index no longer holds."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("UPDATE taught SET folded = 0")  # the newly saved index is the truth
                self._db.executemany("UPDATE taught SET folded = 1 WHERE id = ?", [(int(i),) for i in ids])
                self._db.execute("DELETE FROM taught WHERE removed = 1 AND folded = 0")
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _row(row: tuple) -> Taught:
    teach_id, text, label, blob, removed, folded = row
    return Taught(int(teach_id), text, label, np.frombuffer(blob, dtype=np.float32), bool(removed), bool(folded))
