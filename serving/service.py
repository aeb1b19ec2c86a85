"""The serving layer behind the app and the JSON API: loaded backends plus the calls people make on them.

Everything here is plain Python (no Gradio, no HTTP), so the UI handlers, the API routes and the tests all call the
same functions. Inputs are checked here, once, with messages meant for the person who typed them.
"""

from __future__ import annotations

import logging
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
from core.limits import MAX_CHARS, MAX_TEXTS, MAX_UPLOAD_BYTES, MAX_UPLOAD_ROWS
from core.types import Classifier
from serving.access import Refused, TeachPolicy
from serving.batching import MicroBatcher, wait_ms_from_env

logger = logging.getLogger(__name__)

DEMO_FINETUNE_SIZE = 3000
DEMO_SCRATCH_EPOCHS = 3

Progress = Callable[[float, str], None]


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


def load_upload(file: Path, labels: Sequence[str] | None = None, first_rows: bool = True):
    """The labeled rows of an uploaded file (see `uploaded_file`) and a note saying what was kept.

    Every text is held to `MAX_CHARS`, as typed text is: a longer row is refused with its row number, before any
    model sees it. Past `MAX_UPLOAD_ROWS` rows the file is cut to its first rows (said in the note) when
    `first_rows`, refused otherwise. `labels` (the backends' label set) name integer ids, and a file may hold any
    subset of them. Error messages name "the uploaded file", never a server path.
    """
    from core.data import DataError, load_tweets

    try:
        with tempfile.TemporaryDirectory(prefix="ftrag-upload-") as cache:  # nothing of it stays in any cache
            dataset = load_tweets(str(file), split="train", labels=labels, cache_dir=cache)
    except DataError as err:
        raise InputError(str(err).replace(str(file), "the uploaded file")) from None
    total = dataset.num_rows
    note = f"all {total:,} rows of the uploaded file"
    if total > MAX_UPLOAD_ROWS:
        if not first_rows:
            raise InputError(f"the uploaded file has {total:,} rows; the limit is {MAX_UPLOAD_ROWS:,}")
        dataset = dataset.select(range(MAX_UPLOAD_ROWS))
        note = f"the first {MAX_UPLOAD_ROWS:,} of {total:,} rows of the uploaded file (the limit per evaluation)"
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
    """`text` with every absolute path cut to its last two parts: answers never show where files live on the server.

    >>> hide_paths("/srv/app/artifacts/rag/index.faiss: index file is missing")
    'rag/index.faiss: index file is missing'
    """
    return _ABSOLUTE_PATH.sub(lambda m: "/".join(Path(m.group()).parts[-2:]), str(text))


