"""Hybrid backend: a fine-tuned model and the retrieval vote combined through the `Classifier` contract (a gate on
the fine-tune's confidence, or a mix of both scores), fitted on the fine-tune's own validation rows."""

from __future__ import annotations

from hybrid.classifier import HybridClassifier, combine, default_hybrid, fit_hybrid, hybrid_validation

__all__ = ["HybridClassifier", "combine", "default_hybrid", "fit_hybrid", "hybrid_validation"]
