"""What the app shares between visitors: the service, the calm start-up comparison, the learning curve.

A visitor's own batch evaluations are not stored here: they live in that visitor's page session (see serving.ui),
so one visitor's 50-text run never changes what Decide tells everyone else.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from compare.decide import Constraints, decide
from compare.evaluation import check_report, evaluate
from compare.metrics import accuracy, agreement
from core.data import DataError, label_names, load_tweets, stratified_sample
from core.files import read_json
from core.limits import MAX_UPLOAD_ROWS
from finetune.protocol import MIN_STEPS
from serving.access import Refused
from serving.inputs import InputError, load_upload, still_building, uploaded_file, validate_labels
from serving.service import TRAINING_LOCK, Service

logger = logging.getLogger(__name__)

LATENCY_QUERIES = 30
"""Single queries timed per backend in a visitor's batch evaluation (the machine may be busy: see the note)."""
STARTUP_TEXTS = 500
"""Test texts of the start-up comparison, the calm measurement Decide uses out of the box."""
STARTUP_LATENCY_QUERIES = 100
STARTUP_CURVE_SIZES = (100, 300, 1000)
"""The small learning curve measured after the start-up comparison when the artifacts hold none (one seed, no
tuned embedder, 300 test texts: a few minutes on 2 cores); `python -m jobs.curve` measures a full one."""
STARTUP_CURVE_TEST = 300


def studies_root(artifacts: Path | None) -> Path:
    """The one folder visitors' studies work in: ``FTRAG_STUDIES_DIR``, else ``<artifacts>/studies``, else
    ``<temp>/ftrag-studies``. One app per folder: the queue deletes the job folders it finds there at start."""
    chosen = os.environ.get("FTRAG_STUDIES_DIR", "").strip()
    if chosen:
        return Path(chosen)
    return artifacts / "studies" if artifacts is not None else Path(tempfile.gettempdir()) / "ftrag-studies"


