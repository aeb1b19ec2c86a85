"""What every job's config shares: the labeled data, its label names, the seed and the output directory.

Each job (``finetune.train``, ``rag.build``, ``rag.tune_embedder``, ``finetune.search``, ``jobs.run``,
``jobs.audit``, ``jobs.curve``, ``jobs.study``) has one config dataclass that inherits `JobConfig`, so these four are
the same flags, checked the same way, everywhere (``--data``, ``--labels``, ``--seed``, ``--out``; `core.cli` maps
fields to flags).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.types import check_labels, normalise_label


@dataclass
class JobConfig:
    """Args:
    data: labeled data source (Hub id, local directory or file); None = ``FTRAG_DATA`` or the default dataset.
    labels: label names in the order of the data's integer ids (for ids without names); None = the data's own.
    seed: seed for the job's samples, splits and training.
    out: the job's output directory (each job sets its own default).
    """

    data: str | None = None
    labels: tuple[str, ...] | None = None
    seed: int = 0
    out: str = "artifacts"

    def __post_init__(self) -> None:
        if self.labels is not None:
            self.labels = tuple(check_labels([normalise_label(name) for name in self.labels]))
        if not str(self.out).strip():
            raise ValueError("out must name a directory")
