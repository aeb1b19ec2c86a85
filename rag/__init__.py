"""Retrieval backend: labeled examples embedded with sentence-transformers, indexed in FAISS, labeled by vote."""

from __future__ import annotations

from pathlib import Path

from rag.chain import LlmRagClassifier, LlmUnavailable, llm_classifier, llm_from_env
from rag.classifier import ArtifactError, RagClassifier, vote
from rag.config import RagConfig
from rag.embed import Embedder, EmbedderError
from rag.index import VectorIndex


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
    "llm_classifier",
    "llm_from_env",
    "load",
    "vote",
]
