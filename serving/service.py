"""The serving layer behind the app and the JSON API: loaded backends plus the calls people make on them.

Everything here is plain Python (no Gradio, no HTTP), so the UI handlers, the API routes and the tests all call the
same functions. Inputs are checked here, once, with messages meant for the person who typed them.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.files import ArtifactError
from core.limits import MAX_CHARS, MAX_TEXTS, MAX_UPLOAD_BYTES, MAX_UPLOAD_ROWS, check_upload_cells
from core.settings import screen_name
from core.types import Classifier, Prediction, Progress
from serving.access import Refused, TeachPolicy
from serving.batching import MicroBatcher, wait_ms_from_env

logger = logging.getLogger(__name__)

TRAINING_LOCK = threading.Lock()
"""One training at a time in this process: the demo builds, the start-up curve and visitors' studies all train with
the Hugging Face Trainer, whose `TrainingArguments` reset accelerate's process-wide state, so two at once break each
other (and would halve each other's speed anyway)."""
MAX_SESSION_EXAMPLES = 50
"""Examples one visitor may teach in their own session (each one is a vector held in that session)."""


def still_building() -> Refused:
    """The answer to a request that needs backends the start-up has not brought up yet: 503, try again in 30 s."""
    return Refused("the backends are still being built (the page shows how far); ask again in a minute", 503, 30)


class InputError(ValueError):
    """Input a person gave that cannot be used; the message says what to change."""


def validate_texts(texts: Any, what: str = "text") -> list[str]:
    """1 to MAX_TEXTS non-empty strings of at most MAX_CHARS characters, or an InputError saying which is wrong.

    >>> validate_texts(["ok"])
    ['ok']
    """
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise InputError(f"expected a list of {what}s, got {type(texts).__name__}")
    if not texts:
        raise InputError(f"no {what} given")
    if len(texts) > MAX_TEXTS:
        raise InputError(f"at most {MAX_TEXTS} {what}s per call, got {len(texts)}")
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{what} {i + 1} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise InputError(f"{what} {i + 1} is empty; type something to classify" if len(texts) > 1 else
                             f"the {what} is empty; type something to classify")  # fmt: skip
        if len(text) > MAX_CHARS:
            raise InputError(
                f"{what} {i + 1} has {len(text):,} characters; the limit is {MAX_CHARS:,} (a tweet has at most 280)"
            )
        if not _encodable(text):
            raise InputError(f"{what} {i + 1} is not valid Unicode (it holds a lone surrogate such as \\ud800)")
        out.append(text)
    return out


UPLOAD_SUFFIXES = (".csv", ".jsonl")


def uploaded_file(path: Any, root: str | Path) -> Path:
    """`path` when it is a file that was uploaded into the folder `root`, else an InputError that reveals nothing.

    A raw API call can name any server path as an "uploaded" file (Gradio's own check is skipped when the UI is
    mounted on another app), so every path a request hands over is checked here: resolved (no ``..``, no links out)
    and inside `root`.
    """
    refusal = InputError("that file was not uploaded here: upload a CSV or JSONL file with the file box")
    if not isinstance(path, (str, Path)) or not str(path):
        raise refusal
    try:
        file = Path(path).resolve(strict=True)
        inside = file.is_relative_to(Path(root).resolve(strict=True))
    except (OSError, RuntimeError, ValueError):
        raise refusal from None
    if not inside or not file.is_file():
        raise refusal
    if file.suffix.lower() not in UPLOAD_SUFFIXES:
        raise InputError(f"upload a .csv or .jsonl file, not {file.suffix or 'a file without an extension'}")
    size = file.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise InputError(f"the file is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 2**20:.0f} MB")
    return file


def load_upload(
    file: Path, labels: Sequence[str] | None = None, first_rows: bool = True, max_rows: int | None = MAX_UPLOAD_ROWS
):
    """The labeled rows of an uploaded file (see `uploaded_file`) and a note saying what was kept.

    Every text is held to `MAX_CHARS`, as typed text is, and must be valid Unicode: a bad row is refused with its row
    number, before any model sees it. Past `max_rows` rows (None: no cut; the caller bounds the count itself) the
    file is cut to its first rows (said in the note) when `first_rows`, refused otherwise. `labels` (the backends'
    label set) name integer ids, and a file may hold any subset of them. The labels are held to `core.limits` (how
    many, how long, rows x labels). Error messages name "the uploaded file", never a server path.
    """
    from core.data import DataError, label_names, load_tweets

    try:
        with tempfile.TemporaryDirectory(prefix="ftrag-upload-") as cache:  # nothing of it stays in any cache
            dataset = load_tweets(str(file), split="train", labels=labels, cache_dir=cache)
    except DataError as err:
        raise InputError(str(err).replace(str(file), "the uploaded file")) from None
    total = dataset.num_rows
    note = f"all {total:,} rows of the uploaded file"
    if max_rows is not None and total > max_rows:
        if not first_rows:
            raise InputError(f"the uploaded file has {total:,} rows; the limit is {max_rows:,}")
        dataset = dataset.select(range(max_rows))
        note = f"the first {max_rows:,} of {total:,} rows of the uploaded file (the limit per evaluation)"
    texts = dataset["text"]
    long_rows = [i for i, text in enumerate(texts) if len(text) > MAX_CHARS]
    if long_rows:
        longest = max(len(texts[i]) for i in long_rows)
        rows = ", ".join(str(i + 1) for i in long_rows[:5]) + (" ..." if len(long_rows) > 5 else "")
        raise InputError(
            f"{len(long_rows)} row(s) of the uploaded file have more than {MAX_CHARS:,} characters (rows {rows}; "
            f"the longest has {longest:,}); the limit is {MAX_CHARS:,} per text, as for typed text"
        )
    bad = [i for i, text in enumerate(texts) if not _encodable(text)]
    if bad:
        raise InputError(f"row {bad[0] + 1} of the uploaded file is not valid Unicode")
    try:
        check_upload_cells(dataset.num_rows, len(label_names(dataset)))
    except ValueError as err:
        raise InputError(str(err)) from None
    return dataset, note


def validate_labels(labels: Any, n: int, known: Sequence[str], what: str = "text") -> list[str]:
    """One known label per text, or an InputError saying which are wrong (echoing at most a few of them).

    >>> validate_labels(["a"], 1, ["a", "b"])
    ['a']
    """
    if not isinstance(labels, (list, tuple)) or len(labels) != n:
        given = len(labels) if isinstance(labels, (list, tuple)) else 0
        raise InputError(f"give one label per {what}: {n} {what}s, {given} labels")
    bad = sorted({str(x) for x in labels if x not in known})
    if bad:
        raise InputError(f"unknown label(s) {_few(bad)}; use one of {list(known)}")
    return list(labels)


_ABSOLUTE_PATH = re.compile(r"(?<![\w/.~:])/[^\s'\"()\[\],;]+")


def hide_paths(text: str) -> str:
    """`text` with every path on this server cut to its last two parts: answers never show where files live.

    A server path is an absolute path whose first folder exists here (``/tmp/...``, ``/home/...``), whether or not
    the rest does; anything else is a user's text and is left as it is (``$5 /month``, ``/r/funny/comments/x``).

    >>> hide_paths("/tmp/app/artifacts/rag/index.faiss: index file is missing; 3 tweets /day")
    'rag/index.faiss: index file is missing; 3 tweets /day'
    """
    roots = {entry.name for entry in _top_folders()}

    def hidden(match: re.Match) -> str:
        parts = Path(match.group()).parts[1:]  # without the leading "/"
        return "/".join(parts[-2:]) if len(parts) > 1 and parts[0] in roots else match.group()

    return _ABSOLUTE_PATH.sub(hidden, str(text))


def _top_folders() -> list[os.DirEntry]:
    try:
        with os.scandir("/") as entries:
            return [entry for entry in entries if entry.is_dir()]
    except OSError:
        return []


def _few(items: Sequence[Any], n: int = 5, chars: int = 40) -> list[str]:
    """At most `n` of `items`, each cut to `chars` characters: what an error message may echo of the input.

    >>> _few(["a" * 100, "b"], n=1, chars=3)
    ['aaa…', '… and 1 more']
    """
    shown = [str(x)[:chars] + ("…" if len(str(x)) > chars else "") for x in list(items)[:n]]
    return shown + ([f"… and {len(items) - n} more"] if len(items) > n else [])


Answer = tuple[Prediction, float]
"""A backend's answer to one text and how long it took, in ms."""


def derived_hybrids(chosen: dict[str, Classifier]) -> dict[str, tuple[Any, str, str]]:
    """The hybrids in `chosen` whose primary and secondary are chosen too, as ``{name: (hybrid, primary name,
    secondary name)}``: their answers are combined from the parts' answers instead of running both models again."""
    from compare.hybrid import HybridClassifier

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


def _encodable(text: str) -> bool:
    """True when `text` can be written as UTF-8 (JSON allows lone surrogates like "\\ud800"; tokenizers do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@dataclass
class Service:
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

        holder = clf if hasattr(clf, "serve_as") else getattr(clf, "embedder", None)
        if self.precision != "auto" or not hasattr(holder, "serve_as"):
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
        chosen, record = choose(holder.serve_as, predict, list(validation["text"]), list(validation["label"]))
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
        """The hybrid of the fine-tune and the index, fitted on the fine-tune's validation slice (compare.hybrid)."""
        from compare.hybrid import default_hybrid
        from core.data import DataError

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
                                for shown, b in zip(_few(unknown), unknown, strict=False))  # fmt: skip
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
        hybrid served with its parts runs nothing of its own); None (the process's setting) for a single backend."""
        running = len(self.backends) - len(derived_hybrids(self.backends))
        if running < 2:
            return None
        return max(1, self._cores // running)

    @functools.cached_property
    def _cores(self) -> int:
        """PyTorch's intra-op thread count when the first batcher is made (OMP_NUM_THREADS or the cores)."""
        import torch

        return torch.get_num_threads()

    def teach(self, texts: Any, labels: Any, token: str | None = None, client: str = "") -> dict[str, Any]:
        """Add labeled examples to the shared retrieval index, if `teach_policy` allows this client.

        Recorded in the teach log first (one fsynced insert), searchable as soon as this returns; exact duplicates
        of a taught example are merged. Returns the ids (for `forget`), and what retraining the fine-tune would cost.
        """
        texts = validate_texts(texts, "example")
        self.teach_policy.check(token, client, examples=len(texts))  # who may, before anything about the index
        rag = self._teachable()
        labels = validate_labels([labels] if isinstance(labels, str) else labels, len(texts), rag.labels, "example")
        start = time.perf_counter()
        written = rag.teach(list(texts), list(labels), client=client)
        seconds = time.perf_counter() - start
        self._changes += 1
        merged = sum(w["merged"] for w in written)
        return {
            "added": len(texts) - merged,
            "merged": merged,
            "ids": [w["id"] for w in written],
            "index_size": rag.size,
            "seconds": round(seconds, 4),
            **self.retrain_cost(),
        }

    def forget(self, teach_id: Any, token: str | None = None, client: str = "") -> dict[str, Any]:
        """Remove one taught example from the shared index (the undo of `teach`), if `teach_policy` allows it."""
        if isinstance(teach_id, bool) or not isinstance(teach_id, int) or teach_id < 1:
            raise InputError(f"a taught example's id is a positive integer, got {str(teach_id)[:40]!r}")
        self.teach_policy.check(token, client, examples=1)
        rag = self._teachable()
        try:
            forgotten = rag.forget(teach_id)
        except ValueError as err:  # an index that cannot remove examples (approximate ones)
            raise InputError(str(err)) from err
        if not forgotten:
            raise Refused(f"no taught example has id {teach_id} (or it was already removed)", 404)
        self._changes += 1
        return {"removed": teach_id, "index_size": rag.size}

    def teach_session(self, text: Any, label: Any, own: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        """A visitor's own taught examples, `own`, plus this one: embedded once, checked, never in the shared index.

        The page keeps the list in the visitor's session; `compare_session` answers with it. At most
        MAX_SESSION_EXAMPLES per session.
        """
        rag = self._retrieval()
        [text] = validate_texts([text], "example")
        [label] = validate_labels([label], 1, rag.labels, "example")
        if len(own) >= MAX_SESSION_EXAMPLES:
            raise InputError(f"a session holds at most {MAX_SESSION_EXAMPLES} taught examples; undo some first")
        return [*own, rag.embed_example(text, label)]

    def compare_session(self, query: Any, own: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """The retrieval answer for `query` before and after the visitor's own examples `own` (see `teach_session`)."""
        rag = self._retrieval()
        [query] = validate_texts([query], "query")
        before = rag.predict([query])[0]
        after = rag.predict_with([query], list(own))[0]
        return {"before": before.to_dict(), "after": after.to_dict()}

    def _retrieval(self):
        rag = self.backends.get("rag")
        if rag is None:
            if "rag" not in self.unavailable and not self.ready.is_set():
                raise still_building()
            why = self.unavailable.get("rag", "not served")
            raise InputError(f"the retrieval backend is not available: {why}")
        return rag

    def _teachable(self):
        """The shared index to teach; callers check `teach_policy` first, so a caller without the right to teach
        learns nothing about the index (401 or 403, not 400 or 503)."""
        rag = self._retrieval()
        if getattr(rag, "log", None) is None:
            raise InputError("this retrieval index has no teach log (it was loaded without a directory)")
        return rag

    def start_compactor(self, interval_s: float) -> threading.Thread | None:
        """Every `interval_s` seconds, in a background thread, `compact_when_changed` (0 = never)."""
        if interval_s <= 0:
            return None

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.compact_when_changed()
                except (OSError, ValueError, sqlite3.Error) as err:  # a full disk, a busy log: it holds all; try later
                    logger.warning("Compacting the teach log failed (%s); it stays as it is", err)

        thread = threading.Thread(target=loop, name="teach-log-compactor", daemon=True)
        thread.start()
        return thread

    def close(self) -> None:
        """Stop background work (the compactor, the batchers' worker threads)."""
        self._stop.set()
        for batcher in self._batchers.values():
            batcher.close()

    def compact_when_changed(self) -> bool:
        """Fold the teach log into the index files if anything was taught or removed since the last time."""
        rag = self.backends.get("rag")
        if not self._changes or rag is None or getattr(rag, "log", None) is None:
            return False
        changes = self._changes
        rag.compact()
        self._changes -= changes  # what happened during the compaction waits for the next one
        return True

    def retrain_cost(self) -> dict[str, Any]:
        """What the fine-tuned model would need to learn the same examples: a retrain, of the measured length."""
        meta = getattr(self.backends.get("finetune"), "meta", None) or {}
        seconds = meta.get("train_seconds")
        return {
            "finetune_retrain_seconds": seconds,
            "finetune_note": (
                f"the fine-tuned model does not learn taught examples until it is retrained: its last training took "
                f"{seconds:.0f} s on {meta.get('train_size')} examples ({meta.get('device', 'cpu')})"
                if seconds is not None
                else "the fine-tuned model does not learn taught examples until it is retrained"
            ),
        }

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
        from core.precision import Hardware

        trials = {}
        for name, clf in self.backends.items():
            holder = clf if hasattr(clf, "serve_as") else getattr(clf, "embedder", None)
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
