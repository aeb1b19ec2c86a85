"""Compare the backends on the same labeled texts: ``python -m compare.run --finetune DIR --rag DIR --out DIR``.

``--rag-llm`` adds the LangChain few-shot prompt over the --rag index to the LLM named by ``FTRAG_LLM`` (the report
names the LLM and counts the answers that fell back to the kNN vote).
``--rag-tuned DIR`` adds retrieval over a fine-tuned embedder (an index built by ``python -m rag.build --embedder
M`` over a model written by ``python -m rag.tune_embedder``) as the contender ``rag-tuned``.
Writes report.json, report.md and PNG plots (confusion matrices, latency, reliability) to --out. With both
backends, a hybrid of the two is fitted on the fine-tune's own evaluation slice (carved from train, scored
leave-one-out by retrieval) and measured like the others, and the cost of absorbing new labeled examples is
measured on a copy of the index.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

from compare.hybrid import default_hybrid
from compare.report import write_report
from compare.runner import DEFAULT_HOURLY_PRICE_USD, check_backends, evaluate
from compare.update import knowledge_update
from core.cli import add_labels_argument, setup_logging
from core.data import DataError, label_names, load_tweets, stratified_indices
from core.files import ArtifactError, read_json
from core.settings import SourceError, resolve
from core.types import check_same_labels
from rag.chain import LlmUnavailable

logger = logging.getLogger(__name__)

TUNING_KEYS = ("data_source", "base_embedder", "train_size", "loss", "steps", "seconds")
"""What the report keeps of a tuned embedder's run.json."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--finetune",
        metavar="DIR",
        action="append",
        help="a model saved by python -m finetune.train; repeat to compare several (the first one forms the hybrid)",
    )
    parser.add_argument("--rag", metavar="DIR", help="an index saved by python -m rag.build")
    parser.add_argument(
        "--rag-tuned",
        metavar="DIR",
        help="an index built over an embedder tuned by python -m rag.tune_embedder (the contender rag-tuned)",
    )
    parser.add_argument(
        "--rag-llm",
        action="store_true",
        help="add the contender rag-llm: the nearest labeled examples of --rag in a few-shot prompt to the LLM named "
        "by FTRAG_LLM (openai:<model>, ollama:<model> or hf:<local dir>)",
    )
    parser.add_argument("--quantize", action="store_true", help="serve the fine-tuned model with int8 weights")
    parser.add_argument("--hybrid", action=argparse.BooleanOptionalAction, default=True, help="add the hybrid")
    parser.add_argument("--data", default=None, help="labeled data source (default: FTRAG_DATA or the Hub dataset)")
    parser.add_argument("--split", default="test", help="the split to evaluate on")
    add_labels_argument(parser)
    parser.add_argument("--limit", type=int, default=None, help="a seeded stratified sample of this many texts")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--latency-queries", type=int, default=100, help="single queries timed per backend")
    parser.add_argument("--hourly-price", type=float, default=DEFAULT_HOURLY_PRICE_USD, help="USD per machine-hour")
    parser.add_argument(
        "--update-examples", type=int, default=500, help="new examples for the knowledge-update figure; 0 = skip"
    )
    parser.add_argument("--out", default="artifacts/report", help="where the report goes")
    args = parser.parse_args(argv)
    if not args.finetune and not args.rag and not args.rag_tuned:
        parser.error("give at least one backend: --finetune DIR, --rag DIR and/or --rag-tuned DIR")
    if args.rag_llm and not args.rag:
        parser.error("--rag-llm prompts with the neighbours of --rag: give --rag DIR too")
    if args.limit is not None and args.limit < 1:
        parser.error(f"--limit must be a positive integer, got {args.limit}")
    if args.latency_queries < 1:
        parser.error(f"--latency-queries must be at least 1, got {args.latency_queries}")
    if not args.hourly_price > 0:
        parser.error(f"--hourly-price must be positive, got {args.hourly_price}")
    if args.update_examples < 0:
        parser.error(f"--update-examples must not be negative, got {args.update_examples}")
    return args


def check_data_labels(classifiers: dict[str, Any], data_labels: list[str], source: str) -> None:
    """A ValueError when a backend's label set is not the data's: a model is never scored against other labels."""
    for name, clf in classifiers.items():
        try:
            check_same_labels(name, clf.labels, f"the data ({source})", data_labels)
        except ValueError as err:
            raise ValueError(f"{err} (name the data's ids with --labels if they are the same labels)") from err


