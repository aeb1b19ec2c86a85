"""Errors of the retrieval backend that callers catch without importing what raises them (the LLM mode's LangChain
stack is imported only when an LLM is used)."""

from __future__ import annotations


class LlmUnavailable(RuntimeError):
    """No LLM is configured, or the configured one cannot be created here."""
