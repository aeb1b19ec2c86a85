"""RAG accuracy on the full test set with the full train index, for several k and every weighting.

k and the weighting used by the built classifier were chosen on a validation slice of train; the test rows here
only report. Uses the index saved by bench/rag_speed.py (or builds one).

    python bench/rag_accuracy.py [--data SRC] [--index artifacts/rag]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

import rag
from bench.common import table
from core.data import load_tweets
from rag import RagConfig, build_index, vote


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None)
    parser.add_argument("--index", default="artifacts/rag")
    args = parser.parse_args()

    if (Path(args.index) / "run.json").exists():
        clf = rag.load(args.index)
    else:
        clf = build_index(RagConfig(data=args.data), load_tweets(args.data, split="train"))
        clf.save(args.index)
    test = load_tweets(args.data, split="test")
    labels = clf.labels
    truth = np.array([labels.index(label) for label in test["label"]])
    vectors = clf.embedder.encode(test["text"], show_progress=True)
    scores, ids = clf.index.search(vectors, 300)
    label_ids = np.array([labels.index(label) for label in clf.examples()[1]])
    rows = []
    for k in (10, 25, 50, 100, 200, 300):
        for weighting, temperature in [
            ("uniform", 1.0),
            ("similarity", 1.0),
            ("softmax", 0.02),
            ("softmax", 0.05),
            ("softmax", 0.1),
        ]:
            probs = vote(scores[:, :k], ids[:, :k], label_ids, len(labels), weighting, temperature)
            predicted = probs.argmax(axis=1)
            rows.append(
                {
                    "k": k,
                    "weighting": weighting + (f" T={temperature}" if weighting == "softmax" else ""),
                    "accuracy": accuracy_score(truth, predicted),
                    "macro F1": f1_score(truth, predicted, average="macro"),
                }
            )
    print(f"index: {clf.size} train tweets, embedder {clf.embedder.name}; test: {len(truth)} tweets")
    print(table(rows))
    predicted = [labels.index(p.label) for p in clf.predict(test["text"])]
    chosen = clf.meta.get("tuning", {}).get("chosen") or {}
    print(
        f"\nthe built classifier (k={clf.k}, {clf.weighting}, T={clf.temperature}; chosen on a "
        f"{clf.meta.get('tuning', {}).get('validation_size')}-tweet validation slice of train at accuracy "
        f"{chosen.get('accuracy')}): test accuracy {accuracy_score(truth, predicted):.4f}, "
        f"macro F1 {f1_score(truth, predicted, average='macro'):.4f}"
    )


if __name__ == "__main__":
    main()
