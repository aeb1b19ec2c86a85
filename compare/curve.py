"""Learning curve: accuracy vs number of labeled examples, fine-tune and retrieval side by side.

``python -m compare.curve --sizes 100,300,1000,3000 --base-model DIR --out DIR``

At each size both backends get the same seeded, stratified sample of the train split: the fine-tune carves its
evaluation slice out of it (a fifth, at most 1,000), the index holds all of it. Both are scored on the same slice of
the test split. Writes curve.json and curve.png with the crossover point (the smallest size from which the
fine-tune beats retrieval). The defaults finish in minutes on 2 cores; ``--sizes 100,300,1000,3000,10000,all``
is the full curve (not run here; from the measured MiniLM throughput, roughly 50 minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from compare.decide import crossover
from compare.metrics import accuracy, macro_f1
from core.cli import add_labels_argument, setup_logging
from core.data import DataError, label_names, load_tweets, stratified_sample
from core.files import ArtifactError, atomic_write, dumps_json
from core.types import check_same_labels

logger = logging.getLogger(__name__)


def parse_sizes(text: str, available: int | None = None) -> list[int | None]:
    """``"100,300,all"`` -> ``[100, 300, None]`` (None = every example), sorted, checked against `available`.

    >>> parse_sizes("300,100,all")
    [100, 300, None]
    """
    sizes: list[int | None] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.lower() == "all":
            sizes.append(None)
            continue
        try:
            value = int(part)
        except ValueError as err:
            raise ValueError(f"sizes must be integers or 'all', got {part!r}") from err
        if value < 10:
            raise ValueError(f"each size must be at least 10 labeled examples, got {value}")
        if available is not None and value > available:
            raise ValueError(f"size {value} is larger than the {available} training examples")
        sizes.append(value)
    if not sizes:
        raise ValueError("no sizes given")
    return sorted(set(sizes), key=lambda s: float("inf") if s is None else s)


def learning_curve(
    sizes: Sequence[int | None],
    train,
    test,
    *,
    finetune_config: Callable[[int, str], Any],
    embedder=None,
    seed: int = 0,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, Any]:
    """Train / build both backends at every size and score them on `test`; returns the curve dict.

    Args:
        finetune_config: ``(size, out_dir) -> FinetuneConfig`` for the fine-tune at that size.
    """
    import finetune
    import rag
    from finetune.train import train as train_model

    report = progress or (lambda fraction, message: None)
    texts, references = list(test["text"]), list(test["label"])
    labels = label_names(train)
    check_same_labels("the training data", labels, "the test data", label_names(test))
    embedder = embedder or rag.Embedder.load()
    rows: list[dict[str, Any]] = []
    for i, size in enumerate(sizes):
        n = train.num_rows if size is None else size
        sample = stratified_sample(train, n, seed=seed, what="train")
        row: dict[str, Any] = {"size": n}
        report(i / len(sizes), f"{n} labeled examples: building the index")
        index = rag.RagClassifier.build(rag.RagConfig(seed=seed), sample, embedder=embedder, show_progress=False)
        predicted = [p.label for p in index.predict(texts)]
        row["rag"] = {
            "accuracy": accuracy(predicted, references),
            "macro_f1": macro_f1(predicted, references, labels),
            "seconds": index.meta["build_seconds"],
        }
        report((i + 0.3) / len(sizes), f"{n} labeled examples: fine-tuning")
        with tempfile.TemporaryDirectory() as tmp:
            cfg = finetune_config(n, str(Path(tmp) / "model"))
            start = time.perf_counter()
            run = train_model(cfg, sample, show_progress=False)
            seconds = time.perf_counter() - start
            model = finetune.load(cfg.out)
            predicted = [p.label for p in model.predict(texts)]
        row["finetune"] = {
            "accuracy": accuracy(predicted, references),
            "macro_f1": macro_f1(predicted, references, labels),
            "seconds": round(seconds, 2),
            "base_model": run["base_model"],
            "from_scratch": run["from_scratch"],
        }
        logger.info("%d examples: fine-tune %.4f, rag %.4f", n, row["finetune"]["accuracy"], row["rag"]["accuracy"])
        rows.append(row)
    curve = {
        "sizes": [r["size"] for r in rows],
        "backends": {name: [r[name]["accuracy"] for r in rows] for name in ("finetune", "rag")},
        "rows": rows,
        "test_size": len(texts),
        "labels": labels,
        "seed": seed,
    }
    curve["crossover"] = crossover(curve)
    report(1.0, "done")
    return curve


def plot_curve(curve: dict[str, Any], path: str | Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    names = {"finetune": "fine-tune", "rag": "RAG (kNN vote)"}
    for key, label in names.items():
        ax.plot(curve["sizes"], curve["backends"][key], "o-", label=label)
    if curve.get("crossover"):
        ax.axvline(curve["crossover"], color="grey", ls="--", lw=1)
        ax.annotate(f"fine-tune ahead from {curve['crossover']}", (curve["crossover"], ax.get_ylim()[0]),
                    xytext=(5, 10), textcoords="offset points", color="grey")  # fmt: skip
    ax.set_xscale("log")
    ax.set(xlabel="labeled examples", ylabel=f"test accuracy ({curve['test_size']} tweets)", title="Learning curve")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False
    )
    parser.add_argument("--sizes", default="100,300,1000,3000", help="labeled-example counts; 'all' = every one")
    parser.add_argument("--data", default=None)
    add_labels_argument(parser)
    parser.add_argument("--test-limit", type=int, default=1000, help="test texts scored at every size")
    parser.add_argument("--base-model", default=None, help="checkpoint to fine-tune (default: FTRAG_BASE_MODEL/gpt2)")
    parser.add_argument("--from-scratch", action="store_true", help="fine-tune a GPT-2 trained from scratch")
    parser.add_argument("--scratch-size", default="small")
    parser.add_argument("--tokenizer", default=None)
    parser.add_argument("--epochs", type=float, default=4.0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="artifacts/curve")
    args = parser.parse_args(argv)
    setup_logging()
    from finetune.config import FinetuneConfig

    def config(size: int, out: str) -> FinetuneConfig:
        return FinetuneConfig(
            base_model=args.base_model,
            from_scratch=args.from_scratch,
            scratch_size=args.scratch_size,
            tokenizer=args.tokenizer,
            eval_size=min(1000, max(10, size // 5)),
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            out=out,
        )

    try:
        train = load_tweets(args.data, split="train", labels=args.labels)
        test = load_tweets(args.data, split="test", limit=args.test_limit, seed=args.seed, labels=args.labels)
        sizes = parse_sizes(args.sizes, train.num_rows)
        config(100, "x")  # validate the fine-tune settings before any work
        curve = learning_curve(sizes, train, test, finetune_config=config, seed=args.seed)
    except (ValueError, ArtifactError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    out = Path(args.out)
    atomic_write(out / "curve.json", lambda tmp: tmp.write_text(dumps_json(curve), encoding="utf-8"))
    plot_curve(curve, out / "curve.png")
    print(json.dumps({k: curve[k] for k in ("sizes", "backends", "crossover", "test_size")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
