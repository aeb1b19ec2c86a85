"""The app's default line-up, built on first start when the artifacts are missing: one labeled sample, two contenders.

Both contenders get the same labeled examples under the same protocol (the one `jobs.curve` uses at each size):
a seeded, stratified sample of the train split is cut once into a *fit* part and a *validation* part
(`core.split.Split`, recorded beside each contender). The fine-tune learns from the fit part and keeps its best
checkpoint by the validation part; the retrieval index holds exactly the fit part and chooses its vote (k,
weighting) on the same validation part; the hybrid is then fitted on that validation part too.
Nobody sees the test split.

- ``finetune``: a pretrained model fine-tuned. With the Hub, GPT-2; offline, all-MiniLM-L6-v2 (the same pretrained
  base the retrieval backend embeds with: one base, fine-tuned vs frozen + retrieval). Sizes suit 2 CPU cores: the
  whole first build takes a few minutes.
- ``rag``: the sentence embedder (frozen) + a FAISS index of the fit part, built first (it is ready in under a minute).
- ``finetune-gpt2-scratch`` (only when asked for): GPT-2 from random weights on the same examples, labelled so.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.types import Progress
from finetune.protocol import MIN_STEPS

logger = logging.getLogger(__name__)

SCRATCH_NAME = "finetune-gpt2-scratch"
SEED = 0


@dataclass(frozen=True)
class DemoSizes:
    """How many labeled examples the demo's contenders learn from (`fit`) and choose their settings on
    (`validation`), and the fine-tune's epochs and fewest optimizer steps (its protocol's, `finetune.protocol`)."""

    fit: int
    validation: int
    epochs: float
    min_steps: int = MIN_STEPS


OFFLINE_SIZES = DemoSizes(fit=10_000, validation=1_000, epochs=1.0)
"""all-MiniLM-L6-v2 trains at about 100 examples a second on 2 cores: 10,000 in under 2 minutes."""
HUB_GPT2_SIZES = DemoSizes(fit=2_000, validation=500, epochs=1.0)
"""Pretrained GPT-2 (124M) is about six times slower per example than MiniLM on a CPU."""
SCRATCH_EPOCHS = 2.0


def demo_sizes(base: Any) -> DemoSizes:
    """The sizes for the resolved base model `base` (a `core.settings.Source`)."""
    return OFFLINE_SIZES if base.origin == "offline default" else HUB_GPT2_SIZES


class DemoData:
    """The demo's sizes and its fit and validation parts, each computed once and only when a build needs it (the
    fine-tunes need only the sizes: `finetune.train` draws the same parts from the data itself)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._sizes: DemoSizes | None = None
        self._parts: tuple[Any, Any, DemoSizes] | None = None
        self.split: Any = None  # the core.split.Split every demo contender gets, made once with the parts

    def sizes(self) -> DemoSizes:
        from core.settings import resolve

        with self._lock:
            if self._sizes is None:
                self._sizes = demo_sizes(resolve("base_model"))
            return self._sizes

    def parts(self) -> tuple[Any, Any, DemoSizes]:
        from core.data import load_tweets
        from core.split import Split

        sizes = self.sizes()
        with self._lock:
            if self._parts is None:
                train = load_tweets(None, split="train", seed=SEED)
                self.split = Split.of(train, sizes.validation, sizes.fit, seed=SEED)
                fit, validation = self.split.parts(train)
                self._parts = (fit, validation, sizes)
            return self._parts


