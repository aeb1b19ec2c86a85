"""Retrieval-augmented LLM labelling with LangChain: the nearest labeled tweets go into a few-shot prompt.

The LLM is whatever the user configures; without one this mode is unavailable (`LlmUnavailable`, with the variable to
set). When the LLM's answer is not one of the labels, or the call fails, the kNN vote answers instead and the
result says so (``source == "knn-fallback"``).

Configure with ``FTRAG_LLM``:

- ``openai:<model>``: an OpenAI-compatible endpoint (``OPENAI_API_KEY``, optional ``OPENAI_BASE_URL``); needs the
  ``langchain-openai`` package.
- ``ollama:<model>``: a local Ollama server (``OLLAMA_BASE_URL``, default http://localhost:11434); needs
  ``langchain-ollama``.
- ``hf:<local dir>``: a local transformers text-generation model, run on this machine.

API keys are read by the client libraries from the environment; this module never logs or returns them.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.output_parsers import BaseOutputParser, StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from pydantic import ConfigDict

from core.types import Prediction
from rag.classifier import EVIDENCE_SIZE, RagClassifier
from rag.errors import LlmUnavailable

logger = logging.getLogger(__name__)

LLM_ENV_VAR = "FTRAG_LLM"
FEW_SHOT = 8
"""Retrieved examples put in the prompt."""

SYSTEM_PROMPT = (
    "You classify tweets by their label. Answer with exactly one of these labels: {labels}. "
    "The labeled tweets below are the ones most similar to the tweet to classify; use them as guidance."
)
HUMAN_PROMPT = "Labeled examples:\n{examples}\n\nTweet: {query}\nLabel:"


class IndexRetriever(BaseRetriever):
    """A LangChain retriever over our own index: no second copy of the data, and nothing unpickled."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    classifier: RagClassifier
    k: int = FEW_SHOT

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        return [
            Document(page_content=hit["text"], metadata={"label": hit["label"], "score": hit["score"]})
            for hit in self.classifier.retrieve(query, self.k)
        ]


class LabelParser(BaseOutputParser[str | None]):
    """Map a free-text answer to one label: the only label word it contains, else None (unusable)."""

    labels: list[str]

    def parse(self, text: str) -> str | None:
        found = {label for label in self.labels if re.search(rf"\b{re.escape(label)}\b", text, flags=re.IGNORECASE)}
        return found.pop() if len(found) == 1 else None


def build_prompt() -> ChatPromptTemplate:
    """The few-shot prompt: labeled neighbours first, then the query."""
    return ChatPromptTemplate.from_messages([("system", SYSTEM_PROMPT), ("human", HUMAN_PROMPT)])


def format_examples(documents: Sequence[Document]) -> str:
    """One line per retrieved example: ``- [label] text`` (line breaks inside a tweet collapsed)."""
    return "\n".join(f"- [{d.metadata['label']}] {' '.join(d.page_content.split())}" for d in documents)


@dataclass(frozen=True)
class ChainAnswer:
    """One answer of the chain and where it came from: ``llm`` or ``knn-fallback`` (with the raw LLM text)."""

    prediction: Prediction
    source: str
    raw: str


