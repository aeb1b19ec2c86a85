"""Retrieval backend: labeled examples embedded with sentence-transformers, indexed in FAISS, labeled by vote."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from rag.classifier import ArtifactError, RagClassifier, vote
from rag.config import RagConfig
from rag.embed import Embedder, EmbedderError
from rag.errors import LlmUnavailable
from rag.index import VectorIndex

_LLM_MODE = ("LlmRagClassifier", "llm_classifier", "llm_from_env")
"""Names of the LLM mode (`rag.chain`): imported on first use, so that retrieval alone never loads LangChain."""


def __getattr__(name: str) -> Any:
    if name in _LLM_MODE:
        import rag.chain

        return getattr(rag.chain, name)
    raise AttributeError(f"module 'rag' has no attribute {name!r}")


def build_index(
    cfg: RagConfig,
    dataset=None,
    embedder: Embedder | None = None,
    progress: Callable[[float, str], None] | None = None,
    show_progress: bool = True,
) -> RagClassifier:
    """Embed and index the labeled examples of `dataset` (default: the train split of ``cfg.data``), with k and the
    vote tuned on a validation slice when ``cfg.tune``: `rag.build.build_classifier`, the job ``python -m rag.build``
    runs (the classifier itself knows nothing of how it is built)."""
    from rag.build import build_classifier

    return build_classifier(cfg, dataset, embedder=embedder, progress=progress, show_progress=show_progress)


def load(directory: str | Path, embedder: Embedder | str | None = None) -> RagClassifier:
    """The one public way to load a built index (see `RagClassifier.load`)."""
    return RagClassifier.load(directory, embedder=embedder)


_TUNING_KEYS = ("data_source", "base_embedder", "train_size", "loss", "steps", "seconds")
"""What a tuned embedder's run.json says about its tuning, copied into the index's meta."""


def load_tuned(directory: str | Path) -> RagClassifier:
    """The index over a tuned embedder, named ``rag-tuned``; its one-off cost counts the embedder's tuning too.

    The tuning's run.json (what the embedder was trained on, steps, seconds) goes to ``meta["embedder_tuning"]``;
    an index whose embedder has none is refused, since it would not be what the name says.
    """
    from core.files import read_json

    clf = load(directory)
    path = Path(clf.embedder.name) / "run.json"  # rag.tune_embedder.RUN_FILE
    tuning = read_json(path, "tuned embedder run.json") if path.is_file() else None
    if not isinstance(tuning, dict) or tuning.get("backend") != "tuned-embedder":
        raise ValueError(
            f"{directory}: its embedder {clf.embedder.name} was not written by python -m rag.tune_embedder "
            "(no run.json beside it); give it as --rag instead"
        )
    clf.name = "rag-tuned"
    clf.meta["embedder_tuning"] = {k: tuning.get(k) for k in _TUNING_KEYS}
    clf.meta["build_seconds"] = round(clf.meta.get("build_seconds", 0.0) + (tuning.get("seconds") or 0.0), 2)
    return clf


__all__ = [
    "ArtifactError",
    "Embedder",
    "EmbedderError",
    "LlmRagClassifier",
    "LlmUnavailable",
    "RagClassifier",
    "RagConfig",
    "VectorIndex",
    "build_index",
    "llm_classifier",
    "llm_from_env",
    "load",
    "load_tuned",
    "vote",
]
