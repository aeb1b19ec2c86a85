"""Fine-tuning backend: a transformers sequence classifier (GPT-2 by default) trained with the Trainer.

Train with ``python -m finetune.train`` or ``finetune.train.train(cfg)``; load with ``finetune.load(dir)``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.files import ArtifactError
from finetune.config import SCRATCH_PRESETS, FinetuneConfig
from finetune.model import TextClassifier, quantize_int8


def load(directory: str | Path, **kwargs: Any) -> TextClassifier:
    """The one public way to load a trained model (see `TextClassifier.from_pretrained` for the options)."""
    return TextClassifier.from_pretrained(directory, **kwargs)


__all__ = [
    "SCRATCH_PRESETS",
    "ArtifactError",
    "FinetuneConfig",
    "TextClassifier",
    "load",
    "quantize_int8",
]
