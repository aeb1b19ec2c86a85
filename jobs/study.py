"""One command for the whole decision: ``python -m jobs.study --data SRC --out DIR --budget-minutes M``.

Splits off a test set when the data has none (stratified, seeded, no text on both sides), plans the time budget
from the data's size and a short timed probe of the embedder and the base model, then runs the stages: the split,
the plan, the retrieval index, the fine-tune (its epochs or examples capped to fit, and stopped at its deadline),
retrieval over an embedder tuned on the training examples (``rag-tuned``, its steps capped to fit), the comparison
on the test set (with intervals, and a hybrid of the fine-tune and retrieval), a learning curve sized to the time
left, and `decide`. Writes report.json / report.md / plots, curve.json / curve.png, decision.json and study.json
(planned vs actual minutes per stage) to DIR. Interrupted, the same command resumes: finished stages are skipped
and the fine-tune continues from its last checkpoint. The budget covers the whole study, resumed runs included
(time spent in an interrupted stage is not counted).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import shutil
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import rag
from core.cli import add_config_arguments, config_from_args, setup_logging
from core.config import JobConfig
from core.data import (
    DataError,
    label_names,
    leak_report,
    load_tweets,
    stratified_indices,
    stratified_sample,
    with_label_names,
)
from core.files import ArtifactError, OutputError, atomic_write_json, check_writable, read_json, staged_dir
from core.settings import SourceError, resolve
from core.split import Split
from finetune.config import FinetuneConfig
from finetune.protocol import apply_protocol, steps_per_epoch
from rag.config import RagConfig

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
STAGES = ("split", "plan", "index", "finetune", "tune", "evaluate", "curve", "decide")
STUDY_FILE, DECISION_FILE, CURVE_FILE = "study.json", "decision.json", "curve.json"
ROWS_FILE = "split/rows.json"
REMEASURE_MIN_TEXTS = 500
"""Texts an index build must embed before its time replaces the probe's embedding rate (fewer are mostly overhead)."""
"""The fit / validation rows of the train part (`core.split.Split`), cut once by the plan."""
MIN_TRAIN, MIN_TEST, MIN_CURVE_SIZE = 40, 10, 30
MIN_PER_LABEL = 5
"""Examples of each label a study needs: the stratified fifth held out as its test set then holds one of each, and
the training side four (the embedder's contrastive tuning pairs examples of the same label)."""
BUILD_SHARE_WITH_CURVE = 0.6
"""Of the time the essential stages leave, the fine-tune and the tuned embedder may plan this share when a curve is
wanted (the rest is the curve's); without a curve they may plan all of it."""
FINETUNE_SHARE = 0.6
"""Of the building time, the fine-tune's share when an embedder is tuned too; the tuning gets what it leaves."""
TUNE_PASSES = 4.5
"""A contrastive tuning step costs this many inference passes per text (measured: 300 steps of 16 pairs took 247 s
where the probe embedded at 5.7 ms per text; forward, backward and the untraced eager model)."""
PROBE_STEPS = 5
"""Training steps of the probe: two warm-ups, then the fastest of three is the rate."""
TRAINER_OVERHEAD = 1.0
"""The Trainer's real rate per text over the probe's fastest bare step. Measured (MiniLM, 300 and 2,000 emotion
tweets, re-measured after each fine-tune): 0.72 to 0.82; 1.0 keeps a margin (it was 1.3, which planned every
fine-tune at about twice its real time and left contenders out that would have fit)."""
CURVE_TEST_MAX = 500
REPLAN_TOLERANCE = 0.1
"""A stage is re-planned only when the time left changes its size by more than this share (no churn over rounding)."""
FIXED_SECONDS = {"index": 2.0, "finetune": 5.0, "tune": 8.0, "evaluate": 8.0, "decide": 3.0, "curve_size": 4.0}
"""Per-stage costs that do not grow with the data (loading, saving, bootstrap intervals, plots), in seconds."""
_OUTPUTS = (
    "split",
    "rag",
    "finetune",
    "finetune-checkpoints",
    "finetune-first",
    "embedder-tuned",
    "rag-tuned",
    "report.json",
    "report.md",
    "disagreements.csv",
    CURVE_FILE,
    "curve.png",
    DECISION_FILE,
)


def _default(config_cls: type, name: str) -> Any:
    """The default of field `name` of `config_cls`: the study composes the backends' defaults, never restates them."""
    return next(f.default for f in dataclasses.fields(config_cls) if f.name == name)


def finetune_settings(cfg: StudyConfig, **overrides: Any) -> FinetuneConfig:
    """The fine-tune's config in a study: the study's base model, epochs and seed, the backend's defaults (and its
    training protocol) for the rest."""
    values = {
        "base_model": cfg.base_model,
        "from_scratch": cfg.from_scratch,
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "min_steps": cfg.min_steps,
        "out": str(Path(cfg.out) / "finetune"),
    }
    return FinetuneConfig(**{**values, **overrides})


class StudyError(ValueError):
    """A study that cannot start or go on: bad data, a budget too small, an output directory in the way."""


