"""Frozen TorchScript traces of Hugging Face models for inference: the same answers with less Python per call.

Both backends run their transformer this way once the trace matched the eager model (see `rag.embed` and
`finetune.model`): tracing records the ops of one call, freezing inlines the weights as constants (a second copy of
them), and `optimize_for_inference` fuses what it can. A trace is only ever a faster way to get the eager answer;
callers check it against the eager model before use and fall back to it on any failure.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
"""The inputs a trace takes, in this order, as far as the tokenizer gives them."""


class Traced:
    """A frozen graph: token ids and masks in (`input_names`, positionally), one tensor out."""

    def __init__(self, graph, input_names: tuple[str, ...]) -> None:
        self.graph, self.input_names = graph, input_names
        self.batches = False
        """Whether it matched the eager model on a padded batch too (else it serves single texts only)."""

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        return self.graph(*inputs)

    def run(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The graph on the inputs it takes from `features` (a tokenizer's output)."""
        return self(*(features[k] for k in self.input_names))


def positional(
    model: torch.nn.Module, sample: Mapping[str, torch.Tensor], output: str
) -> tuple[torch.nn.Module, tuple[str, ...]] | None:
    """``(module, names)``: `model` called with the inputs of `sample` it takes, positionally in the order of `names`,
    returning ``.<output>`` (what a tracer or an exporter needs); None when `sample` does not hold token ids and an
    attention mask."""
    names = tuple(k for k in INPUT_NAMES if k in sample)
    if names[:2] != ("input_ids", "attention_mask"):
        return None

    class Wrapped(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
            return getattr(self.model(**dict(zip(names, inputs, strict=True))), output)

    return Wrapped(), names


def trace_frozen(model: torch.nn.Module, sample: Mapping[str, torch.Tensor], output: str) -> Traced | None:
    """``model(**inputs).<output>`` traced on `sample` and frozen; None when `sample` does not hold token ids and an
    attention mask. Tracing errors propagate: the caller falls back to the eager model."""
    if (wrapped := positional(model, sample, output)) is None:
        return None
    module, names = wrapped
    with warnings.catch_warnings(), torch.inference_mode():
        warnings.simplefilter("ignore")
        graph = torch.jit.trace(module.eval(), tuple(sample[k] for k in names), check_trace=False)
        graph = torch.jit.optimize_for_inference(torch.jit.freeze(graph.eval()))
    return Traced(graph, names)
