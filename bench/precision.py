"""Precision and runtime: what each variant of the served models costs and answers, then the app served both ways.

Part 1, on one core: the fine-tune's classifier and the index's embedder (loaded from the artifacts as the app loads
them), each as every variant of `core.precision` runs it: fp32 (today's frozen trace), bf16, int8, and ONNX Runtime
fp32 / int8 (the peer anchor). For each: single-text p50 / p95, texts/s at 1, 16 and 32 texts per call, accuracy
with its 95% interval on the full test split (the fine-tune's own answers; for the embedder, the retrieval backend's
vote over it), labels the same as fp32's, and labels the same in a batch of 32 as alone. A variant this CPU cannot
run fast is listed with the reason, not run.

Part 2, on both cores: the app (``python app.py``, as `bench/load.py` starts it) served at fp32 and at
``--precision auto``, one after the other in this run: what auto chose and why, single-text REST p50 (one client),
and REST classify at 32 clients (requests/s, p50, p95).

    python bench/precision.py --artifacts artifacts/demo [--skip-app] [--clients 32 --requests 20]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import machine, table
from compare.evaluation import backend_intervals
from core.data import load_tweets
from core.precision import FP32, Hardware, candidates, served_name

BATCHES = (1, 16, 32)
TIMED = 96
"""Test texts timed per variant (one at a time, and in calls of 16 and 32)."""


def texts_per_second(fn, texts: list[str], batch: int) -> float:
    """Texts a second of ``fn(texts)`` in calls of `batch` texts, after one untimed call."""
    calls = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    fn(calls[0])
    start = time.perf_counter()
    for call in calls:
        fn(call)
    return len(texts) / (time.perf_counter() - start)


def single_ms(fn, texts: list[str]) -> np.ndarray:
    for text in texts[:5]:
        fn([text])
    out = []
    for text in texts:
        start = time.perf_counter()
        fn([text])
        out.append((time.perf_counter() - start) * 1000)
    return np.array(out)


def measure_models(artifacts: Path, data: str | None, limit: int | None = None) -> tuple[list[dict], dict]:
    """Part 1: every variant of both models on one core."""
    import rag
    from finetune.model import TextClassifier

    torch.set_num_threads(1)
    test = load_tweets(data, split="test", limit=limit, seed=0)
    texts, references = list(test["text"]), list(test["label"])
    timed = list(load_tweets(data, split="test", limit=TIMED, seed=3)["text"])
    labels = sorted(set(references))
    classifier = TextClassifier.from_pretrained(artifacts / "finetune", precision="fp32")
    index = rag.load(artifacts / "rag")
    hardware = Hardware.detect()
    models = {
        "fine-tuned MiniLM": (classifier, classifier.predict_proba, classifier.predict),
        "embedder (+ retrieval vote)": (index.embedder, index.embedder.encode, index.predict),
    }
    rows, fp32_labels = [], {}
    for model_name, (holder, forward, predict) in models.items():
        for variant in candidates():
            row = {"model": model_name, "served as": variant.name}
            missing = hardware.missing(variant)
            why = missing or holder.serve_as(variant)
            if why is not None or holder.variant != variant:
                rows.append({**row, "note": f"not run: {why}"})
                continue
            start = time.perf_counter()
            answers = [p.label for p in predict(texts)]
            accuracy = float(np.mean([a == r for a, r in zip(answers, references, strict=True)]))
            interval = backend_intervals(answers, references, labels)["accuracy_ci95"]
            fp32_labels.setdefault(model_name, answers)
            agreement = float(np.mean([a == b for a, b in zip(answers, fp32_labels[model_name], strict=True)]))
            ms = single_ms(forward, timed)
            row.update({
                "single p50 ms": float(np.percentile(ms, 50)),
                "single p95 ms": float(np.percentile(ms, 95)),
                **{f"texts/s at {b}": texts_per_second(forward, timed, b) for b in BATCHES},
                "accuracy [95% CI]": f"{accuracy:.4f} [{interval[0]:.3f}, {interval[1]:.3f}]",
                "same label as fp32": f"{agreement:.2%}",
                "batch = alone": batch_equals_alone(predict, timed),
                "note": f"scored {len(texts):,} in {time.perf_counter() - start:.0f} s",
            })  # fmt: skip
            rows.append(row)
            print(f"{model_name}, {variant.name}: {row['single p50 ms']:.2f} ms, {row['accuracy [95% CI]']}",
                  flush=True)  # fmt: skip
        holder.serve_as(FP32)
    return rows, {"hardware": hardware.describe(), "test texts": len(texts), "timed texts": len(timed)}


def batch_equals_alone(predict, texts: list[str]) -> str:
    """The share of `texts` labelled in calls of 32 as each is labelled alone."""
    batched = [p.label for i in range(0, len(texts), 32) for p in predict(texts[i : i + 32])]
    alone = [predict([t])[0].label for t in texts]
    return f"{np.mean([a == b for a, b in zip(batched, alone, strict=True)]):.2%}"


def serve_both_ways(artifacts: Path, data: str | None, clients: int, requests: int) -> list[dict]:
    """Part 2: the app at fp32 and at auto, one after the other, the same load."""
    import httpx

    from bench.load import run_one_kind, running_app
    from compare.latency import percentiles

    tweets = list(load_tweets(data, split="test", limit=500, seed=2)["text"])
    rows = []
    for setting in ("fp32", "auto"):
        started = time.perf_counter()
        with running_app(artifacts, FTRAG_PRECISION=setting) as (url, _, backends):
            ready = time.perf_counter() - started
            models = httpx.get(url + "/api/models", timeout=30).json()
            served = {name: b["serving"] for name, b in models["backends"].items()}
            run_one_kind(url, tweets, backends, "rest classify", clients=4, requests=5)  # warm-up
            single = run_one_kind(url, tweets, backends, "rest classify", clients=1, requests=60)
            crowd = run_one_kind(url, tweets, backends, "rest classify", clients=clients, requests=requests)
            p1 = percentiles(np.array([m for m, ok in single[:-1] if ok]))
            ms = np.array([m for m, ok in crowd[:-1] if ok])
            pn = percentiles(ms)
            rows.append({
                "setting": setting,
                "served": ", ".join(f"{name} {served_name(b)}" for name, b in sorted(served.items()) if b),
                "ready s": round(ready, 1),
                "1 client p50 ms": p1["p50"],
                f"{clients} clients req/s": len(crowd[:-1]) / crowd[-1][0],
                f"{clients} clients p50 ms": pn["p50"],
                f"{clients} clients p95 ms": pn["p95"],
                "errors": sum(1 for _, ok in single[:-1] + crowd[:-1] if not ok),
            })  # fmt: skip
            for name, b in sorted(served.items()):
                if b:
                    print(f"{setting}: {name}: {b['why']}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--data", default=None)
    parser.add_argument("--skip-app", action="store_true", help="part 1 only")
    parser.add_argument("--skip-models", action="store_true", help="part 2 only")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=20)
    parser.add_argument("--limit", type=int, default=None, help="score this many test texts (default: all)")
    args = parser.parse_args()
    artifacts = Path(args.artifacts)
    missing = [name for name in ("finetune", "rag") if not (artifacts / name).is_dir()]
    if missing:
        parser.error(f"{artifacts} has no {' or '.join(missing)}/: run `python app.py --artifacts {artifacts}` once")
    if not args.skip_models:
        rows, facts = measure_models(artifacts, args.data, args.limit)
        print(f"\n{machine()}; one intra-op thread; {facts}")
        print(table(rows))
    if not args.skip_app:
        rows = serve_both_ways(artifacts, args.data, args.clients, args.requests)
        print(f"\n{machine()}; the app on every core, {args.clients} clients x {args.requests} REST classify calls")
        print(table(rows))
        fp32, auto = rows
        crowd = f"{args.clients} clients req/s"
        print(f"\nauto over fp32: single-text p50 {fp32['1 client p50 ms'] / auto['1 client p50 ms']:.2f}x faster, "
              f"throughput at {args.clients} clients {auto[crowd] / fp32[crowd]:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
