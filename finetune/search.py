"""Hyperparameter search for the fine-tune: ``python -m finetune.search --data SRC --trials N --out DIR``.

`Trainer.hyperparameter_search` with the Optuna backend (TPE sampler, median pruner) over the learning rate, the
batch size, the epochs, the warm-up share and the weight decay. Every trial trains on the same training examples and
is scored on the same evaluation slice carved from the training split (`core.split.Split`), never on
the test split; a trial whose evaluation accuracy falls below the median of earlier trials at the same step is
pruned. ``--time-budget-min`` stops starting new trials once spent. ``--train-size`` searches on a sample (then train
the best on all the data with `finetune.train`).

Writes ``search.json`` (``{"trials": [{"number", "params", "eval_accuracy", "state", "seconds"}], "best": {...},
"best_flags": "--learning-rate ... --batch-size ..."}``) and ``search.png`` (each trial's accuracy against its
learning rate) to ``--out``, and prints the best configuration as `finetune.train` flags.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from core.cli import run_job
from core.config import JobConfig
from core.files import atomic_write_json, check_new_output
from finetune.config import FinetuneConfig
from finetune.protocol import MIN_STEPS, protocol_epochs

logger = logging.getLogger(__name__)

SEARCH_FILE, PLOT_FILE = "search.json", "search.png"
EVALUATIONS_PER_TRIAL = 4
"""Evaluations during each trial: the points at which the pruner compares it with the trials before it."""


@dataclass
class SearchConfig(JobConfig):
    """What to search over and for how long.

    Args:
        data: labeled data source; None = ``FTRAG_DATA`` or the default Hub dataset.
        labels: label names in the order of the data's integer ids; None = the data's own.
        base_model: checkpoint to fine-tune; None = ``FTRAG_BASE_MODEL`` or ``gpt2`` (offline: the packaged
            all-MiniLM-L6-v2).
        train_size: training examples every trial trains on (seeded, stratified); None = all the rest.
        eval_size: the evaluation slice every trial is scored on (carved from the training split).
        trials: trials to run at most.
        time_budget_min: start no new trial after this many minutes; None = no limit.
        lr_min / lr_max: the learning-rate range (searched on a log scale).
        batch_sizes: the batch sizes tried.
        epochs_min / epochs_max: the range of epochs (whole numbers).
        warmup_max: the largest warm-up share of the steps.
        weight_decay_max: the largest AdamW weight decay.
        max_length: tokens kept per text.
        min_steps: every trial's fewest optimizer steps (the training protocol's, `finetune.protocol`).
        seed: seed for the split, the sampler and training.
        out: where search.json and search.png go.
    """

    base_model: str | None = None
    train_size: int | None = 2000
    eval_size: int = 500
    trials: int = 12
    time_budget_min: float | None = None
    lr_min: float = 1e-5
    lr_max: float = 3e-4
    batch_sizes: tuple[int, ...] = (16, 32)
    epochs_min: int = 1
    epochs_max: int = 4
    warmup_max: float = 0.2
    weight_decay_max: float = 0.1
    max_length: int = 128
    min_steps: int = MIN_STEPS
    out: str = "artifacts/search"

    def __post_init__(self) -> None:
        super().__post_init__()  # data, labels, seed, out (core.config)
        self.batch_sizes = tuple(int(b) for b in self.batch_sizes)
        if self.trials < 1:
            raise ValueError(f"trials must be at least 1, got {self.trials}")
        if self.time_budget_min is not None and self.time_budget_min <= 0:
            raise ValueError(f"time_budget_min must be positive, got {self.time_budget_min}")
        if not 0 < self.lr_min < self.lr_max < 1:
            raise ValueError(f"need 0 < lr_min < lr_max < 1, got {self.lr_min} and {self.lr_max}")
        if not self.batch_sizes or min(self.batch_sizes) < 1:
            raise ValueError(f"batch_sizes must hold positive integers, got {self.batch_sizes}")
        if not 1 <= self.epochs_min <= self.epochs_max:
            raise ValueError(f"need 1 <= epochs_min <= epochs_max, got {self.epochs_min} and {self.epochs_max}")
        if not 0 <= self.warmup_max < 1 or self.weight_decay_max < 0:
            raise ValueError("warmup_max must be in [0, 1) and weight_decay_max not negative")
        if self.min_steps < 0:
            raise ValueError(f"min_steps must not be negative, got {self.min_steps}")

    def finetune_config(self, out: str) -> FinetuneConfig:
        """The `FinetuneConfig` every trial starts from (the search then sets the searched fields)."""
        return FinetuneConfig(base_model=self.base_model, data=self.data, labels=self.labels,
                              train_size=self.train_size, eval_size=self.eval_size, max_length=self.max_length,
                              seed=self.seed, patience=0, out=out)  # fmt: skip

    def space(self, trial) -> dict[str, Any]:
        """The Optuna search space, as `TrainingArguments` fields."""
        return {
            "learning_rate": trial.suggest_float("learning_rate", self.lr_min, self.lr_max, log=True),
            "per_device_train_batch_size": trial.suggest_categorical("batch_size", list(self.batch_sizes)),
            "num_train_epochs": trial.suggest_int("epochs", self.epochs_min, self.epochs_max),
            "warmup_steps": trial.suggest_float("warmup", 0.0, self.warmup_max),
            "weight_decay": trial.suggest_float("weight_decay", 0.0, self.weight_decay_max),
        }


FLAG_NAMES = {"learning_rate": "--learning-rate", "batch_size": "--batch-size", "epochs": "--epochs",
              "warmup": "--warmup", "weight_decay": "--weight-decay"}  # fmt: skip
"""Each searched parameter's `finetune.train` flag."""


