"""Choosing how the retrieval classifier votes: k, the weighting and its temperature, by accuracy on held-out
labeled examples, scored and ranked by one rule (`score_votes`, `best_vote`).

`tune_vote` carves a validation slice out of the examples being indexed (`rag.build`, and so a study) and chooses
among every vote (`all_votes`); `choose_vote` scores a built classifier on a validation set kept apart from its
index (the learning curve and the served line-up) and chooses among the votes in which one close example counts
(`served_votes`), so that teaching the app an example changes its answers.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from core.data import stratified_indices
from rag.classifier import vote
from rag.config import RagConfig
from rag.index import exact_search


def tune_vote(vectors: np.ndarray, label_ids: np.ndarray, cfg: RagConfig, n_labels: int) -> dict[str, Any]:
    """Pick k and the vote (any of `all_votes`) by accuracy on a stratified validation slice searched against the
    rest.

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
    grid = score_votes(scores, ids, label_ids, label_ids[val], n_labels, cfg, all_votes(cfg))
    return {"chosen": best_vote(grid), "validation_size": int(val_size), "grid": grid}


SERVED_MAX_TEMPERATURE = 0.1
"""The app's line-up and the learning curve choose among softmax votes no warmer than this, so that one close
example counts (`served_votes`). On the demo's index (bench/teach_vote.py) it chose k=300, T=0.1 where the full grid
chose one vote each among 50: an example taught at a tweet's own text now decides the answer for 99% of the test
tweets the vote got wrong (9% before), and test accuracy is 0.651 against 0.641 (paired difference +0.010, 95%
interval [-0.002, +0.021])."""


def all_votes(cfg: RagConfig) -> list[tuple[str, float]]:
    """Every vote `rag.build` (and so a study) may choose: one vote each, similarity-weighted, and softmax at each
    temperature of the grid; the best on validation wins, whatever it means for teaching.

    >>> all_votes(RagConfig())[:3]
    [('uniform', 0.1), ('similarity', 0.1), ('softmax', 0.02)]
    """
    return [("uniform", cfg.temperature), ("similarity", cfg.temperature)] + [
        ("softmax", t) for t in sorted(cfg.temperature_grid)
    ]


def served_votes(cfg: RagConfig) -> list[tuple[str, float]]:
    """The votes the app's line-up and the learning curve choose among (`choose_vote`): softmax votes at the grid's
    temperatures no warmer than `SERVED_MAX_TEMPERATURE` (the coldest of the grid if none is), in which one close
    example, such as one taught, counts.

    >>> served_votes(RagConfig())
    [('softmax', 0.02), ('softmax', 0.05), ('softmax', 0.1)]
    """
    cold = [t for t in cfg.temperature_grid if t <= SERVED_MAX_TEMPERATURE] or [min(cfg.temperature_grid)]
    return [("softmax", t) for t in sorted(cold)]


def score_votes(
    scores: np.ndarray,
    ids: np.ndarray,
    example_ids: np.ndarray,
    wanted: np.ndarray,
    n_labels: int,
    cfg: RagConfig,
    votes: Sequence[tuple[str, float]],
) -> list[dict[str, Any]]:
    """Each k of ``cfg.k_grid`` (at most the hits searched) and each of `votes` (``(weighting, temperature)``)
    scored on validation queries whose hits are `scores`/`ids` (best first; ids index `example_ids`, each example's
    label index) and whose labels are `wanted`: accuracy and macro-F1. The one scoring every vote choice uses."""
    from sklearn.metrics import f1_score

    grid = []
    for k in sorted({min(k, ids.shape[1]) for k in cfg.k_grid}):
        for weighting, temperature in votes:
            predicted = vote(scores[:, :k], ids[:, :k], example_ids, n_labels, weighting, temperature).argmax(axis=1)
            grid.append({
                "k": k, "weighting": weighting, "temperature": temperature,
                "accuracy": round(float((predicted == wanted).mean()), 4),
                "macro_f1": round(float(f1_score(wanted, predicted, average="macro")), 4),
            })  # fmt: skip
    return grid


def best_vote(grid: list[dict[str, Any]]) -> dict[str, Any]:
    """The best row of `score_votes`: the highest accuracy, then macro-F1; ties keep the smaller k, then the
    colder vote, then the first of the votes tried."""
    return max(grid, key=lambda row: (row["accuracy"], row["macro_f1"], -row["k"], -row["temperature"]))


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


def choose_vote(clf, fit_labels: Sequence[str], texts: Sequence[str], labels: Sequence[str], seed: int) -> dict:
    """Set `clf`'s k and vote to the best of `served_votes` on the validation `texts` (searched against the index,
    which holds the fitting examples `fit_labels` in order), scored and ranked as `rag.build`'s tuning does
    (`score_votes`, `best_vote`); returns the choice with its validation accuracy."""
    grid = RagConfig(seed=seed)
    vectors = clf.embedder.encode(list(texts))
    scores, ids = clf.index.search(vectors, min(max(grid.k_grid), clf.size))
    example_ids = np.array([clf.labels.index(label) for label in fit_labels])
    wanted = np.array([clf.labels.index(label) for label in labels])
    best = best_vote(score_votes(scores, ids, example_ids, wanted, len(clf.labels), grid, served_votes(grid)))
    clf.k, clf.weighting, clf.temperature = best["k"], best["weighting"], best["temperature"]
    return best
