"""RAG speed on the full train set: build time, single-query latency, batch-64 throughput.

Compares, in one run: the exact flat index with FAISS threads tuned (one thread for small searches, the default)
and untuned (FAISS's own thread pool for every search), and the approximate HNSW and IVF indexes.

    python bench/rag_speed.py [--data SRC] [--queries 300] [--save artifacts/rag]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

import rag.index
from bench.common import machine, table, time_calls
from compare.latency import percentiles
from core.data import load_tweets
from rag import RagClassifier, RagConfig, VectorIndex, build_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--save", default="artifacts/rag", help="save the built index here if nothing is there yet")
    args = parser.parse_args()

    train = load_tweets(args.data, split="train")
    test = load_tweets(args.data, split="test")
    queries = test["text"][: args.queries]
    print(f"machine: {machine()}; train {train.num_rows}, {len(queries)} single queries, batch 64")

    cfg = RagConfig(data=args.data)
    start = time.perf_counter()
    clf = build_index(cfg, train, show_progress=False)
    build_s = time.perf_counter() - start
    print(
        f"build: {build_s:.1f} s for {clf.size} tweets (embedding {clf.meta['embed_seconds']:.1f} s, "
        f"{clf.meta['embed_texts_per_second']:.0f} texts/s; chose k={clf.k}, {clf.weighting}, T={clf.temperature})"
    )
    save = Path(args.save)
    if not (save / "run.json").exists():
        clf.save(save)
        print(f"saved the index to {save}")

    vectors = clf.index.index.reconstruct_n(0, len(clf.index))
    flat = clf.index
    tuned = rag.index.FEW_QUERIES
    variants = {"flat, threads tuned": (flat, tuned), "flat, threads untuned": (flat, 0)}
    for kind in ("hnsw", "ivf"):
        start = time.perf_counter()
        index = VectorIndex.create(kind, flat.dim, train_vectors=vectors)
        index.add(vectors)
        print(f"{kind} index built from the vectors in {time.perf_counter() - start:.1f} s")
        variants[f"{kind}, threads tuned"] = (index, tuned)

    query_vectors = clf.embedder.encode(queries)
    batches = [queries[i : i + 64] for i in range(0, len(queries) - 63, 64)]
    rows = []
    for name, (index, few) in variants.items():
        rag.index.FEW_QUERIES = few
        clf.index = index
        search_ms = time_calls(lambda v, index=index: index.search(v[None, :], clf.k), list(query_vectors))
        total_ms = time_calls(lambda q: clf.predict([q]), queries)
        start = time.perf_counter()
        for batch in batches:
            clf.predict(batch)
        throughput = sum(map(len, batches)) / (time.perf_counter() - start)
        agree = np.mean(
            [
                a.label == b.label
                for a, b in zip(clf.predict(queries[:200]), _flat_answers(clf, flat, queries[:200]), strict=True)
            ]
        )
        rows.append(
            {
                "index": name,
                "search p50 ms": percentiles(search_ms)["p50"],
                "query p50 ms": percentiles(total_ms)["p50"],
                "query p95 ms": percentiles(total_ms)["p95"],
                "batch-64 texts/s": throughput,
                "same label as flat": float(agree),
            }
        )
    rag.index.FEW_QUERIES = tuned
    clf.index = flat
    print()
    print(table(rows))


def _flat_answers(clf: RagClassifier, flat: VectorIndex, texts: list[str]):
    current = clf.index
    clf.index = flat
    try:
        return clf.predict(texts)
    finally:
        clf.index = current


if __name__ == "__main__":
    main()
