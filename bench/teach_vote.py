"""Does one taught example count, and what does the vote cost in accuracy? The demo's index, every vote.

The demo's retrieval index (`serving.build`: the fit part of train, the vote chosen on the validation part) is
searched for every tweet of the test split. For each vote (k, weighting, temperature) the table gives:

- validation and test accuracy (the test accuracy with a 95% bootstrap interval, and its paired difference from
  the vote the demo chose before this bench, uniform k=50, over the same test tweets);
- "same text": of the test tweets the vote gets wrong, the share whose answer becomes their true label once that
  very text is taught with it (what the Teach tab shows when the query is the example);
- "related": the same, when the example taught is the test tweet's nearest other test tweet, labeled with the
  query's true label (a related text, not the same).

    python bench/teach_vote.py [--index artifacts/rag] [--limit N]

With --index, the demo's saved index is searched (its examples are not embedded again); without, the fit part is
embedded and indexed here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from bench.common import table
from core.data import load_tweets
from rag.classifier import vote

BOOTSTRAP = 2000


def with_example(scores, ids, extra_scores, extra_id, k):
    """The top-k hits once an example with id `extra_id` and similarity `extra_scores` (one per query) is added."""
    scores = np.concatenate([scores[:, :k], extra_scores[:, None]], axis=1)
    ids = np.concatenate([ids[:, :k], np.full((len(ids), 1), extra_id)], axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)


def interval(hits: np.ndarray, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    means = hits[rng.integers(0, len(hits), (BOOTSTRAP, len(hits)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=None, help="test tweets (default: all)")
    parser.add_argument("--index", default=None, help="the demo's saved index (default: build one like it)")
    args = parser.parse_args()

    from rag.embed import Embedder
    from serving.build import DemoData

    fit, validation, _ = DemoData().parts()
    test = load_tweets(None, split="test", limit=args.limit, seed=0)
    if args.index:
        import rag

        served = rag.load(args.index)
        embedder, index, fit_labels = served.embedder, served.index, served.examples()[1]
        print(f"the saved index: {served.describe()}")
    else:
        import faiss

        embedder, fit_labels = Embedder.load(), list(fit["label"])
        fit_vectors = embedder.encode(list(fit["text"]))
        index = faiss.IndexFlatIP(fit_vectors.shape[1])
        index.add(fit_vectors)
    labels = sorted(set(fit_labels))
    example_labels = np.array([labels.index(x) for x in fit_labels] + [0])  # the last id: the taught example
    taught = len(fit_labels)
    parts = {}
    for name, data in (("validation", validation), ("test", test)):
        vectors = embedder.encode(list(data["text"]))
        scores, ids = index.search(vectors, 300)
        parts[name] = (vectors, scores, ids, np.array([labels.index(x) for x in data["label"]]))
    vectors, t_scores, t_ids, truth = parts["test"]
    # The related text for each test tweet: its nearest other test tweet (the same text aside).
    between = vectors @ vectors.T
    np.fill_diagonal(between, -1.0)
    related_sim = between.max(axis=1)
    print(f"fit {taught:,}, validation {len(parts['validation'][3]):,}, test {len(truth):,} tweets; related "
          f"text similarity: median {np.median(related_sim):.3f}")  # fmt: skip

    def predicted(scores, ids, truth_labels, k, weighting, temperature):
        local = example_labels.copy()
        rows = []
        for row_scores, row_ids, label in zip(scores, ids, truth_labels, strict=True):
            local[taught] = label
            rows.append(vote(row_scores[None], row_ids[None], local, len(labels), weighting, temperature)[0])
        return np.array(rows).argmax(axis=1)

    reference = None
    rows = []
    votes = [("uniform", 1.0), ("similarity", 1.0), *(("softmax", t) for t in (0.02, 0.05, 0.1, 0.2))]
    for k in (10, 25, 50, 100, 200, 300):
        for weighting, temperature in votes:
            v_scores, v_ids, v_truth = parts["validation"][1:]
            val = vote(v_scores[:, :k], v_ids[:, :k], example_labels, len(labels), weighting, temperature)
            val_acc = float((val.argmax(axis=1) == v_truth).mean())
            answer = vote(t_scores[:, :k], t_ids[:, :k], example_labels, len(labels), weighting, temperature)
            hits = (answer.argmax(axis=1) == truth).astype(float)
            if (k, weighting) == (50, "uniform"):
                reference = hits
            wrong = hits == 0
            flips = {}
            for what, extra in (("same text", np.ones(len(truth))), ("related", related_sim)):
                s, i = with_example(t_scores[wrong], t_ids[wrong], extra[wrong], taught, k)
                flips[what] = float((predicted(s, i, truth[wrong], k, weighting, temperature) == truth[wrong]).mean())
            rows.append({"k": k, "vote": weighting + (f" T={temperature:g}" if weighting == "softmax" else ""),
                         "validation": round(val_acc, 4), "test": round(float(hits.mean()), 4),
                         "test 95%": "[{:.3f}, {:.3f}]".format(*interval(hits)), "hits": hits,
                         "same text": f"{flips['same text']:.0%}", "related": f"{flips['related']:.0%}"})  # fmt: skip
    for row in rows:
        diff = row.pop("hits") - reference
        row["vs uniform k=50"] = "{:+.4f} [{:+.3f}, {:+.3f}]".format(diff.mean(), *interval(diff))
    print(table(rows))


if __name__ == "__main__":
    main()