@dataclass
class StudyConfig(JobConfig):
    """What to study and how long it may take.

    Args:
        data: labeled data source (Hub id, directory or file); None = ``FTRAG_DATA`` or the default dataset.
        data_name: what the reports call the data; None = its source as resolved (e.g. the app names a visitor's
            upload "your uploaded file", not its server path).
        out: directory for every output; a re-run with the same flags resumes there.
        budget_minutes: wall-clock minutes the whole study may take, resumed runs included.
        base_model: checkpoint to fine-tune (Hub id or local dir); None = ``FTRAG_BASE_MODEL`` or ``gpt2``.
        from_scratch: fine-tune a GPT-2 with random initial weights (how GPT-2 runs offline; the report says so).
        embedder: sentence-transformers model for retrieval; None = ``FTRAG_EMBEDDER`` or the default.
        labels: label names in the order of the data's integer ids, for ids without names.
        test_size: share of the examples held out as the test set when the data has no test split (otherwise the
            data's own test split is used).
        test_limit: score on a seeded, stratified sample of this many test examples; None = all of them. A thousand
            give intervals of about +-3 points; more cost time the contenders' training would have had.
        train_size: at most this many training examples (seeded, stratified); None = all.
        epochs: fine-tuning epochs wanted; fewer when the budget says so (recorded).
        min_steps: the fine-tune's fewest optimizer steps (`finetune.protocol`; raised epochs reach them). Fewer make
            a token model; this is for tests and machines that know what they give up.
        latency_queries: single queries timed per backend.

    The app's *Your data* tab runs a study with these defaults too: the same data and budget get the same study from
    either (only where the reports are written and what they call the data differ).
        tune_embedder: also build retrieval over the embedder tuned contrastively on the training examples
            (``rag-tuned``, see `rag.tune_embedder`), its steps capped to fit the budget (recorded).
        tune_steps: most optimizer steps of that tuning; None = `rag.tune_embedder`'s own count for the data.
        hybrid: also measure the hybrid of the fine-tune and retrieval.
        curve: measure a learning curve with the time the other stages leave.
        seed: seed for the split, the samples and training.
        overwrite: start over in `out`, discarding a study already there.
    """

    data_name: str | None = None
    out: str = "artifacts/study"
    budget_minutes: float = 30.0
    base_model: str | None = _default(FinetuneConfig, "base_model")
    from_scratch: bool = _default(FinetuneConfig, "from_scratch")
    embedder: str | None = _default(RagConfig, "embedder")
    test_size: float = 0.2
    test_limit: int | None = 1_000
    train_size: int | None = None
    epochs: float = _default(FinetuneConfig, "epochs")
    min_steps: int = _default(FinetuneConfig, "min_steps")
    latency_queries: int = 50
    tune_embedder: bool = True
    tune_steps: int | None = None
    hybrid: bool = True
    curve: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()  # data, labels, seed, out (core.config)
        if not (isinstance(self.budget_minutes, (int, float)) and 0 < self.budget_minutes < math.inf):
            raise ValueError(f"budget_minutes must be a positive number of minutes, got {self.budget_minutes}")
        if not 0 < self.test_size < 1:
            raise ValueError(f"test_size must be a share between 0 and 1, got {self.test_size}")
        for name in ("test_limit", "train_size", "tune_steps"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer or None, got {getattr(self, name)}")
        if self.latency_queries < 1:
            raise ValueError(f"latency_queries must be at least 1, got {self.latency_queries}")
        FinetuneConfig(epochs=self.epochs, min_steps=self.min_steps)  # the fine-tune's own checks of what it gets

    def fingerprint(self) -> dict[str, Any]:
        """The settings a resumed study must share with the run it continues."""
        return json.loads(json.dumps({k: v for k, v in asdict(self).items() if k not in {"overwrite", "data_name"}}))


# --- the split -------------------------------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return " ".join(text.split())


def split_data(cfg: StudyConfig):
    """``(train, test, info)``: the data's own test split, or a stratified seeded share held out without any text
    on both sides; then `train_size` / `test_limit` samples. `info` says where the test set came from."""
    splits = load_tweets(cfg.data, labels=cfg.labels)
    if "train" not in splits:
        raise DataError(f"the data has no train split (it has {sorted(splits)})")
    source = cfg.data_name or _describe_source(cfg.data)
    train, info = splits["train"], {"source": source, "splits": sorted(splits)}
    if "test" in splits:
        check_label_counts(list(train["label"]), MIN_PER_LABEL - 1, "training examples")
        test, info["test_from"] = splits["test"], "the data's own test split"
    else:
        check_label_counts(list(train["label"]), MIN_PER_LABEL, "examples")
        train, test, dropped = hold_out(train, cfg.test_size, cfg.seed)
        info["test_from"] = f"{cfg.test_size:.0%} of the train split held out (stratified, seed {cfg.seed})"
        info["shared_texts_dropped_from_test"] = dropped
    info["available"] = {"train": train.num_rows, "test": test.num_rows}
    if cfg.train_size is not None and cfg.train_size < train.num_rows:
        train = stratified_sample(train, cfg.train_size, seed=cfg.seed, what="train")
    if cfg.test_limit is not None and cfg.test_limit < test.num_rows:
        test = stratified_sample(test, cfg.test_limit, seed=cfg.seed, what="test")
    check_split(train, test)
    return train, test, info


def _describe_source(data: str | None) -> str:
    try:
        return resolve("data", data).describe()
    except SourceError as err:
        raise DataError(str(err)) from err


def hold_out(dataset, share: float, seed: int):
    """A stratified seeded `share` of `dataset` as a test set; test rows whose text is also in train are dropped."""
    n_test = round(share * dataset.num_rows)
    if n_test < MIN_TEST or dataset.num_rows - n_test < MIN_TRAIN:
        raise DataError(
            f"too few examples for the split: {dataset.num_rows} rows give {dataset.num_rows - n_test} train / "
            f"{n_test} test; need at least {MIN_TRAIN} / {MIN_TEST}"
        )
    picked = stratified_indices(list(dataset["label"]), n_test, seed=seed)
    taken = set(picked)
    train = dataset.select([i for i in range(dataset.num_rows) if i not in taken])
    seen = {_norm(t) for t in train["text"]}
    kept = [i for i in picked if _norm(dataset["text"][i]) not in seen]
    return train, dataset.select(kept), len(picked) - len(kept)


def check_split(train, test) -> None:
    """A DataError unless both sides are large enough and the training side has two labels or more."""
    if train.num_rows < MIN_TRAIN or test.num_rows < MIN_TEST:
        raise DataError(
            f"too few examples: {train.num_rows} train / {test.num_rows} test; need at least {MIN_TRAIN} / {MIN_TEST}"
        )
    if len(set(train["label"])) < 2:
        raise DataError(f"the training examples hold fewer than 2 labels ({sorted(set(train['label']))})")


def check_label_counts(labels: list[str], need: int, what: str) -> None:
    """A DataError naming the labels with fewer than `need` examples among `labels` (checked before any work)."""
    counts = Counter(labels)
    rare = sorted((n, label) for label, n in counts.items() if n < need)
    if rare:
        shown = ", ".join(f"{label[:20]!r} ({n})" for n, label in rare[:5]) + (", ..." if len(rare) > 5 else "")
        raise DataError(
            f"{len(rare)} of the {len(counts)} labels have fewer than {need} {what}: {shown}; a study needs at least "
            f"{need} of each label (drop or merge the rare ones)"
        )


def save_split(train, test, info: dict[str, Any], directory: Path) -> None:
    """train.parquet, test.parquet and split.json (labels, sizes, leak report), swapped in together."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with staged_dir(directory) as stage:
        for name, ds in (("train", train), ("test", test)):
            pq.write_table(pa.table({"text": list(ds["text"]), "label": list(ds["label"])}), stage / f"{name}.parquet")
        atomic_write_json(stage / "split.json", info)


def load_split(directory: Path):
    """The `(train, test, info)` saved by `save_split`, with their label set."""
    import pyarrow.parquet as pq
    from datasets import Dataset

    info = read_json(directory / "split.json", "split record")
    sides = []
    for name in ("train", "test"):
        table = pq.read_table(directory / f"{name}.parquet").to_pydict()
        sides.append(with_label_names(Dataset.from_dict(table), info["labels"]))
    return sides[0], sides[1], info


# --- the plan --------------------------------------------------------------------------------------------------------


PROBE_TEXTS = 64
"""Texts the probe embeds (twice, the faster pass counts) and trains on: measured on 2,000 emotion tweets, 64 texts
read the real indexing rate within 8% (32 in one pass read 1.43 times it: a short, padded sample)."""


def probe_embedder(embedder, texts: list[str]) -> dict[str, float]:
    """Seconds per text embedded in batches, and per single query, timed on a few texts after a warm-up."""
    embedder.encode(texts[:4])
    embedder.encode(texts[:1])  # the single-query path is prepared on its first use
    sample = texts[:PROBE_TEXTS]
    passes = []
    for _ in range(2):
        start = time.perf_counter()
        embedder.encode(sample)
        passes.append((time.perf_counter() - start) / len(sample))
    batch = min(passes)
    start = time.perf_counter()
    for text in texts[:4]:
        embedder.encode([text])
    return {"embed_s_per_text": batch, "embed_single_s": (time.perf_counter() - start) / len(texts[:4])}


def probe_finetune(ft_cfg: FinetuneConfig, texts: list[str], labels: list[str]) -> dict[str, float]:
    """Load the base model as the fine-tune will, time two training steps and a forward pass on real texts.

    Raises FinetuneError when the base model or tokenizer cannot be used (before any long work).
    """
    import torch

    from finetune.train import build_model, check_base_model, load_tokenizer

    start = time.perf_counter()
    base = check_base_model(ft_cfg, labels)
    tokenizer, _ = load_tokenizer(ft_cfg, base)
    model, _ = build_model(ft_cfg, tokenizer, base, labels)
    load_s = time.perf_counter() - start
    batch = texts[: ft_cfg.batch_size]
    inputs = tokenizer(batch, truncation=True, max_length=ft_cfg.max_length, padding=True, return_tensors="pt")
    targets = torch.zeros(len(batch), dtype=torch.long)
    optimizer = torch.optim.AdamW(model.parameters(), lr=ft_cfg.lr)
    model.train()
    times = []
    for _ in range(PROBE_STEPS):
        start = time.perf_counter()
        model(**inputs, labels=targets).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - start)
    model.eval()
    with torch.inference_mode():
        model(**inputs)  # warm-up
        start = time.perf_counter()
        model(**inputs)
        infer = (time.perf_counter() - start) / len(batch)
        one = tokenizer(batch[:1], return_tensors="pt")
        start = time.perf_counter()
        model(**one)
        single = time.perf_counter() - start
    # The fastest of the timed steps after two warm-ups: the first steps allocate, and a step that another process
    # slowed says nothing of the hundreds after it (a mean of two steps read 3 to 10 times the Trainer's real rate).
    train = TRAINER_OVERHEAD * min(times[2:]) / len(batch)
    return {"load_s": load_s, "train_s_per_text": train, "infer_s_per_text": infer, "ft_single_s": single}


def finetune_seconds(rates: dict[str, float], steps: int, batch_size: int, n_eval: int, evaluations: int) -> float:
    """Estimated seconds of a fine-tune of `steps` optimizer steps of `batch_size` texts, evaluated `evaluations`
    times on `n_eval` texts.

    >>> finetune_seconds({"load_s": 1.0, "train_s_per_text": 0.01, "infer_s_per_text": 0.001}, 20, 10, 50, 2)
    8.1
    """
    train = steps * batch_size * rates["train_s_per_text"]
    evaluate = evaluations * n_eval * rates["infer_s_per_text"]
    return round(rates["load_s"] + FIXED_SECONDS["finetune"] + train + evaluate, 3)


def essential_seconds(rates: dict[str, float], n_train: int, n_test: int, cfg: StudyConfig) -> dict[str, float]:
    """Estimated seconds of the stages that always run: the index, the evaluation and the decision.

    The evaluation classifies the test set once per backend and times `latency_queries` single queries and three
    rounds of them in batches (`compare.evaluation.evaluate`); the hybrid runs both of its parts, after classifying the
    fine-tune's evaluation slice to fit itself.
    """
    q = min(cfg.latency_queries, n_test)
    eval_slice = min(_default(FinetuneConfig, "eval_size"), max(10, n_train // 5))
    runs = 2 if cfg.hybrid else 1  # each of the two parts runs alone and, with the hybrid, once more inside it
    texts = runs * (n_test + 3 * q) + (eval_slice if cfg.hybrid else 0)
    evaluate = texts * (rates["embed_s_per_text"] + rates["infer_s_per_text"])
    evaluate += runs * q * (rates["embed_single_s"] + rates["ft_single_s"])
    if cfg.tune_embedder:  # one more retrieval contender
        evaluate += (n_test + 3 * q) * rates["embed_s_per_text"] + q * rates["embed_single_s"]
    return {
        "index": round(FIXED_SECONDS["index"] + 1.1 * n_train * rates["embed_s_per_text"], 3),
        "evaluate": round(FIXED_SECONDS["evaluate"] + rates["load_s"] + evaluate, 3),
        "decide": FIXED_SECONDS["decide"],
    }


def plan_finetune(rates: dict[str, float], seconds: float, n_train: int, cfg: FinetuneConfig) -> dict[str, Any]:
    """The fine-tune that fits in `seconds` under its training protocol (`finetune.protocol`): the steps the
    protocol wants, else fewer (a share of the epochs wanted), never fewer than its fewest (``cfg.min_steps``).

    Returns ``epochs`` (what to ask `finetune.train` for), ``steps``, ``eval_size``, ``train_size`` (None = all),
    ``seconds``, ``capped`` (why, or None) and ``protocol``; ``skipped`` says why when not even the fewest steps fit,
    and ``needs_seconds`` how long they would take.
    """
    eval_size = min(_default(FinetuneConfig, "eval_size"), max(10, n_train // 5))
    n_fit = n_train - eval_size
    _, wanted = apply_protocol(cfg, n_fit)
    evaluations = wanted.get("evaluations") or math.ceil(wanted["epochs"])
    plan: dict[str, Any] = {
        "epochs": cfg.epochs, "steps": wanted["steps"], "eval_size": eval_size, "train_size": None,
        "protocol": wanted["why"], "capped": None, "skipped": None,
    }  # fmt: skip
    full = finetune_seconds(rates, wanted["steps"], cfg.batch_size, eval_size, evaluations)
    if full <= seconds:
        return {**plan, "seconds": full}
    fewest = cfg.min_steps if cfg.protocol else 1
    least = finetune_seconds(rates, fewest, cfg.batch_size, eval_size, evaluations)
    if least > seconds:
        why = (
            f"the budget leaves {max(seconds, 0) / 60:.2f} min for the fine-tune; its training protocol "
            f"({fewest} optimizer steps) needs about {least / 60:.1f} min"
        )
        return {**plan, "seconds": 0.0, "steps": 0, "skipped": why, "needs_seconds": least}
    base = finetune_seconds(rates, 0, cfg.batch_size, eval_size, evaluations)
    steps = max(fewest, int((seconds - base) / (cfg.batch_size * rates["train_s_per_text"])))
    epochs = steps / steps_per_epoch(n_fit, cfg.batch_size)
    why = f"{steps} of the {wanted['steps']} optimizer steps wanted fit in the budget ({full / 60:.1f} min needed)"
    used = finetune_seconds(rates, steps, cfg.batch_size, eval_size, evaluations)
    return {**plan, "epochs": epochs, "steps": steps, "seconds": used, "capped": why}


def plan_budget(
    rates: dict[str, float], seconds_left: float, n_train: int, n_test: int, cfg: StudyConfig
) -> dict[str, Any]:
    """Planned seconds per stage and the fine-tune's size; a StudyError when the essential stages do not fit."""
    fixed = essential_seconds(rates, n_train, n_test, cfg)
    spare = seconds_left - sum(fixed.values())
    if spare <= 0:
        need = sum(fixed.values()) / 60
        raise StudyError(
            f"a budget of {cfg.budget_minutes:g} min is too small for this data: the index and the evaluation "
            f"alone need about {need:.1f} min; give a larger --budget-minutes or a smaller --train-size / --test-limit"
        )
    building = spare * (BUILD_SHARE_WITH_CURVE if cfg.curve else 1.0)
    ft_cfg = finetune_settings(cfg)
    finetune = plan_finetune(rates, building * (FINETUNE_SHARE if cfg.tune_embedder else 1.0), n_train, ft_cfg)
    if finetune["skipped"]:  # the contenders' protocols come first: they may take what the curve would have had
        finetune = plan_finetune(rates, spare, n_train, ft_cfg)
    if finetune["skipped"]:
        spent = 60 * cfg.budget_minutes - seconds_left
        need = (spent + sum(fixed.values()) + finetune["needs_seconds"]) / 60
        finetune["skipped"] += f"; a budget of about {math.ceil(need)} min would fit it"
    tune = plan_tuning(rates, building - finetune["seconds"], n_train, cfg)
    if tune.get("needs_seconds"):
        tune = plan_tuning(rates, spare - finetune["seconds"], n_train, cfg)
    curve = max(spare - finetune["seconds"] - tune["seconds"], 0.0) if cfg.curve else 0.0
    stages = {**fixed, "finetune": finetune["seconds"], "tune": tune["seconds"], "curve": round(curve, 3)}
    return {"rates": rates, "seconds": stages, "finetune": finetune, "tune": tune}


def tuning_seconds(rates: dict[str, float], steps: int, batch_size: int, n_train: int) -> float:
    """Estimated seconds of tuning the embedder for `steps` steps of `batch_size` pairs, then indexing `n_train`
    texts with it (a training step costs TUNE_PASSES inference passes of its two texts per pair).

    >>> tuning_seconds({"embed_s_per_text": 0.01}, 10, 16, 100)
    23.5
    """
    per_step = 2 * batch_size * TUNE_PASSES * rates["embed_s_per_text"]
    return round(FIXED_SECONDS["tune"] + steps * per_step + 1.1 * n_train * rates["embed_s_per_text"], 3)


def plan_tuning(rates: dict[str, float], seconds: float, n_train: int, cfg: StudyConfig) -> dict[str, Any]:
    """The embedder tuning that fits in `seconds`: `rag.tune_embedder`'s steps for `n_train` examples, else fewer,
    never fewer than its own fewest (``TuneEmbedderConfig.min_steps``) unless ``--tune-steps`` asks for fewer;
    ``skipped`` says why when it is not built (and ``needs_seconds`` how long its fewest steps would take)."""
    from rag.tune_embedder import TuneEmbedderConfig

    if not cfg.tune_embedder:
        return {"steps": 0, "seconds": 0.0, "capped": None, "skipped": "turned off (--no-tune-embedder)"}
    tune = TuneEmbedderConfig()
    wanted = min(tune.steps_for(n_train), cfg.tune_steps or math.inf)
    full = tuning_seconds(rates, wanted, tune.batch_size, n_train)
    if full <= seconds:
        return {"steps": wanted, "seconds": full, "capped": None, "skipped": None}
    per_step = tuning_seconds(rates, 1, tune.batch_size, n_train) - tuning_seconds(rates, 0, tune.batch_size, n_train)
    steps = int((seconds - tuning_seconds(rates, 0, tune.batch_size, n_train)) / per_step)
    fewest = min(tune.min_steps, wanted)
    if steps < fewest:
        least = tuning_seconds(rates, fewest, tune.batch_size, n_train)
        why = (
            f"the budget leaves {max(seconds, 0) / 60:.2f} min for tuning the embedder; its fewest steps ({fewest}) "
            f"need about {least / 60:.1f} min"
        )
        return {"steps": 0, "seconds": 0.0, "capped": None, "skipped": why, "needs_seconds": least}
    why = f"{steps} of the {wanted} tuning steps wanted fit in the budget ({full / 60:.1f} min needed)"
    return {
        "steps": steps,
        "seconds": tuning_seconds(rates, steps, tune.batch_size, n_train),
        "capped": why,
        "skipped": None,
    }


# --- the learning curve ----------------------------------------------------------------------------------------------


def curve_sizes(n_train: int, seconds: float, cost: Callable[[int], float], full_first: bool = False) -> list[int]:
    """Sizes for the learning curve, each a third of the next up to `n_train`, as many (smallest first) as fit in
    `seconds` by `cost(size)`; fewer than two fit = none. With `full_first`, `n_train` itself is taken first (the
    study's own contenders are its point: scored, not trained again).

    >>> curve_sizes(900, 100.0, lambda n: n / 10), curve_sizes(900, 5.0, lambda n: n / 10)
    ([33, 100, 300], [])
    >>> curve_sizes(900, 5.0, lambda n: 1.0 if n == 900 else n / 10, full_first=True)
    [33, 900]
    """
    candidates = sorted({n_train // 3**i for i in range(5) if n_train // 3**i >= MIN_CURVE_SIZE})
    if full_first and n_train in candidates:
        candidates = [n_train, *(size for size in candidates if size != n_train)]
    chosen, total = [], 0.0
    for size in candidates:
        total += cost(size)
        if total > seconds:
            break
        chosen.append(size)
    return sorted(chosen) if len(chosen) >= 2 else []


# --- the study -------------------------------------------------------------------------------------------------------


class StudyRecord:
    """study.json of the study in `out`: its settings (a re-run with others is refused), each stage's status with
    its planned and actual minutes (a re-run skips what is done), and the budget's time spent and left, resumed runs
    included."""

    def __init__(self, cfg: StudyConfig, say: Callable[[str], None]) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.say = say
        self.started = time.monotonic()
        self.state: dict[str, Any] = {}

    def open(self) -> None:
        """Start a study in `out`, or resume the one there; a StudyError when `out` holds something else."""
        path = self.out / STUDY_FILE
        try:
            check_writable(path, "the study")
        except OutputError as err:
            raise StudyError(str(err)) from err
        if path.exists() and not self.cfg.overwrite:
            if self._resumable(read_json(path, "study record")):
                done = [name for name in STAGES if self.done(name)]
                self.say(f"Resuming the study in {self.out}: done already: {', '.join(done) or 'nothing'}")
                return
        elif not path.exists() and any(self.out.iterdir()) and not self.cfg.overwrite:
            raise StudyError(f"{self.out} holds other files; choose an empty or new --out, or pass --overwrite")
        self._clear()
        self.state = {
            "format_version": FORMAT_VERSION,
            "config": asdict(self.cfg),
            "fingerprint": self.cfg.fingerprint(),
            "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "budget_minutes": self.cfg.budget_minutes,
            "stages": {},
        }
        self.save()

    def _resumable(self, state: dict[str, Any]) -> bool:
        """Whether `state` (a study.json) is this study's to resume: True with the same settings; False when it
        finished nothing (nothing to lose by starting over); else a StudyError naming the settings that differ."""
        self.state = state if isinstance(state, dict) else {}
        recorded, wanted = self.state.get("fingerprint") or {}, self.cfg.fingerprint()
        changed = sorted(k for k in wanted if recorded.get(k) != wanted[k])
        if not changed:
            return True
        if not any(self.done(name) for name in STAGES):
            return False
        raise StudyError(
            f"{self.out} holds a study with other settings ({', '.join(changed)}); run with the same flags to "
            "resume it, or pass --overwrite to start over"
        )

    def _clear(self) -> None:
        """Remove what an earlier study wrote here (only its own outputs; anything else in `out` is kept)."""
        for name in (*_OUTPUTS, STUDY_FILE):
            target = self.out / name
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        for plot in self.out.glob("*.png"):
            plot.unlink()

    def save(self) -> None:
        atomic_write_json(self.out / STUDY_FILE, self.state)

    def done(self, name: str) -> bool:
        return (self.state.get("stages", {}).get(name) or {}).get("status") in {"done", "skipped"}

    def seconds_spent(self) -> float:
        """Seconds of the budget spent: finished stages of earlier runs plus this run's time so far."""
        before = (self.state.get("resume") or {}).get("seconds_before_this_run", 0.0)
        return before + time.monotonic() - self.started

    def seconds_left(self) -> float:
        return 60.0 * self.cfg.budget_minutes - self.seconds_spent()

    def planned(self, name: str) -> float | None:
        seconds = (self.state.get("plan") or {}).get("seconds", {}).get(name)
        return None if seconds is None else round(seconds / 60, 3)

    def stage(self, name: str, body: Callable[[], str | None]) -> None:
        """Run stage `name` unless done; `body` returns None when done, or the reason it was skipped."""
        if self.done(name):
            self.say(f"[{name}] done in an earlier run: skipped")
            return
        planned = self.planned(name)
        plan_text = f"planned {planned:.2f} min" if planned is not None else "before the plan"
        self.say(f"[{name}] starting ({plan_text}; {self.seconds_left() / 60:.2f} min of the budget left)")
        start = time.monotonic()
        skipped = body()
        actual = time.monotonic() - start
        record = {
            "status": "skipped" if skipped else "done",
            "planned_minutes": self.planned(name),
            "actual_minutes": round(actual / 60, 3),
        }
        if skipped:
            record["reason"] = skipped
        self.state["stages"][name] = record
        self.save()
        self.say(f"[{name}] {'skipped: ' + skipped if skipped else 'done'} in {actual / 60:.2f} min")

    def spent_before(self) -> float:
        """Seconds the stages finished by earlier runs took."""
        return 60.0 * sum((s.get("actual_minutes") or 0.0) for s in self.state.get("stages", {}).values())

    def minutes(self) -> dict[str, Any]:
        """Planned and actual minutes per stage, and their totals."""
        stages = self.state.get("stages", {})
        rows = {
            name: {k: (stages.get(name) or {}).get(f"{k}_minutes") for k in ("planned", "actual")} for name in STAGES
        }
        return {
            "stages": rows,
            "planned": round(sum(self.planned(n) or 0.0 for n in STAGES), 3),
            "actual": round(sum(r["actual"] or 0.0 for r in rows.values()), 3),
        }


class Study:
    """The stages of one study in `cfg.out`, each a ``do_<stage>`` method; its `record` (study.json) says which are
    done and how long each took.

    Each stage writes its artifact atomically, then marks itself done; a re-run skips what is done.
    """

    def __init__(self, cfg: StudyConfig, say: Callable[[str], None] | None = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.say = say or (lambda message: print(message, flush=True))  # progress shows at once, even when piped
        self.record = StudyRecord(cfg, self.say)
        self._embedder = None
        self._split = None

    @property
    def state(self) -> dict[str, Any]:
        """study.json's content (`StudyRecord.state`)."""
        return self.record.state

    @state.setter
    def state(self, value: dict[str, Any]) -> None:
        self.record.state = value

    def seconds_left(self) -> float:
        """Seconds of the budget left (`StudyRecord.seconds_left`)."""
        return self.record.seconds_left()

    # --- shared inputs -----------------------------------------------------------------------------------------------

    @property
    def embedder(self):
        if self._embedder is None:
            from rag.embed import Embedder

            self._embedder = Embedder.load(self.cfg.embedder)
        return self._embedder

    @property
    def split(self):
        if self._split is None:
            self._split = load_split(self.out / "split")
        return self._split

    def finetune_config(self, **overrides: Any) -> FinetuneConfig:
        """The fine-tune's config (`finetune_settings`)."""
        return finetune_settings(self.cfg, **overrides)

    # --- the stages --------------------------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        """Every stage in order; returns decision.json's content."""
        self.record.open()
        self.state["resume"] = {"seconds_before_this_run": self.record.spent_before()}
        for name in STAGES:
            self.record.stage(name, getattr(self, f"do_{name}"))
        self.state["minutes"] = self.record.minutes()
        self.record.save()
        return read_json(self.out / DECISION_FILE, "decision")

    def do_split(self) -> None:
        train, test, info = split_data(self.cfg)
        info.update(
            labels=label_names(train), train=train.num_rows, test=test.num_rows, leaks=leak_report(train, test)
        )
        if info["leaks"]["shared_test_rows"]:
            self.say(f"[split] warning: {info['leaks']['shared_test_rows']} test texts also appear in train")
        save_split(train, test, info, self.out / "split")
        self.say(
            f"[split] {train.num_rows} train / {test.num_rows} test ({info['test_from']}); "
            f"labels: {', '.join(info['labels'])}"
        )

    def do_plan(self) -> None:
        train, test, info = self.split
        texts = list(train["text"][:PROBE_TEXTS])
        rates = probe_embedder(self.embedder, texts)
        rates.update(probe_finetune(self.finetune_config(), texts, info["labels"]))
        plan = plan_budget(rates, self.seconds_left(), train.num_rows, test.num_rows, self.cfg)
        self.state["plan"] = plan
        # The fit / validation rows, made once: the fine-tune trains on them, every contender is checked on them.
        rows = Split.of(train, plan["finetune"]["eval_size"], plan["finetune"]["train_size"], seed=self.cfg.seed)
        rows.save(self.out / ROWS_FILE)
        self.say("[plan] minutes per stage: " + ", ".join(f"{k} {v / 60:.2f}" for k, v in plan["seconds"].items()))
        for key, what in (("finetune", "fine-tune"), ("tune", "tuned embedder")):
            if plan[key]["capped"] or plan[key]["skipped"]:
                self.say(f"[plan] {what}: {plan[key]['capped'] or 'skipped: ' + plan[key]['skipped']}")

    def do_index(self) -> None:

        train = self.split[0]
        cfg = RagConfig(embedder=self.cfg.embedder, seed=self.cfg.seed, out=str(self.out / "rag"))
        start = time.monotonic()
        guard = deadline_progress(self.deadline_before("evaluate", "decide"), "indexing the training examples")
        try:
            classifier = rag.build_index(cfg, train, embedder=self.embedder, progress=guard)
        except OverBudget as err:
            raise StudyError(
                f"{err}: this machine runs slower than the probe measured; give a larger --budget-minutes or a "
                "smaller --train-size"
            ) from None
        classifier.save(self.out / "rag")
        self.remeasure_embedding(train.num_rows, time.monotonic() - start)

    def do_finetune(self) -> str | None:
        from finetune.train import train

        plan = self.state["plan"]["finetune"]
        if plan["skipped"]:
            return plan["skipped"]
        reserve = sum(self.state["plan"]["seconds"][k] for k in ("tune", "evaluate", "decide"))
        deadline = time.monotonic() + self.seconds_left() - reserve
        if deadline - time.monotonic() < 1:
            return (
                f"no time left for the fine-tune ({self.seconds_left() / 60:.2f} min left, the later stages need it)"
            )
        cfg = self.finetune_config(epochs=plan["epochs"], eval_size=plan["eval_size"], train_size=plan["train_size"])
        rows = Split.load(self.out / ROWS_FILE)
        _, held = rows.parts(self.split[0])
        stopper = deadline_callback(deadline)
        run = train(cfg, self.split[0], split=rows, overwrite=True, callbacks=[stopper])
        check = self.check_finetune(held)
        self.state["finetune"] = {
            "capped": plan["capped"],
            "stopped_at_deadline": stopper.fired,
            "epochs_run": run["epochs_run"],
            "train_size": run["train_size"],
            "protocol": run.get("protocol"),
            "learning_check": check,
        }
        self.remeasure(run)
        if stopper.fired:
            self.say(f"[finetune] stopped at its deadline after {run['epochs_run']} epochs (recorded)")
        if not check["learned"]:
            self.retry_finetune(cfg, rows, held, check, reserve)
        return None

    def validation_split(self):
        """``(fit, validation)``: the rows the plan cut (saved as split/rows.json). Every contender's learning is
        checked on the same validation part."""
        return Split.load(self.out / ROWS_FILE).parts(self.split[0])

    def check_finetune(self, held) -> dict[str, Any]:
        """`compare.metrics.learning_check` of the saved fine-tune on the validation part."""
        import finetune
        from compare.metrics import learning_check

        model = finetune.load(self.out / "finetune")
        start = time.monotonic()
        answers = model.predict(list(held["text"]))
        if held.num_rows >= REMEASURE_MIN_TEXTS // 5:  # the evaluation is sized from what this machine really does
            rates = self.state["plan"]["rates"]
            rates.setdefault("probed_infer_s_per_text", rates["infer_s_per_text"])
            rates["infer_s_per_text"] = (time.monotonic() - start) / held.num_rows
        labels = self.split[2]["labels"]
        return {**learning_check([a.label for a in answers], list(held["label"]), labels), "on": "the validation part"}

    def retry_finetune(self, cfg: FinetuneConfig, rows: Split, held, check: dict[str, Any], reserve: float) -> None:
        """A fine-tune that did not learn is trained once more (another seed, the same protocol) when the budget
        leaves the time of a whole run; the better of the two by the validation part's macro-F1 is kept."""
        from finetune.train import train

        planned = self.state["plan"]["finetune"]["seconds"]
        if self.seconds_left() - reserve < planned:
            self.say(f"[finetune] did not learn ({check['why']}); no time left to retry it (recorded)")
            self.state["finetune"]["retry"] = {"skipped": "the budget leaves no time for a second run"}
            return
        self.say(f"[finetune] did not learn ({check['why']}): training it once more with another seed")
        first = self.out / "finetune-first"
        shutil.rmtree(first, ignore_errors=True)
        (self.out / "finetune").rename(first)
        stopper = deadline_callback(time.monotonic() + self.seconds_left() - reserve)
        retry_cfg = dataclasses.replace(cfg, seed=cfg.seed + 1)
        train(retry_cfg, self.split[0], split=rows, overwrite=True, callbacks=[stopper])
        again = self.check_finetune(held)
        better = (again["learned"], again["macro_f1"]) >= (check["learned"], check["macro_f1"])
        if better:
            shutil.rmtree(first)
            self.state["finetune"]["learning_check"] = again
        else:
            shutil.rmtree(self.out / "finetune")
            first.rename(self.out / "finetune")
        self.state["finetune"]["retry"] = {"seed": retry_cfg.seed, "learning_check": again, "kept": "retry" if better
                                           else "first run"}  # fmt: skip
        self.say(f"[finetune] retry {'learned' if again['learned'] else 'did not learn either'}; kept the "
                 f"{self.state['finetune']['retry']['kept']}")  # fmt: skip

    def do_tune(self) -> str | None:
        from rag.embed import Embedder
        from rag.tune_embedder import TuneEmbedderConfig, run_tuning

        plan = self.replan_tuning()
        if plan["skipped"]:
            return plan["skipped"]
        reserve = sum(self.state["plan"]["seconds"][k] for k in ("evaluate", "decide"))
        if self.seconds_left() - reserve < plan["seconds"] / 2:
            return f"no time left to tune the embedder ({self.seconds_left() / 60:.2f} min left, evaluation needs it)"
        train, steps = self.split[0], plan["steps"]
        index_seconds = 1.1 * train.num_rows * self.state["plan"]["rates"]["embed_s_per_text"]
        stopper = deadline_callback(time.monotonic() + self.seconds_left() - reserve - index_seconds)
        tune = TuneEmbedderConfig(
            embedder=self.cfg.embedder,
            min_steps=steps,
            max_steps=steps,
            seed=self.cfg.seed,
            out=str(self.out / "embedder-tuned"),
        )
        run = run_tuning(tune, train, overwrite=True, callbacks=[stopper])
        cfg = RagConfig(embedder=tune.out, seed=self.cfg.seed, out=str(self.out / "rag-tuned"))
        guard = deadline_progress(self.deadline_before("evaluate", "decide"), "indexing with the tuned embedder")
        try:
            rag.build_index(cfg, train, embedder=Embedder.load(tune.out), progress=guard).save(cfg.out)
        except OverBudget as err:
            shutil.rmtree(cfg.out, ignore_errors=True)
            return f"{err}; the tuned embedder is kept, its index was not built"
        self.state["tune"] = {"capped": plan["capped"], "steps": run["steps"], "seconds": run["seconds"],
                              "stopped_at_deadline": stopper.fired}  # fmt: skip
        if stopper.fired:
            self.say(f"[tune] stopped at its deadline after {run['steps']} of {steps} steps (recorded)")
        return None

    def deadline_before(self, *stages: str) -> float:
        """The ``time.monotonic()`` by which a stage must end to leave `stages` their planned time."""
        reserve = sum(self.state["plan"]["seconds"][k] for k in stages)
        return time.monotonic() + self.seconds_left() - reserve

    def remeasure_embedding(self, texts: int, seconds: float) -> None:
        """Replace the probe's embedding rate by the one indexing `texts` took (when enough to be more than noise), so
        that the tuning and the evaluation are sized from what this machine really does."""
        if texts < REMEASURE_MIN_TEXTS:
            return
        rates = self.state["plan"]["rates"]
        rates.setdefault("probed_embed_s_per_text", rates["embed_s_per_text"])
        rates["embed_s_per_text"] = seconds / (1.1 * texts)  # as `essential_seconds` counts an index build
        self.record.save()

    def fit_test(self, test):
        """The test set, cut (seeded, stratified) to what the evaluation can score in the time left before the
        decision, at the rates measured so far; uncut when it fits. ``(test, note or None)``."""
        rates, n_train = self.state["plan"]["rates"], self.split[0].num_rows
        left = self.seconds_left() - self.state["plan"]["seconds"]["decide"]

        def cost(n: int) -> float:
            return essential_seconds(rates, n_train, n, self.cfg)["evaluate"]

        n = test.num_rows
        if cost(n) <= left:
            return test, None
        while n > MIN_TEST and cost(n) > left:
            n = max(MIN_TEST, int(n * 0.8))
        cut = stratified_sample(test, n, seed=self.cfg.seed, what="test")
        note = (
            f"the test set was cut from {test.num_rows} to {n} texts to end within the budget (this machine ran "
            "slower than the probe measured); the intervals are wider for it"
        )
        self.say(f"[evaluate] {note}")
        return cut, note

    def remeasure(self, run: dict[str, Any]) -> None:
        """Replace the probe's training rate by the one the fine-tune just measured (seconds per example and epoch,
        its evaluations included), so that the stages after it are planned from what this machine really did."""
        texts = (run.get("epochs_run") or 0) * (run.get("train_size") or 0)
        if texts <= 0 or not run.get("train_seconds"):
            return
        rates = self.state["plan"]["rates"]
        rates.setdefault("probed_train_s_per_text", rates["train_s_per_text"])
        rates["train_s_per_text"] = run["train_seconds"] / texts
        self.record.save()

    def replan_tuning(self) -> dict[str, Any]:
        """The tuning plan again, from the time actually left once the later stages' planned time is set aside:
        a fine-tune that ran faster than planned leaves its time to the tuned embedder (and a slower one takes it
        back; a tuning the plan skipped for want of time is built when the time saved now fits its fewest steps). The
        plan is kept when the new one is within REPLAN_TOLERANCE of it or would skip the tuning."""
        old = self.state["plan"]["tune"]
        if old["skipped"] and not old.get("needs_seconds"):  # turned off, not short of time
            return old
        # A contender comes before the curve: a skipped tuning may take the curve's planned time.
        later_stages = ("evaluate", "decide") if old["skipped"] else ("evaluate", "decide", "curve")
        later = sum(self.state["plan"]["seconds"][k] for k in later_stages)
        new = plan_tuning(self.state["plan"]["rates"], self.seconds_left() - later, self.split[0].num_rows, self.cfg)
        if new["skipped"] or abs(new["steps"] - old["steps"]) <= REPLAN_TOLERANCE * old["steps"]:
            return old
        self.say(f"[tune] re-planned from the time left: {new['steps']} steps instead of {old['steps']}")
        new["replanned_from"] = {"steps": old["steps"], "seconds": old["seconds"], "skipped": old["skipped"]}
        self.state["plan"]["tune"] = new
        self.state["plan"]["seconds"]["tune"] = new["seconds"]
        self.record.save()
        return new

    def do_evaluate(self) -> None:
        from compare.evaluation import evaluate
        from hybrid import fit_hybrid

        _, test, info = self.split
        test, cut = self.fit_test(test)
        _, held = self.validation_split()
        texts, references = list(held["text"]), list(held["label"])
        classifiers = self.contenders()
        # Retrieval on the validation part, each text's own entry left out of the index: once, for its learning
        # check and for fitting the hybrid.
        left_out = {name: classifiers[name].predict(texts, exclude_identical=True)
                    for name in ("rag", "rag-tuned") if name in classifiers}  # fmt: skip
        learning = self.learning_checks(references, left_out)
        if self.cfg.hybrid and "finetune" in classifiers:
            parts = classifiers["finetune"], classifiers["rag"]
            classifiers["hybrid"] = fit_hybrid(*parts, texts, references, left_out["rag"])
        report = evaluate(
            classifiers,
            test,
            data_source=info["source"],
            split=info["test_from"],
            latency_queries=self.cfg.latency_queries,
            learning=learning,
        )
        if "hybrid" in classifiers:
            report["backends"]["hybrid"]["fit"] = {
                k: v for k, v in classifiers["hybrid"].meta["fit"].items() if k != "grid"
            }
        report["notes"] = self.notes() + ([cut] if cut else [])
        report["study"] = {"leaks": info["leaks"], "finetune": self.state.get("finetune")}
        write_report_into(report, self.out)

    def learning_checks(self, references: list[str], left_out: dict[str, list]) -> dict[str, dict[str, Any]]:
        """Whether each contender learned, checked on the validation part (`compare.metrics.learning_check`): the
        fine-tune's from its stage, retrieval's from its answers with each text's own entry left out of its index
        (`left_out`). The hybrid, fitted on that part, is checked by `evaluate` on the test texts."""
        from compare.metrics import learning_check

        labels = self.split[2]["labels"]
        checks = {}
        if (self.state.get("finetune") or {}).get("learning_check"):
            checks["finetune"] = self.state["finetune"]["learning_check"]
        for name, answers in left_out.items():
            check = learning_check([a.label for a in answers], references, labels)
            checks[name] = {**check, "on": "the validation part"}
        return checks

    def contenders(self) -> dict[str, Any]:
        """The built contenders, loaded from `out`: retrieval, the fine-tune and the tuned retrieval when built (the
        hybrid is fitted by the evaluation)."""
        import finetune

        classifiers: dict[str, Any] = {}
        if (self.out / "finetune").is_dir():
            classifiers["finetune"] = finetune.load(self.out / "finetune")
        classifiers["rag"] = rag.load(self.out / "rag", embedder=self.embedder)
        if (self.out / "rag-tuned").is_dir():
            classifiers["rag-tuned"] = rag.load_tuned(self.out / "rag-tuned")
        return classifiers

    def notes(self) -> list[str]:
        """What a reader of the report must know about how the contenders were built."""
        notes = []
        finetune = self.state.get("finetune") or {}
        for key, what in (("finetune", "fine-tune"), ("tune", "rag-tuned (retrieval over a tuned embedder)")):
            plan, stage = self.state["plan"][key], self.state["stages"].get(key) or {}
            if stage.get("status") == "skipped":
                notes.append(f"no {what}: {stage.get('reason')}")
            elif plan["capped"]:
                notes.append(f"{what} capped by the time budget: {plan['capped']}")
        check = finetune.get("learning_check") or {}
        if check and not check["learned"]:
            notes.append(f"the fine-tune did not learn: it {check['why']} (on the validation part); it is not ranked")
        if finetune.get("stopped_at_deadline"):
            notes.append(f"fine-tune stopped at its deadline after {finetune['epochs_run']} epochs")
        return notes

    def do_curve(self) -> str | None:
        from compare.crossover import plot_curve
        from jobs.curve import learning_curve

        if not self.cfg.curve:
            return "turned off (--no-curve)"
        train, test, _ = self.split
        seconds = self.seconds_left() - self.state["plan"]["seconds"]["decide"]
        curve_test = stratified_sample(test, min(CURVE_TEST_MAX, test.num_rows), seed=self.cfg.seed, what="test")
        reused = self.reusable_finetune()
        cost = self.curve_cost(curve_test.num_rows, reused=train.num_rows if reused else None)
        sizes = curve_sizes(train.num_rows, seconds, cost, full_first=reused is not None)
        if not sizes:
            smallest = curve_sizes(train.num_rows, math.inf, cost, full_first=reused is not None)[:2]
            if len(smallest) < 2:
                return f"{train.num_rows} training examples are too few for a curve of two sizes of {MIN_CURVE_SIZE}+"
            need = sum(cost(size) for size in smallest) - max(seconds, 0)
            more = math.ceil((self.cfg.budget_minutes * 60 + need) / 60)
            return (
                f"the budget leaves {max(seconds, 0) / 60:.2f} min; a curve of two sizes ({smallest[0]} and "
                f"{smallest[1]} examples) needs about {(need + max(seconds, 0)) / 60:.1f} min: a budget of about "
                f"{more} min would give one"
            )
        epochs = self.state["plan"]["finetune"]["epochs"]

        def config(size: int, out: str) -> FinetuneConfig:
            return self.finetune_config(epochs=epochs, eval_size=max(10, size // 5), out=out)

        curve = learning_curve(
            sizes,
            train,
            curve_test,
            finetune_config=config,
            embedder=self.embedder,
            seed=self.cfg.seed,
            trained={(train.num_rows, self.cfg.seed): reused} if reused and train.num_rows in sizes else None,
            progress=lambda fraction, message: self.say(f"[curve] {message}"),
        )
        atomic_write_json(self.out / CURVE_FILE, curve)
        plot_curve(curve, self.out / "curve.png")
        return None

    def reusable_finetune(self) -> Path | None:
        """The study's own fine-tune, when it is the curve's point at the full size: trained under the protocol on
        the fitting part of all the training rows (not capped by the budget, not stopped at its deadline)."""
        stage = self.state["stages"].get("finetune") or {}
        done = self.state.get("finetune") or {}
        capped = self.state["plan"]["finetune"]["capped"] or done.get("stopped_at_deadline")
        if stage.get("status") != "done" or capped:
            return None
        directory = self.out / "finetune"
        return directory if (directory / "run.json").is_file() else None

    def curve_cost(self, n_test: int, reused: int | None = None) -> Callable[[int], float]:
        """Estimated seconds of one curve size, from the probe's rates: the fine-tune under its protocol (the same
        model and epochs as the study's, on the size's fitting four fifths) and the retrieval on the same. At the
        `reused` size the study's own fine-tune is only scored."""
        rates = self.state["plan"]["rates"]
        cfg = self.finetune_config(epochs=self.state["plan"]["finetune"]["epochs"])

        def cost(size: int) -> float:
            ev = max(1, size // 5)
            _, protocol = apply_protocol(cfg, size - ev)
            evaluations = 0 if size == reused else protocol.get("evaluations") or math.ceil(protocol["epochs"])
            embed = (size + n_test) * rates["embed_s_per_text"]
            predict = (n_test + evaluations * ev) * rates["infer_s_per_text"] + 2 * rates["load_s"]
            train = 0.0 if size == reused else protocol["steps"] * cfg.batch_size * rates["train_s_per_text"]
            return FIXED_SECONDS["curve_size"] + FIXED_SECONDS["finetune"] + embed + predict + train

        return cost

    def do_decide(self) -> None:
        from compare.decide import Constraints, decide

        report = read_json(self.out / "report.json", "report")
        curve_path = self.out / CURVE_FILE
        curve = read_json(curve_path, "learning curve") if curve_path.exists() else None
        train, test, info = self.split
        decision = decide(report, Constraints(), curve).to_dict()
        decision["measured_on"] = {
            "data": info["source"],
            "labels": info["labels"],
            "train_examples": train.num_rows,
            "test_examples": test.num_rows,
            "test_from": info["test_from"],
            "finetune": self.state.get("finetune") or {"skipped": self.state["plan"]["finetune"]["skipped"]},
            "rag_tuned": self.state.get("tune") or {"skipped": self.state["plan"]["tune"]["skipped"]},
            "notes": report.get("notes", []),
            "learning_curve": curve["sizes"] if curve else None,
            "budget": {
                "minutes": self.cfg.budget_minutes,
                "planned_minutes": self.record.minutes()["planned"],
                "spent_minutes_before_decide": round(self.record.seconds_spent() / 60, 3),
            },
        }
        atomic_write_json(self.out / DECISION_FILE, decision)


def deadline_callback(deadline: float):
    """A `TrainerCallback` that stops training once `time.monotonic()` passes `deadline`; ``.fired`` says if it did.

    The Trainer then evaluates and keeps its best checkpoint as usual, so a stopped fine-tune is still a model.
    """
    from transformers import TrainerCallback

    class _Deadline(TrainerCallback):
        fired = False

        def on_step_end(self, args, state, control, **kwargs):
            if time.monotonic() > deadline:
                self.fired = True
                control.should_training_stop = True

    return _Deadline()


LATE_GRACE = 0.15
"""Share of a stage's given time that it may still spend past its deadline when that finishes it (see
`deadline_progress`)."""


class OverBudget(StudyError):
    """A stage stopped because, measured on its first part, it would not end before its deadline."""


def deadline_progress(deadline: float, what: str, least: float = 0.05) -> Callable[[float, str], None]:
    """A ``progress(fraction, message)`` callback that raises `OverBudget` once the work done so far says the whole
    will end after `deadline` (``time.monotonic()``), or once the deadline has passed with work still to do: a stage
    whose cost the probe underestimated (a slower or busier machine) stops early instead of overrunning the budget.

    Estimates start once `least` of the work is done (too little is noise).
    """
    start = time.monotonic()

    def progress(fraction: float, message: str) -> None:
        now = time.monotonic()
        # A stage nearly done finishes, even late, when what is left of it is a sliver (at most LATE_GRACE of the
        # time it was given: an index whose embedding is done has only its vote and its file to make).
        left = (now - start) * (1 - fraction) / fraction if fraction >= least else math.inf
        if left <= LATE_GRACE * max(deadline - start, 0.0):
            return
        if now > deadline:
            raise OverBudget(f"{what} passed its deadline ({message})")
        if least <= fraction < 1:
            total = (now - start) / fraction
            if start + total > deadline:
                raise OverBudget(
                    f"{what} would take about {total / 60:.1f} min on this machine, {(deadline - start) / 60:.1f} "
                    f"min were left for it"
                )

    return progress


def write_report_into(report: dict[str, Any], out: Path) -> None:
    """`compare.report.write_report`'s files, moved one by one (each atomically) into `out` beside the study's
    other outputs (write_report itself replaces its directory as a whole)."""
    from compare.report import write_report

    stage = out / ".report"
    shutil.rmtree(stage, ignore_errors=True)
    write_report(report, stage)
    for file in sorted(stage.iterdir()):
        file.replace(out / file.name)
    shutil.rmtree(stage, ignore_errors=True)


# --- the command -----------------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Bad flags are a StudyError: one line on stderr and status 2, like every other bad input of the study."""

    def error(self, message: str):  # type: ignore[override]
        raise StudyError(message)


def parse_args(argv: list[str] | None) -> StudyConfig:
    """`StudyConfig` from the flags (one per field); a StudyError names a bad value."""
    parser = _Parser(
        description=__doc__.splitlines()[0], allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    add_config_arguments(parser, StudyConfig)
    try:
        return config_from_args(StudyConfig, parser.parse_args(argv))
    except ValueError as err:
        raise StudyError(str(err)) from err


def print_minutes(minutes: dict[str, Any], say: Callable[[str], None] = print) -> None:
    """The planned vs actual minutes per stage, as a small table."""
    say(f"{'stage':<10} {'planned':>8} {'actual':>8}")
    for name, row in minutes["stages"].items():
        planned = "-" if row["planned"] is None else f"{row['planned']:.2f}"
        actual = "-" if row["actual"] is None else f"{row['actual']:.2f}"
        say(f"{name:<10} {planned:>8} {actual:>8}")
    say(f"{'total':<10} {minutes['planned']:>8.2f} {minutes['actual']:>8.2f}")


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
        setup_logging()
        study = Study(cfg)
        decision = study.run()
    except (ValueError, FileExistsError, ArtifactError) as err:  # DataError, StudyError, FinetuneError, SourceError
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: run the same command again to resume the study", file=sys.stderr)
        return 130
    print_minutes(study.state["minutes"])
    choice = decision.get("choice")
    print(f"decision: {choice}" if choice else f"decision: none ({'; '.join(decision.get('caveats', []))})")
    print(f"outputs in {cfg.out}: report.md, report.json, decision.json, study.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
