"""Choosing how the retrieval classifier votes: k, the weighting and its temperature, by accuracy on held-out
labeled examples.

`tune_vote` carves a validation slice out of the examples being indexed (`rag.build`); `choose_vote` scores a
built classifier on a validation set kept apart from its index (the learning curve and the served line-up).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.data import stratified_indices
from rag.classifier import vote
from rag.config import WEIGHTINGS, RagConfig
from rag.index import exact_search


def tune_vote(vectors: np.ndarray, label_ids: np.ndarray, cfg: RagConfig, n_labels: int) -> dict[str, Any]:
    """Pick k, weighting and temperature by accuracy on a stratified validation slice searched against the rest.

    Args:
        label_ids: each example's label index, below `n_labels` (the size of the label set).

    Returns the grid with each candidate's validation accuracy and macro-F1, and the choice (None when there are
    too few examples to hold any out).
    """
    n = len(label_ids)
    val_size = min(cfg.val_size, n // 5)
    if val_size < 20:
        return {"chosen": None, "reason": f"too few examples ({n}) to hold out a validation slice", "grid": []}
    val = np.array(stratified_indices([str(i) for i in label_ids], val_size, seed=cfg.seed + 1))
    k_max = min(max(cfg.k_grid), n - len(val))
    scores, ids = held_out_neighbours(vectors, val, k_max)
    from sklearn.metrics import f1_score

    grid = []
    for k in sorted({min(k, k_max) for k in cfg.k_grid}):
        for weighting in WEIGHTINGS:
            for temperature in cfg.temperature_grid if weighting == "softmax" else (None,):
                probs = vote(scores[:, :k], ids[:, :k], label_ids, n_labels, weighting, temperature or 1.0)
                predicted = probs.argmax(axis=1)
                grid.append(
                    {
                        "k": k,
                        "weighting": weighting,
                        "temperature": temperature if temperature is not None else cfg.temperature,
                        "accuracy": round(float((predicted == label_ids[val]).mean()), 4),
                        "macro_f1": round(float(f1_score(label_ids[val], predicted, average="macro")), 4),
                    }
                )
    best = max(grid, key=lambda row: (row["accuracy"], row["macro_f1"], -row["k"]))
    return {"chosen": best, "validation_size": int(val_size), "grid": grid}


def held_out_neighbours(vectors: np.ndarray, held: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` nearest examples of each row in `held` among the rows not held out, as an index of those rows would
    find them, without building one: every example is searched exactly and the held-out rows are dropped from the
    hits. Nothing is copied (a copy of the rest was 1.5 GB at a million 384-d examples); ids are row numbers."""
    wanted = min(k + len(held), len(vectors))
    scores, ids = exact_search(vectors[held], vectors, wanted)
    dropped = np.isin(ids, held) | (ids < 0)
    order = np.argsort(dropped, axis=1, kind="stable")[:, :k]  # the kept hits first, best first
    scores, ids = np.take_along_axis(scores, order, 1), np.take_along_axis(ids, order, 1)
    return scores, np.where(np.take_along_axis(dropped, order, 1), -1, ids)


SERVED_MAX_TEMPERATURE = 0.1
"""`choose_vote` picks among softmax votes no warmer than this, so that one close example counts. On the demo's
index (bench/teach_vote.py) it chose k=300, T=0.1 where the full grid chose one vote each among 50: an example taught
at a tweet's own text now decides the answer for 99% of the test tweets the vote got wrong (9% before), and test
accuracy is 0.651 against 0.641 (paired difference +0.010, 95% interval [-0.002, +0.021])."""


def choose_vote(clf, fit_labels: Sequence[str], texts: Sequence[str], labels: Sequence[str], seed: int) -> dict:
    """Set `clf`'s k and temperature to the best on the validation `texts` (searched against the index, which holds
    the fitting examples `fit_labels` in order), among similarity-weighted votes in which a close example counts
    (SERVED_MAX_TEMPERATURE); returns the choice with its validation accuracy."""
    grid = RagConfig(seed=seed)
    vectors = clf.embedder.encode(list(texts))
    scores, ids = clf.index.search(vectors, min(max(grid.k_grid), clf.size))
    example_ids = np.array([clf.labels.index(label) for label in fit_labels])
    wanted = np.array([clf.labels.index(label) for label in labels])
    votes = [("softmax", t) for t in grid.temperature_grid if t <= SERVED_MAX_TEMPERATURE]
    best: dict[str, Any] = {"accuracy": -1.0}
    for k in sorted({min(k, ids.shape[1]) for k in grid.k_grid}):
        for weighting, temperature in votes:
            probs = vote(scores[:, :k], ids[:, :k], example_ids, len(clf.labels), weighting, temperature)
            acc = float((probs.argmax(axis=1) == wanted).mean())
            if acc > best["accuracy"]:  # ties keep the smaller k and the colder vote
                best = {"k": k, "weighting": weighting, "temperature": temperature, "accuracy": round(acc, 4)}
    clf.k, clf.weighting, clf.temperature = best["k"], best["weighting"], best["temperature"]
    return best
