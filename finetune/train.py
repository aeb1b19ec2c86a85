"""Fine-tune a sequence classifier with the Trainer: ``python -m finetune.train --data SRC --out DIR``.

Every field of `FinetuneConfig` is a flag (``--base-model``, ``--from-scratch``, ``--train-size``, ``--epochs``...).
The same command runs distributed: ``torchrun --nproc_per_node 2 -m finetune.train ...`` or
``accelerate launch -m finetune.train ...`` (gloo on CPU); only the main process writes the model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.cli import run_job
from core.data import DataError, label_names, load_tweets, stratified_sample
from core.files import atomic_write_json, dumps_json, read_json, refuse_to_replace, staged_dir
from core.settings import Source, SourceError, resolve
from core.split import SPLIT_FILE, Split
from core.types import Progress
from finetune.config import SCRATCH_PRESETS, FinetuneConfig
from finetune.history import overfitting_note
from finetune.history import plot as plot_history
from finetune.model import CARD_FILE, FORMAT_VERSION, LABELS_FILE, RUN_FILE, ensure_pad_token
from finetune.protocol import apply_protocol

logger = logging.getLogger(__name__)

FINGERPRINT_FILE = "run_config.json"
CURVE_FILE = "training_curve.png"
SCRATCH_NOTICE = (
    "trained from scratch: GPT-2 architecture with random initial weights, no pretrained GPT-2 weights were used"
)

_TRAIN_SHARE = 0.95  # of the progress bar; the final evaluation and the save take the rest


class FinetuneError(ValueError):
    """A fine-tuning run that cannot start: bad base model or tokenizer, labels that do not fit, too little data."""


# --- data ------------------------------------------------------------------------------------------------------------


def training_labels(dataset, labels: Sequence[str] | None = None) -> list[str]:
    """The model's labels, in head order: `labels` when given, else the data's (`core.data.label_names`).

    Raises:
        DataError: the data has labels outside them.
    """
    names = list(labels) if labels is not None else label_names(dataset)
    unknown = sorted(set(dataset["label"]) - set(names))
    if unknown:
        raise DataError(f"the training data has labels {unknown} outside the label set {names}")
    return names


def tokenize(dataset, tokenizer, labels: Sequence[str], max_length: int):
    """Token ids (truncated at `max_length`, unpadded), integer ``labels`` and a ``length`` column for grouping."""
    label_ids = {name: i for i, name in enumerate(labels)}

    def encode(batch: dict[str, list]) -> dict[str, list]:
        out = tokenizer(batch["text"], truncation=True, max_length=max_length)
        out["labels"] = [label_ids[label] for label in batch["label"]]
        out["length"] = [len(ids) for ids in out["input_ids"]]
        return out

    # The fingerprint is named here: left to `datasets`, it would hash the whole tokenizer (seconds per run). The
    # result stays in memory (tweets tokenize to a few MB), so no cache file is written under that name.
    key = f"{dataset._fingerprint}|{tokenizer.name_or_path}|{len(tokenizer)}|{max_length}|{list(labels)}"
    fingerprint = hashlib.sha256(key.encode("utf-8")).hexdigest()[:32]
    tokenized = dataset.map(encode, batched=True, remove_columns=dataset.column_names, desc="tokenizing",
                            keep_in_memory=True, new_fingerprint=fingerprint)  # fmt: skip
    return tokenized.filter(lambda row: row["length"] > 0, desc="dropping texts with no tokens", keep_in_memory=True)


def compute_metrics(eval_pred) -> dict[str, float]:
    """Accuracy and macro-F1 (scikit-learn) from the Trainer's logits and label ids."""
    from sklearn.metrics import accuracy_score, f1_score

    logits, label_ids = eval_pred.predictions, eval_pred.label_ids
    if isinstance(logits, tuple):
        logits = logits[0]
    logits = np.asarray(logits)
    predicted = logits.argmax(axis=-1)
    every_label = range(logits.shape[-1])  # one output per label: a label never predicted nor present scores 0
    return {
        "accuracy": float(accuracy_score(label_ids, predicted)),
        "macro_f1": float(f1_score(label_ids, predicted, average="macro", labels=every_label, zero_division=0)),
    }


