"""Build the retrieval index from labeled data: ``python -m rag.build --data SRC --train-size N --out DIR``.

Every field of `RagConfig` is a flag (``--k``, ``--weighting``, ``--index-type``, ``--no-tune``...).
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

from core.cli import run_job
from core.data import label_names, load_tweets, stratified_sample
from core.files import refuse_to_replace
from core.settings import resolve
from core.types import Progress
from rag.classifier import RagClassifier, label_ids_of
from rag.config import RagConfig
from rag.embed import Embedder
from rag.index import VectorIndex
from rag.tuning import tune_vote

logger = logging.getLogger(__name__)


def build_classifier(
    cfg: RagConfig,
    dataset=None,
    embedder: Embedder | None = None,
    progress: Progress | None = None,
    show_progress: bool = True,
    vectors: np.ndarray | None = None,
) -> RagClassifier:
    """Embed and index the labeled examples of `dataset` (default: the train split of ``cfg.data``); what
    `RagClassifier.build` does.

    With ``cfg.tune``, k and the weighting are chosen on a validation slice carved from those examples (the
    index itself then holds all of them); the choice and the table behind it go to run.json.

    Args:
        progress: ``progress(fraction, message)`` for a UI progress bar.
        vectors: `dataset`'s rows already embedded by `embedder`, in order (they are not embedded again).
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
    if vectors is None:
        vectors = embedder.encode(
            texts,
            show_progress=show_progress,
            progress=lambda done, total: tell(0.9 * done / total, f"embedding {done}/{total} examples"),
        )
    elif len(vectors) != len(texts) or cfg.train_size is not None:
        raise ValueError(f"got {len(vectors)} vectors for {len(texts)} examples (and no train_size may resample them)")
    embed_seconds = time.perf_counter() - start
    params, tuning = _vote_settings(cfg, vectors, label_ids_of(labels, names), len(names), tell)
    tell(0.95, f"indexing ({cfg.index_type})")
    index = VectorIndex.create(cfg.index_type, embedder.dim, train_vectors=vectors)
    index.add(vectors)
    seconds = time.perf_counter() - start
    meta = {
        "data_source": data_source,
        "train_size": len(texts),
        "seed": cfg.seed,
        "build_seconds": round(seconds, 2),
        "embed_seconds": round(embed_seconds, 2),
        "embed_texts_per_second": round(len(texts) / embed_seconds, 1),
        "tuning": tuning,
        "config": asdict(cfg),
        "added": 0,
    }
    tell(1.0, f"built a {len(texts)}-example index in {seconds:.0f} s")
    k, weighting = params["k"], params["weighting"]
    logger.info("Built a %d-example %s index in %.1f s (k=%d, %s)", len(texts), index.kind, seconds, k, weighting)
    return RagClassifier(embedder, index, texts, labels, **params, label_names=names, meta=meta)


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
    classifier = RagClassifier.build(cfg)
    classifier.save(out)
    classifier.directory = out
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
        "build_seconds": meta["build_seconds"],
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
