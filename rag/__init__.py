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
    "vote",
]