# --- model -----------------------------------------------------------------------------------------------------------


def check_base_model(cfg: FinetuneConfig, labels: Sequence[str]) -> Source | None:
    """Resolve the base model and check that its config loads and its head (if any) is for `labels`; None from
    scratch. A head with generic names (``LABEL_0``...) is replaced by one of the data's size."""
    from transformers import AutoConfig

    if cfg.from_scratch:
        return None
    try:
        source = resolve("base_model", cfg.base_model)
    except SourceError as err:
        raise FinetuneError(f"{err} Or pass --from-scratch to train a GPT-2 from random weights.") from err
    try:
        config = AutoConfig.from_pretrained(source.value, local_files_only=source.is_local)
    except Exception as err:  # whatever a broken checkpoint raises, the message names it
        raise FinetuneError(f"base model {source.value!r} cannot be loaded: {err}") from err
    existing = [config.id2label[i] for i in sorted(config.id2label)] if config.id2label else []
    generic = all(str(name).startswith("LABEL_") for name in existing)
    if existing and not generic and existing != list(labels):
        raise FinetuneError(
            f"base model {source.value!r} is already a classifier for labels {existing}, but the data's labels are "
            f"{list(labels)}; start from a base checkpoint (without a classification head for other labels)"
        )
    return source


def load_tokenizer(cfg: FinetuneConfig, base: Source | None = None):
    """The tokenizer: `cfg.tokenizer`, else the base model's own, else (from scratch) FTRAG_TOKENIZER / gpt2."""
    from transformers import AutoTokenizer

    wanted = cfg.tokenizer if cfg.tokenizer is not None else (base.value if base is not None else None)
    try:
        source = resolve("tokenizer", wanted)
    except SourceError as err:
        raise FinetuneError(str(err)) from err
    path = Path(source.value)
    try:
        if source.is_local and not (path / "tokenizer_config.json").exists() and (path / "merges.txt").exists():
            # A bare BPE vocabulary (vocab.json + merges.txt, like GPT-2's original release): GPT-2's tokenizer.
            from transformers import GPT2TokenizerFast

            tokenizer = GPT2TokenizerFast.from_pretrained(path, local_files_only=True)
        else:
            tokenizer = AutoTokenizer.from_pretrained(source.value, local_files_only=source.is_local)
        ok = len(tokenizer) >= 10 and bool(tokenizer("hello world")["input_ids"])
    except Exception as err:  # whatever a broken tokenizer directory raises, the message names it
        raise FinetuneError(f"tokenizer {source.value!r} cannot be loaded: {err}") from err
    if not ok:
        raise FinetuneError(f"tokenizer {source.value!r} loaded with {len(tokenizer)} tokens and cannot encode text")
    return ensure_pad_token(tokenizer), source


def build_model(cfg: FinetuneConfig, tokenizer, base: Source | None, labels: Sequence[str]) -> tuple[Any, str]:
    """The model to train, with a head of one output per label, and a description of where its weights come from."""
    from transformers import AutoModelForSequenceClassification, GPT2Config, GPT2ForSequenceClassification

    id2label = dict(enumerate(labels))
    label2id = {name: i for i, name in id2label.items()}
    if base is None:
        config = GPT2Config(
            vocab_size=len(tokenizer),
            num_labels=len(id2label),
            id2label=id2label,
            label2id=label2id,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            **SCRATCH_PRESETS[cfg.scratch_size],
        )
        return GPT2ForSequenceClassification(config), "gpt2 (architecture only, random init)"
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            base.value,
            num_labels=len(id2label),
            id2label=id2label,
            label2id=label2id,
            local_files_only=base.is_local,
        )
    except Exception as err:  # a checkpoint without weights, with the wrong shapes, of no classifier architecture
        raise FinetuneError(f"base model {base.value!r} cannot be loaded as a sequence classifier: {err}") from err
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    return model, base.name


