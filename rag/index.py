"""A small vector-index interface over FAISS: `add`, `search`, `save`, `load`.

Vectors are unit length, so inner product is cosine similarity. ``flat`` is exact; ``hnsw``, ``ivf`` and ``ivfpq``
are approximate, for corpora in the millions (`choose_index` says which, and why). Examples added to a built index
go to a small exact *delta* index searched beside it, so an addition never copies or rebuilds the main structure.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import faiss
import numpy as np

from core.files import atomic_write

FEW_QUERIES = 16
"""Up to this many queries are searched on one thread: FAISS's OpenMP start-up costs more than it saves."""
EXACT_MAX = 50_000
"""`choose_index` keeps exact search up to this many vectors: one 384-d query then costs about 5 ms on one core
(measured with k=300: 2.5 ms at 27k, 25 ms at 270k, 71 ms at 1M)."""
MEMORY_GB = 4.0
"""The default memory an approximate index may take (`choose_index`); beyond it, IVF with product quantization."""
HNSW_M = 32
"""Links per HNSW node (FAISS's and hnswlib's usual 16-64): more links, better recall, more memory."""
RERANK_DEPTHS = (4, 8, 16)
"""IVF-PQ's re-ranking depth (candidates taken from the compressed codes per hit asked for, re-scored on the 8-bit
vectors) that `tune_effort` tries once probing more cells no longer reaches the recall asked for: at k=300 over 1M
vectors, 4 x k candidates capped recall@300 at 0.81 however many cells were probed."""
HNSW_EF_CONSTRUCTION = 200
"""Candidates HNSW weighs for each node's links while building (hnswlib's default): a better graph, so the same
recall at a smaller search effort."""
APPROXIMATE = ("hnsw", "ivf", "ivfpq")
KINDS = ("flat", *APPROXIMATE)

_OMP_LOCK = threading.Lock()


class IndexFileError(ValueError):
    """An index file that is missing, truncated or not a FAISS index."""


def _kind_of(index: faiss.Index) -> str:
    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if isinstance(index, (faiss.IndexRefine, faiss.IndexIVFPQ)):
        return "ivfpq"
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    return "flat"


