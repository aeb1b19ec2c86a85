"""A fine-tuned sequence classifier behind the `Classifier` contract: batched, length-sorted, at a chosen precision.

Prediction: texts are tokenized once, sorted by length and cut into batches so that dynamic padding pads each
batch only to its longest text; the model runs under ``torch.inference_mode()``. Texts longer than the model's
``max_length`` tokens are truncated (the start is kept). An empty or blank text is defined, not an error: it is
classified from the end-of-text token alone, which gives the model's prior.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.batches import length_batches
from core.files import ArtifactError, read_json, recover_dir
from core.limits import clip_for_tokenizer
from core.precision import FP32, Variant, compile_graph, from_setting, graph_bytes, quantize_int8
from core.types import Prediction, check_texts

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
RUN_FILE, LABELS_FILE, WEIGHTS_FILE, CARD_FILE = "run.json", "labels.json", "model.safetensors", "README.md"
DEFAULT_BATCH_SIZE = 32


class TextClassifier:
    """A transformers sequence-classification model (GPT-2 or any other) that answers with `Prediction`s.

    Args:
        model: a loaded ``AutoModelForSequenceClassification`` model whose ``config.id2label`` are `labels`.
        tokenizer: its tokenizer (a pad token is set if it has none).
        labels: label names in the model's output order.
        max_length: tokens kept per text.
        batch_size: texts per forward pass.
        name: the backend name shown in comparisons.
        meta: run.json of the saved model (base model, from_scratch, metrics...).
        quantized: whether `model` has int8 dynamic-quantized linear layers (run eagerly, as they are).
        trace: run the fp32 model as a frozen TorchScript trace (made on the first prediction and used only once it
            gives the eager model's answers on single texts and a padded batch; never for int8 models). The trace holds
            a copy of the weights: the model must not change afterwards.
        variant: the precision and runtime served (`core.precision`; the fp32 model stays as the reference and the
            fallback); `serving_why` says why it is the one served.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        labels: Sequence[str],
        *,
        max_length: int = 128,
        batch_size: int = DEFAULT_BATCH_SIZE,
        name: str = "finetune",
        meta: dict[str, Any] | None = None,
        directory: str | Path | None = None,
        quantized: bool = False,
        trace: bool = True,
        variant: Variant = FP32,
        serving_why: str = "fp32 (the default)",
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = ensure_pad_token(tokenizer)
        self.labels = list(labels)
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self.name = name
        self.meta = dict(meta or {})
        self.directory = Path(directory) if directory is not None else None
        self.quantized = quantized
        self.trace = trace and not quantized
        self.variant = FP32 if quantized else variant
        self.serving_why = "int8 layers recorded at training (run eagerly)" if quantized else serving_why
        self.precision_trials: dict[str, Any] | None = None  # `auto`'s record, when it chose the variant
        self._traced: Any = None  # None = not tried yet, False = not usable
        self._empty_ids = _fallback_ids(self.tokenizer)
        self._lock = threading.Lock()

    @property
    def from_scratch(self) -> bool:
        """True when the weights were trained from a random init (no pretrained checkpoint)."""
        return bool(self.meta.get("from_scratch"))

    def describe(self) -> str:
        """One line that says what this model is, including whether it was trained from scratch."""
        if self.from_scratch:
            preset = self.meta.get("scratch_preset") or {}
            shape = f" ({preset['name']}: {preset['n_layer']} layers, {preset['n_embd']} wide)" if preset else ""
            what = f"GPT-2{shape} trained from scratch: random init, no pretrained weights"
        else:
            what = str(self.meta.get("base_model", getattr(self.model.config, "_name_or_path", "?")))
        size = self.meta.get("train_size")
        trained = f", fine-tuned on {size:,} labeled examples" if size else ""
        served = f", served {self.variant.name}" if self.variant != FP32 else ""
        return f"{what}{trained}{', int8' if self.quantized else ''}{served}"

    @property
    def serving(self) -> dict[str, str]:
        """The precision and runtime served, and why (the report's row and /api/models show it)."""
        precision = "int8" if self.quantized else self.variant.precision
        return {"precision": precision, "runtime": self.variant.runtime, "why": self.serving_why}

    def serve_as(self, variant: Variant, why: str | None = None, now: bool = True) -> str | None:
        """Serve `variant` from now on, compiled and checked at once (or at the next prediction, unless `now`); None,
        or why it cannot (then fp32 is served).

        A model loaded with int8 layers (`quantized`) serves them as they are: it has no fp32 weights to vary."""
        if self.quantized:
            return None if variant.precision == "int8" and variant.runtime == "torch" else "the model is int8 already"
        with self._lock:
            self.variant, self._traced = variant, None
            self.serving_why = why or f"{variant.name} as set"
            if variant == FP32 or not now:  # compiled at the next prediction, on the thread that makes it
                return None
            self._traced = compile_logits(self.model, self.tokenizer, variant)
            if self._traced:
                return None
            self.variant, self.serving_why = FP32, f"{variant.name} could not be compiled or differs: serving fp32"
            return f"{variant.name} could not be compiled or differs from fp32"

    def memory_bytes(self) -> int:
        """Approximate memory held by the weights (int8 layers count their packed int8 weights), plus what the
        compiled graph holds once it exists (the fp32 trace keeps its own copy of the weights)."""
        total = 0
        for value in self.model.state_dict().values():
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
            elif isinstance(value, tuple):  # packed quantized linear params: (weight, bias)
                total += sum(v.numel() * v.element_size() for v in value if isinstance(v, torch.Tensor))
        return int(total + (graph_bytes(self._traced, total) if self._traced else 0))

    # --- the Classifier contract ---------------------------------------------------------------------------------

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        """One `Prediction` per text (scores = softmax over the labels; no evidence)."""
        probs = self.predict_proba(texts)
        return [Prediction.from_scores(dict(zip(self.labels, row.tolist(), strict=True))) for row in probs]

    def predict_proba(self, texts: Sequence[str]) -> np.ndarray:
        """Label probabilities, shape ``(len(texts), len(labels))``, float64, rows summing to 1."""
        texts = check_texts(texts)
        probs = np.zeros((len(texts), len(self.labels)), dtype=np.float64)
        if not texts:
            return probs
        clipped = clip_for_tokenizer(texts, self.max_length)  # bounded work whatever the input's size
        encoded = self.tokenizer(clipped, truncation=True, max_length=self.max_length)
        features = [{key: encoded[key][i] for key in encoded} for i in range(len(texts))]
        for feature in features:
            if not feature["input_ids"]:
                feature.update(self._empty_ids)
        batches = length_batches([len(f["input_ids"]) for f in features], max_texts=self.batch_size)
        # inference_mode is thread-local and the model is read-only here; the lock only keeps two large batches
        # from oversubscribing the CPU at once.
        with self._lock, torch.inference_mode():
            for rows in batches:
                batch = self.tokenizer.pad([features[i] for i in rows], return_tensors="pt")
                logits = self._logits(batch)
                probs[rows] = torch.softmax(logits.double(), dim=-1).numpy()
        return probs

    def _logits(self, batch: Any) -> torch.Tensor:
        """The model's logits for a padded batch, through the compiled graph when there is one (under `_lock`)."""
        if self._traced is None:
            wanted = self.trace or self.variant != FP32
            self._traced = compile_logits(self.model, self.tokenizer, self.variant) if wanted else False
            if not self._traced and self.variant != FP32:
                self._fall_back(f"{self.variant.name} could not be compiled or differs")
        if self._traced:
            try:
                return self._traced.run(batch)
            except Exception as err:  # an input the checks did not cover: answer it, and every later one, eagerly
                logger.warning("The compiled classifier failed (%s); it runs eagerly from now on", err)
                self._traced = False
                if self.variant != FP32:
                    self._fall_back(f"{self.variant.name} failed on an input ({type(err).__name__})")
        return self.model(**batch).logits

    def _fall_back(self, why: str) -> None:
        logger.warning("%s; the classifier serves fp32 eagerly", why)
        self.variant, self.serving_why = FP32, f"{why}: serving fp32"

    # --- loading -------------------------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        *,
        quantize: bool | None = None,
        threads: int | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        name: str = "finetune",
        precision: str | None = None,
        runtime: str | None = None,
    ) -> TextClassifier:
        """Load a model saved by ``python -m finetune.train``.

        Args:
            quantize: int8 dynamic quantization for CPU serving; None = what run.json recorded at training.
            threads: torch CPU threads (a process-wide torch setting); None leaves it alone.
            precision, runtime: what to serve (`core.precision.requested`; None = ``FTRAG_PRECISION`` /
                ``FTRAG_RUNTIME``, else fp32 on torch). A CPU without the instructions serves fp32 and says so;
                ``auto`` serves fp32 until a caller chooses (`compare.precision.choose`).

        Raises:
            ArtifactError: no such directory, a missing or corrupted file, labels that do not match the model.
        """
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        directory = recover_dir(Path(directory))
        if not directory.is_dir():
            raise ArtifactError(f"{directory}: no such model directory (train one with `python -m finetune.train`)")
        try:
            run = read_json(directory / RUN_FILE, "run.json")
            labels = read_json(directory / LABELS_FILE, "labels.json")
        except ValueError as err:
            raise ArtifactError(str(err)) from err
        kind = (run.get("backend"), run.get("format_version")) if isinstance(run, dict) else None
        if kind != ("finetune", FORMAT_VERSION):
            raise ArtifactError(f"{directory / RUN_FILE}: not the run.json of a format-{FORMAT_VERSION} fine-tune")
        if not (isinstance(labels, list) and labels and all(isinstance(x, str) for x in labels)):
            raise ArtifactError(f"{directory / LABELS_FILE}: expected a list of label names, got {labels!r}")
        check_weights(directory / WEIGHTS_FILE)
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            model = AutoModelForSequenceClassification.from_pretrained(directory, local_files_only=True)
            tokenizer = AutoTokenizer.from_pretrained(directory, local_files_only=True)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            raise ArtifactError(f"{directory}: the model or tokenizer cannot be loaded: {err}") from err
        model_labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        if model_labels != labels:
            raise ArtifactError(
                f"{directory}: labels.json says {labels} but the model's config says {model_labels}; "
                "the files do not belong together"
            )
        quantize = bool(run.get("quantize")) if quantize is None else quantize
        if quantize:
            model = quantize_int8(model)
        variant, why = from_setting(precision, runtime)
        return cls(
            model,
            tokenizer,
            labels,
            max_length=int(run.get("max_length", 128)),
            batch_size=batch_size,
            name=name,
            meta=run,
            directory=directory,
            quantized=quantize,
            variant=variant,
            serving_why=why,
        )