# --- progress --------------------------------------------------------------------------------------------------------


def progress_callback(tell: Progress):
    """A `TrainerCallback` that calls ``tell(fraction, message)`` after each step and evaluation (for the app)."""
    from transformers import TrainerCallback

    class _Progress(TrainerCallback):
        done = False

        def on_train_end(self, args, state, control, **kwargs):
            self.done = True  # the final evaluation reports through `train` itself

        def on_step_end(self, args, state, control, **kwargs):
            if state.max_steps and not self.done:
                step, total, epoch = state.global_step, state.max_steps, state.epoch or 0.0
                tell(_TRAIN_SHARE * step / total, f"step {step}/{total}, epoch {epoch:.2f}")

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            if metrics and state.max_steps and not self.done:
                tell(
                    _TRAIN_SHARE * state.global_step / state.max_steps,
                    f"epoch {state.epoch or 0:.2f}: eval accuracy {metrics.get('eval_accuracy', float('nan')):.4f}",
                )

    return _Progress()


def epoch_counter():
    """A `TrainerCallback` that remembers the epoch a run (or a resumed run) started at, so that throughput counts
    only the work this process did: ``counter.epochs_done(state)``."""
    from transformers import TrainerCallback

    class _Counter(TrainerCallback):
        start_epoch = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.start_epoch = float(state.epoch or 0.0)

        def epochs_done(self, state) -> float:
            return max(float(state.epoch or 0.0) - self.start_epoch, 0.0)

    return _Counter()


# --- the run ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSetup:
    """What a run trains: the data's two slices (raw and tokenized), the labels, the tokenizer and the model, and
    where each came from, so that the Trainer and run.json are built from one object."""

    data_source: str
    labels: list[str]
    train_ds: Any
    eval_ds: Any
    train_tok: Any
    eval_tok: Any
    tokenizer: Any
    tokenizer_source: Source
    model: Any
    base_description: str
    n_params: int
    split: Split | None = None  # None when the caller gave the evaluation slice