def load_tuned(directory: str) -> Any:
    """The index over a tuned embedder, named ``rag-tuned``; its one-off cost counts the embedder's tuning too.

    The tuning's run.json (what the embedder was trained on, steps, seconds) goes to ``meta["embedder_tuning"]``;
    an index whose embedder has none is refused, since it would not be what the name says.
    """
    import rag
    from rag.tune_embedder import RUN_FILE

    clf = rag.load(directory)
    path = Path(clf.embedder.name) / RUN_FILE
    tuning = read_json(path, "tuned embedder run.json") if path.is_file() else None
    if not isinstance(tuning, dict) or tuning.get("backend") != "tuned-embedder":
        raise ValueError(
            f"{directory}: its embedder {clf.embedder.name} was not written by python -m rag.tune_embedder "
            "(no run.json beside it); give it as --rag instead"
        )
    clf.name = "rag-tuned"
    clf.meta["embedder_tuning"] = {k: tuning.get(k) for k in TUNING_KEYS}
    clf.meta["build_seconds"] = round(clf.meta.get("build_seconds", 0.0) + (tuning.get("seconds") or 0.0), 2)
    return clf


def run(args: argparse.Namespace) -> dict[str, Any]:
    import finetune
    import rag

    classifiers: dict[str, Any] = {}
    for i, directory in enumerate(args.finetune or []):
        dirname = Path(directory).resolve().name
        name = "finetune" if i == 0 else (dirname if dirname.startswith("finetune") else f"finetune-{dirname}")
        if name in classifiers:
            raise ValueError(f"two fine-tuned models would both be named {name!r}; rename a directory")
        classifiers[name] = finetune.load(directory, quantize=args.quantize, name=name)
    if args.rag:
        classifiers["rag"] = rag.load(args.rag)
    if args.rag_tuned:
        classifiers["rag-tuned"] = load_tuned(args.rag_tuned)
    if args.rag_llm:
        classifiers["rag-llm"] = rag.llm_classifier(classifiers["rag"])
    check_backends(classifiers)  # artifacts of two label sets are refused before any data is read
    try:
        source = resolve("data", args.data).describe()
    except SourceError as err:
        raise DataError(str(err)) from err
    dataset = load_tweets(args.data, split=args.split, limit=args.limit, seed=args.seed, labels=args.labels)
    check_data_labels(classifiers, label_names(dataset), source)
    notes = []
    if args.hybrid and "finetune" in classifiers and "rag" in classifiers:
        hybrid = default_hybrid(classifiers["finetune"], classifiers["rag"], args.data)
        if hybrid is None:
            notes.append("no hybrid: the fine-tune's evaluation slice cannot be recomputed from its run.json")
        else:
            classifiers["hybrid"] = hybrid
    report = evaluate(
        classifiers,
        dataset,
        data_source=source,
        split=args.split,
        latency_queries=args.latency_queries,
        hourly_price=args.hourly_price,
    )
    if "rag-tuned" in classifiers:
        report["backends"]["rag-tuned"]["embedder_tuning"] = classifiers["rag-tuned"].meta["embedder_tuning"]
    if "rag-llm" in classifiers:  # which LLM, and how often its answer was unusable (the vote answered instead)
        llm = classifiers["rag-llm"]
        report["backends"]["rag-llm"]["llm"] = {"model": llm.meta["llm"], "answers": llm.answered,
                                                "knn_fallbacks": llm.fallbacks}  # fmt: skip
    if "hybrid" in classifiers:
        report["backends"]["hybrid"]["fit"] = {
            k: v for k, v in classifiers["hybrid"].meta["fit"].items() if k != "grid"
        }
    retrieval = next((classifiers[name] for name in ("rag", "rag-tuned") if name in classifiers), None)
    if args.update_examples and retrieval is not None:
        n = min(args.update_examples, dataset.num_rows // 2)
        new = stratified_indices(list(dataset["label"]), n, seed=args.seed)
        taken = set(new)
        heldout = [i for i in range(dataset.num_rows) if i not in taken]
        report["knowledge_update"] = knowledge_update(
            retrieval,
            classifiers["finetune"].meta if "finetune" in classifiers else None,
            [dataset["text"][i] for i in new],
            [dataset["label"][i] for i in new],
            [dataset["text"][i] for i in heldout],
            [dataset["label"][i] for i in heldout],
        )
        report["knowledge_update"]["source"] = f"{n} texts of the evaluated split as new examples, the rest held out"
    report["notes"] = notes
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        report = run(args)
        write_report(report, args.out)
    except (ValueError, ArtifactError, LlmUnavailable) as err:  # DataError, SourceError, bad backends, no LLM
        print(f"error: {err}", file=sys.stderr)
        return 2
    summary = {
        name: {k: b.get(k) for k in ("accuracy", "macro_f1", "latency_ms", "samples_per_second")}
        for name, b in report["backends"].items()
    }
    for name in summary:
        summary[name]["latency_ms"] = {k: v for k, v in (summary[name]["latency_ms"] or {}).items() if k != "mean"}
    print(json.dumps({"out": str(args.out), "n": report["dataset"]["n"], "backends": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
