"""Studies on a visitor's own labeled data, run by the app as background jobs ("Your data" in the page).

A visitor uploads a labeled file; `preview` says what was found (the text and label columns, the label counts). A
study (`jobs.study`: split, fine-tune, retrieval, comparison, curve, decision, within a time budget) then runs as
a job of that visitor's session: one at a time on the machine, the others queued with their position shown, at most
``FTRAG_STUDIES_PER_CLIENT`` (default 1) queued or running per client. Its owner (whoever holds its id) may cancel
it. Every job works in its own folder under the queue's one root, named by an unguessable id that only the visitor's
session holds, so nothing a visitor trains changes what anyone else sees. Folders left by an earlier run of the app
are deleted at start; finished jobs are deleted after `KEEP_HOURS`, and sooner, oldest first, when the root holds
more than ``FTRAG_STUDIES_MAX_GB`` (default 5).
"""

from __future__ import annotations

import collections
import logging
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.data import DataError
from jobs.study import MIN_PER_LABEL, check_label_counts
from serving.access import Refused
from serving.inputs import InputError, hide_paths, load_upload
from serving.service import TRAINING_LOCK

logger = logging.getLogger(__name__)

MAX_STUDY_ROWS = 20_000
"""Rows of an uploaded file a study may use: a file with more is refused (the study would not fit a budget)."""
MIN_STUDY_ROWS = 60
BUDGETS = (2, 5, 10)
"""Minutes a visitor may give a study (the operator's `FTRAG_STUDY_MAX_MINUTES` caps them, default 10)."""
MAX_WAITING = 8
"""Studies waiting behind the running one; past that, a new one is refused (try again later)."""
KEEP_HOURS = 6.0
PER_CLIENT = 1
"""Studies one client may have queued or running at once (``FTRAG_STUDIES_PER_CLIENT``)."""
MAX_GB = 5.0
"""Gigabytes the study folders may hold together (``FTRAG_STUDIES_MAX_GB``); past it, finished ones go first."""
_JOB_FOLDER = re.compile(r"[A-Za-z0-9_-]{22}")
"""A job folder's name (`secrets.token_urlsafe(16)`): the only entries of the root deleted at start."""
LINES_KEPT = 30
UPLOAD_NAME = "your uploaded file"
"""What a study's reports call the visitor's data (never its path on this server)."""


def max_minutes() -> float:
    value = float(os.environ.get("FTRAG_STUDY_MAX_MINUTES", "10"))
    if value <= 0:
        raise ValueError(f"FTRAG_STUDY_MAX_MINUTES must be positive, got {value}")
    return value


class Cancelled(Exception):
    """Raised through a running study's progress messages once its owner cancelled it (not a ValueError, so that
    nothing on the way takes it for a data problem)."""


def preview(file: Path) -> dict[str, Any]:
    """What a study would see in `file` (uploaded, its path checked by the caller): the rows, the detected columns,
    the label counts and the first rows. An `InputError` for a file no study can use (too few or too many rows, too
    many labels, too few examples of one), before any model runs."""
    from core.data import detected_columns

    dataset, _ = load_upload(file, max_rows=None)  # its own labels; every row held to the typed-text limits
    rows = dataset.num_rows
    if rows > MAX_STUDY_ROWS:
        raise InputError(f"the uploaded file has {rows:,} rows; a study takes at most {MAX_STUDY_ROWS:,}")
    if rows < MIN_STUDY_ROWS:
        raise InputError(f"the uploaded file has {rows:,} rows; a study needs at least {MIN_STUDY_ROWS}")
    try:  # the study's own rule, as the command line applies it
        check_label_counts(list(dataset["label"]), MIN_PER_LABEL, "examples")
    except DataError as err:
        raise InputError(str(err)) from err
    counts = collections.Counter(dataset["label"])
    with tempfile.TemporaryDirectory(prefix="ftrag-study-") as cache:  # it loaded above, so its columns are found
        columns = detected_columns(str(file), cache_dir=cache)
    texts = dataset["text"]
    return {
        "rows": rows,
        "columns": columns,
        "labels": dict(sorted(counts.items(), key=lambda kv: -kv[1])),
        "first_rows": [[t[:200], label] for t, label in zip(texts[:5], dataset["label"][:5], strict=True)],
    }