def build_demo_index(out: Path, progress: Progress, data: DemoData) -> None:
    """Index the fit part with the frozen embedder; choose the vote on the validation part (as `jobs.curve`)."""
    from rag import build_index
    from rag.config import RagConfig
    from rag.tuning import choose_vote

    fit, validation, _ = data.parts()
    progress(0.0, f"embedding {fit.num_rows:,} labeled examples")
    clf = build_index(RagConfig(tune=False, seed=SEED, out=str(out)), fit, progress=progress,
                              show_progress=False)  # fmt: skip
    progress(0.92, f"choosing k and the vote on {validation.num_rows:,} validation examples")
    chosen = choose_vote(clf, list(fit["label"]), list(validation["text"]), list(validation["label"]), SEED)
    clf.meta.update(data_source=_data_source(), protocol=PROTOCOL, validation_size=validation.num_rows, vote=chosen,
                    split=data.split.to_dict())  # fmt: skip
    clf.save(out)
    progress(1.0, f"indexed {fit.num_rows:,} examples (validation accuracy {chosen['accuracy']:.3f})")


def build_demo_finetune(out: Path, progress: Progress, data: DemoData) -> None:
    """Fine-tune the pretrained base on the fit part, keeping the best checkpoint by the validation part."""
    from core.settings import resolve
    from finetune.config import FinetuneConfig
    from finetune.train import train

    _, _, sizes = data.parts()
    base = resolve("base_model")
    cfg = FinetuneConfig(epochs=sizes.epochs, batch_size=32, min_steps=sizes.min_steps, seed=SEED, out=str(out))
    logger.info("Fine-tuning %s on %d labeled examples", base.name, sizes.fit)
    train(cfg, split=data.split, progress=progress, show_progress=False)


def build_scratch_gpt2(out: Path, progress: Progress, data: DemoData) -> None:
    """GPT-2 from random weights on the same examples: an extra contender, always labelled as trained from scratch."""
    from finetune.config import FinetuneConfig
    from finetune.train import train

    data.parts()
    cfg = FinetuneConfig(from_scratch=True, scratch_size="small", epochs=SCRATCH_EPOCHS, seed=SEED, out=str(out))
    train(cfg, split=data.split, progress=progress, show_progress=False)


PROTOCOL = (
    "the same seeded, stratified sample for every contender: the fine-tune learns from the fit part and keeps its "
    "best checkpoint by the validation part; the index holds the fit part and chooses its vote on the validation part"
)


def _data_source() -> str:
    from core.settings import resolve

    return resolve("data").describe()


@dataclass(frozen=True)
class Step:
    """One backend of the line-up: its name, its folder, how to load it and (when missing) how to build it."""

    name: str
    path: Path
    load: Callable[[Path], Any]
    build: Callable[[Path, Progress, DemoData], None] | None = None


def line_up(
    artifacts: Path,
    finetune_dir: str | Path | None = None,
    rag_dir: str | Path | None = None,
    scratch_gpt2: bool = False,
) -> list[Step]:
    """The backends to serve, in the order they are brought up: retrieval first (the quickest), then the fine-tune,
    then the extras (GPT-2 from scratch when asked for or already built; retrieval over a tuned embedder when one
    was built into ``<artifacts>/rag-tuned``)."""
    import finetune
    import rag

    steps = [
        Step("rag", Path(rag_dir or artifacts / "rag"), rag.load, build_demo_index),
        Step("finetune", Path(finetune_dir or artifacts / "finetune"), finetune.load, build_demo_finetune),
    ]
    scratch = artifacts / SCRATCH_NAME
    if scratch_gpt2 or scratch.exists():
        steps.append(Step(SCRATCH_NAME, scratch, _load_named(SCRATCH_NAME), build_scratch_gpt2))
    if (artifacts / "rag-tuned").exists():
        steps.append(Step("rag-tuned", artifacts / "rag-tuned", _load_tuned))
    return steps


def _load_named(name: str) -> Callable[[Path], Any]:
    def load(path: Path) -> Any:
        import finetune

        return finetune.load(path, name=name)

    return load


def _load_tuned(path: Path) -> Any:
    import rag

    return rag.load_tuned(path)


__all__ = [
    "HUB_GPT2_SIZES",
    "OFFLINE_SIZES",
    "PROTOCOL",
    "SCRATCH_NAME",
    "DemoData",
    "DemoSizes",
    "Step",
    "line_up",
]