def _few(items: Sequence[Any], n: int = 5, chars: int = 40) -> list[str]:
    """At most `n` of `items`, each cut to `chars` characters: what an error message may echo of the input.

    >>> _few(["a" * 100, "b"], n=1, chars=3)
    ['aaa…', '… and 1 more']
    """
    shown = [str(x)[:chars] + ("…" if len(str(x)) > chars else "") for x in list(items)[:n]]
    return shown + ([f"… and {len(items) - n} more"] if len(items) > n else [])


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

    def __post_init__(self) -> None:
        self._changes = 0  # teaches and removals since the last compaction
        self._stop = threading.Event()
        self._batchers: dict[str, MicroBatcher] = {}
        self._batchers_lock = threading.Lock()

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
    ) -> Service:
        """Load ``<artifacts>/finetune`` and ``<artifacts>/rag``; build the missing ones when `build_missing`.

        A damaged artifact is never rebuilt over (nothing saved is lost): that backend is reported unavailable, with
        the reason, and the other one is served.
        """
        import finetune
        import rag

        start = time.perf_counter()
        report = progress or (lambda fraction, message: None)
        artifacts = Path(artifacts)
        paths = {"finetune": Path(finetune_dir or artifacts / "finetune"), "rag": Path(rag_dir or artifacts / "rag")}
        service = cls(artifacts=artifacts)
        loaders = {"finetune": finetune.load, "rag": rag.load}
        builders = {"finetune": build_demo_finetune, "rag": build_demo_index}
        for i, (name, path) in enumerate(paths.items()):
            base = 0.5 * i
            try:
                if not path.exists() and build_missing:
                    report(base, f"{name}: nothing at {path}; building it")
                    builders[name](path, lambda f, m, base=base, name=name: report(base + 0.5 * f, f"{name}: {m}"))
                if not path.exists():
                    raise ArtifactError(f"{path}: not built (start with building enabled, or build it from the CLI)")
                report(base + 0.45, f"{name}: loading {path}")
                service.backends[name] = loaders[name](path)
                if name == "rag" and service.backends[name].log is None:
                    service.backends[name].open_log()  # taught examples go to a log beside the index
            except (ArtifactError, ValueError, OSError) as err:
                logger.error("%s is unavailable: %s", name, err)
                service.unavailable[name] = hide_paths(str(err))
        service._add_llm_contender()
        service._refuse_mixed_labels()
        if service.backends:  # the first real request should not pay for lazy set-up (thread pools, the trace)
            report(0.98, "warming up")
            service.classify(["warming up"])
        service.started_seconds = time.perf_counter() - start
        report(1.0, "ready")
        return service

    def _add_llm_contender(self) -> None:
        """With ``FTRAG_LLM`` set, the retrieval index's neighbours in a few-shot prompt to that LLM: ``rag-llm``."""
        import os

        from rag.chain import LLM_ENV_VAR, LlmUnavailable, llm_classifier

        if not os.environ.get(LLM_ENV_VAR) or "rag" not in self.backends:
            return
        try:
            self.backends["rag-llm"] = llm_classifier(self.backends["rag"])
        except LlmUnavailable as err:
            logger.error("rag-llm is unavailable: %s", err)
            self.unavailable["rag-llm"] = hide_paths(str(err))

    def _refuse_mixed_labels(self) -> None:
        """Backends trained on another label set than the first one are not served (their answers cannot meet)."""
        first = next(iter(self.backends.items()), None)
        for name, clf in list(self.backends.items())[1:]:
            if set(clf.labels) != set(first[1].labels):
                why = f"its labels {list(clf.labels)} are not the labels of {first[0]} {list(first[1].labels)}"
                logger.error("%s is unavailable: %s", name, why)
                self.unavailable[name] = why
                del self.backends[name]

    # --- calls -----------------------------------------------------------------------------------------------------

    def labels(self) -> list[str]:
        """The label set the loaded backends answer with (they all share one; see compare.runner.check_backends)."""
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
            raise InputError(f"no backend is available: {self.unavailable or 'none loaded'}")
        return chosen

    def classify(self, texts: Any, backends: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """Each text through each backend.

        A single text goes through each backend's micro-batcher (see `serving.batching`) when batching is on, so
        concurrent single-text requests share batched model calls; ``latency_ms`` is then the request's own wait.

        Returns ``[{"text", "results": {backend: {label, scores, evidence, latency_ms}}}]``.
        """
        texts = validate_texts(texts)
        chosen = self._pick(backends)
        if len(texts) == 1 and self.batch_wait_ms > 0:
            return [{"text": texts[0], "results": self._classify_one(texts[0], chosen)}]
        out = [{"text": t, "results": {}} for t in texts]
        for name, clf in chosen.items():
            start = time.perf_counter()
            predictions = clf.predict(texts)
            ms = (time.perf_counter() - start) * 1000 / len(texts)
            for row, p in zip(out, predictions, strict=True):
                row["results"][name] = {**p.to_dict(), "latency_ms": round(ms, 2)}
        return out

    def _classify_one(self, text: str, chosen: dict[str, Classifier]) -> dict[str, Any]:
        start = time.perf_counter()
        done: dict[str, float] = {}
        futures = {}
        for name, clf in chosen.items():  # every backend works on it at once, each in its own batch
            futures[name] = self._batcher(name, clf).submit(text)
            futures[name].add_done_callback(lambda _, name=name: done.__setitem__(name, time.perf_counter()))
        results = {}
        for name, future in futures.items():
            prediction = future.result()
            ms = (done.get(name, time.perf_counter()) - start) * 1000
            results[name] = {**prediction.to_dict(), "latency_ms": round(ms, 2)}
        return results

    def _batcher(self, name: str, clf: Classifier) -> MicroBatcher:
        batcher = self._batchers.get(name)
        if batcher is None or batcher.classifier is not clf:
            with self._batchers_lock:
                batcher = self._batchers.get(name)
                if batcher is None or batcher.classifier is not clf:
                    batcher = self._batchers[name] = MicroBatcher(clf, self.batch_wait_ms)
        return batcher

    def teach(self, texts: Any, labels: Any, token: str | None = None, client: str = "") -> dict[str, Any]:
        """Add labeled examples to the shared retrieval index, if `teach_policy` allows this client.

        Recorded in the teach log first (one fsynced insert), searchable as soon as this returns; exact duplicates
        of a taught example are merged. Returns the ids (for `forget`), and what retraining the fine-tune would cost.
        """
        rag = self._teachable()
        texts = validate_texts(texts, "example")
        labels = validate_labels([labels] if isinstance(labels, str) else labels, len(texts), rag.labels, "example")
        self.teach_policy.check(token, client, examples=len(texts))
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
        rag = self._teachable()
        if isinstance(teach_id, bool) or not isinstance(teach_id, int) or teach_id < 1:
            raise InputError(f"a taught example's id is a positive integer, got {teach_id!r}")
        self.teach_policy.check(token, client, examples=1)
        try:
            forgotten = rag.forget(teach_id)
        except ValueError as err:  # an index that cannot remove examples (approximate ones)
            raise InputError(str(err)) from err
        if not forgotten:
            raise Refused(f"no taught example has id {teach_id} (or it was already removed)", 404)
        self._changes += 1
        return {"removed": teach_id, "index_size": rag.size}

    def _teachable(self):
        rag = self.backends.get("rag")
        if rag is None:
            raise InputError(f"the retrieval backend is not available: {self.unavailable.get('rag', 'not loaded')}")
        if getattr(rag, "log", None) is None:
            raise InputError("this retrieval index has no teach log (it was loaded without a directory)")
        self.teach_policy.require_open()
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
        """What is loaded: each backend's description and run.json essentials, and what is unavailable and why."""
        out: dict[str, Any] = {"backends": {}, "unavailable": dict(self.unavailable)}
        for name, clf in self.backends.items():
            meta = dict(getattr(clf, "meta", {}) or {})
            describe = getattr(clf, "describe", None)
            out["backends"][name] = {
                "description": hide_paths(describe() if callable(describe) else name),
                "from_scratch": bool(meta.get("from_scratch")),
                "notice": meta.get("notice"),
                "data_source": hide_paths(meta.get("data_source") or "") or None,
                "train_size": meta.get("train_size", meta.get("size")),
                "seconds": meta.get("train_seconds", meta.get("build_seconds")),
                "eval_accuracy": meta.get("eval_accuracy"),
                "eval_macro_f1": meta.get("eval_macro_f1"),
                "embedder": hide_paths(meta["embedder"]) if meta.get("embedder") else None,
                "k": getattr(clf, "k", None),
                "size": getattr(clf, "size", None),
                "labels": list(clf.labels),
            }
        return out


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


def build_demo_index(out: Path, progress: Progress) -> None:
    """The full retrieval index (about 90 s on 2 cores)."""
    from rag.build import build_index
    from rag.config import RagConfig

    progress(0.0, "embedding the labeled tweets")
    build_index(RagConfig(out=str(out)))


def build_demo_finetune(out: Path, progress: Progress) -> None:
    """A small fine-tune: pretrained GPT-2 when the Hub answers, else GPT-2 from scratch (said everywhere)."""
    from core.settings import SourceError, resolve
    from finetune.config import FinetuneConfig
    from finetune.train import train

    try:
        resolve("base_model")
        cfg = FinetuneConfig(train_size=1500, eval_size=300, epochs=1, out=str(out))
    except SourceError:
        logger.warning("No pretrained GPT-2 reachable: the demo fine-tune is GPT-2 trained from scratch")
        cfg = FinetuneConfig(
            from_scratch=True,
            scratch_size="small",
            train_size=DEMO_FINETUNE_SIZE,
            eval_size=500,
            epochs=DEMO_SCRATCH_EPOCHS,
            out=str(out),
        )
    train(cfg, progress=progress, show_progress=False)