def train(
    cfg: FinetuneConfig,
    dataset=None,
    *,
    split: Split | None = None,
    eval_dataset=None,
    overwrite: bool = False,
    progress: Progress | None = None,
    callbacks: Sequence[Any] = (),
    show_progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune as `cfg` says and save the model to ``cfg.out``; returns the run record (run.json).

    Args:
        dataset: labeled examples (``text`` / ``label``) to use instead of the train split of ``cfg.data``; the
            evaluation slice is carved from it too.
        split: the fit / validation rows (`core.split.Split`) of the data to use as they are, instead of carving
            them (``cfg.train_size`` and ``cfg.eval_size`` are then ignored): every contender of a comparison gets
            the same rows. Saved as split.json in the model directory either way.
        eval_dataset: an evaluation slice to use as it is instead of carving one (``cfg.eval_size`` is then
            ignored), so that two runs on different training rows keep their best checkpoint by the same texts.
        overwrite: replace a model already in ``cfg.out``. The old one stays until the new one is fully saved.
        progress: ``progress(fraction, message)`` during training, for a UI.
        callbacks: extra `TrainerCallback`s.

    Raises:
        FileExistsError: ``cfg.out`` holds a model and `overwrite` is False.
        FinetuneError / DataError: see their docs. Nothing already saved is touched when these are raised.
    """
    import torch

    out = Path(cfg.out)
    refuse_to_replace(out, "a model", overwrite)
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    tell = progress or (lambda fraction, message: None)
    start = time.perf_counter()
    args = cfg.to_training_args(show_progress=show_progress)
    setup = prepare_training(cfg, dataset, args, tell, eval_dataset, split)
    cfg, protocol = apply_protocol(cfg, setup.train_ds.num_rows, args.world_size)
    logger.info("Training protocol: %d optimizer steps, %g epochs, learning rate %g (%s)", protocol["steps"],
                protocol["epochs"], protocol["learning_rate"], protocol["why"])  # fmt: skip
    args = cfg.to_training_args(show_progress=show_progress)
    resume = _prepare_checkpoints(cfg, args)
    counter = epoch_counter()
    trainer = build_trainer(setup, args, [*callbacks, counter, *_run_callbacks(cfg, progress, tell)])
    train_start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume)
    train_seconds = time.perf_counter() - train_start
    history = eval_history(trainer.state.log_history)  # before the final evaluation adds its own row
    tell(0.97, "evaluating the best checkpoint")
    final = trainer.evaluate()
    run = run_record(cfg, args, setup, trainer, final, history=history, resume=resume, counter=counter,
                     train_seconds=train_seconds, start=start)  # fmt: skip
    run["protocol"] = protocol
    if args.should_save:
        tell(0.99, f"saving to {out}")
        _save_run(cfg, trainer.model, setup, run, out, train_seconds)
    _barrier(args)
    tell(1.0, f"done: eval accuracy {run['eval_accuracy']:.4f}")
    return run


def prepare_training(
    cfg: FinetuneConfig, dataset, args, tell: Progress, eval_dataset=None, split: Split | None = None
) -> TrainingSetup:
    """Load the data (unless given), cut it by `split` (else carve the evaluation slice, unless `eval_dataset` is
    given), load the tokenizer and the model, and tokenize.

    In a distributed run one process fills the datasets cache first and the others read it.
    """
    from transformers import set_seed

    tell(0.0, "loading data")
    with args.main_process_first(desc="loading data"):
        dataset, data_source = _training_data(cfg, dataset)
        labels = training_labels(dataset, cfg.labels)
        if eval_dataset is None:
            if split is None:
                split = Split.of(dataset, cfg.eval_size, cfg.train_size, seed=cfg.seed)
            train_ds, eval_ds = split.parts(dataset)
        else:
            split = None  # the caller's own evaluation slice: not rows of `dataset`
            train_ds, eval_ds = dataset, eval_dataset
            if cfg.train_size is not None and cfg.train_size < dataset.num_rows:
                train_ds = stratified_sample(dataset, cfg.train_size, seed=cfg.seed, what="training data")
            if unknown := sorted(set(eval_ds["label"]) - set(labels)):
                raise DataError(f"the evaluation slice has labels the training data lacks: {unknown[:5]}")

        set_seed(cfg.seed)
        tell(0.0, "loading the tokenizer and the model")
        base = check_base_model(cfg, labels)
        tokenizer, tokenizer_source = load_tokenizer(cfg, base)
        model, base_description = build_model(cfg, tokenizer, base, labels)
        train_tok = tokenize(train_ds, tokenizer, labels, cfg.max_length)
        eval_tok = tokenize(eval_ds, tokenizer, labels, cfg.max_length)
    if train_tok.num_rows == 0:
        raise DataError("no training example has any tokens")
    if cfg.from_scratch:
        logger.warning("GPT-2 is %s; expect far lower accuracy than a pretrained model.", SCRATCH_NOTICE)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("Model: %s, %.1fM parameters; %s", base_description, n_params / 1e6, tokenizer_source.describe())
    return TrainingSetup(data_source, labels, train_ds, eval_ds, train_tok, eval_tok, tokenizer, tokenizer_source,
                         model, base_description, n_params, split)  # fmt: skip


def _training_data(cfg: FinetuneConfig, dataset) -> tuple[Any, str]:
    """The labeled examples to train on (`dataset`, else the train split of ``cfg.data``) and a description of them."""
    if dataset is not None:
        return dataset, "in-memory dataset"
    try:
        data_source = resolve("data", cfg.data).describe()
    except SourceError as err:
        raise DataError(str(err)) from err
    return load_tweets(cfg.data, split="train", seed=cfg.seed, labels=cfg.labels), data_source


def _run_callbacks(cfg: FinetuneConfig, progress: Progress | None, tell: Progress) -> list[Any]:
    """The callbacks a run adds of its own: early stopping when ``cfg.patience`` is set, progress for a UI."""
    from transformers import EarlyStoppingCallback

    added = []
    if cfg.patience > 0:
        added.append(EarlyStoppingCallback(early_stopping_patience=cfg.patience))
    if progress is not None:
        added.append(progress_callback(tell))
    return added


def build_trainer(setup: TrainingSetup, args, callbacks: Sequence[Any]):
    """The `Trainer` of `setup`'s model on its tokenized slices, batches padded dynamically, scored by
    `compute_metrics`."""
    from transformers import DataCollatorWithPadding, Trainer

    return Trainer(
        model=setup.model,
        args=args,
        train_dataset=setup.train_tok,
        eval_dataset=setup.eval_tok,
        data_collator=DataCollatorWithPadding(setup.tokenizer),
        processing_class=setup.tokenizer,
        compute_metrics=compute_metrics,
        callbacks=list(callbacks),
    )


def train_history(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The training loss of each logging step of a Trainer's log history (epoch, step, loss), for run.json."""
    return [{k: row[k] for k in ("epoch", "step", "loss") if k in row} for row in log_history if "loss" in row]


def eval_history(log_history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The evaluations of a Trainer's log history (epoch, step, accuracy, macro-F1, loss), for run.json."""
    keep = {"epoch", "step", "eval_accuracy", "eval_macro_f1", "eval_loss"}
    return [{k: v for k, v in row.items() if k in keep} for row in log_history if "eval_accuracy" in row]


def run_record(
    cfg: FinetuneConfig,
    args,
    setup: TrainingSetup,
    trainer,
    final: dict[str, float],
    *,
    history: list[dict[str, Any]],
    resume: str | None,
    counter,
    train_seconds: float,
    start: float,
) -> dict[str, Any]:
    """The run record saved as run.json: what was trained on what, the final evaluation, the history and timings.

    Args:
        final: the Trainer's evaluation of the kept (best) weights.
        counter: the run's `epoch_counter`, so that throughput counts only this process's epochs.
        start: ``time.perf_counter()`` when the run began (for ``total_seconds``).
    """
    state = trainer.state
    preset = {"name": cfg.scratch_size, **SCRATCH_PRESETS[cfg.scratch_size]}
    return {
        "format_version": FORMAT_VERSION,
        "backend": "finetune",
        "base_model": setup.base_description,
        "from_scratch": cfg.from_scratch,
        "notice": SCRATCH_NOTICE if cfg.from_scratch else None,
        "architecture": setup.model.config.model_type,
        "scratch_preset": preset if cfg.from_scratch else None,
        "parameters": setup.n_params,
        "tokenizer": setup.tokenizer_source.describe(),
        "data_source": setup.data_source,
        "labels": setup.labels,
        "train_size": setup.train_ds.num_rows,
        "eval_size": setup.eval_ds.num_rows,
        "split": {**setup.split.summary(), "file": SPLIT_FILE} if setup.split is not None else None,
        "max_length": cfg.max_length,
        "eval_accuracy": final.get("eval_accuracy"),
        "eval_macro_f1": final.get("eval_macro_f1"),
        "eval_loss": final.get("eval_loss"),
        "best_checkpoint_step": _step_of(state.best_model_checkpoint),
        "epochs_run": round(float(state.epoch or 0.0), 3),
        "stopped_early": state.global_step < state.max_steps,
        "history": history,
        "train_history": train_history(state.log_history),
        "train_seconds": round(train_seconds, 2),
        "total_seconds": round(time.perf_counter() - start, 2),
        "train_samples_per_second": round(counter.epochs_done(state) * setup.train_tok.num_rows / train_seconds, 2),
        "resumed_from": f"checkpoint at step {_step_of(resume)}" if resume else None,
        "world_size": args.world_size,
        "device": str(args.device),
        "quantize": cfg.quantize,
        "versions": _versions(),
        "config": asdict(cfg),
    }


def _save_run(cfg: FinetuneConfig, model, setup: TrainingSetup, run: dict[str, Any], out: Path, train_seconds: float):
    """Save the model directory (main process only) and drop the checkpoints unless ``cfg.keep_checkpoints``."""
    _save(model, setup.tokenizer, run, out, setup.split)
    if not cfg.keep_checkpoints:
        shutil.rmtree(cfg.checkpoints_dir, ignore_errors=True)
    logger.info(
        "Saved %s: eval accuracy %.4f, macro-F1 %.4f, %.0f s of training",
        out,
        run["eval_accuracy"],
        run["eval_macro_f1"],
        train_seconds,
    )


def _prepare_checkpoints(cfg: FinetuneConfig, args) -> str | None:
    """The checkpoint to resume from (or None), with the checkpoints directory ready for this run.

    Only the main process deletes or writes; every process decides before it does.
    """
    directory = cfg.checkpoints_dir
    has_checkpoints = directory.is_dir() and any(directory.glob("checkpoint-*"))
    fingerprint = json.loads(dumps_json(cfg.training_fingerprint()))
    resume = None
    if has_checkpoints and cfg.resume:
        try:
            recorded = read_json(directory / FINGERPRINT_FILE, "checkpoint settings")
        except ValueError:
            recorded = None
        if recorded != fingerprint:
            recorded = recorded if isinstance(recorded, dict) else {}
            changed = sorted(k for k in fingerprint if recorded.get(k) != fingerprint[k])
            raise FinetuneError(
                f"{directory} holds checkpoints of an interrupted run with other settings ({', '.join(changed)}); "
                "pass --no-resume to discard them and start over, or run with the same settings to resume"
            )
        complete = _complete_checkpoints(directory)
        if complete:
            resume = str(complete[-1])
            logger.info("Resuming the interrupted run from %s", resume)
        else:
            logger.warning("No complete checkpoint in %s (killed while saving one?): starting over", directory)
    _barrier(args)  # every process has decided before the main one clears anything
    if args.should_save:
        if has_checkpoints and resume is None:
            logger.info("Discarding the checkpoints of an earlier run in %s", directory)
            shutil.rmtree(directory)
        elif resume is not None:  # a checkpoint half-written when the process died would be picked up later
            for partial in directory.glob("checkpoint-*"):
                if partial.is_dir() and (_step_of(str(partial)) or 0) > (_step_of(resume) or 0):
                    shutil.rmtree(partial, ignore_errors=True)
        atomic_write_json(directory / FINGERPRINT_FILE, fingerprint)
    _barrier(args)
    return resume


def _complete_checkpoints(directory: Path) -> list[Path]:
    """Checkpoints that were written to the end (the Trainer writes trainer_state.json last), oldest first."""
    found = [
        p
        for p in directory.glob("checkpoint-*")
        if p.is_dir() and _step_of(str(p)) is not None and (p / "trainer_state.json").is_file()
        and any(p.glob("*.safetensors")) and (p / "optimizer.pt").is_file()
    ]  # fmt: skip
    return sorted(found, key=lambda p: _step_of(str(p)) or 0)


def _save(model, tokenizer, run: dict[str, Any], out: Path, split: Split | None = None) -> None:
    """Write the model directory complete in a staging directory, then swap it in (the old one survives a crash).
    The split it trained on goes beside it (split.json), for whoever fits or evaluates on the same rows."""
    with staged_dir(out) as stage:
        if split is not None:
            split.save(stage / SPLIT_FILE)
        model.save_pretrained(stage)
        tokenizer.save_pretrained(stage)
        (stage / LABELS_FILE).write_text(dumps_json(run["labels"]), encoding="utf-8")
        (stage / CARD_FILE).write_text(model_card(run), encoding="utf-8")
        plot_history(run, stage / CURVE_FILE, title="Training curve")
        (stage / RUN_FILE).write_text(dumps_json(run), encoding="utf-8")


def model_card(run: dict[str, Any]) -> str:
    """A Hugging Face model card (README.md) that says what was trained, on what, how well, and from what."""
    scratch = bool(run.get("from_scratch"))
    front = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-classification",
        "tags:",
        "- text-classification",
        *(["- trained-from-scratch"] if scratch else []),
        "---",
        "",
    ]
    title = "GPT-2 trained from scratch" if scratch else "Fine-tuned"
    title += f" tweet classifier ({', '.join(run.get('labels', []))})"
    body = [f"# {title}", ""]
    if scratch:
        preset = run.get("scratch_preset") or {}
        body += [
            f"> **Trained from scratch.** This model has GPT-2's architecture ({preset.get('n_layer')} layers, "
            f"{preset.get('n_embd')}-wide, {run.get('parameters', 0) / 1e6:.1f}M parameters) and GPT-2's tokenizer, "
            "but its weights started random: no pretrained GPT-2 weights were used. Expect much lower accuracy than a "
            "fine-tuned pretrained GPT-2.",
            "",
        ]
    else:
        body += [f"Base model: {run.get('base_model')}.", ""]
    body += [
        f"- Labels: {', '.join(run.get('labels', []))}",
        f"- Data: {run.get('data_source')}; {run.get('train_size')} training examples, {run.get('eval_size')} "
        "held-out evaluation examples carved from the training split",
        f"- Evaluation accuracy: {run.get('eval_accuracy', float('nan')):.4f}; macro-F1: "
        f"{run.get('eval_macro_f1', float('nan')):.4f}",
        f"- Training: {run.get('epochs_run')} epochs, {run.get('train_seconds')} s "
        f"({run.get('train_samples_per_second')} samples/s) on {run.get('device')}"
        f"{', stopped early' if run.get('stopped_early') else ''}",
        f"- Texts are truncated at {run.get('max_length')} tokens.",
        "",
        "Load it with `finetune.load(dir)` (or `transformers.AutoModelForSequenceClassification`).",
        "",
        *curve_section(run),
    ]
    return "\n".join(front + body)


def curve_section(run: dict[str, Any]) -> list[str]:
    """The model card's training curve: every evaluation, the kept checkpoint, the overfitting note, the plot."""
    if not run.get("history"):
        return []
    rows = [f"| {r.get('step')} | {r.get('epoch', 0):.2f} | {r.get('eval_loss', float('nan')):.4f} | "
            f"{r.get('eval_accuracy', float('nan')):.4f} |" for r in run["history"]]  # fmt: skip
    note = overfitting_note(run)
    return [
        "## Training curve",
        "",
        f"![training curve]({CURVE_FILE})",
        "",
        "| step | epoch | eval loss | eval accuracy |",
        "|---|---|---|---|",
        *rows,
        "",
        f"The kept weights are those of step {run.get('best_checkpoint_step')} (the best eval accuracy).",
        *([f"**{note[0].upper()}{note[1:]}.**"] if note else []),
        "",
    ]


def _step_of(path: str | None) -> int | None:
    if not path:
        return None
    try:
        return int(Path(path).name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def _barrier(args) -> None:
    import torch.distributed as dist

    if args.world_size > 1 and dist.is_available() and dist.is_initialized():
        dist.barrier()


def _versions() -> dict[str, str]:
    import torch
    import transformers

    return {"torch": torch.__version__, "transformers": transformers.__version__}


def main(argv: list[str] | None = None) -> int:
    status, cfg, run = run_job(
        FinetuneConfig,
        argv,
        __doc__.splitlines()[0],
        lambda cfg, overwrite: train(cfg, overwrite=overwrite),
        overwrite_help="replace a model in --out (once the new one is saved)",
    )
    if status:
        return status
    if int(os.environ.get("RANK", "0")) == 0:
        keys = (
            "base_model",
            "from_scratch",
            "notice",
            "data_source",
            "train_size",
            "eval_size",
            "eval_accuracy",
            "eval_macro_f1",
            "epochs_run",
            "train_seconds",
            "train_samples_per_second",
            "resumed_from",
            "world_size",
        )
        print(json.dumps({"out": cfg.out, **{k: run[k] for k in keys}}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