@dataclass
class Job:
    """One visitor's study: where it stands and what it has said."""

    id: str
    folder: Path
    budget_minutes: float
    rows: int
    client: str = ""
    state: str = "queued"  # queued, running, done, failed, cancelled
    lines: list[str] = field(default_factory=list)
    decision: dict[str, Any] | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    finished: float | None = None
    cancelling: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def out(self) -> Path:
        return self.folder / "study"

    def say(self, message: str) -> None:
        self.lines = [*self.lines[-(LINES_KEPT - 1) :], hide_paths(message)]

    def progress(self, message: str) -> None:
        """What the running study says: recorded, or `Cancelled` raised once its owner cancelled it."""
        if self.cancelling.is_set():
            raise Cancelled()
        self.say(message)


class StudyQueue:
    """Runs studies one at a time in a worker thread, in the order they were submitted.

    Args:
        root: the one folder every job's folder goes in; job folders already there (from an earlier run of the
            app) are deleted.
        per_client: studies one client may have queued or running at once.
        max_bytes: what the job folders may hold together before finished ones are deleted, oldest first.
        settings: `jobs.study.StudyConfig` fields every study here gets (e.g. a smaller one for tests).
    """

    def __init__(
        self, root: str | Path, per_client: int = PER_CLIENT, max_bytes: float = MAX_GB * 2**30, **settings: Any
    ) -> None:
        if per_client < 1:
            raise ValueError(f"FTRAG_STUDIES_PER_CLIENT must be at least 1, got {per_client}")
        if not max_bytes > 0:
            raise ValueError(f"FTRAG_STUDIES_MAX_GB must be positive, got {max_bytes / 2**30:g}")
        self.settings = settings
        self.per_client, self.max_bytes = per_client, max_bytes
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for old in self.root.iterdir():  # an earlier run's: their jobs are gone with it
            if old.is_dir() and not old.is_symlink() and _JOB_FOLDER.fullmatch(old.name):
                shutil.rmtree(old, ignore_errors=True)
        self._jobs: dict[str, Job] = {}
        self._waiting: collections.deque[str] = collections.deque()
        self._cv = threading.Condition()
        self._worker: threading.Thread | None = None
        self._models: dict[str, dict[str, Any]] = {}  # the latest finished jobs' models, for Compare

    @classmethod
    def from_env(cls, root: str | Path) -> StudyQueue:
        """The queue with the operator's limits: ``FTRAG_STUDIES_PER_CLIENT``, ``FTRAG_STUDIES_MAX_GB``."""
        per_client = int(os.environ.get("FTRAG_STUDIES_PER_CLIENT", str(PER_CLIENT)))
        gigabytes = float(os.environ.get("FTRAG_STUDIES_MAX_GB", str(MAX_GB)))
        return cls(root, per_client=per_client, max_bytes=gigabytes * 2**30)

    def submit(self, file: Path, budget_minutes: float, rows: int, client: str = "") -> Job:
        """Queue a study of `file` (copied into the job's folder) with `budget_minutes`, at most `per_client` per
        client at a time (`client`: who asks, see `serving.access.client_of`)."""
        if budget_minutes > max_minutes():
            raise InputError(f"a study here may take at most {max_minutes():g} minutes")
        self.clean()
        with self._cv:
            held = sum(j.client == client and j.state in {"queued", "running"} for j in self._jobs.values())
            if held >= self.per_client:
                mine = "a study" if self.per_client == 1 else f"{self.per_client} studies"
                raise Refused(f"{mine} of yours already queued or running here; wait for it, or cancel it", 429, 60)
            if len(self._waiting) >= MAX_WAITING:
                raise Refused(f"{len(self._waiting)} studies are waiting already; try again in a few minutes", 503, 60)
            job = Job(id=secrets.token_urlsafe(16), folder=Path(), budget_minutes=budget_minutes, rows=rows,
                      client=client)  # fmt: skip
            job.folder = self.root / job.id
            job.folder.mkdir()
            shutil.copyfile(file, job.folder / f"data{file.suffix.lower()}")
            self._jobs[job.id] = job
            self._waiting.append(job.id)
            job.say(f"queued: {rows:,} labeled rows, a budget of {budget_minutes:g} minutes")
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(target=self._work, name="studies", daemon=True)
                self._worker.start()
            self._cv.notify()
        return job

    def job(self, job_id: Any) -> Job:
        job = self.find(job_id)
        if job is None:
            raise InputError("no such study (it finished more than a few hours ago, or was never started here)")
        return job

    def find(self, job_id: Any) -> Job | None:
        """The job, or None when there is none by that id (never started here, or finished and deleted)."""
        return self._jobs.get(job_id) if isinstance(job_id, str) else None

    def cancel(self, job_id: Any) -> Job:
        """Cancel the study `job_id` names (whoever holds the id owns it): a queued one leaves the queue at once, a
        running one stops at its next step (its folder is deleted with the finished jobs')."""
        job = self.job(job_id)
        with self._cv:
            if job.state == "queued":
                self._waiting.remove(job.id)
                job.state, job.finished = "cancelled", time.time()
                job.say("cancelled before it started")
            elif job.state == "running":
                job.cancelling.set()
                job.say("cancelling: the study stops at its next step")
            else:
                raise InputError(f"the study is over ({job.state}): there is nothing to cancel")
        return job

    def position(self, job: Job) -> int:
        """0 while it runs (or is over), else how many studies run or wait before it."""
        with self._cv:
            if job.id not in self._waiting:
                return 0
            running = any(j.state == "running" for j in self._jobs.values())
            return list(self._waiting).index(job.id) + int(running)

    def _work(self) -> None:
        while True:
            with self._cv:
                while not self._waiting:
                    self._cv.wait()
                job = self._jobs[self._waiting[0]]
                self._waiting.popleft()
                job.state = "running"
            self._run(job)
            self.clean()

    def config(self, job: Job):
        """The job's `jobs.study.StudyConfig`: the command line's defaults (the same data and budget get the same
        study from either), the reports naming the data "your uploaded file", and this queue's `settings`."""
        from jobs.study import StudyConfig

        data = next(job.folder.glob("data.*"))
        settings = {"data_name": UPLOAD_NAME, **self.settings}
        return StudyConfig(data=str(data), out=str(job.out), budget_minutes=job.budget_minutes, **settings)

    def _run(self, job: Job) -> None:
        from jobs.study import Study

        try:
            cfg = self.config(job)
            with TRAINING_LOCK:  # after the app's own builds and start-up curve, never beside them
                job.progress("starting")
                job.decision = Study(cfg, say=job.progress).run()
            job.state = "done"
        except Cancelled:
            job.say("cancelled")
            job.state = "cancelled"
        except Exception as err:  # a study that fails must end the job with its reason, never the worker
            logger.warning("A study failed: %s: %s", type(err).__name__, err)
            job.error = hide_paths(str(err).replace(str(job.folder), "your study"))
            job.say(f"failed: {job.error}")
            job.state = "failed"
        job.finished = time.time()

    def models(self, job: Job) -> dict[str, Any]:
        """The finished job's fine-tune and index, loaded once (the two latest jobs' stay in memory)."""
        import finetune
        import rag

        if job.state != "done":
            raise InputError("the study has not finished yet")
        if job.id not in self._models:
            loaded = {}
            for name, load in (("finetune", finetune.load), ("rag", rag.load)):
                if (job.out / name).is_dir():
                    loaded[name] = load(job.out / name)
            while len(self._models) >= 2:
                self._models.pop(next(iter(self._models)))
            self._models[job.id] = loaded
        return self._models[job.id]

    def clean(self) -> None:
        """Delete the folders of jobs finished more than KEEP_HOURS ago, then those of the oldest finished ones
        while all the folders hold more than `max_bytes` (a queued or running job's folder is kept)."""
        cutoff = time.time() - 3600 * KEEP_HOURS
        with self._cv:
            finished = sorted((j for j in self._jobs.values() if j.finished), key=lambda j: j.finished)
            total = sum(_size(j.folder) for j in self._jobs.values())
            for job in finished:
                if job.finished >= cutoff and total <= self.max_bytes:
                    break
                total -= _size(job.folder)
                shutil.rmtree(job.folder, ignore_errors=True)
                self._models.pop(job.id, None)
                del self._jobs[job.id]


def _size(folder: Path) -> int:
    """Bytes of the files under `folder` (0 when it is gone)."""
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file() and not f.is_symlink())