class App:
    """The service, the shared comparison report behind Decide (saved, or measured at start-up), the learning curve.

    Args:
        report_dir: where a saved report.json is read from (and the start-up comparison is written to).
        curve_dir: where curve.json / curve.png are read from.
        upload_root: the only folder uploaded files are read from (Gradio's upload area by default).
    """

    def __init__(
        self,
        service: Service,
        report_dir: Path | None = None,
        curve_dir: Path | None = None,
        upload_root: str | Path | None = None,
    ) -> None:
        from gradio.utils import get_upload_folder

        self.service = service
        self.upload_root = Path(upload_root or get_upload_folder())
        self.report_dir = report_dir
        self.curve_dir = curve_dir
        self.report: dict[str, Any] | None = None
        self._studies = None  # the queue of visitors' studies on their own data, made on first use
        self.comparing: str | None = None  # what the start-up comparison is doing, while it runs
        self.curving: str | None = None  # what the start-up learning curve is doing, while it runs
        if report_dir is not None and (report_dir / "report.json").exists():
            try:
                self.report = check_report(read_json(report_dir / "report.json", "report"))
            except ValueError as err:
                logger.warning("Ignoring the saved report: %s", err)

    def start_comparison(self, n: int = STARTUP_TEXTS, background: bool = True) -> threading.Thread | None:
        """When no report was saved, compare the loaded backends on `n` test texts, so Decide answers out of the box.

        Runs once, at start-up, before most visitors arrive, over more texts and queries than a visitor's batch run:
        the figures Decide relies on (a visitor's own batch run never replaces them). Saved to `report_dir`.
        """
        if self.report is not None:
            return None
        if not self.service.backends:
            self.comparing = "failed: no backend is available"
            return None
        self.comparing = "starting"
        if not background:
            self._compare_on_test_split(n)
            return None
        thread = threading.Thread(target=self._compare_on_test_split, args=(n,), name="startup-compare", daemon=True)
        thread.start()
        return thread

    def _compare_on_test_split(self, n: int) -> None:
        from compare.report import write_report

        try:
            data = load_tweets(None, split="test")
            if set(label_names(data)) != set(self.service.labels()):
                raise DataError(f"the test split's labels {label_names(data)} are not the backends' labels")
            data = stratified_sample(data, min(n, data.num_rows), seed=0)
            report = evaluate(
                self.service.backends,
                data,
                data_source="the bundled test split (start-up comparison)",
                split="test",
                latency_queries=STARTUP_LATENCY_QUERIES,
                progress=lambda fraction, message: setattr(self, "comparing", f"{fraction:.0%}: {message}"),
            )
            report["dataset"]["scored"] = f"{data.num_rows:,} texts of the bundled test split, measured at start-up"
            self.report = report
            if self.report_dir is not None:
                write_report(report, self.report_dir)
        except Exception as err:  # no test split, other labels, a full disk, a model error: Decide must not wait
            logger.warning("No start-up comparison: %s: %s", type(err).__name__, err)
            self.comparing = f"failed: {err}"
            return
        self.comparing = None

    def start_curve(
        self, sizes=STARTUP_CURVE_SIZES, test_limit: int = STARTUP_CURVE_TEST, min_steps: int = MIN_STEPS
    ) -> None:
        """When the artifacts hold no learning curve, measure a small one (see STARTUP_CURVE_SIZES) into
        `curve_dir`, so that Decide can answer for fewer labeled examples than the backends were given. Runs in the
        caller's thread (the start-up thread, after the comparison)."""
        from finetune.config import FinetuneConfig
        from jobs.curve import learning_curve, save_curve

        if self.curve_dir is None or (self.curve_dir / "curve.json").exists():
            return
        self.curving = "starting"
        try:
            train = load_tweets(None, split="train")
            test = load_tweets(None, split="test", limit=test_limit, seed=0)
            rag = self.service.backends.get("rag")
            with TRAINING_LOCK:  # never beside a visitor's study (see serving.service.TRAINING_LOCK)
                curve = learning_curve(
                    [n for n in sizes if n < train.num_rows],
                    train,
                    test,
                    finetune_config=lambda size, out: FinetuneConfig(out=out),
                    embedder=rag.embedder if rag is not None else None,
                    min_steps=min_steps,
                    progress=lambda fraction, message: setattr(self, "curving", f"{fraction:.0%}: {message}"),
                )
            curve["config"] = {"measured": "at start-up, small: one seed, no tuned embedder", "sizes": list(sizes),
                               "test_limit": test_limit}  # fmt: skip
            save_curve(curve, self.curve_dir)
        except Exception as err:  # no test split, other labels, a full disk: Decide answers from the report alone
            logger.warning("No start-up learning curve: %s: %s", type(err).__name__, err)
            self.curving = f"failed: {err}"
            return
        self.curving = None

    @property
    def studies(self):
        """The queue that runs visitors' studies of their own data (see serving.studies)."""
        from serving.studies import StudyQueue

        if self._studies is None:
            self._studies = StudyQueue.from_env(studies_root(self.service.artifacts))
        return self._studies

    @property
    def curve(self) -> dict[str, Any] | None:
        path = (self.curve_dir or Path("/nonexistent")) / "curve.json"
        try:
            return read_json(path, "learning curve") if path.exists() else None
        except ValueError as err:  # a damaged curve must not take Decide down: it answers from the report alone
            logger.warning("Ignoring the learning curve: %s", err)
            return None

    # handlers shared by the UI and the API

    def compare_texts(self, texts: list[str], labels: list[str] | None) -> dict[str, Any]:
        if labels is not None:  # checked before any model runs
            labels = validate_labels(labels, len(texts), self.service.labels())
        results = self.service.classify(texts)
        predicted = {name: [r["results"][name]["label"] for r in results] for name in results[0]["results"]}
        out: dict[str, Any] = {"results": results}
        if labels is not None:
            out["accuracy"] = {name: accuracy(p, labels) for name, p in predicted.items()}
        if len(predicted) == 2:
            out["agreement"] = agreement(*predicted.values())
        return out

    def recommend(self, constraints: Constraints, report: dict[str, Any] | None = None) -> dict[str, Any]:
        """`decide` on `report` (a visitor's own batch evaluation) or, by default, the shared comparison."""
        report = report or self.report
        if report is None:
            if not self.service.ready.is_set():
                raise still_building()
            if self.comparing and not self.comparing.startswith("failed"):
                raise Refused(f"the start-up comparison is still running ({self.comparing}); ask again soon", 503, 10)
            raise InputError("no comparison report yet: run one in the Batch evaluation tab (or jobs.run)")
        return decide(report, constraints, self.curve).to_dict()  # its "constraints" echo what was given

    def evaluate_file(self, path: Any, use_test_split: bool, size: int, progress=None) -> dict[str, Any]:
        """Score every backend on an uploaded file or on `size` texts of the test split (one of the two, never both).

        The file must have been uploaded through this app (see `uploaded_file`); the report's ``dataset.scored``
        says what was scored.
        """
        if use_test_split and path:
            raise InputError(
                "both a file and the bundled test split are selected: untick “use the bundled test split” to score "
                "your file, or clear the file to score the test split"
            )
        if use_test_split:
            n = min(max(int(size), 1), MAX_UPLOAD_ROWS)
            dataset = load_tweets(None, split="test", limit=n, seed=0)
            source, split, scored = "the bundled test split", "test", f"{n:,} texts of the bundled test split"
        elif not path:
            raise InputError("upload a CSV or JSONL file with text and label columns, or pick the test split")
        else:
            dataset, scored = load_upload(uploaded_file(path, self.upload_root), labels=self.service.labels())
            source, split = "an uploaded file", "uploaded"
        report = evaluate(
            self.service.backends,
            dataset,
            data_source=source,
            split=split,
            latency_queries=min(LATENCY_QUERIES, dataset.num_rows),
            batch_rounds=1,
            progress=progress,
        )
        report["dataset"]["scored"] = scored
        return report