def index_bytes(kind: str, n: int, dim: int) -> int:
    """Memory an index of `n` `dim`-d vectors holds, roughly: what `choose_index` weighs.

    >>> round(index_bytes("hnsw", 1_000_000, 384) / 1e9, 2), round(index_bytes("ivfpq", 1_000_000, 384) / 1e9, 2)
    (1.8, 0.44)
    """
    if kind == "hnsw":
        return n * (4 * dim + 2 * HNSW_M * 4 + 8)  # the vectors, level-0 links (2M ids), upper levels on average
    if kind == "ivfpq":
        return n * (dim // 8 + dim + 8)  # PQ codes, the 8-bit vectors the candidates are re-ranked with, the ids
    if kind == "ivf":
        return n * (4 * dim + 8)
    if kind == "qdrant":
        return 0  # held by the engine, not this process
    return n * 4 * dim


def choose_index(requested: str, n: int, dim: int, memory_gb: float = MEMORY_GB) -> tuple[str, str]:
    """The index type for `n` vectors and the reason, in one sentence: `requested` unless it is ``auto``.

    The rule: exact search while it is cheap (at most `EXACT_MAX` vectors); beyond, HNSW (the fastest at a given
    recall) when it fits `memory_gb`, else IVF with product-quantized codes (about a quarter of HNSW's memory).

    >>> choose_index("auto", 27_480, 384)[0], choose_index("auto", 1_000_000, 384)[0]
    ('flat', 'hnsw')
    >>> choose_index("auto", 1_000_000, 384, memory_gb=1.0)[0], choose_index("flat", 10**7, 384)[0]
    ('ivfpq', 'flat')
    """
    if requested != "auto":
        if requested not in KINDS:
            raise ValueError(f"unknown index type {requested!r}; expected auto or one of {', '.join(KINDS)}")
        return requested, f"{requested} as requested"
    if n <= EXACT_MAX:
        return "flat", f"exact search: {n:,} vectors <= {EXACT_MAX:,}, where one query costs about 5 ms on one core"
    hnsw_gb = index_bytes("hnsw", n, dim) / 1e9
    if hnsw_gb <= memory_gb:
        return (
            "hnsw",
            f"HNSW: exact search is slow beyond {EXACT_MAX:,} vectors; it needs {hnsw_gb:.1f} <= {memory_gb:g} GB",
        )
    pq_gb = index_bytes("ivfpq", n, dim) / 1e9
    return "ivfpq", f"IVF-PQ: HNSW would need {hnsw_gb:.1f} GB > {memory_gb:g} GB allowed; IVF-PQ needs {pq_gb:.1f} GB"


def effort_grid(kind: str, k: int) -> list[tuple[int, int | None]]:
    """Search settings `tune_effort` tries, cheapest first, as ``(effort, rerank)``: HNSW's efSearch (at least k,
    or it cannot return k good hits; up to 8 x k), the IVF cells probed, and for IVF-PQ the re-ranking depth
    (`RERANK_DEPTHS`, deeper only at the most cells probed; None for the other kinds).

    >>> [effort for effort, _ in effort_grid("hnsw", 300)]
    [300, 450, 600, 750, 900, 1050, 1200, 1500, 1800, 2400]
    >>> effort_grid("ivfpq", 300)[-3:]
    [(256, 4), (256, 8), (256, 16)]
    """
    if kind == "hnsw":
        return [(max(k, 16) * f // 2, None) for f in (2, 3, 4, 5, 6, 7, 8, 10, 12, 16)]
    cells = [8, 16, 32, 64, 128, 256]
    if kind == "ivf":
        return [(c, None) for c in cells]
    if kind == "ivfpq":
        first, *deeper = RERANK_DEPTHS
        return [(c, first) for c in cells] + [(cells[-1], depth) for depth in deeper]
    return []


def recall_at_k(approximate_ids: np.ndarray, exact_ids: np.ndarray) -> float:
    """The share of the exact `k` nearest neighbours that the approximate search found, averaged over the queries.

    >>> recall_at_k(np.array([[1, 2, 9]]), np.array([[1, 2, 3]]))
    0.6666666666666666
    """
    found = [len(set(a[a >= 0].tolist()) & set(e[e >= 0].tolist())) / max(1, int((e >= 0).sum()))
             for a, e in zip(approximate_ids, exact_ids, strict=True)]  # fmt: skip
    return float(np.mean(found)) if found else 1.0


def exact_search(queries: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner-product neighbours of `queries` among `vectors` (no index is built, nothing is copied)."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    return faiss.knn(queries, vectors, int(k), metric=faiss.METRIC_INNER_PRODUCT)


def merge_hits(
    scores: np.ndarray, ids: np.ndarray, more_scores: np.ndarray, more_ids: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best of two hit lists per query, best first (id -1 = no hit, never ranked above a hit).

    >>> merge_hits(np.array([[0.9, 0.1]]), np.array([[0, 1]]), np.array([[0.5]]), np.array([[7]]), 2)
    (array([[0.9, 0.5]]), array([[0, 7]]))
    """
    scores = np.concatenate([np.where(ids >= 0, scores, -np.inf), np.where(more_ids >= 0, more_scores, -np.inf)], 1)
    ids = np.concatenate([ids, more_ids], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def _one_thread_search(index: faiss.Index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    if len(queries) > FEW_QUERIES:
        return index.search(queries, k)
    # The thread count is process-wide in FAISS: hold a lock while it is lowered for a small search.
    with _OMP_LOCK:
        threads = faiss.omp_get_max_threads()
        faiss.omp_set_num_threads(1)
        try:
            return index.search(queries, k)
        finally:
            faiss.omp_set_num_threads(threads)


def check_vectors(vectors: np.ndarray, dim: int) -> np.ndarray:
    """`vectors` as a contiguous float32 ``(n, dim)`` array; a ValueError naming the shape otherwise."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[1] != dim:
        raise ValueError(f"expected vectors of shape (n, {dim}), got {vectors.shape}")
    return vectors


class VectorIndex:
    """Inner-product search over unit vectors; hits come back best first as ids (insertion order) and scores.

    Two parts: the main index (`index`: flat, HNSW or IVF), filled once when it is built, and an exact `delta`
    that takes every later `add` in place. Neither is ever copied: `snapshot` shares the main index (it is never
    changed in place; `remove_ids` replaces it) and copies only the delta. Not thread-safe by itself: callers
    serialise `add` and `remove_ids` against searches (as `RagClassifier` does with its lock).
    """

    stores_examples = False
    """An engine index keeps the examples' text and label with their vectors; FAISS keeps only the vectors."""

    def __init__(self, index: faiss.Index, delta: faiss.Index | None = None, source: Path | None = None) -> None:
        self.index = index
        self.delta = delta if delta is not None else faiss.IndexFlatIP(int(index.d))
        self.source = source  # the file the main index was read from or last written to (unchanged since)

    @classmethod
    def create(cls, kind: str, dim: int, train_vectors: np.ndarray | None = None) -> VectorIndex:
        """A new empty index of `kind` (``flat``, ``hnsw``, ``ivf`` or ``ivfpq``); the IVF kinds learn their cells
        (and codes) from `train_vectors` (a sample of at most 100 per cell is used)."""
        if kind == "flat":
            return cls(faiss.IndexFlatIP(dim))
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(dim, HNSW_M, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
            index.hnsw.efSearch = 128
            return cls(index)
        if kind not in ("ivf", "ivfpq"):
            raise ValueError(f"unknown index type {kind!r}; expected one of {', '.join(KINDS)}")
        if train_vectors is None or len(train_vectors) == 0:
            raise ValueError(f"an {kind} index needs vectors to learn its cells from")
        n = len(train_vectors)
        if kind == "ivf":
            nlist = max(1, min(4096, int(4 * np.sqrt(n)), n // 39))
            index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        else:  # coarse cells, 8-bit PQ codes of dim/8 bytes, candidates re-ranked on 8-bit scalar-quantized vectors
            nlist = max(1, min(8192, int(2 * np.sqrt(n)), n // 64))
            index = faiss.index_factory(dim, f"IVF{nlist},PQ{dim // 8}np,Refine(SQ8)", faiss.METRIC_INNER_PRODUCT)
            faiss.downcast_index(index).k_factor = RERANK_DEPTHS[0]
        sample = _sample(train_vectors, max(100 * nlist, 10_000))
        index.train(sample)
        faiss.extract_index_ivf(index).nprobe = min(nlist, 16)
        return cls(index)

    @property
    def kind(self) -> str:
        return getattr(self.index, "kind", None) or _kind_of(self.index)  # a read-only engine view names itself

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def main_size(self) -> int:
        """Vectors in the main index; ids from here on are in the delta."""
        return int(self.index.ntotal)

    def __len__(self) -> int:
        return int(self.index.ntotal + self.delta.ntotal)

    def nbytes(self) -> int:
        """Memory held by both parts, roughly (`index_bytes`)."""
        return index_bytes(self.kind, self.main_size, self.dim) + index_bytes("flat", int(self.delta.ntotal), self.dim)

    def _check(self, vectors: np.ndarray) -> np.ndarray:
        return check_vectors(vectors, self.dim)

    def add(self, vectors: np.ndarray, payloads: list[dict] | None = None) -> None:
        """Append vectors; their ids continue from ``len(self)``. An empty index takes them into its main part
        (building); later additions go to the exact delta, in place. `payloads` is for engines (ignored here)."""
        if len(self) == 0:
            self.fill(vectors)
        else:
            self.delta.add(self._check(vectors))

    def fill(self, vectors: np.ndarray) -> None:
        """Append vectors to the main index itself (while building it: nothing may search it meanwhile)."""
        self.index.add(self._check(vectors))
        self.source = None

    def truncate(self, size: int) -> None:
        """Drop the vectors added after the index held `size` (undo a failed `add`); only delta rows can go."""
        if size < self.main_size or size > len(self):
            raise ValueError(f"can only truncate to between {self.main_size} and {len(self)} vectors, not {size}")
        if size < len(self):
            self.delta.remove_ids(faiss.IDSelectorRange(size - self.main_size, int(self.delta.ntotal)))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The `k` best hits per query: ``(scores, ids)``, each ``(n, k)``, best first.

        `k` larger than the index is cut to its size; approximate indexes may return fewer hits (id -1, score -inf).
        """
        queries = self._check(queries)
        k = max(1, min(int(k), len(self)))
        if self.delta.ntotal == 0:
            return _one_thread_search(self.index, queries, k)
        scores, ids = _one_thread_search(self.index, queries, min(k, max(1, self.main_size)))
        more_scores, more_ids = _one_thread_search(self.delta, queries, min(k, int(self.delta.ntotal)))
        more_ids = np.where(more_ids >= 0, more_ids + self.main_size, -1)
        if self.main_size == 0:
            scores, ids = np.full_like(scores, -np.inf), np.full_like(ids, -1)
        return merge_hits(scores, ids, more_scores, more_ids, k)

    @property
    def effort(self) -> int | None:
        """HNSW's efSearch or the IVF cells probed per query; None for exact search."""
        if self.kind == "hnsw":
            return int(self.index.hnsw.efSearch)
        if self.kind in ("ivf", "ivfpq"):
            return int(faiss.extract_index_ivf(self.index).nprobe)
        return None

    @effort.setter
    def effort(self, value: int) -> None:
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = int(value)
        elif self.kind in ("ivf", "ivfpq"):
            ivf = faiss.extract_index_ivf(self.index)
            ivf.nprobe = int(min(value, ivf.nlist))

    @property
    def rerank(self) -> int | None:
        """IVF-PQ's re-ranking depth (candidates per hit asked for, re-scored on the finer vectors); None for the
        kinds that keep exact vectors."""
        refine = _refine(self.index)
        return int(refine.k_factor) if refine else None

    @rerank.setter
    def rerank(self, value: int) -> None:
        if refine := _refine(self.index):
            refine.k_factor = float(value)

    def removable(self, positions: np.ndarray) -> bool:
        """Whether rows `positions` can be removed: any delta row; main rows only from an exact index."""
        return self.kind == "flat" or bool(np.all(np.asarray(positions) >= self.main_size))

    def remove_ids(self, positions: np.ndarray) -> None:
        """Remove rows by position; later rows move up (as in a flat FAISS index).

        Raises:
            ValueError: a row of an approximate main index (HNSW and IVF cannot remove single vectors here).
        """
        positions = np.asarray(positions, dtype=np.int64)
        if not self.removable(positions):
            raise ValueError(f"examples can be removed from a flat index only, not {self.kind}")
        in_main = positions[positions < self.main_size]
        in_delta = positions[positions >= self.main_size] - self.main_size
        if len(in_delta):
            self.delta.remove_ids(in_delta)
        if len(in_main):  # copy-on-write: a snapshot may share the main index (a rare removal pays for the copy)
            main = faiss.clone_index(self.index)
            main.remove_ids(in_main)
            self.index, self.source = main, None

    def snapshot(self) -> VectorIndex:
        """An independent view of the current contents: shares the main index, copies the (small) delta."""
        return VectorIndex(self.index, faiss.clone_index(self.delta), self.source)

    def save(self, path: str | Path, replaces: str | Path | None = None) -> None:
        """Write the index atomically: a crash or a full disk leaves any previous file intact. The delta goes to
        a second file beside it (`delta_path`).

        Args:
            replaces: the file this save will replace (an artifact directory written anew, then swapped in). When
                the main index is unchanged since it was read from or written to that file, the new file is a
                hard link to it instead of a second copy (an `add` then writes the delta, not the whole index);
                the old directory is deleted after the swap, so one link remains.
        """
        path = Path(path)
        if not self._link_main(path, replaces):
            atomic_write(path, lambda tmp: faiss.write_index(self.index, str(tmp)))
        self.source = path
        delta = delta_path(path)
        if self.delta.ntotal:
            atomic_write(delta, lambda tmp: faiss.write_index(self.delta, str(tmp)))
        else:
            delta.unlink(missing_ok=True)

    def _link_main(self, path: Path, replaces: str | Path | None) -> bool:
        source = self.source
        if replaces is None or source is None or path.exists() or not source.is_file():
            return False
        if source.resolve() != Path(replaces).resolve():
            return False
        try:
            os.link(source, path)
        except OSError:  # another file system, or links not allowed: write it
            return False
        return True

    @classmethod
    def load(cls, path: str | Path) -> VectorIndex:
        path = Path(path)
        if not path.is_file():
            raise IndexFileError(f"{path}: index file is missing")
        index = _read(path)
        delta = _read(delta_path(path)) if delta_path(path).is_file() else None
        if delta is not None and (not isinstance(delta, faiss.IndexFlat) or delta.d != index.d):
            raise IndexFileError(f"{delta_path(path)}: not a flat index of the main index's width {index.d}")
        return cls(index, delta, source=path)


def _refine(index: faiss.Index):
    """`index` as a re-ranking index (FAISS's IndexRefine), or None."""
    downcast = faiss.downcast_index(index)
    return downcast if isinstance(downcast, faiss.IndexRefine) else None


def delta_path(path: str | Path) -> Path:
    """Where the delta of the index saved at `path` is written: ``index.faiss`` -> ``index.delta.faiss``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.delta{path.suffix}")


def _read(path: Path) -> faiss.Index:
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as err:
        raise IndexFileError(f"{path}: not a readable FAISS index (truncated or corrupted): {err}") from err
    if index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise IndexFileError(f"{path}: expected an inner-product index, found metric {index.metric_type}")
    return index


def _sample(vectors: np.ndarray, size: int, seed: int = 0) -> np.ndarray:
    """At most `size` rows of `vectors`, evenly spread (a view-free copy of just those rows)."""
    if len(vectors) <= size:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    step = len(vectors) / size
    rows = (np.arange(size) * step + np.random.default_rng(seed).random() * step).astype(np.int64)
    return np.ascontiguousarray(vectors[np.minimum(rows, len(vectors) - 1)], dtype=np.float32)


def tune_effort(
    index: VectorIndex,
    queries: np.ndarray,
    exact_ids: np.ndarray,
    k: int,
    agree,
    min_recall: float = 0.95,
    min_agreement: float = 0.99,
) -> dict:
    """Raise the index's search effort until recall@k against `exact_ids` reaches `min_recall` and the vote
    agrees with exact search on `min_agreement` of the `queries` (or the grid ends); leaves the index at the
    chosen effort and returns what was measured.

    Args:
        agree: ``agree(approximate_scores, approximate_ids) -> float``: the share of queries whose vote is
            the one exact search gives.
    """
    tried = []
    for effort, rerank in effort_grid(index.kind, k) or [(None, None)]:
        if effort is not None:
            index.effort = effort  # IVF: at most the cells there are
        if rerank is not None:
            index.rerank = rerank
        if tried and (tried[-1]["effort"], tried[-1].get("rerank")) == (index.effort, index.rerank):
            continue  # the same search as the last one tried
        scores, ids = index.search(queries, k)
        row = {"effort": index.effort, **({"rerank": rerank} if rerank is not None else {}),
               "recall_at_k": round(recall_at_k(ids, exact_ids), 4),
               "vote_agreement": round(float(agree(scores, ids)), 4)}  # fmt: skip
        tried.append(row)
        if row["recall_at_k"] >= min_recall and row["vote_agreement"] >= min_agreement:
            break
    chosen = tried[-1]
    if chosen["effort"] is not None:
        index.effort = chosen["effort"]
    if "rerank" in chosen:
        index.rerank = chosen["rerank"]
    return {**chosen, "tried": tried, "queries": len(queries), "k": int(k)}
