"""The precision and runtime a transformer is served at, what this CPU can run fast, and `auto`'s measured choice.

A served model is fp32 (the frozen TorchScript trace of `core.tracing`) unless a setting says otherwise:
``FTRAG_PRECISION`` = ``fp32`` | ``bf16`` | ``int8`` | ``auto`` and ``FTRAG_RUNTIME`` = ``torch`` | ``onnxruntime``
(the app's ``--precision`` / ``--runtime``). Each `Variant` is one way to run the same weights:

- torch fp32: today's frozen trace; torch bf16: the weights cast to bfloat16, traced (needs AVX-512 BF16 or AMX to be
  fast); torch int8: dynamic int8 quantization of every linear layer (``torch.ao.quantization.quantize_dynamic``),
  traced (needs AVX2; VNNI makes it faster).
- onnxruntime fp32 / int8: the model exported with ``torch.onnx.export`` (dynamo) and run by ONNX Runtime's CPU
  provider; int8 is ONNX Runtime's own dynamic quantization of the exported graph.

Hardware without the instructions a variant needs serves fp32 instead, and says so (`Hardware.missing`). `auto`
(`choose`) scores every candidate this machine can run on the validation part, against fp32: accuracy, label
agreement, time per text. It serves the fastest whose accuracy is within fp32's 95% interval and whose labels agree
with fp32's on at least `MIN_AGREEMENT` of the texts, and says which and why.

Dynamic int8 scales each layer's activations by the largest value in the whole call, so a text's int8 answer can
move slightly with the texts batched beside it: "the answer of a batch equals the answer alone" holds to the
precision served (the checks below use a tolerance per variant), exactly only for fp32.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from core.tracing import Traced, trace_frozen

logger = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16", "int8")
RUNTIMES = ("torch", "onnxruntime")
PRECISION_ENV, RUNTIME_ENV = "FTRAG_PRECISION", "FTRAG_RUNTIME"
MIN_AGREEMENT = 0.97
"""`auto` refuses a candidate whose labels differ from fp32's on more than 3% of the validation texts, whatever its
accuracy: it would be another model, not the evaluated one at another speed."""
TIMED_TEXTS = 64
"""Validation texts `auto` times each candidate on (one at a time, then in batches of `TIMED_BATCH`)."""
TIMED_BATCH = 32


@dataclass(frozen=True)
class Variant:
    """One way to run the same weights: a precision on a runtime."""

    precision: str = "fp32"
    runtime: str = "torch"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.precision == "bf16" and self.runtime != "torch":
            raise ValueError("bf16 is served by the torch runtime only")

    @property
    def name(self) -> str:
        """``int8``, ``onnxruntime int8``... (the torch runtime goes unnamed: it is the default).

        >>> Variant("int8").name, Variant("fp32", "onnxruntime").name
        ('int8', 'onnxruntime fp32')
        """
        return self.precision if self.runtime == "torch" else f"{self.runtime} {self.precision}"

    @property
    def tolerance(self) -> float:
        """How far this variant's outputs may be from fp32's when it is compiled (probabilities, or 1 - cosine for
        embeddings): 1e-4 for the torch fp32 trace (the same arithmetic), 1e-3 for ONNX Runtime fp32 (other kernels),
        0.05 for bf16, 0.2 for int8. Wide enough for int8 noise (all-MiniLM-L6-v2's sentence vectors keep a cosine of
        0.92-0.98 to fp32's here), narrow enough to catch a broken graph (one that ignores the mask); whether the
        answers are good enough is measured on the validation part (`choose`), not guessed from these."""
        if self.precision == "fp32":
            return 1e-4 if self.runtime == "torch" else 1e-3
        return 0.05 if self.precision == "bf16" else 0.2


FP32 = Variant()


def candidates() -> list[Variant]:
    """Every variant `auto` considers, fp32 first (the reference)."""
    return [FP32, Variant("bf16"), Variant("int8"), Variant("fp32", "onnxruntime"), Variant("int8", "onnxruntime")]


def requested(precision: str | None = None, runtime: str | None = None) -> tuple[str, str]:
    """The setting: `precision` (fp32, bf16, int8 or auto) and `runtime`, or else ``FTRAG_PRECISION`` /
    ``FTRAG_RUNTIME``, or else fp32 on torch. A bad value is a ValueError that names it."""
    precision = (precision or os.environ.get(PRECISION_ENV, "") or "fp32").strip().lower()
    runtime = (runtime or os.environ.get(RUNTIME_ENV, "") or "torch").strip().lower()
    if precision not in (*PRECISIONS, "auto"):
        raise ValueError(f"{PRECISION_ENV} / --precision must be fp32, bf16, int8 or auto, got {precision!r}")
    if runtime not in RUNTIMES:
        raise ValueError(f"{RUNTIME_ENV} / --runtime must be torch or onnxruntime, got {runtime!r}")
    return precision, runtime


# --- what this CPU can run -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hardware:
    """The CPU's instruction sets that matter here: PyTorch's capability level and the CPU's flags."""

    capability: str
    flags: frozenset[str]

    @classmethod
    def detect(cls) -> Hardware:
        """This machine, read from PyTorch and /proc/cpuinfo (never assumed)."""
        return _detected()

    @property
    def bf16(self) -> bool:
        """bfloat16 arithmetic in hardware (AVX-512 BF16 or AMX); without it bf16 is emulated, slower than fp32."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)

    @property
    def int8(self) -> bool:
        """int8 kernels (PyTorch's fbgemm and ONNX Runtime's need AVX2 at least)."""
        return self.capability.upper().startswith(("AVX2", "AVX512")) or "avx2" in self.flags

    @property
    def vnni(self) -> bool:
        """int8 dot products in one instruction (AVX-512 VNNI, AVX-VNNI or AMX): int8 gains most with them."""
        return bool({"avx512_vnni", "avx_vnni", "amx_int8"} & self.flags)

    def missing(self, variant: Variant) -> str | None:
        """Why `variant` cannot be served fast here, or None when it can."""
        if variant.precision == "bf16" and not self.bf16:
            return "this CPU has no bf16 instructions (AVX-512 BF16 or AMX)"
        if variant.precision == "int8" and not self.int8:
            return "this CPU has no int8 kernels (they need AVX2)"
        if variant.runtime == "onnxruntime" and not onnxruntime_available():
            return "ONNX Runtime is not installed (pip install onnxruntime)"
        return None

    def describe(self) -> str:
        """One line: the capability and the flags that matter.

        >>> Hardware("AVX2", frozenset({"avx2"})).describe()
        'AVX2; bf16: no, int8: yes, VNNI: no'
        """
        yes = {True: "yes", False: "no"}
        return f"{self.capability}; bf16: {yes[self.bf16]}, int8: {yes[self.int8]}, VNNI: {yes[self.vnni]}"


@functools.cache
def _detected() -> Hardware:
    capability = torch.backends.cpu.get_cpu_capability()
    flags: set[str] = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags.update(line.split(":", 1)[1].split())
                break
    except OSError:  # not Linux: PyTorch's own checks
        for flag, check in (("avx512_bf16", "_is_avx512_bf16_supported"), ("amx_bf16", "_is_amx_tile_supported"),
                            ("avx512_vnni", "_is_avx512_vnni_supported")):  # fmt: skip
            if getattr(torch.cpu, check, lambda: False)():
                flags.add(flag)
    if capability.upper().startswith(("AVX2", "AVX512")):
        flags.add("avx2")
    return Hardware(capability, frozenset(flags))


@functools.cache
def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def from_setting(precision: str | None = None, runtime: str | None = None) -> tuple[Variant, str]:
    """What a loader serves for the setting (`requested`), and why: `resolve`'s answer, or fp32 for ``auto`` until
    `choose` has measured the candidates."""
    precision, runtime = requested(precision, runtime)
    return (FP32, "auto: fp32 until measured") if precision == "auto" else resolve(precision, runtime)


def resolve(precision: str, runtime: str, hardware: Hardware | None = None) -> tuple[Variant, str]:
    """The variant to serve for an explicit setting, and why: the one asked for, or fp32 when this CPU lacks its
    instructions (or its runtime is not installed)."""
    variant = Variant(precision, runtime)
    why = (hardware or Hardware.detect()).missing(variant)
    if why is not None:
        return FP32, f"{variant.name} was asked for, but {why}: serving fp32"
    return variant, f"{variant.name} as set" if variant != FP32 else "fp32 (the default)"


# --- running a variant ---------------------------------------------------------------------------------------------


def compile_graph(model: torch.nn.Module, sample: Mapping[str, torch.Tensor], output: str, variant: Variant):
    """``model(**inputs).<output>`` as `variant` runs it: an object with ``run(features) -> float32 tensor`` (a
    `Traced` or an `OrtGraph`), or None when `sample` lacks token ids and a mask. `model` itself is left as it is
    (int8 and bf16 work on a copy). Errors propagate: callers check the result against the eager model anyway."""
    if variant.runtime == "onnxruntime":
        return OrtGraph.export(model, sample, output, quantize=variant.precision == "int8")
    if variant.precision == "int8":
        model = quantize_linear_int8(copy.deepcopy(model))
    elif variant.precision == "bf16":
        model = copy.deepcopy(model).to(torch.bfloat16)
    traced = trace_frozen(model, sample, output)
    if traced is not None and variant.precision == "bf16":
        traced = Traced(_Float32(traced.graph), traced.input_names)
    if traced is not None:
        traced.precision = variant.precision
    return traced


class _Float32:
    """A bf16 graph whose output is handed on as float32 (what every caller expects)."""

    def __init__(self, graph) -> None:
        self.graph = graph

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.graph(*inputs).float()


def quantize_linear_int8(model: torch.nn.Module) -> torch.nn.Module:
    """int8 dynamic quantization of `model`'s linear layers, in place (GPT-2's `Conv1D` become linear layers first),
    one scale per output channel: all-MiniLM-L6-v2's sentence vectors keep a cosine of 0.92-0.98 to fp32's that way,
    0.81-0.96 with one scale per layer."""
    return quantize_int8(model, per_channel=True)


def _conv1d_to_linear(model: torch.nn.Module) -> torch.nn.Module:
    """Replace GPT-2's `Conv1D` layers (a transposed linear) with `nn.Linear`, so dynamic quantization sees them."""
    from transformers.pytorch_utils import Conv1D

    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, Conv1D):
                n_in, n_out = child.weight.shape
                linear = torch.nn.Linear(n_in, n_out, bias=child.bias is not None)
                with torch.no_grad():
                    linear.weight.copy_(child.weight.t())
                    if child.bias is not None:
                        linear.bias.copy_(child.bias)
                setattr(module, child_name, linear)
    return model