def best_flags(params: dict[str, Any]) -> str:
    """The best trial's parameters as `finetune.train` flags.

    >>> best_flags({"learning_rate": 0.0001234, "batch_size": 32, "epochs": 2, "warmup": 0.05, "weight_decay": 0.0})
    '--learning-rate 0.0001234 --batch-size 32 --epochs 2 --warmup 0.05 --weight-decay 0'
    """
    return " ".join(f"{FLAG_NAMES[k]} {params[k]:.4g}" for k in FLAG_NAMES if k in params)


def _trainer(cfg: SearchConfig, workdir: str):
    """A Trainer whose `model_init` builds a fresh model per trial, on the split every trial shares; the data, the
    split, the tokenizer and the tokenized slices come from `finetune.train.prepare_training`, as in a real run."""
    from transformers import DataCollatorWithPadding, PrinterCallback, Trainer

    from finetune.train import build_model, check_base_model, compute_metrics, prepare_training

    ft = cfg.finetune_config(workdir)
    args = ft.to_training_args(show_progress=False, eval_strategy="steps", save_strategy="no",
                               load_best_model_at_end=False, output_dir=workdir)  # fmt: skip
    setup = prepare_training(ft, None, args, lambda fraction, message: None)
    args.eval_steps = max(1, len(setup.train_ds) // max(cfg.batch_sizes) // EVALUATIONS_PER_TRIAL)
    base = check_base_model(ft, setup.labels)
    trainer = Trainer(
        model_init=lambda trial=None: build_model(ft, setup.tokenizer, base, setup.labels)[0],
        args=args,
        train_dataset=setup.train_tok,
        eval_dataset=setup.eval_tok,
        data_collator=DataCollatorWithPadding(setup.tokenizer),
        processing_class=setup.tokenizer,
        compute_metrics=compute_metrics,
    )
    trainer.remove_callback(PrinterCallback)  # every trial's log lines would bury the search's own output
    described = {"train_size": len(setup.train_ds), "eval_size": len(setup.eval_ds), "labels": setup.labels,
                 "base_model": setup.base_description}  # fmt: skip
    return trainer, described


def search(cfg: SearchConfig, overwrite: bool = False) -> dict[str, Any]:
    """Run the search described by `cfg`; write search.json and search.png to ``cfg.out``; return search.json."""
    import optuna

    out = Path(cfg.out)
    check_new_output(out / SEARCH_FILE, "the search", overwrite)
    start = time.perf_counter()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = optuna.storages.InMemoryStorage()
    with tempfile.TemporaryDirectory(prefix="ftrag-search-") as workdir:
        trainer, setup = _trainer(cfg, workdir)
        warmup = prune_after(setup["train_size"], cfg.batch_sizes)
        best = trainer.hyperparameter_search(
            hp_space=lambda trial: with_min_steps(cfg.space(trial), setup["train_size"], cfg.min_steps),
            compute_objective=lambda metrics: metrics["eval_accuracy"],
            n_trials=cfg.trials,
            direction="maximize",
            backend="optuna",
            timeout=None if cfg.time_budget_min is None else 60 * cfg.time_budget_min,
            storage=storage,
            study_name="finetune",
            sampler=optuna.samplers.TPESampler(seed=cfg.seed),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=warmup),
        )
    trials = [_trial_record(t) for t in optuna.load_study(study_name="finetune", storage=storage).trials]
    result = {
        **setup,
        "trials": trials,
        "prune_after_step": warmup,
        "best": {"number": int(best.run_id), "eval_accuracy": best.objective, "params": best.hyperparameters},
        "best_flags": best_flags(best.hyperparameters),
        "seconds": round(time.perf_counter() - start, 2),
        "config": asdict(cfg),
    }
    out.mkdir(parents=True, exist_ok=True)
    plot_trials(result, out / PLOT_FILE)
    atomic_write_json(out / SEARCH_FILE, result)
    return result


