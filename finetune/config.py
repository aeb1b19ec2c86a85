"""Configuration of a fine-tuning run: one validated dataclass whose fields are the CLI flags.

`FinetuneConfig.to_training_args` is the only place `transformers.TrainingArguments` is built.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.config import JobConfig
from finetune.protocol import MIN_STEPS

SCRATCH_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"n_layer": 2, "n_head": 2, "n_embd": 128},
    "small": {"n_layer": 4, "n_head": 4, "n_embd": 256},
    "medium": {"n_layer": 6, "n_head": 8, "n_embd": 512},
    "base": {"n_layer": 12, "n_head": 12, "n_embd": 768},
}
"""GPT-2 shapes for training from scratch. ``base`` is GPT-2 124M's shape; the smaller ones train in minutes on a
CPU. All keep GPT-2's tokenizer and vocabulary (50,257 tokens)."""

DEFAULT_LR_PRETRAINED = 5e-5
DEFAULT_LR_SCRATCH = 5e-4
CHECKPOINTS_SUFFIX = "-checkpoints"

# Fields that do not change what is trained: a checkpoint written under other values of these may be resumed.
_NOT_TRAINING = ("out", "resume", "quantize", "threads", "eval_batch_size", "keep_checkpoints", "logging_steps")


@dataclass
class FinetuneConfig(JobConfig):
    """How to fine-tune a sequence classifier on labeled tweets.

    Args:
        base_model: checkpoint to fine-tune, Hub id or local dir (any ``AutoModelForSequenceClassification``
            architecture); None = ``FTRAG_BASE_MODEL`` or ``gpt2``. Ignored with `from_scratch`.
        from_scratch: build a GPT-2 of shape `scratch_size` with random weights instead of loading pretrained
            ones (how GPT-2 runs offline; the model card, run.json and logs say so).
        scratch_size: GPT-2 shape used with `from_scratch`.
        tokenizer: tokenizer Hub id or local dir; None = the base model's own, or (from scratch) ``FTRAG_TOKENIZER``
            or ``gpt2``.
        data: labeled data source; None = ``FTRAG_DATA`` or the default Hub dataset.
        labels: label names in the order of the data's integer ids (``--labels a,b,c``), for data whose ids carry
            no names or to rename them; None = the labels the data carries (see `core.data.load_tweets`).
        train_size: training examples (seeded, stratified, disjoint from the evaluation slice); None = all the rest.
        eval_size: evaluation examples carved from the training split (the test split is never used here).
        epochs: training epochs (the best epoch's weights are kept); raised where they make fewer than `min_steps`
            optimizer steps (see `finetune.protocol`).
        min_steps: fewest optimizer steps, however small the data (`finetune.protocol`).
        protocol: apply the training protocol (`finetune.protocol`: `min_steps`, the small-data learning rate and
            evaluations); ``--no-protocol`` trains exactly as configured.
        learning_rate: peak learning rate; None = 5e-4 from scratch, for a pretrained model 1e-4 on small data and
            5e-5 otherwise (`finetune.protocol`).
        batch_size: training batch size per process.
        eval_batch_size: evaluation batch size per process.
        max_length: tokens kept per text (longer texts are truncated, at training and at prediction).
        weight_decay: AdamW weight decay.
        warmup: share of the training steps spent warming the learning rate up (0 to 1).
        patience: stop after this many evaluations without improvement of eval accuracy; 0 = never stop early.
        checkpoint_every: save (and evaluate) every N optimizer steps; None = once per epoch.
        logging_steps: log the training loss every N steps.
        seed: seed for sampling, initialisation and shuffling.
        quantize: serve the saved model with int8 dynamic quantization (recorded in run.json; `finetune.load`
            follows it unless told otherwise).
        threads: torch CPU threads for training and prediction; None = torch's default.
        resume: continue an interrupted run from its last checkpoint (in ``<out>-checkpoints``) when one with the
            same settings exists; ``--no-resume`` discards such checkpoints and starts over.
        keep_checkpoints: keep ``<out>-checkpoints`` after a successful run (default: removed).
        out: where the trained model is saved.
    """

    base_model: str | None = None
    from_scratch: bool = False
    scratch_size: str = field(default="small", metadata={"choices": tuple(SCRATCH_PRESETS)})
    tokenizer: str | None = None
    train_size: int | None = None
    eval_size: int = 1000
    epochs: float = 3.0
    min_steps: int = MIN_STEPS
    protocol: bool = True
    learning_rate: float | None = None
    batch_size: int = 16
    eval_batch_size: int = 64
    max_length: int = 128
    weight_decay: float = 0.01
    warmup: float = 0.06
    patience: int = 2
    checkpoint_every: int | None = None
    logging_steps: int = 50
    quantize: bool = False
    threads: int | None = None
    resume: bool = True
    keep_checkpoints: bool = False
    out: str = "artifacts/finetune"

    def __post_init__(self) -> None:
        super().__post_init__()  # data, labels, seed, out (core.config)
        if self.scratch_size not in SCRATCH_PRESETS:
            raise ValueError(f"scratch_size must be one of {tuple(SCRATCH_PRESETS)}, got {self.scratch_size!r}")
        if self.train_size is not None and self.train_size < 1:
            raise ValueError(f"train_size must be a positive integer or None, got {self.train_size}")
        if self.eval_size < 1:
            raise ValueError(f"eval_size must be at least 1, got {self.eval_size}")
        if not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if self.min_steps < 0:
            raise ValueError(f"min_steps must not be negative, got {self.min_steps}")
        if self.learning_rate is not None and not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate}")
        for name in ("batch_size", "eval_batch_size", "logging_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 8 <= self.max_length <= 1024:
            raise ValueError(f"max_length must be between 8 and 1024 tokens, got {self.max_length}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must not be negative, got {self.weight_decay}")
        if not 0 <= self.warmup < 1:
            raise ValueError(f"warmup must be a share of the steps in [0, 1), got {self.warmup}")
        if self.patience < 0:
            raise ValueError(f"patience must not be negative, got {self.patience}")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be a positive step count or None, got {self.checkpoint_every}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"threads must be at least 1 or None, got {self.threads}")

    @property
    def lr(self) -> float:
        """The learning rate before the protocol (`learning_rate`, or the default for pretrained / from-scratch
        training); `finetune.protocol.apply_protocol` gives a pretrained model on small data its own."""
        if self.learning_rate is not None:
            return self.learning_rate
        return DEFAULT_LR_SCRATCH if self.from_scratch else DEFAULT_LR_PRETRAINED

    @property
    def checkpoints_dir(self) -> Path:
        """Where the Trainer's checkpoints go: beside `out`, so that `out` only ever holds a finished model."""
        out = Path(self.out)
        return out.with_name(out.name + CHECKPOINTS_SUFFIX)

    def training_fingerprint(self) -> dict[str, Any]:
        """The settings that decide what is trained; a checkpoint is resumed only when these match."""
        return {k: v for k, v in asdict(self).items() if k not in _NOT_TRAINING}

    def to_training_args(self, show_progress: bool = True, **overrides: Any):
        """The `TrainingArguments` for this run (the only place they are built).

        Evaluation and checkpoints happen together (each epoch, or every `checkpoint_every` steps), the best
        checkpoint by eval accuracy is restored at the end, and batches group texts of similar length so that
        dynamic padding wastes little.
        """
        from transformers import TrainingArguments

        strategy = "epoch" if self.checkpoint_every is None else "steps"
        cuda = _cuda_available()
        every = self.checkpoint_every or 500
        kwargs: dict[str, Any] = {
            "output_dir": str(self.checkpoints_dir),
            "num_train_epochs": self.epochs,
            "learning_rate": self.lr,
            "per_device_train_batch_size": self.batch_size,
            "per_device_eval_batch_size": self.eval_batch_size,
            "weight_decay": self.weight_decay,
            "warmup_steps": self.warmup,
            "eval_strategy": strategy,
            "save_strategy": strategy,
            "eval_steps": every,
            "save_steps": every,
            "save_total_limit": 2,
            "load_best_model_at_end": True,
            "metric_for_best_model": "accuracy",
            "greater_is_better": True,
            "train_sampling_strategy": "group_by_length",
            "logging_steps": self.logging_steps,
            "seed": self.seed,
            "data_seed": self.seed,
            "report_to": "none",
            "disable_tqdm": not show_progress,
            "dataloader_num_workers": 0,
            "dataloader_pin_memory": cuda,
            # Without a GPU say so: under torchrun / accelerate launch, accelerate then starts CPU data parallelism
            # over gloo (with cpu=False it would silently run N independent single-process trainings).
            "use_cpu": not cuda,
            "ddp_find_unused_parameters": False,
        }
        kwargs.update(overrides)
        return TrainingArguments(**kwargs)


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()
