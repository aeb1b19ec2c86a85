"""Learning curve: accuracy vs number of labeled examples for the fine-tune, retrieval and retrieval over a tuned
embedder, over several seeds.

``python -m jobs.curve --sizes 100,300,1000,3000 --seeds 0,1,2 --base-model DIR --out DIR`` (every field of
`CurveConfig` is a flag).

The protocol (one hold-out fifth, no refit), the same for every contender: at each size n and seed, a seeded,
stratified sample of n labeled examples is drawn from the train split and split, seeded and stratified, into a
validation fifth and a fitting four fifths. Every contender fits on the same four fifths and makes its choices on
the same fifth: the fine-tune keeps its best checkpoint by validation accuracy, retrieval picks k and the vote's
weighting, retrieval over a tuned embedder tunes its embedder on the four fifths and picks its vote on the fifth.
None refits on all n, so none sees an example the others do not. All are scored on the same slice of the test
split.

The fine-tune gets the budget a practitioner would give it at that size, the one every fine-tune gets
(`finetune.protocol`; measured on tweets: 20 steps teach nothing at 100 examples, 200 steps at 1e-4 do): at least
`min_steps` optimizer steps (the epochs are raised to reach them) and, for a pretrained model on small data, the
small-data learning rate. The tuned embedder (the same MiniLM body, by
default) gets the same compute (``--embedder-budget compute``): as many text encodings, forward and backward, as the
fine-tune's training makes (its steps times its batch; a contrastive pair is two texts), kept between
``--embedder-min-steps`` and ``--embedder-max-steps``; ``--embedder-budget pairs`` gives it one pass over SetFit-style
pairs instead (`TuneEmbedderConfig.steps_for`), several times the compute at the larger sizes. curve.json records per
size the steps, epochs and learning rate each used. Each seed draws its own sample, split and initialisation;
curve.json keeps every run and the mean and (sample) standard deviation per size, curve.png draws mean ± one standard
deviation as a band, and the crossover (the size from which the fine-tune stays ahead of retrieval) comes with the
range over which the bands overlap.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import rag
from compare.crossover import crossover, crossover_range, plot_curve
from compare.metrics import accuracy, macro_f1
from core.cli import parse_config, setup_logging
from core.config import JobConfig
from core.data import DataError, label_names, load_tweets, stratified_sample
from core.files import ArtifactError, atomic_write, dumps_json
from core.types import check_same_labels
from finetune.config import SCRATCH_PRESETS, FinetuneConfig
from finetune.protocol import MIN_STEPS, apply_protocol
from rag.config import RagConfig
from rag.tune_embedder import TuneEmbedderConfig
from rag.tuning import choose_vote

logger = logging.getLogger(__name__)

CONTENDERS = ("finetune", "rag", "rag-tuned")
EMBEDDER_BUDGETS = ("compute", "pairs")
"""How the tuned embedder's steps are set: the fine-tune's compute, or one pass over its contrastive pairs."""
PROTOCOL = (
    "hold-out fifth: per size and seed, a stratified fifth of the n examples is every contender's validation slice "
    "and the other four fifths its fitting set; no contender refits on all n"
)

_FT = {f.name: f.default for f in dataclasses.fields(FinetuneConfig)}
_TUNE = {f.name: f.default for f in dataclasses.fields(TuneEmbedderConfig)}


def parse_sizes(text: str, available: int | None = None) -> list[int | None]:
    """``"100,300,all"`` -> ``[100, 300, None]`` (None = every example), sorted, checked against `available`.

    >>> parse_sizes("300,100,all")
    [100, 300, None]
    """
    sizes: list[int | None] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        if part.lower() == "all":
            sizes.append(None)
            continue
        try:
            value = int(part)
        except ValueError as err:
            raise ValueError(f"sizes must be integers or 'all', got {part!r}") from err
        if value < 10:
            raise ValueError(f"each size must be at least 10 labeled examples, got {value}")
        if available is not None and value > available:
            raise ValueError(f"size {value} is larger than the {available} training examples")
        sizes.append(value)
    if not sizes:
        raise ValueError("no sizes given")
    return sorted(set(sizes), key=lambda s: float("inf") if s is None else s)


@dataclass
class CurveConfig(JobConfig):
    """What the learning curve measures. The fine-tune's fields and defaults are `FinetuneConfig`'s, the tuned
    embedder's `TuneEmbedderConfig`'s, the data's and output's `core.config.JobConfig`'s; what only the curve
    decides is its own.

    Args:
        sizes: labeled-example counts, comma-separated; ``all`` = every training example.
        seeds: one run per seed at every size, each with its own sample, split and initialisation.
        data: labeled data source; None = ``FTRAG_DATA`` or the default Hub dataset.
        labels: label names in the order of the data's integer ids (``--labels a,b,c``); None = the data's own.
        test_limit: test texts scored at every size (a seeded stratified slice of the test split).
        seed: seed of that test slice (each run's own sample, split and initialisation follow `seeds`).
        base_model: checkpoint to fine-tune; None = ``FTRAG_BASE_MODEL`` or ``gpt2``.
        from_scratch: fine-tune a GPT-2 of shape `scratch_size` trained from scratch.
        scratch_size: GPT-2 shape used with `from_scratch`.
        tokenizer: tokenizer of the fine-tune; None = the base model's own.
        epochs: fine-tuning epochs, raised where needed to reach `min_steps`.
        batch_size: fine-tuning batch size.
        learning_rate: fine-tuning learning rate; None = the protocol's (`finetune.protocol`).
        min_steps: fewest fine-tuning optimizer steps at any size.
        embedder: sentence-transformers model of both retrieval contenders; None = ``FTRAG_EMBEDDER`` or the default.
        tune_embedder: also draw retrieval over an embedder tuned on the same examples (``rag-tuned``).
        embedder_budget: ``compute`` (the fine-tune's compute at each size) or ``pairs`` (one pass over the
            contrastive pairs); see the module.
        embedder_min_steps / embedder_max_steps: bounds of the tuned embedder's steps.
        embedder_batch_size: pairs per optimizer step of the tuned embedder.
        out: where curve.json and curve.png go.
    """

    sizes: str = "100,300,1000,3000"
    seeds: tuple[int, ...] = (0, 1, 2)
    test_limit: int = 1000
    base_model: str | None = _FT["base_model"]
    from_scratch: bool = _FT["from_scratch"]
    scratch_size: str = field(default=_FT["scratch_size"], metadata={"choices": tuple(SCRATCH_PRESETS)})
    tokenizer: str | None = _FT["tokenizer"]
    epochs: float = _FT["epochs"]
    batch_size: int = _FT["batch_size"]
    learning_rate: float | None = None
    min_steps: int = MIN_STEPS
    embedder: str | None = None
    tune_embedder: bool = True
    embedder_budget: str = field(default="compute", metadata={"choices": EMBEDDER_BUDGETS})
    embedder_min_steps: int = 100
    embedder_max_steps: int = _TUNE["max_steps"]
    embedder_batch_size: int = _TUNE["batch_size"]
    out: str = "artifacts/curve"

    def __post_init__(self) -> None:
        super().__post_init__()  # data, labels, seed, out (core.config)
        parse_sizes(self.sizes)
        self.seeds = tuple(int(s) for s in self.seeds)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct integers, at least one, got {self.seeds}")
        if self.test_limit < 1:
            raise ValueError(f"test_limit must be at least 1, got {self.test_limit}")
        if self.min_steps < 0:
            raise ValueError(f"min_steps must not be negative, got {self.min_steps}")
        self.finetune_config(100, "x")  # the fine-tune's own validation, before any work
        self.tune_config()

    def finetune_config(self, size: int, out: str) -> FinetuneConfig:
        """The fine-tune's settings before the curve applies its protocol and budget (see `finetune_budget`)."""
        keys = ("base_model", "from_scratch", "scratch_size", "tokenizer", "epochs", "batch_size", "learning_rate")
        return FinetuneConfig(**{k: getattr(self, k) for k in keys}, out=out)

    def tune_config(self) -> TuneEmbedderConfig:
        """The tuned embedder's settings (its seed is set per run)."""
        return TuneEmbedderConfig(
            min_steps=self.embedder_min_steps, max_steps=self.embedder_max_steps, batch_size=self.embedder_batch_size
        )


# --- the protocol and the budget -------------------------------------------------------------------------------------


def holdout_split(sample, seed: int):
    """The seeded, stratified validation fifth of `sample` and the rest (a `core.split.Split`), made once per size
    and seed and handed to every contender, the fine-tune included."""
    from core.split import Split

    return Split.of(sample, max(1, sample.num_rows // 5), seed=seed)


def embedder_steps(tune: TuneEmbedderConfig, fit_size: int, finetune: dict[str, Any], rule: str) -> int:
    """The tuned embedder's optimizer steps at one size under `rule` (see EMBEDDER_BUDGETS), within `tune`'s bounds.

    `finetune` is the fine-tune's budget record at that size (``steps``, ``batch_size``).

    >>> tune = TuneEmbedderConfig(min_steps=100, max_steps=2000)
    >>> embedder_steps(tune, 2400, {"steps": 450, "batch_size": 16}, "compute")  # 7,200 texts = 225 pairs of 16
    225
    >>> embedder_steps(tune, 2400, {"steps": 450, "batch_size": 16}, "pairs")  # 20 pairs per example
    2000
    """
    if rule == "pairs":
        return tune.steps_for(fit_size)
    texts_per_step = tune.batch_size * (2 if tune.loss == "cosine-pairs" else 1)
    steps = math.ceil(finetune["steps"] * finetune["batch_size"] / texts_per_step)
    return min(tune.max_steps, max(tune.min_steps, steps))


def finetune_budget(cfg: FinetuneConfig, fit_size: int, validation_size: int, seed: int, min_steps: int):
    """`cfg` for one curve run, and the budget the fine-tune's own protocol (`finetune.protocol`) gives it at
    `fit_size` examples; returns ``(config, budget record)``. The protocol itself is applied by `finetune.train`.

    >>> _, b = finetune_budget(FinetuneConfig(epochs=3, batch_size=16), 80, 20, 0, 200)
    >>> b["steps"], b["epochs"], b["learning_rate"]
    (200, 40.0, 0.0001)
    """
    run_cfg = dataclasses.replace(cfg, train_size=None, eval_size=validation_size, seed=seed, min_steps=min_steps)
    _, protocol = apply_protocol(run_cfg, fit_size)
    record = {k: protocol[k] for k in ("steps", "epochs", "learning_rate", "batch_size")}
    return run_cfg, record


# --- one run of each contender ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Scoring:
    """The test texts every contender is scored on, their references and the label set."""

    texts: list[str]
    references: list[str]
    labels: list[str]

    def score(self, clf) -> dict[str, float]:
        predicted = [p.label for p in clf.predict(self.texts)]
        return {
            "accuracy": accuracy(predicted, self.references),
            "macro_f1": macro_f1(predicted, self.references, self.labels),
        }


def run_finetune(cfg: FinetuneConfig, sample, split, test: Scoring) -> dict[str, Any]:
    """Fine-tune on `sample` cut by `split` (the same fit part and validation fifth as every contender) and score it
    on the test texts."""
    import finetune
    from finetune.train import train as train_model

    with tempfile.TemporaryDirectory() as tmp:
        cfg = dataclasses.replace(cfg, out=str(Path(tmp) / "model"))
        start = time.perf_counter()
        run = train_model(cfg, sample, split=split, show_progress=False)
        seconds = time.perf_counter() - start
        scores = test.score(finetune.load(cfg.out))
    return {
        **scores,
        "validation_accuracy": run["eval_accuracy"],
        "best_checkpoint_step": run["best_checkpoint_step"],
        "seconds": round(seconds, 2),
        "base_model": run["base_model"],
        "from_scratch": run["from_scratch"],
    }


def reuse_finetune(directory: str | Path, test: Scoring) -> dict[str, Any]:
    """A fine-tune already trained under this protocol at this size (the study's own, on its fitting part with the
    checkpoint chosen on its validation fifth), scored on the test texts instead of trained again."""
    import finetune
    from core.files import read_json

    run = read_json(Path(directory) / "run.json", "fine-tune run record")
    return {
        **test.score(finetune.load(directory)),
        "validation_accuracy": run["eval_accuracy"],
        "best_checkpoint_step": run["best_checkpoint_step"],
        "seconds": run["total_seconds"],
        "base_model": run["base_model"],
        "from_scratch": run["from_scratch"],
        "reused": "the fine-tune the comparison evaluated, not trained again",
    }


def run_retrieval(embedder, fit, validation, seed: int, test: Scoring) -> dict[str, Any]:
    """Index the fitting examples, choose the vote on the validation slice, score on the test texts."""

    start = time.perf_counter()
    clf = rag.build_index(RagConfig(tune=False, seed=seed), fit, embedder=embedder, show_progress=False)
    chosen = choose_vote(clf, list(fit["label"]), list(validation["text"]), list(validation["label"]), seed)
    seconds = time.perf_counter() - start
    return {**test.score(clf), "vote": chosen, "seconds": round(seconds, 2)}


def run_tuned_retrieval(embedder, tune: TuneEmbedderConfig, fit, validation, seed: int, test: Scoring) -> dict:
    """Tune a copy of the embedder on the fitting examples, then retrieve over it as `run_retrieval` does."""
    from rag.embed import Embedder
    from rag.tune_embedder import tune_embedder

    model = copy.deepcopy(embedder.model)
    start = time.perf_counter()
    tuning = tune_embedder(dataclasses.replace(tune, seed=seed), fit, model)
    tuned = Embedder(model, f"{embedder.name} (tuned)", batch_size=embedder.batch_size, trace=False)
    result = run_retrieval(tuned, fit, validation, seed, test)
    seconds = time.perf_counter() - start
    return {**result, "tuning_steps": tuning["steps"], "seconds": round(seconds, 2)}


# --- the curve -------------------------------------------------------------------------------------------------------


def run_size(n: int, seed: int, train, test, setup: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Every contender at `n` examples for one seed: ``(row of results, {contender: training budget})``."""
    test_set: Scoring = setup["test"]
    sample = stratified_sample(train, n, seed=seed, what="train")
    split = holdout_split(sample, seed)
    fit, validation = split.parts(sample)
    row: dict[str, Any] = {"size": n, "seed": seed, "fit_size": fit.num_rows, "validation_size": validation.num_rows}
    base = setup["finetune_config"](n, "unused")
    budget: dict[str, Any] = {}
    cfg, budget["finetune"] = finetune_budget(base, fit.num_rows, validation.num_rows, seed, setup["min_steps"])
    row["rag"] = run_retrieval(setup["embedder"], fit, validation, seed, test_set)
    if (tune := setup["tune"]) is not None:
        steps = embedder_steps(tune, fit.num_rows, budget["finetune"], setup["embedder_budget"])
        tune = dataclasses.replace(tune, min_steps=steps, max_steps=steps)
        row["rag-tuned"] = run_tuned_retrieval(setup["embedder"], tune, fit, validation, seed, test_set)
        budget["rag-tuned"] = {"steps": steps, "rule": setup["embedder_budget"], "learning_rate": tune.learning_rate,
                               "batch_size": tune.batch_size, "loss": tune.loss}  # fmt: skip
    trained = setup["trained"].get((n, seed))
    row["finetune"] = reuse_finetune(trained, test_set) if trained else run_finetune(cfg, sample, split, test_set)
    line = ", ".join(f"{name} {row[name]['accuracy']:.4f}" for name in CONTENDERS if name in row)
    logger.info("%d examples, seed %d: %s", n, seed, line)
    return row, budget


def summarise(runs: list[list[float]]) -> dict[str, list]:
    """``{"mean", "std", "runs"}`` from accuracies ``runs[seed][size]``; the sample standard deviation (0 for one
    seed).

    >>> summarise([[0.5, 0.7], [0.7, 0.7]])
    {'mean': [0.6, 0.7], 'std': [0.1414, 0.0], 'runs': [[0.5, 0.7], [0.7, 0.7]]}
    """
    columns = list(zip(*runs, strict=True))
    return {
        "mean": [round(statistics.fmean(c), 4) for c in columns],
        "std": [round(statistics.stdev(c), 4) if len(c) > 1 else 0.0 for c in columns],
        "runs": [[round(a, 4) for a in r] for r in runs],
    }


def learning_curve(
    sizes: Sequence[int | None],
    train,
    test,
    *,
    finetune_config: Callable[[int, str], FinetuneConfig],
    embedder=None,
    seeds: Sequence[int] = (0,),
    seed: int | None = None,
    min_steps: int = MIN_STEPS,
    tune: TuneEmbedderConfig | None = None,
    embedder_budget: str = "compute",
    trained: dict[tuple[int, int], str | Path] | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> dict[str, Any]:
    """Every contender at every size and seed under the hold-out-fifth protocol (see the module), scored on `test`.

    Args:
        finetune_config: ``(size, out_dir) -> FinetuneConfig``; its eval_size, seed, train_size, patience and
            checkpoint_every are set by the protocol, its epochs and learning rate by the budget.
        seeds: one run per seed at every size (`seed`, when given, means ``seeds=(seed,)``).
        min_steps: fewest fine-tuning optimizer steps (0 = the epochs as given).
        tune: the tuned embedder's settings; None = no ``rag-tuned`` line.
        embedder_budget: how the tuned embedder's steps are set at each size (EMBEDDER_BUDGETS, see the module).
        trained: fine-tunes already trained under this protocol, by ``(size, seed)`` (a model directory each, e.g.
            the study's own at its full size): scored, not trained again (the row says so).

    Returns the curve: ``sizes``, ``seeds``, ``test_size``, ``labels``, ``protocol``, per contender under
    ``backends`` ``{"mean", "std", "runs"}``, the training ``budget`` per size (fine-tune, tuned embedder), every
    run's details under ``rows``, and ``crossover`` / ``crossover_range``.
    """

    seeds = (seed,) if seed is not None else tuple(seeds)
    tell = progress or (lambda fraction, message: None)
    labels = label_names(train)
    check_same_labels("the training data", labels, "the test data", label_names(test))
    setup = {
        "test": Scoring(list(test["text"]), list(test["label"]), labels),
        "embedder": embedder or rag.Embedder.load(),
        "tune": tune,
        "finetune_config": finetune_config,
        "min_steps": min_steps,
        "embedder_budget": embedder_budget,
        "trained": dict(trained or {}),
    }
    ns = [train.num_rows if size is None else size for size in sizes]
    rows, budgets = [], {}
    for i, (seed_, n) in enumerate((s, n) for s in seeds for n in ns):
        tell(i / (len(seeds) * len(ns)), f"seed {seed_}, {n} labeled examples")
        row, budgets[n] = run_size(n, seed_, train, test, setup)
        rows.append(row)
    names = [name for name in CONTENDERS if name in rows[0]]
    curve = {
        "sizes": ns,
        "seeds": list(seeds),
        "test_size": test.num_rows,
        "labels": labels,
        "protocol": PROTOCOL,
        "backends": {
            name: summarise([[r[name]["accuracy"] for r in rows if r["seed"] == s] for s in seeds]) for name in names
        },
        "budget": {name: [{"size": n, **budgets[n][name]} for n in ns] for name in budgets[ns[0]]},
        "rows": rows,
    }
    curve["crossover"], curve["crossover_range"] = crossover(curve), crossover_range(curve)
    tell(1.0, "done")
    return curve


def save_curve(curve: dict[str, Any], out: str | Path) -> Path:
    """curve.json (written atomically) and curve.png in `out`; returns the JSON's path."""
    out = Path(out)
    atomic_write(out / "curve.json", lambda tmp: tmp.write_text(dumps_json(curve), encoding="utf-8"))
    plot_curve(curve, out / "curve.png")
    return out / "curve.json"


def main(argv: list[str] | None = None) -> int:
    cfg, _ = parse_config(CurveConfig, argv, __doc__.splitlines()[0])
    setup_logging()
    try:
        train = load_tweets(cfg.data, split="train", labels=cfg.labels)
        test = load_tweets(cfg.data, split="test", limit=cfg.test_limit, seed=cfg.seed, labels=cfg.labels)
        sizes = parse_sizes(cfg.sizes, train.num_rows)
        curve = learning_curve(
            sizes,
            train,
            test,
            finetune_config=cfg.finetune_config,
            embedder=rag.Embedder.load(cfg.embedder),
            seeds=cfg.seeds,
            min_steps=cfg.min_steps,
            tune=cfg.tune_config() if cfg.tune_embedder else None,
            embedder_budget=cfg.embedder_budget,
            progress=lambda fraction, message: logger.info("[curve %3.0f%%] %s", 100 * fraction, message),
        )
    except (ValueError, ArtifactError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    curve["config"] = asdict(cfg)
    save_curve(curve, cfg.out)
    summary = {k: curve[k] for k in ("sizes", "crossover", "crossover_range", "test_size")}
    summary["mean"] = {name: b["mean"] for name, b in curve["backends"].items()}
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
