"""Retrieval at scale: each index type, and the vector engine, at 27k, 270k and 1M vectors.

The vectors are the real training tweets' MiniLM embeddings; beyond their 27,480, seeded perturbations of them
(each a real vector plus Gaussian noise of std 0.02 per dimension, renormalised: cosine ~0.93 to its source,
labelled as its source). The queries are real test tweets (never indexed). The vote (k, weighting, temperature)
is the one `rag.tuning.tune_vote` chooses on the real 27k, so recall@k is measured at the k that is served.

For every size and index type, one fresh process builds the index with `rag.build.index_vectors` (the code
`rag.build` runs; approximate kinds raise their search effort until recall >= 0.95 and vote agreement >= 99% on
held-out rows) and measures: build seconds, RSS (peak while building and after, the vectors released), disk,
single-query p50/p95 (one thread), batched queries/s (all threads), recall@k and vote agreement against exact
search on the test queries, and the latency of adding one (already embedded) example. The real 27k also get test
accuracy with a bootstrap interval per index type. Run it alone on the cores:

    python bench/scale.py [--sizes 27480,270000,1000000] [--kinds flat,hnsw,ivfpq] [--engine-max 270000]

Prints a Markdown table and, last, one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.common import machine, table

NOISE_STD = 0.02
SEED = 0


def rss_mb() -> float:
    """Resident memory of this process now, in MB."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


def peak_rss_mb() -> float:
    """Peak resident memory of this process image (VmHWM: unlike ru_maxrss, not inherited across exec)."""
    with open("/proc/self/status") as handle:
        line = next(line for line in handle if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024 / 1e6


def real_vectors(cache: Path) -> dict[str, np.ndarray]:
    """The train and test tweets embedded once (cached in `cache`, resumable) with their label ids."""
    from core.data import label_names, load_tweets
    from rag.build import embed_resumable
    from rag.embed import Embedder

    out = {}
    embedder = None
    for split in ("train", "test"):
        ds = load_tweets(None, split=split)
        names = label_names(ds)
        out[f"{split}_labels"] = np.array([names.index(label) for label in ds["label"]])
        path = cache / f"{split}.npy"
        if not path.exists() or (path.with_name(path.name + ".progress.json")).exists():
            embedder = embedder or Embedder.load(batch_size=128)
            embed_resumable(embedder, list(ds["text"]), path, show_progress=True)
            path.with_name(path.name + ".progress.json").unlink()
        out[split] = np.load(path, mmap_mode="r")
        out["names"] = names
    return out


def corpus(base: np.ndarray, base_labels: np.ndarray, size: int, cache: Path) -> tuple[np.ndarray, np.ndarray]:
    """`size` vectors: `base`, then seeded perturbations of it, written to a memory-mapped file chunk by chunk."""
    if size <= len(base):
        return np.ascontiguousarray(base[:size]), base_labels[:size]
    path = cache / f"corpus-{size}.npy"
    labels = base_labels[np.arange(size) % len(base)]
    if path.exists():
        return np.load(path, mmap_mode="r"), labels
    tmp = path.with_suffix(".partial.npy")
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(size, base.shape[1]))
    out[: len(base)] = base
    rng = np.random.default_rng(SEED)
    for lo in range(len(base), size, 65_536):
        hi = min(size, lo + 65_536)
        rows = base[np.arange(lo, hi) % len(base)] + rng.normal(0, NOISE_STD, (hi - lo, base.shape[1]))
        out[lo:hi] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    out.flush()
    del out
    os.replace(tmp, path)
    return np.load(path, mmap_mode="r"), labels


def time_one(index, query: np.ndarray, k: int) -> float:
    """Milliseconds of one single-query search."""
    start = time.perf_counter()
    index.search(query[None], k)
    return (time.perf_counter() - start) * 1000


