"""A small vector-index interface over FAISS: `add`, `search`, `save`, `load`.

Vectors are unit length, so inner product is cosine similarity. ``flat`` is exact; ``hnsw`` and ``ivf`` are
approximate, for corpora in the millions.
"""

from __future__ import annotations

import threading
from pathlib import Path

import faiss
import numpy as np

from core.files import atomic_write

FEW_QUERIES = 16
"""Up to this many queries are searched on one thread: FAISS's OpenMP start-up costs more than it saves."""


_OMP_LOCK = threading.Lock()


class IndexFileError(ValueError):
    """An index file that is missing, truncated or not a FAISS index."""


def _kind_of(index: faiss.Index) -> str:
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    return "flat"


class VectorIndex:
    """Inner-product search over unit vectors; hits come back best first as ids (insertion order) and scores."""

    def __init__(self, index: faiss.Index) -> None:
        self.index = index

    @classmethod
    def create(cls, kind: str, dim: int, train_vectors: np.ndarray | None = None) -> VectorIndex:
        """A new empty index of `kind` (``flat``, ``hnsw`` or ``ivf``); ivf learns its cells from `train_vectors`."""
        if kind == "flat":
            return cls(faiss.IndexFlatIP(dim))
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, 32, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = 80
            index.hnsw.efSearch = 128
            return cls(index)
        if kind == "ivf":
            if train_vectors is None or len(train_vectors) == 0:
                raise ValueError("an ivf index needs vectors to learn its cells from")
            nlist = max(1, min(4096, int(4 * np.sqrt(len(train_vectors))), len(train_vectors) // 39))
            quantizer = faiss.IndexFlatIP(dim)
            index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
            index.train(np.ascontiguousarray(train_vectors, dtype=np.float32))
            index.nprobe = min(nlist, 16)
            return cls(index)
        raise ValueError(f"unknown index type {kind!r}; expected flat, hnsw or ivf")

    @property
    def kind(self) -> str:
        return _kind_of(self.index)

    @property
    def dim(self) -> int:
        return int(self.index.d)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"expected vectors of shape (n, {self.dim}), got {vectors.shape}")
        return vectors

    def add(self, vectors: np.ndarray) -> None:
        """Append vectors; their ids continue from ``len(self)``."""
        self.index.add(self._check(vectors))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best hits per query: ``(scores, ids)``, each ``(n, k)``, best first.

        `k` larger than the index is cut to its size; approximate indexes may return fewer hits (id -1, score -inf).
        """
        queries = self._check(queries)
        k = max(1, min(int(k), len(self)))
        if len(queries) > FEW_QUERIES:
            return self.index.search(queries, k)
        # The thread count is process-wide in FAISS: hold a lock while it is lowered for a small search.
        with _OMP_LOCK:
            threads = faiss.omp_get_max_threads()
            faiss.omp_set_num_threads(1)
            try:
                return self.index.search(queries, k)
            finally:
                faiss.omp_set_num_threads(threads)

    def save(self, path: str | Path) -> None:
        """Write the index atomically: a crash or a full disk leaves any previous file intact."""
        atomic_write(path, lambda tmp: faiss.write_index(self.index, str(tmp)))

    @classmethod
    def load(cls, path: str | Path) -> VectorIndex:
        path = Path(path)
        if not path.is_file():
            raise IndexFileError(f"{path}: index file is missing")
        try:
            index = faiss.read_index(str(path))
        except RuntimeError as err:
            raise IndexFileError(f"{path}: not a readable FAISS index (truncated or corrupted): {err}") from err
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexFileError(f"{path}: expected an inner-product index, found metric {index.metric_type}")
        return cls(index)
