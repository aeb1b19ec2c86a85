"""Label-quality audit of the training data: ``python -m jobs.audit --data SRC --out DIR``.

An example is a *suspect* when two independent signals both say its label is wrong:

1. **out of fold**: a logistic regression on the frozen sentence embeddings, trained in `folds` folds (scikit-learn's
   `cross_val_predict`), so each example is predicted by a model that never saw it, predicts another label with
   confidence at least `min_confidence`;
2. **neighbours**: fewer than half of its `k` nearest other labeled examples (cosine over the same embeddings,
   FAISS) carry its label.

Suspects are ranked by the out-of-fold confidence times the neighbours' disagreement, with both signals shown and
the suggested label. The audit also lists exact duplicates (after trimming and collapsing whitespace) and near
duplicates (cosine >= `near`) whose labels conflict, and the train/test overlap (`core.data.leak_report`).

``--measure`` says what the audit buys, as a number: the retrieval index is rebuilt without the top suspects and
both indexes are scored on the test split, paired (the accuracy difference with its bootstrap interval and McNemar
p-value). Writes ``audit.json`` and ``suspects.csv`` (for a person to review) to ``--out``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import sys
import time
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.cli import run_job
from core.config import JobConfig
from core.data import label_names, leak_report, load_tweets, stratified_sample
from core.files import atomic_write, atomic_write_json, check_new_output
from core.split import Split
from finetune.protocol import MIN_STEPS

logger = logging.getLogger(__name__)

AUDIT_FILE, SUSPECTS_FILE = "audit.json", "suspects.csv"


@dataclass
class AuditConfig(JobConfig):
    """What to audit and how strict to be.

    Args:
        data: labeled data source; None = ``FTRAG_DATA`` or the default Hub dataset.
        labels: label names in the order of the data's integer ids (``--labels a,b,c``); None = the data's own.
        train_size: audit a seeded, stratified sample of this many training examples; None = all of them.
        embedder: sentence-transformers model; None = ``FTRAG_EMBEDDER`` or the default (offline: the packaged
            all-MiniLM-L6-v2).
        folds: folds of the out-of-fold prediction.
        k: neighbours consulted per example.
        min_confidence: the out-of-fold prediction must reach this confidence for another label.
        near: cosine similarity from which two texts count as near duplicates.
        top: suspects kept in audit.json and the CSV (the count of all of them is kept too).
        measure: rebuild the retrieval index without the top suspects and score both on the test split.
        measure_finetune: with `measure`, also fine-tune twice (every example vs without the top suspects; the
            same validation slice keeps each run's best checkpoint) and score both on the test split; two trainings.
        base_model: the fine-tune's checkpoint for `measure_finetune`; None = the fine-tune's default.
        epochs: the fine-tune's epochs for `measure_finetune`.
        min_steps: the fine-tune's fewest optimizer steps (the training protocol's, `finetune.protocol`).
        test_limit: score on a seeded, stratified sample of this many test texts; None = all.
        seed: seed for the sample and the folds.
        out: where audit.json and suspects.csv go.
    """

    train_size: int | None = None
    embedder: str | None = None
    folds: int = 5
    k: int = 10
    min_confidence: float = 0.7
    near: float = 0.95
    top: int = 200
    measure: bool = False
    measure_finetune: bool = False
    base_model: str | None = None
    epochs: float = 1.0
    min_steps: int = MIN_STEPS
    test_limit: int | None = None
    out: str = "artifacts/audit"

    def __post_init__(self) -> None:
        super().__post_init__()  # data, labels, seed, out (core.config)
        if self.folds < 2:
            raise ValueError(f"folds must be at least 2, got {self.folds}")
        if self.k < 1 or self.top < 1:
            raise ValueError(f"k and top must be at least 1, got k={self.k}, top={self.top}")
        if not 0 < self.min_confidence < 1 or not 0 < self.near <= 1:
            raise ValueError("min_confidence must be in (0, 1) and near in (0, 1]")
        for name in ("train_size", "test_limit"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {getattr(self, name)}")
        if self.measure_finetune and not self.measure:
            raise ValueError("measure_finetune is part of the measurement: give --measure too")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")


# --- the two signals -------------------------------------------------------------------------------------------------


def out_of_fold(vectors: np.ndarray, y: np.ndarray, n_labels: int, folds: int, seed: int) -> np.ndarray:
    """``(n, n_labels)`` probabilities, each row from a logistic regression fitted on the other folds."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    smallest = int(np.bincount(y, minlength=n_labels)[np.bincount(y, minlength=n_labels) > 0].min())
    splitter = StratifiedKFold(n_splits=max(2, min(folds, smallest)), shuffle=True, random_state=seed)
    model = LogisticRegression(C=10.0, max_iter=2000)
    probs = cross_val_predict(model, vectors, y, cv=splitter, method="predict_proba")
    full = np.zeros((len(y), n_labels))
    full[:, np.unique(y)] = probs  # labels absent from the data get probability 0
    return full