def quantize_int8(model: torch.nn.Module, per_channel: bool = False) -> torch.nn.Module:
    """int8 dynamic quantization of every linear layer (GPT-2's `Conv1D` included) for CPU inference; one weight scale
    per output channel with `per_channel` (closer to fp32), else one per layer."""
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig

    model = _conv1d_to_linear(model.eval())
    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization announces its move to torchao on every call
        return torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear: qconfig}, dtype=torch.qint8)


class OrtGraph:
    """An ONNX Runtime session over an exported model: token ids and masks in, one float32 tensor out.

    One session per intra-op thread count asked for (PyTorch's count in the calling thread, which the app's batchers
    set per backend), so a batcher given one core runs ONNX Runtime on one core too; spinning threads are off, so an
    idle session leaves the cores to the other backend.
    """

    def __init__(self, model_bytes: bytes, input_names: tuple[str, ...]) -> None:
        self.model_bytes, self.input_names = model_bytes, input_names
        self.batches = False
        self._sessions: dict[int, Any] = {}
        self._lock = threading.Lock()

    @classmethod
    def export(cls, model: torch.nn.Module, sample: Mapping[str, torch.Tensor], output: str, quantize: bool = False):
        """`model` exported with dynamic batch and sequence sizes (and int8-quantized by ONNX Runtime if asked)."""
        from core.tracing import positional

        if (wrapped := positional(model, sample, output)) is None:
            return None
        module, names = wrapped

        batch, tokens = torch.export.Dim("batch", max=4096), torch.export.Dim("tokens", max=8192)
        with (
            tempfile.TemporaryDirectory(prefix="ftrag-onnx-") as folder,
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),  # the exporter prints each of its steps
        ):
            warnings.simplefilter("ignore")
            path = Path(folder) / "model.onnx"
            program = torch.onnx.export(
                module.eval(),
                tuple(sample[k] for k in names),
                input_names=list(names),
                output_names=[output],
                dynamic_shapes=(tuple({0: batch, 1: tokens} for _ in names),),  # one spec per input
                dynamo=True,
                verbose=False,
            )
            program.save(str(path))
            if quantize:
                import onnx
                from onnxruntime.quantization import QuantType, quantize_dynamic

                # The exporter's recorded intermediate shapes can contradict ONNX's own inference (a classifier's
                # head: 384 vs 3), which the quantizer re-runs: drop them and let it infer its own.
                proto = onnx.load(str(path))
                proto.graph.ClearField("value_info")
                onnx.save(proto, str(path))
                quantized = Path(folder) / "model.int8.onnx"
                # Without VNNI, u8 x s8 products can saturate in ONNX Runtime's AVX2 kernels: 7-bit weights avoid it.
                quantize_dynamic(
                    path,
                    quantized,
                    weight_type=QuantType.QInt8,
                    per_channel=True,
                    reduce_range=not Hardware.detect().vnni,
                )
                path = quantized
            return cls(path.read_bytes(), names)

    def session(self):
        """The session for the calling thread's PyTorch thread count (made on first use)."""
        threads = torch.get_num_threads()
        session = self._sessions.get(threads)
        if session is None:
            import onnxruntime as ort

            with self._lock:
                session = self._sessions.get(threads)
                if session is None:
                    options = ort.SessionOptions()
                    options.intra_op_num_threads = threads
                    options.inter_op_num_threads = 1
                    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                    options.log_severity_level = 3
                    session = ort.InferenceSession(self.model_bytes, options, providers=["CPUExecutionProvider"])
                    self._sessions[threads] = session
        return session

    def run(self, features: Mapping[str, Any]) -> torch.Tensor:
        """The model on the inputs it takes from `features` (a tokenizer's output)."""
        inputs = {k: np.asarray(features[k], dtype=np.int64) for k in self.input_names}
        return torch.from_numpy(self.session().run(None, inputs)[0])

    def weight_bytes(self) -> int:
        return len(self.model_bytes)


