"""Sentence embeddings: a sentence-transformers model from a Hub id or a local directory, normalised, batched."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from core.settings import Source, resolve

logger = logging.getLogger(__name__)

FAST_PATH_MAX = 8
"""Up to this many texts skip `SentenceTransformer.encode` and run the model's modules directly (lower latency)."""
PROBE_TEXT = "the quick brown fox jumps over the lazy dog"
"""A fixed sentence whose embedding fingerprints a model: two embedders of the same width still differ on it."""
PROGRESS_CHUNK = 2048
"""Texts embedded between two progress updates."""


class EmbedderError(ValueError):
    """The embedder cannot be loaded or does not fit the index it is used with."""


class Embedder:
    """Wraps a `SentenceTransformer`: texts in, L2-normalised float32 vectors out (cosine = inner product).

    Texts longer than the model's ``max_seq_length`` tokens are truncated by the model; empty strings embed to the
    model's vector for an empty input.
    """

    def __init__(self, model, name: str, batch_size: int = 32) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size

    @classmethod
    def load(cls, source: str | None = None, batch_size: int = 32) -> Embedder:
        """Load from a Hub id or a local dir; None resolves ``FTRAG_EMBEDDER`` / the default (see core.settings)."""
        resolved: Source = resolve("embedder", source)
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(resolved.value, device="cpu", local_files_only=resolved.is_local or None)
        except Exception as err:
            raise EmbedderError(
                f"could not load the embedder {resolved.describe()}: {type(err).__name__}: {err}"
            ) from err
        logger.info("Embedder: %s", resolved.describe())
        return cls(model, resolved.value, batch_size=batch_size)

    @functools.cached_property
    def dim(self) -> int:
        dim = self.model.get_embedding_dimension()
        if dim is None:  # pragma: no cover - every pooling model reports it
            dim = len(self.model.encode(["x"])[0])
        return int(dim)

    @functools.cached_property
    def probe(self) -> np.ndarray:
        """The embedding of `PROBE_TEXT`, computed once per embedder (saved with an index, checked at load)."""
        return self.encode([PROBE_TEXT])[0]

    def encode(
        self,
        texts: Sequence[str],
        show_progress: bool = False,
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> np.ndarray:
        """Embed `texts` as an ``(n, dim)`` float32 array of unit vectors, in input order.

        Args:
            show_progress: draw a tqdm bar (for command-line jobs).
            progress: called as ``progress(done, total)`` after each chunk (for the app's progress bar).
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        batch_size = batch_size or self.batch_size
        if not show_progress and progress is None:
            return self._encode(texts, batch_size)
        chunk = max(batch_size, PROGRESS_CHUNK)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        with tqdm(total=len(texts), desc="Embedding", unit="text", disable=not show_progress) as bar:
            for start in range(0, len(texts), chunk):
                part = texts[start : start + chunk]
                out[start : start + len(part)] = self._encode(part, batch_size)
                bar.update(len(part))
                if progress is not None:
                    progress(start + len(part), len(texts))
        return out

    def _encode(self, texts: list[str], batch_size: int) -> np.ndarray:
        if len(texts) <= FAST_PATH_MAX:
            return self._forward(texts)
        vectors = self.model.encode(
            texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True, normalize_embeddings=True
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def _forward(self, texts: list[str]) -> np.ndarray:
        # The model's own modules (transformer, pooling...) without encode()'s batching machinery: ~1.5 ms less per
        # single query, the same vectors.
        with torch.inference_mode():
            features = self.model.preprocess(texts)
            vectors = self.model(features)["sentence_embedding"]
            vectors = torch.nn.functional.normalize(vectors.float(), dim=1)
        return np.ascontiguousarray(vectors.numpy(), dtype=np.float32)