def with_min_steps(params: dict[str, Any], n_train: int, min_steps: int = MIN_STEPS) -> dict[str, Any]:
    """A trial's `TrainingArguments` fields with its epochs raised to the protocol's fewest optimizer steps
    (`finetune.protocol`), so that no trial on small data is a token run that the search would rank.

    >>> with_min_steps({"num_train_epochs": 2, "per_device_train_batch_size": 16}, 160)["num_train_epochs"]
    20
    """
    epochs = protocol_epochs(params["num_train_epochs"], n_train, params["per_device_train_batch_size"], min_steps)
    return {**params, "num_train_epochs": math.ceil(epochs)}


def prune_after(n_train: int, batch_sizes) -> int:
    """Optimizer steps before any trial may be pruned: one epoch at the largest batch size. Before it, every trial is
    still near chance (at step 31 of a 2,000-example search all scored 0.36 to 0.47, and the pruner, comparing
    warm-ups, cut a trial at 1.4e-4 that others show learns well).

    >>> prune_after(2000, (16, 32))
    62
    """
    return max(1, n_train // max(batch_sizes))


def _trial_record(trial) -> dict[str, Any]:
    seconds = None
    if trial.datetime_start and trial.datetime_complete:
        seconds = round((trial.datetime_complete - trial.datetime_start).total_seconds(), 2)
    value = trial.value if trial.value is not None else (max(trial.intermediate_values.values(), default=None))
    return {"number": trial.number, "params": trial.params, "eval_accuracy": value, "state": trial.state.name.lower(),
            "seconds": seconds, "last_step": max(trial.intermediate_values, default=None)}  # fmt: skip


def plot_trials(result: dict[str, Any], path: Path) -> Path:
    """search.png: each trial's evaluation accuracy against its learning rate; pruned trials hollow, the best
    starred."""
    from core.plots import plotting, save_figure

    with plotting() as plt:
        fig, ax = plt.subplots(figsize=(7, 4))
        for state, marker in (("complete", "o"), ("pruned", "x")):
            shown = [t for t in result["trials"] if t["state"] == state and t["eval_accuracy"] is not None]
            if shown:
                ax.scatter([t["params"]["learning_rate"] for t in shown], [t["eval_accuracy"] for t in shown],
                           marker=marker, label=f"{state} ({len(shown)})")  # fmt: skip
        best = result["best"]
        ax.scatter([best["params"]["learning_rate"]], [best["eval_accuracy"]], marker="*", s=200, label="best")
        ax.set_xscale("log")
        ax.set(xlabel="learning rate", ylabel=f"eval accuracy ({result['eval_size']} texts)",
               title=f"Hyperparameter search: {len(result['trials'])} trials")  # fmt: skip
        ax.legend()
        return save_figure(fig, path)


def main(argv: list[str] | None = None) -> int:
    status, _, result = run_job(SearchConfig, argv, __doc__.splitlines()[0], search,
                                overwrite_help="replace a search already in --out")  # fmt: skip
    if status:
        return status
    print(json.dumps({"best": result["best"], "trials": len(result["trials"]), "seconds": result["seconds"]},
                     indent=2))  # fmt: skip
    print(f"python -m finetune.train {result['best_flags']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
