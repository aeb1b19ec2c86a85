"""Build the retrieval index from labeled data: ``python -m rag.build --data SRC --train-size N --out DIR``.

Every field of `RagConfig` is a flag (``--k``, ``--weighting``, ``--index-type``, ``--no-tune``...).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from core.cli import run_job
from core.files import refuse_to_replace
from rag.classifier import RagClassifier
from rag.config import RagConfig


def build_index(cfg: RagConfig, overwrite: bool = False) -> RagClassifier:
    """Build the index described by `cfg` and save it to ``cfg.out`` (refusing to replace one unless `overwrite`)."""
    out = Path(cfg.out)
    refuse_to_replace(out, "an index", overwrite)
    classifier = RagClassifier.build(cfg)
    classifier.save(out)
    classifier.directory = out
    return classifier


def main(argv: list[str] | None = None) -> int:
    status, cfg, classifier = run_job(
        RagConfig, argv, __doc__.splitlines()[0], build_index, overwrite_help="replace an existing index in --out"
    )
    if status:
        return status
    meta = classifier.meta
    chosen = (meta.get("tuning") or {}).get("chosen") or {}
    summary = {
        "out": str(cfg.out),
        "size": classifier.size,
        "embedder": classifier.embedder.name,
        "data_source": meta["data_source"],
        "k": classifier.k,
        "weighting": classifier.weighting,
        "temperature": classifier.temperature,
        "validation_accuracy": chosen.get("accuracy"),
        "build_seconds": meta["build_seconds"],
    }
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