def graph_bytes(graph: Any, weights: int) -> int:
    """Memory a compiled graph holds beside the model's `weights` (bytes in fp32): an ONNX model's bytes, or a frozen
    trace's copy of the weights (int8 ones at about a quarter of that, bf16 at half)."""
    if isinstance(graph, OrtGraph):
        return graph.weight_bytes()
    return int(weights * {"int8": 0.25, "bf16": 0.5}.get(getattr(graph, "precision", "fp32"), 1.0))


# --- auto: measure every candidate, serve the fastest that answers like fp32 --------------------------------------


def variant_holder(clf: Any) -> Any:
    """What switches `clf`'s transformer between variants (`serve_as`): the backend itself (a fine-tune), its
    embedder (retrieval), or None (a hybrid, an LLM prompt: nothing of its own)."""
    holder = clf if hasattr(clf, "serve_as") else getattr(clf, "embedder", None)
    return holder if hasattr(holder, "serve_as") else None


def served(clf: Any) -> dict[str, Any] | None:
    """How a backend is served: ``{precision, runtime, why}`` (a retrieval backend's is its embedder's; a hybrid's
    names its parts'), or None for a backend that runs no transformer of its own (an LLM prompt)."""
    if clf is None:
        return None
    serving = getattr(clf, "serving", None)
    if isinstance(serving, dict):
        return serving
    embedder = getattr(clf, "embedder", None)
    if embedder is not None and isinstance(getattr(embedder, "serving", None), dict):
        return embedder.serving
    parts = [served(getattr(clf, part, None)) for part in ("primary", "secondary")]
    if all(parts):
        names = [p["precision"] if p["runtime"] == "torch" else f"{p['runtime']} {p['precision']}" for p in parts]
        return {
            "precision": "+".join(dict.fromkeys(p["precision"] for p in parts)),
            "runtime": "+".join(dict.fromkeys(p["runtime"] for p in parts)),
            "why": f"follows its parts: {names[0]} and {names[1]}",
        }
    return None


def served_name(serving: dict[str, Any] | None) -> str:
    """The short name a table shows: ``int8``, ``onnxruntime fp32``, ``fp32+int8``; "n/a" when unknown.

    >>> served_name({"precision": "int8", "runtime": "torch"}), served_name(None)
    ('int8', 'n/a')
    """
    if not serving:
        return "n/a"
    runtime = serving.get("runtime", "torch")
    return serving["precision"] if runtime == "torch" else f"{runtime} {serving['precision']}"
