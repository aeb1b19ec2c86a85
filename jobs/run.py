"""Compare the backends on the same labeled texts: ``python -m jobs.run --finetune DIR --rag DIR --out DIR``.

``--rag-llm`` adds the LangChain few-shot prompt over the --rag index to the LLM named by ``FTRAG_LLM`` (the report
names the LLM and counts the answers that fell back to the kNN vote).
``--rag-tuned DIR`` adds retrieval over a fine-tuned embedder (an index built by ``python -m rag.build --embedder
M`` over a model written by ``python -m rag.tune_embedder``) as the contender ``rag-tuned``.
Writes report.json, report.md and PNG plots (confusion matrices, latency, reliability) to --out. With both
backends, a hybrid of the two is fitted on the fine-tune's own validation rows (its split.json, scored
leave-one-out by retrieval) and measured like the others, and the cost of absorbing new labeled examples is
measured on a copy of the index.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compare.evaluation import DEFAULT_HOURLY_PRICE_USD, check_backends, evaluate
from compare.report import write_report
from compare.update import knowledge_update
from core.cli import parse_config, setup_logging
from core.config import JobConfig
from core.data import DataError, label_names, load_tweets, stratified_indices
from core.files import ArtifactError, check_writable
from core.settings import SourceError, resolve
from core.types import check_same_labels
from hybrid import default_hybrid
from rag.errors import LlmUnavailable

logger = logging.getLogger(__name__)


@dataclass
class RunConfig(JobConfig):
    """What ``python -m jobs.run`` compares, on which texts, and how it prices them.

    Args:
        finetune: a model saved by ``python -m finetune.train``; repeat the flag to compare several (the first one
            forms the hybrid).
        rag: an index saved by ``python -m rag.build``.
        rag_tuned: an index built over an embedder tuned by ``python -m rag.tune_embedder`` (the contender
            ``rag-tuned``).
        rag_llm: add the contender ``rag-llm``: the nearest labeled examples of --rag in a few-shot prompt to the
            LLM named by ``FTRAG_LLM`` (``openai:<model>``, ``ollama:<model>`` or ``hf:<local dir>``).
        quantize: serve the fine-tuned models with int8 weights.
        precision: what every transformer (the fine-tunes, the retrieval embedders) runs in while measured: fp32,
            bf16 or int8; None = ``FTRAG_PRECISION`` (fp32 when unset), as the app serves them. ``auto`` is chosen
            where the app starts (its Models tab names the winner): give that one here. The report's "served as"
            column says what each row ran in (bf16 on a CPU without its instructions falls back to fp32, saying so).
            Several, comma-separated (``fp32,int8``), measure each backend in each side by side: the first keeps the
            backend's name, the others are contenders named ``<backend>@<precision>``, each with the share of texts
            it labels as the first does (the report's "same label as" column).
        runtime: torch or onnxruntime; None = ``FTRAG_RUNTIME`` (torch when unset).
        hybrid: add the hybrid of the first fine-tune and --rag.
        data: labeled data source; None = ``FTRAG_DATA`` or the default Hub dataset.
        split: the split to evaluate on.
        labels: label names in the order of the data's integer ids (``--labels a,b,c``); None = the data's own.
        limit: a seeded stratified sample of this many texts; None = all of them.
        seed: seed of that sample, the bootstrap intervals and the knowledge-update split.
        latency_queries: single queries timed per backend.
        hourly_price: USD per machine-hour, for the cost columns.
        update_examples: new examples for the knowledge-update figure; 0 = skip it.
        out: where report.json, report.md and the plots go.
    """

    finetune: tuple[str, ...] | None = field(default=None, metadata={"repeat": True, "metavar": "DIR"})
    rag: str | None = None
    rag_tuned: str | None = None
    rag_llm: bool = False
    quantize: bool = False
    precision: str | None = None
    runtime: str | None = None
    hybrid: bool = True
    split: str = "test"
    limit: int | None = None
    latency_queries: int = 100
    hourly_price: float = DEFAULT_HOURLY_PRICE_USD
    update_examples: int = 500
    out: str = "artifacts/report"

    def __post_init__(self) -> None:
        super().__post_init__()  # data, labels, seed, out (core.config)
        self.finetune = tuple(self.finetune) if self.finetune else None
        if not self.finetune and not self.rag and not self.rag_tuned:
            raise ValueError("give at least one backend: --finetune DIR, --rag DIR and/or --rag-tuned DIR")
        if self.rag_llm and not self.rag:
            raise ValueError("--rag-llm prompts with the neighbours of --rag: give --rag DIR too")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be a positive integer, got {self.limit}")
        if self.latency_queries < 1:
            raise ValueError(f"--latency-queries must be at least 1, got {self.latency_queries}")
        if not self.hourly_price > 0:
            raise ValueError(f"--hourly-price must be positive, got {self.hourly_price}")
        if self.update_examples < 0:
            raise ValueError(f"--update-examples must not be negative, got {self.update_examples}")
        from core.precision import requested

        asked = [requested(p, self.runtime)[0] for p in self.precisions]  # also a ValueError naming a bad value
        if "auto" in asked:
            raise ValueError(
                "--precision auto is chosen where the app serves (its Models tab names the winner): give fp32, bf16 "
                "or int8 here to measure one"
            )
        if len(set(asked)) < len(asked):
            raise ValueError(f"--precision names a precision twice: {self.precision!r}")

    @property
    def precisions(self) -> list[str | None]:
        """The precisions to measure, the first one's rows named as the backends (None: the environment's)."""
        if not self.precision:
            return [None]
        return [p.strip().lower() for p in self.precision.split(",")]


def parse_args(argv: list[str] | None) -> RunConfig:
    """`RunConfig` from the flags; a bad value exits with status 2 and one line naming it."""
    return parse_config(RunConfig, argv, __doc__.splitlines()[0])[0]


def check_data_labels(classifiers: dict[str, Any], data_labels: list[str], source: str) -> None:
    """A ValueError when a backend's label set is not the data's: a model is never scored against other labels."""
    for name, clf in classifiers.items():
        try:
            check_same_labels(name, clf.labels, f"the data ({source})", data_labels)
        except ValueError as err:
            raise ValueError(f"{err} (name the data's ids with --labels if they are the same labels)") from err


def load_contenders(args: RunConfig) -> dict[str, Any]:
    """The backends the flags name, by report name: ``finetune`` (the first), ``finetune-<dir>`` (the others),
    ``rag``, ``rag-tuned``, ``rag-llm`` (an LLM over the ``rag`` index)."""
    import rag

    first, *others = args.precisions
    classifiers = _load_backends(args, first)
    for precision in others:  # each backend loaded again and served in this precision, beside the first
        classifiers |= _load_backends(args, precision, suffix=f"@{precision}")
    if args.rag_llm:
        classifiers["rag-llm"] = rag.llm_classifier(classifiers["rag"])
    return classifiers


def _load_backends(args: RunConfig, precision: str | None, suffix: str = "") -> dict[str, Any]:
    """The fine-tunes, ``rag`` and ``rag-tuned`` the flags name, served in `precision`, by report name with `suffix`
    added (``finetune@int8``)."""
    import finetune
    import rag

    classifiers: dict[str, Any] = {}
    for i, directory in enumerate(args.finetune or []):
        dirname = Path(directory).resolve().name
        name = "finetune" if i == 0 else (dirname if dirname.startswith("finetune") else f"finetune-{dirname}")
        name += suffix
        if name in classifiers:
            raise ValueError(f"two fine-tuned models would both be named {name!r}; rename a directory")
        classifiers[name] = finetune.load(directory, quantize=args.quantize, name=name)
    if args.rag:
        classifiers["rag" + suffix] = rag.load(args.rag)
    if args.rag_tuned:
        classifiers["rag-tuned" + suffix] = rag.load_tuned(args.rag_tuned)
    serve_as(classifiers, precision, args.runtime)
    return classifiers


def same_label_as_first(report: dict[str, Any]) -> None:
    """Each ``<backend>@<precision>`` entry gets the share of texts it labels as ``<backend>`` (the first precision)
    does: ``same_label_as: {backend, share}``."""
    for name, entry in report["backends"].items():
        base = name.split("@")[0]
        if base != name and base in report["backends"]:
            entry["same_label_as"] = {"backend": base, "share": report["agreement"][f"{base} vs {name}"]}


def serve_as(classifiers: dict[str, Any], precision: str | None, runtime: str | None) -> None:
    """Run every backend's transformer (its own, or its embedder's) in `precision` on `runtime` (`core.precision`;
    None = ``FTRAG_PRECISION`` / ``FTRAG_RUNTIME``), as the app would serve it: the report measures what is served."""
    from core.precision import from_setting, variant_holder

    variant, why = from_setting(precision, runtime)
    for clf in classifiers.values():
        if (holder := variant_holder(clf)) is not None:
            holder.serve_as(variant, why)


def describe_extras(report: dict[str, Any], classifiers: dict[str, Any]) -> None:
    """Add what only some backends have to their report entries: the tuned embedder's training, the LLM and how
    often its answer was unusable (the vote answered instead), the hybrid's fitted gate."""
    backends = report["backends"]
    if "rag-tuned" in classifiers:
        backends["rag-tuned"]["embedder_tuning"] = classifiers["rag-tuned"].meta["embedder_tuning"]
    if "rag-llm" in classifiers:
        llm = classifiers["rag-llm"]
        backends["rag-llm"]["llm"] = {"model": llm.meta["llm"], "answers": llm.answered,
                                      "knn_fallbacks": llm.fallbacks}  # fmt: skip
    if "hybrid" in classifiers:
        backends["hybrid"]["fit"] = {k: v for k, v in classifiers["hybrid"].meta["fit"].items() if k != "grid"}


