"""What micro-batching can buy in model compute: ms per text, one text at a time vs micro-batches, on one core.

Loads the served line-up's two models from the artifacts (the fine-tune's classifier and the index's embedder, each
as the app serves it: a frozen trace, length-sorted batches) and times each on the same real test tweets, one text
per call and in micro-batches of 8, 16 and 32 (what the app's batcher gathers under 32 clients), on one intra-op
thread: the share of the cores each backend's batcher gets on 2 cores. A reference row runs the same models in
bfloat16, which the app does not serve (answers may differ from the evaluated fp32 model's), to show what the
precision would change.

    python bench/batch_gain.py --artifacts artifacts/demo [--texts 320]
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

from bench.common import machine, table, time_calls
from core.data import load_tweets

BATCHES = (1, 8, 16, 32)


def ms_per_text(predict: Callable[[list[str]], object], texts: list[str], batch: int) -> float:
    """Milliseconds per text of `predict` over `texts` in calls of `batch` texts, after one untimed call."""
    calls = [texts[i : i + batch] for i in range(0, len(texts), batch)]
    return float(time_calls(predict, calls, warmup=1).sum()) / len(texts)


def load_models(artifacts: Path, dtype: torch.dtype):
    """The fine-tune's classifier and the index's embedder as the app loads them, their weights in `dtype`: fp32 as
    served (each traced at its first call), bf16 eagerly (its frozen trace ran slower than the eager model)."""
    import rag
    from finetune.model import TextClassifier

    classifier = TextClassifier.from_pretrained(artifacts / "finetune")
    embedder = rag.load(artifacts / "rag").embedder
    if dtype != torch.float32:
        classifier.model.to(dtype)
        embedder.model.to(dtype)
        classifier.trace = embedder.trace = False
    return classifier, embedder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--artifacts", default="artifacts")
    parser.add_argument("--data", default=None)
    parser.add_argument("--texts", type=int, default=320, help="test tweets timed per row (a multiple of 32)")
    args = parser.parse_args()
    artifacts = Path(args.artifacts)
    missing = [name for name in ("finetune", "rag") if not (artifacts / name).is_dir()]
    if missing:
        parser.error(f"{artifacts} has no {' or '.join(missing)}/: run `python app.py --artifacts {artifacts}` once")

    torch.set_num_threads(1)
    texts = list(load_tweets(args.data, split="test", limit=args.texts, seed=3)["text"])
    rows, labels = [], {}
    for dtype, precision in ((torch.float32, "fp32 (served)"), (torch.bfloat16, "bf16 (not served)")):
        classifier, embedder = load_models(artifacts, dtype)
        for name, predict in (("fine-tune classifier", classifier.predict_proba), ("index embedder", embedder.encode)):
            ms = {batch: ms_per_text(predict, texts, batch) for batch in BATCHES}
            row = {"model": name, "precision": precision}
            row.update({f"{b} per call ms/text": ms[b] for b in BATCHES})
            row["gain at 16"] = ms[1] / ms[16]
            row["gain at 32"] = ms[1] / ms[32]
            rows.append(row)
        labels[dtype] = classifier.predict_proba(texts).argmax(1)
    same = float(np.mean(labels[torch.float32] == labels[torch.bfloat16]))
    print(f"{machine()}; one intra-op thread; {len(texts)} test tweets per row")
    print(table(rows))
    print(f"\nbf16 gives the fine-tune's fp32 label on {same:.1%} of these tweets")


if __name__ == "__main__":
    main()
