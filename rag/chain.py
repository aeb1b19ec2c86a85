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
from pydantic import ConfigDict

from core.types import Prediction
from rag.classifier import RagClassifier

logger = logging.getLogger(__name__)

LLM_ENV_VAR = "FTRAG_LLM"
FEW_SHOT = 8
"""Retrieved examples put in the prompt."""

SYSTEM_PROMPT = (
    "You classify tweets by their label. Answer with exactly one of these labels: {labels}. "
    "The labeled tweets below are the ones most similar to the tweet to classify; use them as guidance."
)
HUMAN_PROMPT = "Labeled examples:\n{examples}\n\nTweet: {query}\nLabel:"


class LlmUnavailable(RuntimeError):
    """No LLM is configured, or the configured one cannot be created here."""


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

    The label is the LLM's (scores: all mass on it); when the answer is unusable, the kNN vote's prediction.
    The evidence is always the retrieved examples.
    """

    def __init__(self, rag: RagClassifier, llm: Any, k: int = FEW_SHOT, name: str = "rag+llm") -> None:
        self.rag = rag
        self.llm = llm
        self.name = name
        self.labels = list(rag.labels)
        self.retriever = IndexRetriever(classifier=rag, k=k)
        self.prompt = build_prompt()
        self.parser = LabelParser(labels=self.labels)
        self.chain = self.prompt | llm | StrOutputParser()

    def prompt_messages(self, query: str) -> list:
        """The messages the LLM receives for `query` (for inspection and tests)."""
        documents = self.retriever.invoke(query)
        return self.prompt.format_messages(**self._inputs(query, documents))

    def _inputs(self, query: str, documents: Sequence[Document]) -> dict[str, str]:
        return {
            "labels": ", ".join(self.labels),
            "examples": format_examples(documents),
            "query": " ".join(query.split()),
        }

    def answer(self, texts: Sequence[str]) -> list[ChainAnswer]:
        """Classify each text through the LLM, falling back to the kNN vote (and saying so) when unusable."""
        fallback = self.rag.predict(texts)
        answers = []
        for text, vote in zip(texts, fallback, strict=True):
            if not text.strip():
                answers.append(ChainAnswer(vote, "knn-fallback", ""))
                continue
            documents = self.retriever.invoke(text)
            try:
                raw = self.chain.invoke(self._inputs(text, documents))
            except Exception as err:  # a network error or a refusal must not take the service down
                logger.warning("LLM call failed (%s); answering with the kNN vote", type(err).__name__)
                answers.append(ChainAnswer(vote, "knn-fallback", ""))
                continue
            label = self.parser.parse(raw)
            if label is None:
                logger.warning("LLM answer %r is not one of %s; answering with the kNN vote", raw[:80], self.labels)
                answers.append(ChainAnswer(vote, "knn-fallback", raw))
                continue
            scores = {name: float(name == label) for name in self.labels}
            answers.append(ChainAnswer(Prediction(label, scores, vote.evidence), "llm", raw))
        return answers

    def predict(self, texts: Sequence[str]) -> list[Prediction]:
        return [a.prediction for a in self.answer(list(texts))]


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