def compile_logits(model: Any, tokenizer: Any, variant: Variant = FP32) -> Any:
    """`model` compiled as `variant` (for fp32: traced on a padded batch and frozen); False (the model then runs
    eagerly, in fp32) when compiling fails or the compiled answers differ from the eager fp32 model's on single texts
    or a padded batch by more than the variant's tolerance (fp32: logits within 1e-4; others: probabilities within
    `Variant.tolerance`). Measured on one CPU core with the demo's MiniLM classifier: the fp32 trace takes a single
    text from 10.2 to 7.7 ms, 4% less time per text in batches (same answers)."""
    short, long = "ok", "the quick brown fox jumps over the lazy dog, and then some more words to make it longer"
    try:
        sample = tokenizer([short, long], padding=True, return_tensors="pt")  # traced with a real mask
        with torch.inference_mode():
            graph = compile_graph(model, sample, "logits", variant)
        if graph is None:
            return False
        for texts in ([short], [long], [long, short, "a text of middling length"]):
            batch = tokenizer(texts, padding=True, return_tensors="pt")
            with torch.inference_mode():
                eager, compiled = model(**batch).logits, graph.run(batch)
            if variant == FP32:
                same = torch.allclose(eager, compiled, atol=variant.tolerance)
            else:
                same = torch.allclose(eager.softmax(-1), compiled.softmax(-1), atol=variant.tolerance)
            if not same:
                logger.warning(
                    "The classifier compiled as %s differs from the eager one; it runs eagerly", variant.name
                )
                return False
        graph.batches = True
        return graph
    except Exception as err:  # tracing or export failures (of many kinds): the eager model answers
        logger.warning("Could not compile the classifier as %s (%s: %s); it runs eagerly", variant.name,
                       type(err).__name__, err)  # fmt: skip
        return False


def ensure_pad_token(tokenizer: Any) -> Any:
    """Give a tokenizer without a pad token (GPT-2) its end-of-text token as the pad token."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"tokenizer {tokenizer.name_or_path!r} has neither a pad nor an end-of-text token")
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _fallback_ids(tokenizer: Any) -> dict[str, list[int]]:
    """What an empty text is encoded as when the tokenizer gives no tokens (GPT-2): the end-of-text token."""
    token_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.pad_token_id
    encoded = {"input_ids": [token_id], "attention_mask": [1]}
    if "token_type_ids" in tokenizer.model_input_names:
        encoded["token_type_ids"] = [0]
    return encoded


def check_weights(path: Path) -> None:
    """Raise `ArtifactError` unless `path` is a complete safetensors file.

    Opening it checks the header and that the header's tensors cover the file exactly, so a truncated or padded
    file is refused here, before transformers would try to load it.
    """
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise ArtifactError(f"{path}: model weights are missing")
    try:
        with safe_open(str(path), framework="pt"):
            pass
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{path}: model weights are truncated or corrupted ({err})") from err