def neighbours(vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The `k` nearest *other* examples of each one: ``(similarities, ids)``, best first (the example itself is left
    out by its position, so an exact duplicate still counts as a neighbour)."""
    import faiss

    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    k_all = min(k + 1, len(vectors))
    scores, ids = index.search(np.ascontiguousarray(vectors, dtype=np.float32), k_all)
    keep = ids != np.arange(len(vectors))[:, None]
    out_scores = np.full((len(vectors), k_all - 1), -np.inf, dtype=np.float32)
    out_ids = np.full((len(vectors), k_all - 1), -1, dtype=np.int64)
    for row in range(len(vectors)):
        chosen = np.flatnonzero(keep[row])[: k_all - 1]
        out_scores[row, : len(chosen)], out_ids[row, : len(chosen)] = scores[row, chosen], ids[row, chosen]
    return out_scores, out_ids


def rank_suspects(texts, labels, names, probs, neighbour_ids, min_confidence: float) -> list[dict[str, Any]]:
    """Examples both signals doubt, most doubtful first (see the module docstring)."""
    y = np.array([names.index(label) for label in labels])
    valid = neighbour_ids >= 0
    same = np.where(valid, y[np.where(valid, neighbour_ids, 0)] == y[:, None], False).sum(axis=1)
    agreement = same / np.maximum(valid.sum(axis=1), 1)
    suggested = probs.argmax(axis=1)
    confidence = probs.max(axis=1)
    doubted = (suggested != y) & (confidence >= min_confidence) & (agreement < 0.5)
    rows = []
    for i in np.flatnonzero(doubted):
        votes = np.bincount(y[neighbour_ids[i][valid[i]]], minlength=len(names))
        rows.append({
            "text": texts[i],
            "label": labels[i],
            "suggested": names[suggested[i]],
            "confidence": round(float(confidence[i]), 4),
            "neighbours_agreeing": round(float(agreement[i]), 3),
            "neighbours_majority": names[int(votes.argmax())],
            "score": round(float(confidence[i] * (1 - agreement[i])), 4),
            "row": int(i),
        })  # fmt: skip
    return sorted(rows, key=lambda r: -r["score"])


def conflicting_duplicates(texts, labels, neighbour_scores, neighbour_ids, near: float) -> dict[str, list]:
    """Exact duplicates (whitespace collapsed, case kept) and near duplicates (cosine >= `near`) whose labels
    differ."""
    groups: dict[str, set[int]] = defaultdict(set)
    for i, text in enumerate(texts):
        groups[" ".join(text.split())].add(i)
    exact = [{"text": key, "labels": sorted({labels[i] for i in rows}), "rows": sorted(rows)}
             for key, rows in groups.items() if len({labels[i] for i in rows}) > 1]  # fmt: skip
    near_pairs = []
    for i, (scores, ids) in enumerate(zip(neighbour_scores, neighbour_ids, strict=True)):
        for score, j in zip(scores, ids, strict=True):
            if j > i and score >= near and labels[i] != labels[j] and texts[i].split() != texts[j].split():
                near_pairs.append({"a": texts[i], "a_label": labels[i], "b": texts[j], "b_label": labels[j],
                                   "similarity": round(float(score), 4)})  # fmt: skip
    return {"exact": exact, "near": sorted(near_pairs, key=lambda p: -p["similarity"])}


# --- what the audit buys ---------------------------------------------------------------------------------------------


def measure_removal(train, vectors, test, suspects: list[dict[str, Any]], embedder, seed: int) -> dict[str, Any]:
    """Retrieval over all training examples vs without the suspects, scored paired on the same test texts (the
    training examples' `vectors`, already computed, are not embedded again)."""
    from compare.metrics import accuracy as accuracy_of
    from compare.metrics import paired_difference
    from rag.build import build_classifier
    from rag.config import RagConfig

    drop = {s["row"] for s in suspects}
    kept_rows = [i for i in range(train.num_rows) if i not in drop]
    references = list(test["text"]), list(test["label"])
    predictions = {}
    for name, rows in (("all", list(range(train.num_rows))), ("without_suspects", kept_rows)):
        clf = build_classifier(RagConfig(seed=seed), train.select(rows), embedder=embedder, show_progress=False,
                               vectors=vectors[rows])  # fmt: skip
        predictions[name] = [p.label for p in clf.predict(references[0])]
    diff = paired_difference(predictions["without_suspects"], predictions["all"], references[1], seed=seed)
    accuracy = {name: accuracy_of(ps, references[1]) for name, ps in predictions.items()}
    return {"backend": "rag (kNN vote, k and weighting chosen on a validation slice)", "removed": len(drop),
            "test_texts": len(references[1]), "accuracy": accuracy, **diff}  # fmt: skip


def measure_finetune_removal(train, test, suspects: list[dict[str, Any]], cfg: AuditConfig) -> dict[str, Any]:
    """The fine-tune trained on every example vs without the suspects, scored paired on the same test texts.

    One stratified validation slice is carved first and given to both runs (suspects in it stay in both), so the
    two differ only by the removed training rows.
    """
    import tempfile

    import finetune
    from compare.metrics import accuracy as accuracy_of
    from compare.metrics import paired_difference
    from finetune.config import FinetuneConfig
    from finetune.train import train as train_model

    drop = {s["row"] for s in suspects}
    split = Split.of(train, min(1000, max(1, train.num_rows // 10)), seed=cfg.seed)
    kept = tuple(row for row in split.fit if row not in drop)
    arms = {"all": split, "without_suspects": dataclasses.replace(split, fit=kept)}
    texts, references = list(test["text"]), list(test["label"])
    predictions, validations = {}, {}
    runs: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="audit-finetune-") as tmp:
        for name, rows in arms.items():
            ft = FinetuneConfig(base_model=cfg.base_model, labels=cfg.labels, epochs=cfg.epochs, seed=cfg.seed,
                                min_steps=cfg.min_steps, out=str(Path(tmp) / name))  # fmt: skip
            logger.info("Fine-tuning on %s: %d examples", name.replace("_", " "), len(rows.fit))
            runs[name] = train_model(ft, train, split=rows)
            predictions[name] = [p.label for p in finetune.load(ft.out).predict(texts)]
            validations[name] = Split.load(ft.out).validation  # the rows each run recorded it chose its checkpoint by
    diff = paired_difference(predictions["without_suspects"], predictions["all"], references, seed=cfg.seed)
    return {
        "backend": f"fine-tune ({runs['all']['base_model']}, {cfg.epochs:g} epochs)",
        "removed": len(split.fit) - len(kept),
        "train_sizes": {name: len(rows.fit) for name, rows in arms.items()},
        "validation_size": len(split.validation),
        "same_validation": len(set(validations.values())) == 1,
        "test_texts": len(references),
        "accuracy": {name: accuracy_of(ps, references) for name, ps in predictions.items()},
        "train_seconds": {name: run["train_seconds"] for name, run in runs.items()},
        **diff,
    }


# --- the job ---------------------------------------------------------------------------------------------------------


def audit(cfg: AuditConfig, overwrite: bool = False) -> dict[str, Any]:
    """Run the audit described by `cfg` and write audit.json and suspects.csv to ``cfg.out``; returns audit.json."""
    from rag.embed import Embedder

    out = Path(cfg.out)
    check_new_output(out / AUDIT_FILE, "the audit", overwrite)
    start = time.perf_counter()
    splits = load_tweets(cfg.data, labels=cfg.labels)
    train = splits["train"]
    if cfg.train_size is not None and cfg.train_size < train.num_rows:
        train = stratified_sample(train, cfg.train_size, seed=cfg.seed, what="train")
    names, texts, labels = label_names(train), list(train["text"]), list(train["label"])
    embedder = Embedder.load(cfg.embedder)
    logger.info("Embedding %d training examples", len(texts))
    vectors = embedder.encode(texts)
    y = np.array([names.index(label) for label in labels])
    probs = out_of_fold(vectors, y, len(names), cfg.folds, cfg.seed)
    scores, ids = neighbours(vectors, cfg.k)
    suspects = rank_suspects(texts, labels, names, probs, ids, cfg.min_confidence)
    result: dict[str, Any] = {
        "data": len(texts),
        "labels": names,
        "suspects_found": len(suspects),
        "suspects": suspects[: cfg.top],
        "conflicting_duplicates": conflicting_duplicates(texts, labels, scores, ids, cfg.near),
        "overlap": leak_report(train, splits["test"]) if "test" in splits else None,
        "out_of_fold_accuracy": round(float((probs.argmax(axis=1) == y).mean()), 4),
        "config": asdict(cfg),
    }
    if cfg.measure and "test" in splits:
        test = splits["test"]
        if cfg.test_limit is not None and cfg.test_limit < test.num_rows:
            test = stratified_sample(test, cfg.test_limit, seed=cfg.seed, what="test")
        result["removal"] = measure_removal(train, vectors, test, suspects[: cfg.top], embedder, cfg.seed)
        if cfg.measure_finetune:
            result["removal_finetune"] = measure_finetune_removal(train, test, suspects[: cfg.top], cfg)
    result["seconds"] = round(time.perf_counter() - start, 2)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / SUSPECTS_FILE, lambda tmp: Path(tmp).write_text(suspects_csv(suspects[: cfg.top]),
                                                                         encoding="utf-8"))  # fmt: skip
    atomic_write_json(out / AUDIT_FILE, result)
    return result


def suspects_csv(suspects: list[dict[str, Any]]) -> str:
    """The suspects as CSV for a person to review."""
    from compare.report import csv_safe

    columns = ["text", "label", "suggested", "confidence", "neighbours_agreeing", "neighbours_majority", "row"]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in suspects:  # every cell made spreadsheet-safe (no formulas)
        writer.writerow({k: csv_safe(v) for k, v in row.items()})
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> int:
    status, _, result = run_job(AuditConfig, argv, __doc__.splitlines()[0], audit,
                                  overwrite_help="replace an audit already in --out")  # fmt: skip
    if status:
        return status
    summary = {k: result[k] for k in ("data", "suspects_found", "out_of_fold_accuracy", "seconds")}
    summary["conflicting_duplicates"] = {k: len(v) for k, v in result["conflicting_duplicates"].items()}
    for key in ("removal", "removal_finetune"):
        if key in result:
            summary[key] = {k: result[key][k] for k in ("removed", "accuracy", "accuracy_diff", "diff_ci95")}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