def measure(job: dict) -> dict:
    """One index type at one size, in its own process (so RSS is its own)."""
    import faiss

    from rag.build import index_vectors, write_to_store
    from rag.classifier import vote
    from rag.index import exact_search, recall_at_k

    threads = job["threads"]
    faiss.omp_set_num_threads(threads)
    cache = Path(job["cache"])
    vectors, labels = corpus(np.load(job["train"], mmap_mode="r"), np.load(job["labels"]), job["size"], cache)
    queries = np.ascontiguousarray(np.load(job["test"], mmap_mode="r")[: job["queries"]])
    params, kind, k = job["params"], job["kind"], job["params"]["k"]
    base_rss = rss_mb()
    start = time.perf_counter()
    measured = None
    if kind == "qdrant":
        names = [str(i) for i in range(int(labels.max()) + 1)]
        texts = [f"example {i}" for i in range(len(vectors))]
        index = write_to_store(
            f"memory://bench-{job['size']}", vectors, texts, [names[i] for i in labels], names, "bench"
        )
    else:
        tune_on = None
        if job.get("tune_on_queries"):  # real test tweets after the measured ones, as a validation set
            test = np.load(job["test"], mmap_mode="r")
            tune_on = test[job["queries"] : job["queries"] + job["tune_on_queries"]]
        index, measured = index_vectors(
            kind, vectors, labels, job["n_labels"], params, job["recall_queries"], queries=tune_on
        )
    build_s = time.perf_counter() - start
    peak = peak_rss_mb()
    reference = cache / f"exact-{job['size']}-{k}-{len(queries)}.npz"  # one exact search per size, shared
    if reference.exists():
        with np.load(reference, allow_pickle=False) as saved:
            exact_scores, exact_ids = saved["scores"], saved["ids"]
    else:
        exact_scores, exact_ids = exact_search(queries, vectors, k)
        np.savez(reference, scores=exact_scores, ids=exact_ids)
    del vectors  # what serving holds: the index, not the build's vectors (their mapped pages leave the RSS)
    gc.collect()
    rss = rss_mb()
    disk_mb = None
    if kind != "qdrant":
        with tempfile.TemporaryDirectory(dir=cache) as tmp:
            index.save(Path(tmp) / "index.faiss")
            disk_mb = sum(f.stat().st_size for f in Path(tmp).iterdir()) / 1e6
    single = job["single"] if kind != "qdrant" else job["single"] // 4
    times = []
    for q in queries[:single]:
        t = time.perf_counter()
        index.search(q[None], k)
        times.append((time.perf_counter() - t) * 1000)
    times = np.array(times[5:])
    t = time.perf_counter()
    batch = queries if kind != "qdrant" else queries[: job["single"] // 2]
    scores, ids = index.search(batch, k)
    qps = len(batch) / (time.perf_counter() - t)
    n = len(batch)

    def votes(s, i):
        return vote(s, i, labels, job["n_labels"], params["weighting"], params["temperature"]).argmax(axis=1)

    exact_votes = votes(exact_scores[:n], exact_ids[:n])
    approx_votes = votes(scores, ids)
    sweep = []  # what each search effort costs and keeps, on the measured queries (not those tuned on), before any add
    if kind in ("hnsw", "ivf", "ivfpq"):
        chosen = index.effort
        floor = k if kind == "hnsw" else 1  # efSearch below k cannot return k hits; cells probed can be few
        for effort in sorted({max(floor, effort * chosen // 4) for effort in (2, 3, 4, 5, 6)}):
            index.effort = effort
            swept = [time_one(index, q, k) for q in queries[:single]][5:]
            s_scores, s_ids = index.search(batch, k)
            agreement = float(np.mean(votes(s_scores, s_ids) == exact_votes))
            sweep.append({"effort": index.effort, "p50_ms": round(float(np.percentile(swept, 50)), 2),
                          "recall_at_k": round(recall_at_k(s_ids, exact_ids[:n]), 4),
                          "vote_agreement": round(agreement, 4)})  # fmt: skip
        index.effort = chosen
    adds = []
    for row in queries[:200]:
        t = time.perf_counter()
        index.add(row[None], [{"text": "added", "label": "0", "teach_id": -1}] if kind == "qdrant" else None)
        adds.append((time.perf_counter() - t) * 1000)
    result = {
        "size": job["size"],
        "index": kind,
        "effort": getattr(index, "effort", None),
        "rerank": getattr(index, "rerank", None),
        "build_s": round(build_s, 1),
        "rss_mb": round(rss, 0),
        "rss_peak_mb": round(max(peak, rss), 0),
        "rss_before_mb": round(base_rss, 0),
        "disk_mb": None if disk_mb is None else round(disk_mb, 0),
        "p50_ms": round(float(np.percentile(times, 50)), 2),
        "p95_ms": round(float(np.percentile(times, 95)), 2),
        "batch_qps": round(qps, 0),
        "recall_at_k": round(recall_at_k(ids, exact_ids[:n]), 4),
        "vote_agreement": round(float(np.mean(approx_votes == exact_votes)), 4),
        "add_one_p50_ms": round(float(np.percentile(adds, 50)), 3),
        "add_one_p95_ms": round(float(np.percentile(adds, 95)), 3),
        "sweep": sweep,
        "build_measured": measured and {key: value for key, value in measured.items() if key != "tried"},
    }
    if job["size"] == job["real_size"] and kind != "qdrant":  # the real 27k: test accuracy of this index type's vote
        from compare.metrics import bootstrap_ci

        test_labels = np.load(job["test_labels"])[:n]
        predicted = [str(v) for v in approx_votes]
        references = [str(v) for v in test_labels]
        low, high = bootstrap_ci(predicted, references, n_resamples=500)
        result["test_accuracy"] = round(float(np.mean(approx_votes == test_labels)), 4)
        result["test_accuracy_ci"] = [round(low, 4), round(high, 4)]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="27480,270000,1000000")
    parser.add_argument("--kinds", default="flat,hnsw,ivfpq")
    parser.add_argument("--engine-max", type=int, default=270_000, help="largest size the engine's local mode runs")
    parser.add_argument("--queries", type=int, default=3534, help="real test tweets: recall, agreement, batched")
    parser.add_argument("--single", type=int, default=205, help="of them, timed one at a time (5 warm-ups)")
    parser.add_argument("--recall-queries", type=int, default=500, help="held-out rows the build tunes effort on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--tune-on-queries",
        type=int,
        default=0,
        help="tune the search effort on this many real test tweets (not "
        "measured ones) instead of rows held out of the corpus",
    )
    parser.add_argument("--cache", default="artifacts/scale", help="embeddings and corpora are kept here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # one measurement, as JSON, in a fresh process
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(measure(json.loads(args.worker))), flush=True)
        return
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)

    from rag.config import RagConfig
    from rag.tuning import tune_vote

    real = real_vectors(cache)
    train, train_labels = np.ascontiguousarray(real["train"]), real["train_labels"]
    np.save(cache / "train_labels.npy", train_labels)
    np.save(cache / "test_labels.npy", real["test_labels"])
    tuning = tune_vote(train, train_labels, RagConfig(), n_labels=len(real["names"]))
    params = {key: tuning["chosen"][key] for key in ("k", "weighting", "temperature")}
    print(f"machine: {machine()}; FAISS threads {args.threads}; vote tuned on the real {len(train):,}: {params}")
    from core.data import load_tweets
    from rag.embed import Embedder

    embedder = Embedder.load()  # an added example is embedded first: one text, as teach does
    texts = list(load_tweets(None, split="test")["text"][:105])
    embed_ms = []
    for text in texts:
        start = time.perf_counter()
        embedder.encode([text])
        embed_ms.append((time.perf_counter() - start) * 1000)
    embed_one = {"p50_ms": round(float(np.percentile(embed_ms[5:], 50)), 2),
                 "p95_ms": round(float(np.percentile(embed_ms[5:], 95)), 2)}  # fmt: skip
    print(f"embedding one example (what add and teach do before the index): {embed_one}")
    del embedder
    sizes = [int(s) for s in args.sizes.split(",")]
    kinds = args.kinds.split(",")
    # The real corpus first (accuracy kept), then the largest (the targets), then the rest; the engine last.
    order = [(sizes[0], kind) for kind in kinds] + [
        (size, kind) for size in sorted(sizes[1:], reverse=True) for kind in kinds
    ]
    order += [(size, "qdrant") for size in sizes if size <= args.engine_max]
    rows = []

    def queries_for(size: int) -> int:
        """Every test tweet on the real corpus (its accuracy), 1,000 beyond; those tuned on are never measured."""
        left = len(real["test_labels"]) - args.tune_on_queries
        return min(args.queries, left) if size == len(train) else min(args.queries, 1000, left)

    for size, kind in order:
        job = {
            "size": size, "kind": kind, "params": params, "n_labels": len(real["names"]), "threads": args.threads,
            "train": str(cache / "train.npy"), "labels": str(cache / "train_labels.npy"),
            "test": str(cache / "test.npy"), "test_labels": str(cache / "test_labels.npy"), "cache": str(cache),
            "queries": queries_for(size), "single": args.single, "recall_queries": args.recall_queries,
            "real_size": len(train), "tune_on_queries": args.tune_on_queries,
        }  # fmt: skip
        done = subprocess.run(
            [sys.executable, __file__, "--worker", json.dumps(job)], capture_output=True, text=True, check=False
        )
        lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
        if done.returncode or not lines:
            print(f"{size} {kind}: failed (exit {done.returncode}): {done.stderr[-2000:]}", flush=True)
            continue
        row = json.loads(lines[-1][len("RESULT ") :])
        rows.append(row)
        print(json.dumps(row), flush=True)
    rows.sort(key=lambda r: (r["size"], [*kinds, "qdrant"].index(r["index"])))
    columns = ["size", "index", "effort", "rerank", "build_s", "rss_mb", "rss_peak_mb", "disk_mb", "p50_ms", "p95_ms",
               "batch_qps", "recall_at_k", "vote_agreement", "add_one_p95_ms"]  # fmt: skip
    print(table(rows, columns))
    sweeps = [{"size": r["size"], "index": r["index"], **row} for r in rows for row in r.get("sweep", [])]
    if sweeps:
        print("search effort against latency and agreement, on the measured queries:")
        print(table(sweeps))
    accuracy = [r for r in rows if "test_accuracy" in r]
    if accuracy:
        print(table(accuracy, ["index", "test_accuracy", "test_accuracy_ci"]))
    summary = {"machine": machine(), "vote": params, "noise_std": NOISE_STD, "embed_one": embed_one, "rows": rows}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
