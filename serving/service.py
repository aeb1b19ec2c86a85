"""The serving layer behind the app and the JSON API: loaded backends plus the calls people make on them.

Everything here is plain Python (no Gradio, no HTTP), so the UI handlers, the API routes and the tests all call the
same functions. Inputs are checked here, once, with messages meant for the person who typed them.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.files import ArtifactError
from core.settings import screen_name
from core.types import Classifier, Prediction, Progress
from serving.access import TeachPolicy
from serving.batching import MicroBatcher, wait_ms_from_env
from serving.inputs import (
    InputError,
    few,
    hide_paths,
    still_building,
    validate_texts,
)
from serving.teaching import Teaching

logger = logging.getLogger(__name__)

TRAINING_LOCK = threading.Lock()
"""One training at a time in this process: the demo builds, the start-up curve and visitors' studies all train with
the Hugging Face Trainer, whose `TrainingArguments` reset accelerate's process-wide state, so two at once break each
other (and would halve each other's speed anyway)."""


Answer = tuple[Prediction, float]
"""A backend's answer to one text and how long it took, in ms."""


def derived_hybrids(chosen: dict[str, Classifier]) -> dict[str, tuple[Any, str, str]]:
    """The hybrids in `chosen` whose primary and secondary are chosen too, as ``{name: (hybrid, primary name,
    secondary name)}``: their answers are combined from the parts' answers instead of running both models again."""
    from hybrid import HybridClassifier

    names = {id(clf): name for name, clf in chosen.items()}
    return {
        name: (clf, names[id(clf.primary)], names[id(clf.secondary)])
        for name, clf in chosen.items()
        if isinstance(clf, HybridClassifier)
        and all(id(part) in names and not isinstance(part, HybridClassifier) for part in (clf.primary, clf.secondary))
    }


def precision_setting() -> str:
    """``FTRAG_PRECISION`` checked (fp32 when unset); a bad value is a ValueError naming it."""
    from core.precision import requested

    return requested()[0]


@dataclass
class Service(Teaching):
    """The loaded backends (by name), and why any expected one is missing."""

    backends: dict[str, Classifier] = field(default_factory=dict)
    unavailable: dict[str, str] = field(default_factory=dict)
    artifacts: Path | None = None
    started_seconds: float = 0.0

    teach_policy: TeachPolicy = field(default_factory=TeachPolicy.from_env)
    batch_wait_ms: float = field(default_factory=wait_ms_from_env)
    precision: str = field(default_factory=precision_setting)
    """fp32, bf16, int8 (each backend loads it from ``FTRAG_PRECISION``) or auto (chosen here: `_serve_precision`)."""

    def __post_init__(self) -> None:
        self._changes = 0  # teaches and removals since the last compaction
        self._stop = threading.Event()
        self._batchers: dict[str, MicroBatcher] = {}
        self._batchers_lock = threading.Lock()
        self.ready = threading.Event()  # set once every backend of the line-up is up (or known unavailable)
        self.expected: list[str] = []  # the line-up's names, in the order they come up
        self.building: dict[str, tuple[float, str]] = {}  # name -> (progress 0..1, what it is doing)

    # --- start-up --------------------------------------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        artifacts: str | Path = "artifacts",
        *,
        build_missing: bool = True,
        progress: Progress | None = None,
        finetune_dir: str | Path | None = None,
        rag_dir: str | Path | None = None,
        scratch_gpt2: bool = False,
        background: bool = False,
        on_ready: Callable[[], None] | None = None,
    ) -> Service:
        """Load the line-up of `serving.build.line_up` (retrieval, the fine-tune, extras) and build the missing ones.

        With `background`, this returns at once (the page can be served while the backends build): each backend
        joins `backends` as soon as it is loaded, `status()` tells how far each one is, and `on_ready` runs once all
        are up. A damaged artifact is never rebuilt over (nothing saved is lost): that backend is reported
        unavailable, with the reason, and the others are served.
        """
        from serving.build import line_up

        service = cls(artifacts=Path(artifacts))
        steps = line_up(Path(artifacts), finetune_dir, rag_dir, scratch_gpt2)
        service.expected = [step.name for step in steps] + ["hybrid"]
        if os.environ.get("FTRAG_LLM"):
            service.expected.append("rag-llm")  # a column from the start, filled in once the index is up
        service.building = {step.name: (0.0, "waiting") for step in steps}
        args = (steps, build_missing, progress, on_ready)
        if background:
            threading.Thread(target=service._bring_up, args=args, name="bring-up", daemon=True).start()
        else:
            service._bring_up(*args)
        return service

    def _bring_up(self, steps, build_missing: bool, progress: Progress | None, on_ready) -> None:
        from serving.build import DemoData

        start = time.perf_counter()
        data = DemoData()
        for i, step in enumerate(steps):

            def report(fraction: float, message: str, step=step, i=i) -> None:
                self.building[step.name] = (fraction, message)
                if progress is not None:
                    progress((i + fraction) / len(steps), f"{step.name}: {message}")

            try:
                if not step.path.exists() and build_missing and step.build is not None:
                    report(0.0, "building")
                    with TRAINING_LOCK:
                        step.build(step.path, report, data)
                if not step.path.exists():
                    raise ArtifactError(f"{step.path}: not built (start with building on, or build it from the CLI)")
                report(0.97, "loading")
                clf = step.load(step.path)
                self._serve_precision(step.name, clf, data, report)
                self._add(step.name, clf)
                report(1.0, "ready")
            except Exception as err:  # whatever one backend raises (a damaged file, out of memory), the others serve
                expected = isinstance(err, (ArtifactError, ValueError, OSError, ImportError))
                logger.error("%s is unavailable: %s", step.name, err, exc_info=not expected)
                self.unavailable[step.name] = hide_paths(str(err))
                self.building[step.name] = (1.0, "unavailable")
        try:
            self._add_hybrid()
            self._add_llm_contender()
            if self.backends:  # the first real request should not pay for lazy set-up (thread pools, the trace)
                self.classify(["warming up"])
        except Exception:  # the backends are up: a failed extra or warm-up must not leave the app "building" forever
            logger.exception("After loading the backends")
        finally:
            self.started_seconds = time.perf_counter() - start
            self.ready.set()
        if progress is not None:
            progress(1.0, "ready")
        if on_ready is not None:
            try:
                on_ready()
            except Exception:
                logger.exception("The start-up work after the backends (comparison, curve) failed")

    def _serve_precision(self, name: str, clf: Classifier, data, report: Callable[[float, str], None]) -> None:
        """With precision ``auto``: score each variant of the backend's transformer (its own, or its embedder's) on
        the line-up's validation part and serve the fastest that answers like fp32 (`compare.precision.choose`)."""
        from compare.precision import choose
        from core.precision import variant_holder

        holder = variant_holder(clf)
        if self.precision != "auto" or holder is None:
            return
        report(0.97, "choosing its precision (auto): timing each candidate on the validation part")
        try:
            _, validation, _ = data.parts()
        except Exception as err:  # no data to measure on: fp32, and the reason
            holder.serving_why = f"auto: no validation part to measure on ({type(err).__name__}): serving fp32"
            logger.warning("%s: %s", name, holder.serving_why)
            return
        # A retrieval backend leaves each text's own copy out of its index, as when its vote was chosen.
        predict = functools.partial(clf.predict, exclude_identical=True) if holder is not clf else clf.predict
        texts, labels = list(validation["text"]), list(validation["label"])
        chosen, record = choose(holder.serve_as, predict, texts, labels, threads=self._served_share())
        # A frozen trace runs fastest on the thread that made it (measured: 3.3 vs 9.5 ms for MiniLM): the served one
        # is made again at the first request, by the batcher's worker, as the fp32 trace always was.
        holder.serve_as(chosen, record["why"], now=chosen.runtime != "torch")
        holder.precision_trials = record
        logger.info("%s: %s", name, record["why"])

    def _add(self, name: str, clf: Classifier) -> None:
        """Serve `clf` as `name`, unless its labels are not those of the backends already served."""
        first = next(iter(self.backends.items()), None)
        if first is not None and set(clf.labels) != set(first[1].labels):
            raise ValueError(f"its labels {list(clf.labels)} are not the labels of {first[0]} {list(first[1].labels)}")
        if name == "rag" and clf.log is None:
            clf.open_log()  # taught examples go to a log beside the index
        self.backends = {**self.backends, name: clf}  # a new dict: readers iterate a snapshot, never a changing one

    def _add_hybrid(self) -> None:
        """The hybrid of the fine-tune and the index, fitted on the fine-tune's validation slice (hybrid)."""
        from core.data import DataError
        from hybrid import default_hybrid

        if "finetune" not in self.backends or "rag" not in self.backends:
            self._not_served("hybrid", "it needs both the fine-tune and retrieval")
            return
        self.building["hybrid"] = (0.0, "fitting on the fine-tune's validation slice")
        try:
            hybrid = default_hybrid(self.backends["finetune"], self.backends["rag"])
            if hybrid is None:  # a fine-tune that keeps no split: nowhere to fit it without leaking
                self._not_served("hybrid", "the fine-tune keeps no record of its validation rows (split.json)")
                return
            self._add("hybrid", hybrid)
            self.building["hybrid"] = (1.0, "ready")
        except (DataError, ValueError, OSError) as err:
            logger.error("hybrid is unavailable: %s", err)
            self.unavailable["hybrid"] = hide_paths(str(err))
            self.building["hybrid"] = (1.0, "unavailable")

    def _not_served(self, name: str, why: str) -> None:
        """Leave `name` out of the line-up, saying why (its column in a page built earlier shows the reason)."""
        logger.info("No %s: %s", name, why)
        self.expected = [other for other in self.expected if other != name]
        self.building[name] = (1.0, f"not served: {why}")

    def status(self) -> dict[str, Any]:
        """How far the start-up is: each expected backend's progress (0 to 1) and what it is doing."""
        backends = {}
        for name in self.expected:
            fraction, message = self.building.get(name, (0.0, "waiting"))
            state = "ready" if name in self.backends else "unavailable" if name in self.unavailable else "building"
            backends[name] = {"state": state, "progress": round(fraction, 3), "message": hide_paths(message)}
        return {"ready": self.ready.is_set(), "backends": backends}

    def _add_llm_contender(self) -> None:
        """With ``FTRAG_LLM`` set, the retrieval index's neighbours in a few-shot prompt to that LLM: ``rag-llm``."""
        from rag.chain import LLM_ENV_VAR, LlmUnavailable, llm_classifier

        if not os.environ.get(LLM_ENV_VAR):
            return
        if "rag" not in self.backends:
            self._not_served("rag-llm", "it needs the retrieval index")
            return
        try:
            self._add("rag-llm", llm_classifier(self.backends["rag"]))
        except LlmUnavailable as err:
            logger.error("rag-llm is unavailable: %s", err)
            self.unavailable["rag-llm"] = hide_paths(str(err))

    # --- calls -----------------------------------------------------------------------------------------------------

    def labels(self) -> list[str]:
        """The label set the loaded backends answer with (all share one; see compare.evaluation.check_backends)."""
        from core.types import LABELS

        first = next(iter(self.backends.values()), None)
        return list(first.labels) if first is not None else list(LABELS)

    def _pick(self, backends: Sequence[str] | None) -> dict[str, Classifier]:
        if backends is None:
            chosen = dict(self.backends)
        else:
            unknown = [b for b in backends if b not in self.backends]
            if unknown:
                why = "; ".join(f"{shown}: {self.unavailable.get(b, 'no such backend')}"
                                for shown, b in zip(few(unknown), unknown, strict=False))  # fmt: skip
                raise InputError(f"backend(s) not available ({why}); available: {sorted(self.backends)}")
            chosen = {b: self.backends[b] for b in backends}
        if not chosen:
            if not self.ready.is_set() and self.expected:
                raise still_building()
            raise InputError(f"no backend is available: {self.unavailable or 'none loaded'}")
        return chosen

    def classify(self, texts: Any, backends: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Each text through each backend.

        A single text goes through each backend's micro-batcher (see `serving.batching`) when batching is on, so
        concurrent single-text requests share batched model calls; ``latency_ms`` is then the request's own wait.
        A hybrid whose two parts are asked for too is combined from their answers (`HybridClassifier.merge`), not
        run a second time; its ``latency_ms`` is then the time both parts took: the longer of the two when they ran
        side by side (a batched single text), their sum when they ran one after the other.

        Returns ``[{"text", "results": {backend: {label, scores, evidence, latency_ms}}}]``.
        """
        texts = validate_texts(texts)
        chosen = self._pick(backends)
        derived = derived_hybrids(chosen)
        run = {name: clf for name, clf in chosen.items() if name not in derived}
        # A single text goes to every backend's batcher at once (side by side); otherwise one backend after the other.
        side_by_side = len(texts) == 1 and self.batch_wait_ms > 0
        answers = [self._classify_one(texts[0], run)] if side_by_side else self._classify_many(texts, run)
        for name, (hybrid, first, second) in derived.items():
            for row in answers:
                (a, a_ms), (b, b_ms) = row[first], row[second]
                row[name] = (hybrid.merge(a, b), max(a_ms, b_ms) if side_by_side else a_ms + b_ms)
        return [
            {"text": text, "results": {name: {**row[name][0].to_dict(), "latency_ms": round(row[name][1], 2)}
                                       for name in chosen}}
            for text, row in zip(texts, answers, strict=True)
        ]  # fmt: skip

    def _classify_many(self, texts: list[str], chosen: dict[str, Classifier]) -> list[dict[str, Answer]]:
        """Each backend's batched answers to `texts`, with its time per text in ms."""
        out: list[dict[str, Answer]] = [{} for _ in texts]
        for name, clf in chosen.items():
            start = time.perf_counter()
            predictions = clf.predict(texts)
            ms = (time.perf_counter() - start) * 1000 / len(texts)
            for row, p in zip(out, predictions, strict=True):
                row[name] = (p, ms)
        return out

    def _classify_one(self, text: str, chosen: dict[str, Classifier]) -> dict[str, Answer]:
        """Each backend's answer to one text through its micro-batcher, with the time until it came in ms."""
        start = time.perf_counter()
        done: dict[str, float] = {}
        futures = {}
        share = self._share()
        for name, clf in chosen.items():  # every backend works on it at once, each in its own batch
            futures[name] = self._batcher(name, clf, share).submit(text)
            futures[name].add_done_callback(lambda _, name=name: done.__setitem__(name, time.perf_counter()))
        answers = {}
        for name, future in futures.items():
            prediction = future.result()
            answers[name] = (prediction, (done.get(name, time.perf_counter()) - start) * 1000)
        return answers

    def _batcher(self, name: str, clf: Classifier, share: int | None) -> MicroBatcher:
        """`name`'s batcher for `clf` on `share` threads (`_share`): the share changes while the line-up comes up, and
        a batcher made earlier is then replaced."""

        def current(batcher: MicroBatcher | None) -> bool:
            return batcher is not None and batcher.classifier is clf and batcher.threads == share

        batcher = self._batchers.get(name)
        if not current(batcher):
            with self._batchers_lock:
                batcher = self._batchers.get(name)
                if not current(batcher):
                    if batcher is not None:
                        batcher.close()  # it still answers what it holds, then its worker ends
                    batcher = self._batchers[name] = MicroBatcher(clf, self.batch_wait_ms, threads=share)
        return batcher

    def _share(self) -> int | None:
        """Intra-op threads for one backend's batcher: the cores split between the backends a classify runs (a
        hybrid served with its parts runs nothing of its own)."""
        return self._split_cores(len(self.backends) - len(derived_hybrids(self.backends)))

    def _served_share(self) -> int | None:
        """The threads each backend's batcher gets once the whole expected line-up is up (`_share` of it): what
        `auto` times its candidates on."""
        return self._split_cores(len([name for name in self.expected if name != "hybrid"]))

    def _split_cores(self, running: int) -> int | None:
        """The cores split between `running` backends; None (the process's setting) for a single backend."""
        return None if running < 2 else max(1, self._cores // running)

    @functools.cached_property
    def _cores(self) -> int:
        """PyTorch's intra-op thread count when the first batcher is made (OMP_NUM_THREADS or the cores)."""
        import torch

        return torch.get_num_threads()

    def close(self) -> None:
        """Stop background work (the compactor, the batchers' worker threads)."""
        self._stop.set()
        for batcher in self._batchers.values():
            batcher.close()

    def models(self) -> dict[str, Any]:
        """What is loaded: each backend's description and run.json essentials (how many labeled examples it learned
        from, ``train_size``, and chose its settings on, ``validation_size``), what is unavailable and why, how far
        the start-up is, and how micro-batching runs (`batching`)."""
        from core.precision import served

        out: dict[str, Any] = {"backends": {}, "unavailable": dict(self.unavailable), "start_up": self.status()}
        for name, clf in self.backends.items():
            meta = dict(getattr(clf, "meta", {}) or {})
            describe = getattr(clf, "describe", None)
            out["backends"][name] = {
                "description": hide_paths(describe() if callable(describe) else name),
                "from_scratch": bool(meta.get("from_scratch")),
                "base_model": hide_paths(meta["base_model"]) if meta.get("base_model") else None,
                "notice": meta.get("notice"),
                "data_source": hide_paths(meta.get("data_source") or "") or None,
                "train_size": meta.get("train_size", meta.get("size")),
                "validation_size": meta.get(
                    "eval_size", meta.get("validation_size", (meta.get("fit") or {}).get("validation_size"))
                ),
                "seconds": meta.get("train_seconds", meta.get("build_seconds")),
                "eval_accuracy": meta.get("eval_accuracy"),
                "eval_macro_f1": meta.get("eval_macro_f1"),
                "embedder": screen_name(meta["embedder"]) if meta.get("embedder") else None,
                "k": getattr(clf, "k", None),
                "size": getattr(clf, "size", None),
                "labels": list(clf.labels),
                "serving": served(clf),
            }
        out["batching"] = self.batching()
        out["precision"] = self.precision_report()
        return out

    def precision_report(self) -> dict[str, Any]:
        """The precision setting, this CPU's instructions, and each backend's `auto` trials (when it ran)."""
        from core.precision import Hardware, variant_holder

        trials = {}
        for name, clf in self.backends.items():
            holder = variant_holder(clf)
            if getattr(holder, "precision_trials", None):
                trials[name] = holder.precision_trials
        return {"setting": self.precision, "hardware": Hardware.detect().describe(), "auto": trials}

    def batching(self) -> dict[str, Any]:
        """Micro-batching as it runs: the wait (0 = off) and, per backend whose batcher has started, the batches and
        texts it has answered and its intra-op threads (counts start again when a batcher is replaced)."""
        counts = {
            name: {"batches": b.batches, "texts": b.texts, "threads": b.threads}
            for name, b in dict(self._batchers).items()
        }
        return {"wait_ms": self.batch_wait_ms, "backends": dict(sorted(counts.items()))}


def fetch_artifacts(repo_id: str, dest: str | Path, revision: str | None = None) -> Path:
    """Download prebuilt ``finetune/`` and ``rag/`` artifacts from a Hugging Face Hub repo into `dest`.

    Only those two folders (plus report/ and curve/ when present) are fetched; what is already in `dest` is kept
    when the download fails.

    Raises:
        ArtifactError: the Hub cannot be reached, the repo does not exist, or it holds neither folder.
    """
    from huggingface_hub import snapshot_download

    from core.settings import hub_reachable

    dest = Path(dest)
    if not hub_reachable():
        raise ArtifactError(f"cannot fetch artifacts from the Hub repo {repo_id!r}: the Hub cannot be reached")
    try:
        local = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                allow_patterns=["finetune/*", "rag/*", "report/*", "curve/*"],
                local_dir=dest,
            )
        )
    except Exception as err:  # network, authentication, no such repo: one message that names the repo
        why = f"{type(err).__name__}: {err}"
        raise ArtifactError(f"cannot fetch artifacts from the Hub repo {repo_id!r}: {why}") from err
    if not any((local / name).is_dir() for name in ("finetune", "rag")):
        raise ArtifactError(f"the Hub repo {repo_id!r} holds neither a finetune/ nor a rag/ folder")
    return local
