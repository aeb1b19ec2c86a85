"""Build the retrieval index from labeled data: ``python -m rag.build --data SRC --train-size N --out DIR``.

Every field of `RagConfig` is a flag (``--k``, ``--weighting``, ``--index flat|hnsw|ivfpq|auto``,
``--vector-store URI``, ``--no-tune``...). The embeddings stream to ``<out>.vectors.npy`` chunk by chunk (bounded
memory, a progress bar); an interrupted build started again with the same flags resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from core.cli import run_job
from core.data import label_names, load_tweets, stratified_sample
from core.files import atomic_write_json, read_json, refuse_to_replace
from core.settings import resolve
from core.types import Progress
from rag.classifier import RagClassifier, label_ids_of, vote
from rag.config import RagConfig
from rag.embed import PROGRESS_CHUNK, Embedder
from rag.engine import QdrantIndex, connect
from rag.index import VectorIndex, choose_index, exact_search, tune_effort
from rag.tuning import tune_vote

logger = logging.getLogger(__name__)


def build_classifier(
    cfg: RagConfig,
    dataset=None,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
    show_progress: bool = True,
    vectors: np.ndarray | None = None,
    vectors_path: str | Path | None = None,
    overwrite: bool = False,
) -> RagClassifier:
    """Embed and index the labeled examples of `dataset` (default: the train split of ``cfg.data``); what
    `rag.build_index` does.

    With ``cfg.tune``, k and the weighting are chosen on a validation slice carved from those examples (the
    index itself then holds all of them); the choice and the table behind it go to run.json.

    Args:
        progress: ``progress(fraction, message)`` for a UI progress bar.
        vectors: `dataset`'s rows already embedded by `embedder`, in order (they are not embedded again).
        vectors_path: stream the embeddings to this ``.npy`` file and resume from it (`embed_resumable`).
        overwrite: replace the examples of an existing ``cfg.vector_store`` collection.
    """
    start = time.perf_counter()
    tell = progress or (lambda fraction, message: None)
    dataset, data_source = _examples(cfg, dataset)
    texts, labels = list(dataset["text"]), list(dataset["label"])
    if not texts:
        raise ValueError("cannot build a RAG index from no examples")
    names = list(cfg.labels) if cfg.labels is not None else label_names(dataset)
    tell(0.0, "loading the embedder")
    embedder = embedder or Embedder.load(cfg.embedder, batch_size=cfg.batch_size)
    if cfg.vector_store:  # an engine that is unreachable or holds another collection is refused before the work
        QdrantIndex.check(cfg.vector_store, embedder.dim, names, overwrite)
    if vectors is None and vectors_path is not None:
        vectors = embed_resumable(
            embedder,
            texts,
            vectors_path,
            show_progress=show_progress,
            progress=lambda done, total: tell(0.9 * done / total, f"embedding {done}/{total} examples"),
        )
    elif vectors is None:
        vectors = embedder.encode(
            texts,
            show_progress=show_progress,
            progress=lambda done, total: tell(0.9 * done / total, f"embedding {done}/{total} examples"),
        )
    elif len(vectors) != len(texts) or cfg.train_size is not None:
        raise ValueError(f"got {len(vectors)} vectors for {len(texts)} examples (and no train_size may resample them)")
    embed_seconds = time.perf_counter() - start
    label_ids = label_ids_of(labels, names)
    params, tuning = _vote_settings(cfg, vectors, label_ids, len(names), tell)
    kind, why = choose_index(cfg.index_type, len(vectors), embedder.dim, cfg.index_memory_gb)
    index_start = time.perf_counter()
    measured = None
    if cfg.vector_store:
        tell(0.95, f"writing {len(texts):,} examples to the vector engine")
        kind, why = "qdrant", f"the examples are in the vector engine at {cfg.vector_store}"
        index = write_to_store(cfg.vector_store, vectors, texts, labels, names, embedder.name, overwrite)
    else:
        tell(0.95, f"indexing ({kind}: {why})")
        index, measured = index_vectors(kind, vectors, label_ids, len(names), params, cfg.recall_queries)
    seconds = time.perf_counter() - start
    meta = {
        "data_source": data_source,
        "train_size": len(texts),
        "seed": cfg.seed,
        "build_seconds": round(seconds, 2),
        "embed_seconds": round(embed_seconds, 2),
        "embed_texts_per_second": round(len(texts) / embed_seconds, 1),
        "tuning": tuning,
        "index": {
            "requested": cfg.index_type,
            "chosen": kind,
            "why": why,
            "seconds": round(time.perf_counter() - index_start, 2),
        },
        "approximate": measured,
        "config": asdict(cfg),
        "added": 0,
    }
    tell(1.0, f"built a {len(texts)}-example index in {seconds:.0f} s")
    k, weighting = params["k"], params["weighting"]
    logger.info("Built a %d-example %s index in %.1f s (k=%d, %s): %s", len(texts), kind, seconds, k, weighting, why)
    if measured:
        logger.info(
            "Approximate search at k=%d: recall %.4f, vote agreement %.4f with exact search on %d held-out queries",
            measured["k"],
            measured["recall_at_k"],
            measured["vote_agreement"],
            measured["queries"],
        )
    return RagClassifier(embedder, index, texts, labels, **params, label_names=names, meta=meta)


def index_vectors(
    kind: str,
    vectors: np.ndarray,
    label_ids: np.ndarray,
    n_labels: int,
    params: dict[str, Any],
    recall_queries: int = 500,
    queries: np.ndarray | None = None,
) -> tuple[VectorIndex, dict[str, Any] | None]:
    """An index of `kind` over `vectors`, and for an approximate one what it measured against exact search.

    The last `recall_queries` rows (at most a tenth) are held out while the approximate index is filled: their
    exact and approximate neighbours at the served ``params["k"]`` give recall@k and how often the vote
    (``params``' weighting) is the same; the search effort is raised until recall >= 0.95 and agreement >= 99%
    (`rag.index.tune_effort`). Then they join the index. Returns ``(index, measured or None)``.

    Args:
        queries: measure and tune on these instead (real queries, e.g. a validation set, when the indexed rows are
            not like them); no row is then held out.
    """
    dim = vectors.shape[1]
    if kind == "flat":
        index = VectorIndex.create("flat", dim)
        index.fill(vectors)
        return index, None
    n = len(vectors)
    held = 0 if queries is not None else max(1, min(recall_queries, n // 10))
    kept = vectors[: n - held]
    queries = np.ascontiguousarray(vectors[n - held :] if queries is None else queries, dtype=np.float32)
    index = VectorIndex.create(kind, dim, train_vectors=kept)
    index.fill(kept)
    k = max(1, min(int(params["k"]), len(kept)))
    exact_scores, exact_ids = exact_search(queries, kept, k)

    def votes(scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return vote(scores, ids, label_ids, n_labels, params["weighting"], params["temperature"]).argmax(axis=1)

    exact_votes = votes(exact_scores, exact_ids)
    measured = tune_effort(index, queries, exact_ids, k, lambda s, i: float(np.mean(votes(s, i) == exact_votes)))
    if held:
        index.fill(queries)  # every example is searchable: the held-out rows join the main index
    return index, measured


def write_to_store(
    uri: str,
    vectors: np.ndarray,
    texts: list[str],
    labels: list[str],
    names: list[str],
    embedder: str,
    overwrite: bool = False,
) -> QdrantIndex:
    """A new collection at `uri` holding every example (vector, text, label); nothing is left there on failure."""
    index = QdrantIndex.create(uri, vectors.shape[1], names, embedder, overwrite=overwrite)
    try:
        for lo in range(0, len(vectors), PROGRESS_CHUNK):
            hi = lo + PROGRESS_CHUNK
            rows = zip(texts[lo:hi], labels[lo:hi], strict=True)
            payloads = [{"text": t, "label": lb, "teach_id": -1} for t, lb in rows]
            index.add(np.ascontiguousarray(vectors[lo:hi], dtype=np.float32), payloads)
    except BaseException:
        index.drop()
        raise
    return index


def embed_resumable(
    embedder: Embedder,
    texts: list[str],
    path: str | Path,
    show_progress: bool = True,
    progress: Progress | None = None,
    chunk: int = PROGRESS_CHUNK,
) -> np.ndarray:
    """Embed `texts` into the ``.npy`` file `path` one chunk at a time and return it memory-mapped.

    Memory stays bounded (one chunk of texts in the model, the vectors on disk); ``<path>.progress.json`` records
    how many rows are done, for this embedder and these texts, after each chunk is flushed, so a run that was
    interrupted resumes at the first chunk not recorded.
    """
    path = Path(path)
    state_path = path.with_name(path.name + ".progress.json")
    fingerprint = {"embedder": embedder.name, "rows": len(texts), "dim": embedder.dim,
                   "probe": round(float(embedder.probe.sum()), 5), "first": texts[0] if texts else "",
                   "last": texts[-1] if texts else ""}  # fmt: skip
    done = 0
    if path.is_file() and state_path.is_file():
        try:
            state = read_json(state_path, "embedding progress")
        except ValueError:
            state = {}
        if state.get("for") == fingerprint:
            done = int(state.get("done", 0))
    if done:
        out = np.load(path, mmap_mode="r+")
        logger.info("Resuming the embedding at %d of %d texts (%s)", done, len(texts), path)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(texts), embedder.dim))
    with tqdm(total=len(texts), initial=done, desc="Embedding", unit="text", disable=not show_progress) as bar:
        for lo in range(done, len(texts), chunk):
            hi = min(lo + chunk, len(texts))
            out[lo:hi] = embedder.encode(texts[lo:hi])
            out.flush()
            atomic_write_json(state_path, {"for": fingerprint, "done": hi})
            bar.update(hi - lo)
            if progress is not None:
                progress(hi, len(texts))
    return np.load(path, mmap_mode="r")


def _examples(cfg: RagConfig, dataset) -> tuple[Any, str]:
    """The labeled examples to index (`dataset`, else the train split of ``cfg.data``, ``cfg.train_size`` of them
    when set) and a description of where they come from."""
    if dataset is None:
        data_source = resolve("data", cfg.data).describe()
        dataset = load_tweets(cfg.data, split="train", limit=cfg.train_size, seed=cfg.seed, labels=cfg.labels)
        return dataset, data_source
    if cfg.train_size is not None:
        dataset = stratified_sample(dataset, cfg.train_size, seed=cfg.seed, what="dataset")
    return dataset, "in-memory dataset"


def _vote_settings(
    cfg: RagConfig, vectors: np.ndarray, label_ids: np.ndarray, n_labels: int, tell: Progress
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """k, weighting and temperature: ``cfg``'s own, or with ``cfg.tune`` the best on a validation slice (`tune_vote`),
    with the tuning table (None when not tuned) for run.json."""
    params = {"k": cfg.k, "weighting": cfg.weighting, "temperature": cfg.temperature}
    if not cfg.tune:
        return params, None
    tell(0.9, "choosing k and the weighting on a validation slice")
    tuning = tune_vote(vectors, label_ids, cfg, n_labels=n_labels)
    if tuning["chosen"] is not None:
        params = {key: tuning["chosen"][key] for key in params}
    return params, tuning


def build_index(cfg: RagConfig, overwrite: bool = False) -> RagClassifier:
    """Build the index described by `cfg` and save it to ``cfg.out`` (refusing to replace one unless `overwrite`)."""
    out = Path(cfg.out)
    refuse_to_replace(out, "an index", overwrite)
    if cfg.vector_store:
        connect(cfg.vector_store)  # an engine that does not answer is refused before anything loads
    vectors_path = out.with_name(out.name + ".vectors.npy")
    classifier = build_classifier(cfg, vectors_path=vectors_path, overwrite=overwrite)
    classifier.save(out)
    classifier.directory = out
    for done in (vectors_path, vectors_path.with_name(vectors_path.name + ".progress.json")):
        done.unlink(missing_ok=True)  # the index holds the vectors now
    return classifier


def main(argv: list[str] | None = None) -> int:
    status, cfg, classifier = run_job(
        RagConfig, argv, __doc__.splitlines()[0], build_index, overwrite_help="replace an existing index in --out"
    )
    if status:
        return status
    meta = classifier.meta
    chosen = (meta.get("tuning") or {}).get("chosen") or {}
    summary = {
        "out": str(cfg.out),
        "size": classifier.size,
        "embedder": classifier.embedder.name,
        "data_source": meta["data_source"],
        "k": classifier.k,
        "weighting": classifier.weighting,
        "temperature": classifier.temperature,
        "validation_accuracy": chosen.get("accuracy"),
        "index": classifier.index_summary(),
        "build_seconds": meta["build_seconds"],
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
