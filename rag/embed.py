"""Sentence embeddings: a sentence-transformers model from a Hub id or a local directory, normalised, batched."""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from core.batches import length_batches
from core.limits import clip_for_tokenizer
from core.precision import FP32, Variant, compile_graph, from_setting, graph_bytes
from core.settings import Source, resolve
from core.tracing import Traced

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
    model's vector for an empty input. The transformer runs as `variant` (`core.precision`: fp32 by default; the fp32
    model stays as the reference and the fallback), for queries and index builds alike.
    """

    def __init__(
        self,
        model,
        name: str,
        batch_size: int = 32,
        trace: bool = True,
        variant: Variant = FP32,
        serving_why: str = "fp32 (the default)",
    ) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self.trace = trace
        self.variant, self.serving_why = variant, serving_why
        self.precision_trials: dict[str, Any] | None = None  # `auto`'s record, when it chose the variant
        self._traced: Any = None  # None = not tried yet, False = not available
        self._trace_lock = threading.Lock()
        self._eager = threading.local()  # .on: this thread embeds with the eager fp32 model (the probe)

    @property
    def serving(self) -> dict[str, str]:
        """The precision and runtime served, and why (the report's row and /api/models show it)."""
        return {"precision": self.variant.precision, "runtime": self.variant.runtime, "why": self.serving_why}

    def serve_as(self, variant: Variant, why: str | None = None, now: bool = True) -> str | None:
        """Serve `variant` from now on, compiled and checked at once (or at the next embedding, unless `now`); None, or
        why it cannot (then fp32 is served)."""
        with self._trace_lock:
            self.variant, self._traced = variant, None
            self.serving_why = why or f"{variant.name} as set"
            if variant == FP32 or not now:  # compiled at the next prediction, on the thread that makes it
                return None
            self._traced = _trace_transformer(self.model, variant)
            if self._traced:
                return None
            self.variant, self.serving_why = FP32, f"{variant.name} could not be compiled or differs: serving fp32"
            return f"{variant.name} could not be compiled or differs from fp32"

    @classmethod
    def load(
        cls, source: str | None = None, batch_size: int = 32, precision: str | None = None, runtime: str | None = None
    ) -> Embedder:
        """Load from a Hub id or a local dir; None resolves ``FTRAG_EMBEDDER`` / the default (see core.settings).
        `precision` and `runtime` as in `core.precision.requested` (None: ``FTRAG_PRECISION`` / ``FTRAG_RUNTIME``)."""
        variant, why = from_setting(precision, runtime)
        resolved: Source = resolve("embedder", source)
        from sentence_transformers import SentenceTransformer

        try:
            model = SentenceTransformer(resolved.value, device="cpu", local_files_only=resolved.is_local or None)
        except Exception as err:
            raise EmbedderError(
                f"could not load the embedder {resolved.describe()}: {type(err).__name__}: {err}"
            ) from err
        logger.info("Embedder: %s (%s)", resolved.describe(), why)
        return cls(model, resolved.value, batch_size=batch_size, variant=variant, serving_why=why)

    @functools.cached_property
    def dim(self) -> int:
        dim = self.model.get_embedding_dimension()
        if dim is None:  # pragma: no cover - every pooling model reports it
            dim = len(self.model.encode(["x"])[0])
        return int(dim)

    def weight_bytes(self) -> int:
        """Memory held by the model's weights, plus the compiled graph's once it exists (the fp32 trace keeps its own
        copy of the weights)."""
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        return weights + (graph_bytes(self._traced, weights) if self._traced else 0)

    @functools.cached_property
    def probe(self) -> np.ndarray:
        """The embedding of `PROBE_TEXT` by the eager fp32 model, computed once per embedder (saved with an index,
        checked at load): it fingerprints the weights, whatever precision they are served at."""
        self._eager.on = True  # this thread only
        try:
            return self.encode([PROBE_TEXT])[0]
        finally:
            self._eager.on = False

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
        texts = clip_for_tokenizer(texts, self.model.max_seq_length or 512)  # bounded work whatever the input
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
        tokenizer = getattr(self.model, "tokenizer", None)
        if tokenizer is None:  # a model without a Hugging Face tokenizer: its own batching
            vectors = self.model.encode(
                texts, batch_size=batch_size, show_progress_bar=False, convert_to_numpy=True, normalize_embeddings=True
            )
            return np.ascontiguousarray(vectors, dtype=np.float32)
        # Sorted by length and cut by padded tokens (core.batches): far less padding than batches of random texts.
        lengths = [len(ids) for ids in tokenizer(texts, truncation=True, max_length=self.model.max_seq_length or 512)[
            "input_ids"]]  # fmt: skip
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for rows in length_batches(lengths, max_texts=batch_size):
            out[rows] = self._forward([texts[i] for i in rows])
        return out

    def _forward(self, texts: list[str]) -> np.ndarray:
        # The model's own modules (transformer, pooling...) without encode()'s batching machinery: ~1.5 ms less per
        # single query, the same vectors. The transformer runs as a frozen TorchScript trace when one could be made
        # and matched the eager model (~2.5 ms less again for a single MiniLM query on 2 cores, 9% less per text in
        # batches on one core); the rest of the modules stay as they are. Another variant (int8, bf16, ONNX Runtime)
        # replaces the trace the same way.
        with torch.inference_mode():
            features = self.model.preprocess(texts)
            traced = self._graph()
            vectors = None
            if traced and (len(texts) == 1 or traced.batches):
                try:
                    vectors = _embed_traced(self.model, traced, features)
                except Exception as err:  # an input the checks did not cover: this and later ones run eagerly
                    logger.warning("The compiled encoder failed (%s); the embedder runs eagerly from now on", err)
                    self._traced = False
                    if self.variant != FP32:
                        self.variant, self.serving_why = FP32, f"{self.variant.name} failed on an input: serving fp32"
            if vectors is None:
                vectors = self.model(features)["sentence_embedding"]
            vectors = torch.nn.functional.normalize(vectors.float(), dim=1)
        return np.ascontiguousarray(vectors.numpy(), dtype=np.float32)

    def _graph(self):
        """The transformer compiled as `variant` (fp32: traced and frozen), checked against the eager model; False
        when unusable (another variant then falls back to fp32 and says so)."""
        if getattr(self._eager, "on", False):
            return False
        if self._traced is not None or not (self.trace or self.variant != FP32):
            return self._traced
        with self._trace_lock:
            if self._traced is None:
                self._traced = _trace_transformer(self.model, self.variant)
                if not self._traced and self.variant != FP32:
                    why = f"{self.variant.name} could not be compiled or differs"
                    self.variant, self.serving_why = FP32, f"{why}: serving fp32"
        return self._traced


def _trace_transformer(model, variant: Variant = FP32) -> Traced | bool:
    """Compile ``model[0].auto_model`` (input_ids, attention_mask[, token_type_ids] -> last_hidden_state) as
    `variant` (fp32: traced and frozen).

    Returns False, and the model keeps running eagerly in fp32, when the first module is not a plain Hugging Face
    encoder, compiling fails, or the compiled vectors differ from the eager ones on two texts of different lengths
    (cosine within `Variant.tolerance` of 1 for a variant other than fp32). An fp32 trace serves batches only if it
    also matched on a padded batch of the two (`Traced.batches`); another variant must match there too.
    """
    try:
        with torch.inference_mode():
            traced = compile_graph(model[0].auto_model, model.preprocess([PROBE_TEXT]), "last_hidden_state", variant)
        if traced is None:
            return False
        short, long = "ok", PROBE_TEXT + " and then some more words to make it longer"
        if not all(_matches(model, traced, [text], variant) for text in (short, long)):
            logger.warning("The encoder compiled as %s differs from the eager one; it runs eagerly", variant.name)
            return False
        traced.batches = _matches(model, traced, [short, long], variant)  # the short one padded: the mask counts
        if not traced.batches:
            logger.warning("The compiled encoder differs from the eager one on a padded batch; batches run eagerly")
            if variant != FP32:
                return False
        return traced
    except Exception as err:  # tracing or export failures (of many kinds): the eager model answers
        logger.warning("Could not compile the embedder as %s (%s: %s); it runs eagerly", variant.name,
                       type(err).__name__, err)  # fmt: skip
        return False


def _embed_traced(model, traced, features: dict) -> torch.Tensor:
    """`model`'s sentence embeddings of the tokenized `features`, with `traced` as its transformer (the first module)
    and its other modules (pooling, normalisation...) as they are; `features` is left unchanged."""
    features = {**features, "token_embeddings": traced.run(features)}
    for module in list(model)[1:]:
        features = module(features)
    return features["sentence_embedding"]


def _matches(model, traced: Traced, texts: list[str], variant: Variant = FP32) -> bool:
    """Whether `model` gives the same sentence embeddings for `texts` with `traced` as its transformer as without
    (fp32: within 1e-4; another variant: cosine within its tolerance of 1)."""
    with torch.inference_mode():
        features = model.preprocess(texts)
        eager = model(dict(features))["sentence_embedding"]
        compiled = _embed_traced(model, traced, features)
        if variant == FP32:
            return torch.allclose(eager, compiled, atol=1e-4)
        cosine = torch.nn.functional.cosine_similarity(eager.float(), compiled.float(), dim=1)
        return bool((cosine >= 1 - variant.tolerance).all())