def update_section(args: RunConfig, classifiers: dict[str, Any], dataset) -> dict[str, Any] | None:
    """The knowledge-update measurement: `args.update_examples` texts of the evaluated split are taught to the
    retrieval backend (a copy), the rest held out; None without a retrieval backend."""
    retrieval = next((classifiers[name] for name in ("rag", "rag-tuned") if name in classifiers), None)
    if not args.update_examples or retrieval is None:
        return None
    n = min(args.update_examples, dataset.num_rows // 2)
    new = stratified_indices(list(dataset["label"]), n, seed=args.seed)
    taken = set(new)
    heldout = [i for i in range(dataset.num_rows) if i not in taken]
    section = knowledge_update(
        retrieval,
        classifiers["finetune"].meta if "finetune" in classifiers else None,
        [dataset["text"][i] for i in new],
        [dataset["label"][i] for i in new],
        [dataset["text"][i] for i in heldout],
        [dataset["label"][i] for i in heldout],
    )
    section["source"] = f"{n} texts of the evaluated split as new examples, the rest held out"
    return section


def run(args: RunConfig) -> dict[str, Any]:
    """Load the backends, check they share the data's label set, add the hybrid, evaluate, and return the report."""
    classifiers = load_contenders(args)
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
    describe_extras(report, classifiers)
    same_label_as_first(report)
    if (update := update_section(args, classifiers, dataset)) is not None:
        report["knowledge_update"] = update
    report["notes"] = notes
    return report


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging()
    try:
        check_writable(args.out, "the report")  # before the evaluation, not after it
        report = run(args)
        write_report(report, args.out)
    except (ValueError, ArtifactError, LlmUnavailable) as err:  # OutputError, DataError, SourceError, no LLM
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