class LlmRagClassifier:
    """Retrieval-augmented LLM classifier implementing `core.types.Classifier`.

    One LCEL chain per text: retrieve (the kNN vote over our index, which embeds the text once and carries the
    nearest labeled examples) -> format -> prompt -> model -> label parser. The label is the LLM's (scores: all mass
    on it); when the model fails or answers no single label, the kNN vote's prediction, marked ``knn-fallback``.
    The evidence is always the retrieved examples. `fallbacks` / `answered` count what happened.
    """

    def __init__(self, rag: RagClassifier, llm: Any, k: int = FEW_SHOT, name: str = "rag-llm", spec: str = "") -> None:
        self.rag = rag
        self.llm = llm
        self.name = name
        self.labels = list(rag.labels)
        self.k = min(k, EVIDENCE_SIZE)
        self.prompt = build_prompt()
        self.parser = LabelParser(labels=self.labels)
        self.model = llm | StrOutputParser()
        self.chain = (
            RunnableLambda(self._retrieve)
            | RunnablePassthrough.assign(raw=RunnableLambda(self._inputs) | self.prompt | RunnableLambda(self._ask))
            | RunnableLambda(self._label)
        )
        self.meta = {"llm": spec or type(llm).__name__, "backend": "rag-llm", **{
            k: v for k, v in rag.meta.items() if k in ("train_size", "data_source", "build_seconds")}}  # fmt: skip
        self.answered = 0
        self.fallbacks = 0

    def describe(self) -> str:
        return f"{self.meta['llm']} prompted with the {self.k} nearest labeled examples of: {self.rag.describe()}"

    def prompt_messages(self, query: str) -> list:
        """The messages the LLM receives for `query` (for inspection and tests)."""
        return self.prompt.format_messages(**self._inputs(self._retrieve(query)))

    def _retrieve(self, text: str) -> dict[str, Any]:
        [vote] = self.rag.predict([text])  # embeds the text once; its evidence is the few-shot examples
        return {"query": text, "vote": vote}

    def _inputs(self, state: dict[str, Any]) -> dict[str, str]:
        examples = state["vote"].evidence[: self.k]
        return {
            "labels": ", ".join(self.labels),
            "examples": format_examples([Document(e["text"], metadata={"label": e["label"]}) for e in examples]),
            "query": " ".join(state["query"].split()),
        }

    def _ask(self, prompt_value: Any) -> str | None:
        try:
            return self.model.invoke(prompt_value)
        except Exception as err:  # the model is a remote, untrusted service: its failure becomes a fallback
            logger.warning("LLM call failed (%s); answering with the kNN vote", type(err).__name__)
            return None

    def _label(self, state: dict[str, Any]) -> ChainAnswer:
        vote, raw = state["vote"], state["raw"]
        label = self.parser.parse(raw) if raw is not None else None
        if label is None:
            if raw is not None:
                logger.warning("LLM answer %r is not one of %s; answering with the kNN vote", raw[:80], self.labels)
            return ChainAnswer(vote, "knn-fallback", raw or "")
        scores = {name: float(name == label) for name in self.labels}
        return ChainAnswer(Prediction(label, scores, vote.evidence), "llm", raw)

    def answer(self, texts: Sequence[str]) -> list[ChainAnswer]:
        """Classify each text through the chain (blank texts: the vote's prior, without asking the LLM)."""
        answers = []
        for text in texts:
            if not text.strip():
                answers.append(ChainAnswer(self.rag.predict([text])[0], "knn-fallback", ""))
            else:
                answers.append(self.chain.invoke(text))
        self.answered += len(answers)
        self.fallbacks += sum(a.source == "knn-fallback" for a in answers)
        return answers

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [a.prediction for a in self.answer(list(texts))]


def llm_classifier(rag: RagClassifier, spec: str | None = None) -> LlmRagClassifier:
    """The contender ``rag-llm``: `rag`'s neighbours prompting the LLM of `spec` (default ``FTRAG_LLM``)."""
    spec = (spec or os.environ.get(LLM_ENV_VAR, "")).strip()
    return LlmRagClassifier(rag, llm_from_env(spec), spec=spec)


def llm_from_env(spec: str | None = None) -> Any:
    """Create the LangChain model named by `spec` or ``FTRAG_LLM``; `LlmUnavailable` says what to set when none is."""
    spec = (spec or os.environ.get(LLM_ENV_VAR, "")).strip()
    if not spec:
        raise LlmUnavailable(
            f"The LLM mode is unavailable: no LLM is configured. Set {LLM_ENV_VAR} to openai:<model> "
            "(OpenAI-compatible endpoint; OPENAI_API_KEY, OPENAI_BASE_URL), ollama:<model> or hf:<local model dir>."
        )
    provider, _, model = spec.partition(":")
    if not model:
        raise LlmUnavailable(f"{LLM_ENV_VAR}={spec!r}: expected <provider>:<model>, e.g. ollama:llama3.2")
    if provider == "openai":
        try:
            from langchain_openai import ChatOpenAI
        except ImportError as err:
            raise LlmUnavailable(
                "openai LLMs need the langchain-openai package: pip install langchain-openai"
            ) from err
        return ChatOpenAI(model=model, temperature=0, base_url=os.environ.get("OPENAI_BASE_URL") or None)
    if provider == "ollama":
        try:
            from langchain_ollama import ChatOllama
        except ImportError as err:
            raise LlmUnavailable(
                "ollama LLMs need the langchain-ollama package: pip install langchain-ollama"
            ) from err
        return ChatOllama(model=model, temperature=0, base_url=os.environ.get("OLLAMA_BASE_URL"))
    if provider == "hf":
        if not os.path.isdir(model):
            raise LlmUnavailable(f"{LLM_ENV_VAR}={spec!r}: {model} is not a local model directory")
        from langchain_huggingface import HuggingFacePipeline

        return HuggingFacePipeline.from_model_id(
            model_id=model,
            task="text-generation",
            pipeline_kwargs={"max_new_tokens": 5, "do_sample": False, "return_full_text": False},
        )
    raise LlmUnavailable(f"{LLM_ENV_VAR}={spec!r}: unknown provider {provider!r}; use openai, ollama or hf")
