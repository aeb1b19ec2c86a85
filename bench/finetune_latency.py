"""Prediction latency of a real-size GPT-2 classifier: this project's predict (fp32, int8) vs the HF pipeline.

GPT2Config() (GPT-2 124M's shape) with random weights: speed does not depend on the weights. The three variants
are timed interleaved, query by query (A, B, C, A, B, C...), so machine noise hits all alike; warm-up excluded.

    python bench/finetune_latency.py [--data SRC] [--queries 200] [--batches 10]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from transformers import GPT2Config, GPT2ForSequenceClassification, pipeline

from bench.common import machine, table
from compare.latency import percentiles
from core.data import label_names, load_tweets
from finetune.config import FinetuneConfig
from finetune.model import TextClassifier, quantize_int8
from finetune.train import load_tokenizer

WARMUP = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--batches", type=int, default=10, help="batches of 64 for the throughput figure")
    args = parser.parse_args()

    test = load_tweets(args.data, split="test")
    texts, labels = list(test["text"]), label_names(test)
    tokenizer, source = load_tokenizer(FinetuneConfig(from_scratch=True, tokenizer=args.tokenizer))
    torch.manual_seed(0)
    config = GPT2Config(
        num_labels=len(labels),
        id2label=dict(enumerate(labels)),
        label2id={n: i for i, n in enumerate(labels)},
        pad_token_id=tokenizer.pad_token_id,
        vocab_size=len(tokenizer),
    )
    model = GPT2ForSequenceClassification(config).eval()
    fp32 = TextClassifier(model, tokenizer, labels)
    int8 = TextClassifier(quantize_int8(copy.deepcopy(model)), tokenizer, labels, quantized=True)
    pipe = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu", top_k=None)

    variants = {
        "transformers pipeline (fp32)": lambda batch: pipe(batch, batch_size=len(batch), truncation=True),
        "this project, fp32": fp32.predict,
        "this project, int8": int8.predict,
    }
    queries = texts[: args.queries]
    for fn in variants.values():
        for q in texts[-WARMUP:]:
            fn([q])
    timings: dict[str, list[float]] = {name: [] for name in variants}
    for q in queries:
        for name, fn in variants.items():
            start = time.perf_counter()
            fn([q])
            timings[name].append((time.perf_counter() - start) * 1000)

    batch_texts = texts[args.queries : args.queries + 64 * args.batches]
    for fn in variants.values():
        fn(batch_texts[:64])  # warm-up
    seconds = {name: 0.0 for name in variants}
    for b in range(args.batches):
        batch = batch_texts[b * 64 : (b + 1) * 64]
        for name, fn in variants.items():
            start = time.perf_counter()
            fn(batch)
            seconds[name] += time.perf_counter() - start
    throughput = {name: len(batch_texts) / s for name, s in seconds.items()}

    base = np.median(timings["transformers pipeline (fp32)"])
    rows = []
    for name in variants:
        p = percentiles(np.array(timings[name]))
        rows.append(
            {
                "variant": name,
                "p50 ms": p["p50"],
                "p95 ms": p["p95"],
                "speed-up vs pipeline (p50)": base / p["p50"],
                "batch-64 texts/s": throughput[name],
            }
        )
    agree = np.mean([a.label == b.label for a, b in zip(fp32.predict(queries), int8.predict(queries), strict=True)])
    print(f"GPT-2 124M shape (random init), {source.describe()}; {machine()}")
    print(f"{len(queries)} single queries (real test tweets), interleaved; {len(batch_texts)} texts in batches of 64")
    print(table(rows))
    print(
        f"\nint8 gives the fp32 label on {agree:.1%} of these queries (random weights: see finetune_accuracy for "
        "the accuracy cost on a trained model)"
    )


if __name__ == "__main__":
    main()
