"""Gradio app and JSON API for the fine-tune vs RAG decision service.

``python app.py [--artifacts DIR] [--host H] [--port N]`` loads ``DIR/finetune`` and ``DIR/rag`` (building what is
missing, with progress in the terminal) and serves the UI at ``/`` and the API at ``/api/...`` (docs at ``/docs``).
This file is wiring only: every handler calls `serving.service.Service` or compare/ functions.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import gradio as gr
from fastapi import FastAPI, Header, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from compare.decide import HARDWARE, UPDATES, Constraints, decide
from compare.metrics import accuracy
from compare.report import HEADLINE_COLUMNS, REPORT_FILES, escape_markdown, headline_rows, write_report
from compare.runner import check_report, evaluate
from core.data import load_tweets
from core.files import ArtifactError, read_json
from core.limits import MAX_BODY_BYTES, MAX_CHARS, MAX_TEXTS, MAX_UPLOAD_BYTES, MAX_UPLOAD_ROWS
from serving.access import Refused, bearer_token
from serving.service import (
    InputError,
    Service,
    fetch_artifacts,
    hide_paths,
    load_upload,
    uploaded_file,
)

logger = logging.getLogger(__name__)

TITLE = "Fine-tune vs RAG: which classifier should you build?"
EXAMPLES = [
    "my flight got cancelled again and nobody at the desk will tell us anything",
    "just finished the marathon!!! best feeling ever",
    "the meeting has been moved to 3pm on thursday",
    "not sure how I feel about the new update tbh",
]
LATENCY_QUERIES = 30
GRADIO_CONCURRENCY = 32
"""Gradio events run at once: as many as the micro-batcher gathers into one batch under a crowd."""
KEEP_REPORTS = 8
"""Downloadable reports kept on disk (several people may be downloading theirs)."""


# --- the JSON API ----------------------------------------------------------------------------------------------------


class Body(BaseModel):
    """Every request body: numbers must be finite (NaN, Infinity and 1e999 are refused with 422, not a 500)."""

    model_config = ConfigDict(allow_inf_nan=False)


class ClassifyBody(Body):
    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS, description=f"1 to {MAX_TEXTS} texts")
    backends: list[str] | None = Field(default=None, max_length=8, description="default: every loaded backend")


class CompareBody(Body):
    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS)
    labels: list[str] | None = Field(default=None, max_length=MAX_TEXTS, description="references, to score")


class TeachBody(Body):
    texts: list[str] = Field(min_length=1, max_length=MAX_TEXTS)
    labels: list[str] = Field(min_length=1, max_length=MAX_TEXTS)


class RecommendBody(Body):
    labeled_examples: int | None = Field(default=None, ge=1)
    accuracy_target: float | None = Field(default=None, gt=0, le=1)
    latency_budget_ms: float | None = Field(default=None, gt=0)
    updates: str = "rarely"
    hardware: str = "cpu"
    need_evidence: bool = False


class App:
    """The service plus the latest comparison report and learning curve the UI shows."""

    def __init__(
        self,
        service: Service,
        report_dir: Path | None = None,
        curve_dir: Path | None = None,
        upload_root: str | Path | None = None,
    ) -> None:
        self.service = service
        self.upload_root = Path(upload_root or gr.utils.get_upload_folder())
        """The only folder uploaded files are read from (Gradio's upload area)."""
        self.report_dir = report_dir
        self.curve_dir = curve_dir
        self.report: dict[str, Any] | None = None
        self.report_files: list[Path] = []
        if report_dir is not None and (report_dir / "report.json").exists():
            try:
                self.report = check_report(read_json(report_dir / "report.json", "report"))
            except ValueError as err:
                logger.warning("Ignoring the saved report: %s", err)

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
        results = self.service.classify(texts)
        out: dict[str, Any] = {"results": results}
        if labels is not None:
            if len(labels) != len(texts):
                raise InputError(f"give one label per text: {len(texts)} texts, {len(labels)} labels")
            known = self.service.labels()
            bad = sorted(set(labels) - set(known))
            if bad:
                raise InputError(f"unknown label(s) {bad}; use one of {known}")
            names = list(results[0]["results"])
            out["accuracy"] = {n: accuracy([r["results"][n]["label"] for r in results], labels) for n in names}
        names = list(results[0]["results"])
        if len(names) == 2:
            a, b = names
            out["agreement"] = sum(r["results"][a]["label"] == r["results"][b]["label"] for r in results) / len(texts)
        return out

    def recommend(self, constraints: Constraints) -> dict[str, Any]:
        if self.report is None:
            raise InputError("no comparison report yet: run one in the Batch evaluation tab (or compare.run)")
        return {"constraints": constraints.__dict__, **decide(self.report, constraints, self.curve).to_dict()}

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
        self.report = report
        return report


class BodyLimit:
    """ASGI middleware: a request body over `limit` bytes under `prefix` gets 413 before it is read whole.

    A declared Content-Length over the limit is refused before a byte is read; a chunked body is counted as it
    arrives and refused as soon as it passes the limit.
    """

    def __init__(self, app: Any, limit: int = MAX_BODY_BYTES, prefix: str = "/api/") -> None:
        self.app, self.limit, self.prefix = app, limit, prefix

    def _too_large(self) -> HTTPException:
        return HTTPException(status_code=413, detail=f"the request body is over the limit of {self.limit:,} bytes")

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(self.prefix):
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            response = JSONResponse(status_code=413, content={"error": self._too_large().detail})
            return await response(scope, receive, send)
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise self._too_large()  # FastAPI lets an HTTPException from reading the body through as it is
            return message

        return await self.app(scope, counted, send)


def _client(request: Request | None) -> str:
    """Who is asking, for the rate limit: the peer address (behind a proxy, the proxy's unless it forwards it)."""
    client = getattr(request, "client", None)
    return getattr(client, "host", None) or "?"


def _validation_message(err: RequestValidationError) -> dict[str, Any]:
    """A 422 body that says what is wrong without echoing the input (which may be huge, or NaN that JSON lacks)."""
    details = [
        {"loc": [str(part)[:50] for part in e.get("loc", ())][:6], "msg": str(e.get("msg", ""))[:200]}
        for e in err.errors()[:10]
    ]
    text = "; ".join(f"{'.'.join(d['loc'][1:]) or 'body'}: {d['msg']}" for d in details)
    return {"error": text or "the request body is not valid", "details": details}


def create_api(state: App) -> FastAPI:
    api = FastAPI(title="Fine-tune vs RAG API", description="Classify with both backends, compare, teach, decide.")
    api.add_middleware(BodyLimit, limit=MAX_BODY_BYTES)

    @api.exception_handler(InputError)
    async def _input_error(request: Request, err: InputError) -> JSONResponse:
        return JSONResponse(status_code=400, content={"error": hide_paths(str(err))})

    @api.exception_handler(Refused)
    async def _refused(request: Request, err: Refused) -> JSONResponse:
        headers = {"Retry-After": str(max(1, round(err.retry_after)))} if err.retry_after else None
        return JSONResponse(status_code=err.status, content={"error": str(err)}, headers=headers)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content=_validation_message(err))

    @api.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        return JSONResponse(status_code=err.status_code, content={"error": str(err.detail)}, headers=err.headers)

    @api.get("/api/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "backends": sorted(state.service.backends), "unavailable": state.service.unavailable}

    @api.post("/api/classify")
    def classify(body: ClassifyBody) -> dict[str, Any]:
        return {"results": state.service.classify(body.texts, body.backends)}

    @api.post("/api/compare")
    def compare(body: CompareBody) -> dict[str, Any]:
        return state.compare_texts(body.texts, body.labels)

    @api.post("/api/teach")
    def teach(body: TeachBody, request: Request, authorization: str | None = Header(default=None)) -> dict[str, Any]:
        """Add labeled examples to the shared index (see SECURITY.md for who may)."""
        return state.service.teach(body.texts, body.labels, bearer_token(authorization), _client(request))

    @api.delete("/api/teach/{teach_id}")
    def forget(teach_id: int, request: Request, authorization: str | None = Header(default=None)) -> dict[str, Any]:
        """Remove one taught example (the id that /api/teach returned)."""
        return state.service.forget(teach_id, bearer_token(authorization), _client(request))

    @api.post("/api/recommend")
    def recommend(body: RecommendBody) -> dict[str, Any]:
        try:
            constraints = Constraints(**body.model_dump())
        except ValueError as err:
            raise InputError(str(err)) from err
        return state.recommend(constraints)

    @api.get("/api/models")
    def models() -> dict[str, Any]:
        return state.service.models()

    return api


# --- the UI ----------------------------------------------------------------------------------------------------------


def _ui_error(err: Exception) -> gr.Error:
    """An error for the page: it stays until dismissed and names no server path."""
    return gr.Error(hide_paths(str(err)), duration=None)


def _neighbours(result: dict[str, Any]) -> list[list[Any]]:
    return [[e["text"], e["label"], round(e["score"], 3)] for e in result.get("evidence", [])]


def _label_value(result: dict[str, Any] | None) -> dict[str, float] | None:
    return None if result is None else {k: float(v) for k, v in result["scores"].items()}


def _what_is(service: Service, name: str) -> str:
    """One line under each answer column: what the backend is, in bold when it was trained from scratch."""
    clf = service.backends.get(name)
    if clf is None:
        return f"*unavailable: {escape_markdown(service.unavailable.get(name, 'not loaded'), 300)}*"
    describe = getattr(clf, "describe", None)
    text = escape_markdown(describe() if callable(describe) else name, 300)
    return f"**{text}**" if getattr(clf, "from_scratch", False) else text


def build_demo(state: App) -> gr.Blocks:
    service = state.service
    names = ["finetune", "rag"]

    def on_compare(text: str):
        try:
            [row] = service.classify([text])
        except InputError as err:
            raise _ui_error(err) from err
        outputs = []
        for name in names:
            result = row["results"].get(name)
            outputs.append(_label_value(result))
            outputs.append(
                f"**{result['label']}** in {result['latency_ms']:.1f} ms"
                if result
                else f"unavailable: {escape_markdown(service.unavailable.get(name, 'not loaded'), 300)}"
            )
        rag_result = row["results"].get("rag")
        outputs.append(_neighbours(rag_result) if rag_result else [])
        return outputs

    def on_teach(text: str, label: str, query: str, token: str, request: gr.Request):
        try:
            result = service.teach([text], [label], token=token or None, client=_client(request))
            after = service.classify([query])[0]["results"].get("rag") if query.strip() else None
        except (InputError, Refused) as err:
            raise _ui_error(err) from err
        what = "was already taught: merged" if result["merged"] else "added"
        message = (
            f"“{escape_markdown(text, 200)}” as **{escape_markdown(label)}** {what} (id {result['ids'][0]}; "
            f"`DELETE /api/teach/{result['ids'][0]}` removes it): the index now holds {result['index_size']:,} "
            f"examples ({result['seconds'] * 1000:.0f} ms). {escape_markdown(result['finetune_note'], 400)}."
        )
        return message, _label_value(after), _neighbours(after) if after else []

    def on_evaluate(file, use_test: bool, size: float, progress=gr.Progress()):  # noqa: B008 - Gradio's idiom
        try:
            report = state.evaluate_file(
                getattr(file, "name", file), use_test, int(size), progress=lambda f, m: progress(f, desc=m)
            )
        except ValueError as err:  # InputError, DataError, backends that cannot be compared
            raise _ui_error(err) from err
        # one fresh directory per evaluation (Gradio serves the files by path); only the newest few are kept
        out = Path(tempfile.mkdtemp(prefix="ftrag-report-"))
        state.report_files.append(out)
        while len(state.report_files) > KEEP_REPORTS:
            shutil.rmtree(state.report_files.pop(0), ignore_errors=True)
        plots = write_report(report, out)
        table = [list(r.values()) for r in headline_rows(report)]
        return table, str(plots[0]), str(plots[1]), [str(out / name) for name in REPORT_FILES]

    def on_decide(examples, target, budget, updates, hardware, evidence):
        try:
            constraints = Constraints(
                labeled_examples=int(examples) if examples else None,
                accuracy_target=float(target) if target else None,
                latency_budget_ms=float(budget) if budget else None,
                updates=updates,
                hardware=hardware,
                need_evidence=bool(evidence),
            )
            rec = state.recommend(constraints)
        except (InputError, ValueError) as err:
            raise _ui_error(err) from err
        choice = rec["choice"] or "no choice: the measurements do not support one"
        lines = [f"## Recommendation: {escape_markdown(choice)}", ""]
        lines += [f"- *{r['criterion']}* ({escape_markdown(r['backend'])}): {escape_markdown(r['text'], 500)}"
                  for r in rec["reasons"]]  # fmt: skip
        if rec["caveats"]:
            lines += ["", "**Caveats**", ""] + [f"- {escape_markdown(c, 500)}" for c in rec["caveats"]]
        return "\n".join(lines)

    def models_markdown() -> str:
        info = service.models()
        lines = []
        for name, b in info["backends"].items():
            lines.append(f"### {escape_markdown(name)}")
            lines.append(f"- {escape_markdown(b['description'], 400)}")
            if b["from_scratch"]:
                lines.append(f"- **{escape_markdown(b['notice'] or 'trained from scratch', 400)}**")
            lines.append(f"- {escape_markdown(str(b['data_source']), 300)}; labeled examples: {b['train_size']}")
            seconds = b["seconds"]
            lines.append(f"- training / build time: {seconds:.0f} s" if seconds is not None else "- time: n/a")
            if b["eval_accuracy"] is not None:
                lines.append(f"- held-out accuracy {b['eval_accuracy']:.4f}, macro-F1 {b['eval_macro_f1']:.4f}")
        for name, why in info["unavailable"].items():
            lines.append(f"### {escape_markdown(name)}: unavailable\n- {escape_markdown(why, 500)}")
        return "\n".join(lines) or "Nothing is loaded."

    # Uploads and generated files older than an hour are deleted every hour (and all of them at restart).
    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {TITLE}")
        if service.unavailable:
            missing = [f"**{escape_markdown(k)}** unavailable: {escape_markdown(v, 300)}" for k, v in
                       service.unavailable.items()]  # fmt: skip
            gr.Markdown("⚠️ " + "; ".join(missing))
        with gr.Tab("Compare"):
            text = gr.Textbox(label="A tweet", lines=2, max_length=MAX_CHARS, placeholder="Type or pick an example")
            gr.Examples(EXAMPLES, inputs=text)
            go = gr.Button("Compare", variant="primary")
            outputs = []
            with gr.Row():
                for name in names:
                    with gr.Column():
                        gr.Markdown(f"### {'Fine-tuned model' if name == 'finetune' else 'Retrieval (RAG)'}")
                        gr.Markdown(_what_is(service, name), elem_id=f"what-{name}")
                        outputs.append(gr.Label(num_top_classes=3, label=f"{name} scores", elem_id=f"label-{name}"))
                        outputs.append(gr.Markdown(elem_id=f"latency-{name}"))
            neighbours = gr.Dataframe(
                headers=["neighbour", "label", "similarity"], label="Labeled tweets the RAG answer rests on"
            )
            go.click(on_compare, text, [*outputs, neighbours], api_name="classify")
            text.submit(on_compare, text, [*outputs, neighbours], api_visibility="private")
        with gr.Tab("Batch evaluation"):
            with gr.Row():
                upload = gr.File(label="CSV or JSONL with text and label columns", file_types=[".csv", ".jsonl"])
                with gr.Column():
                    use_test = gr.Checkbox(value=True, label="Use the bundled test split instead")
                    size = gr.Slider(50, MAX_UPLOAD_ROWS, value=300, step=50, label="Test texts")
            run = gr.Button("Evaluate both", variant="primary")
            metrics_table = gr.Dataframe(headers=list(HEADLINE_COLUMNS), label="Metrics")
            with gr.Row():
                confusion_img = gr.Image(label="Confusion matrices", type="filepath")
                latency_img = gr.Image(label="Latency", type="filepath")
            files = gr.File(label="Download the report", file_count="multiple")
            run.click(on_evaluate, [upload, use_test, size], [metrics_table, confusion_img, latency_img, files],
                      api_name="evaluate", concurrency_limit=1, concurrency_id="evaluate")  # fmt: skip
        with gr.Tab("Decide"):
            with gr.Row():
                examples_in = gr.Number(label="Labeled examples you have", precision=0)
                target_in = gr.Number(label="Accuracy target (0-1)")
                budget_in = gr.Number(label="p95 latency budget (ms)")
            with gr.Row():
                updates_in = gr.Radio(list(UPDATES), value="rarely", label="Labeled data changes")
                hardware_in = gr.Radio(list(HARDWARE), value="cpu", label="Hardware")
                evidence_in = gr.Checkbox(label="Answers must show their evidence")
            decide_btn = gr.Button("Recommend", variant="primary")
            recommendation = gr.Markdown()
            decide_btn.click(on_decide, [examples_in, target_in, budget_in, updates_in, hardware_in, evidence_in],
                             recommendation, api_name="recommend")  # fmt: skip
            curve_png = (state.curve_dir or Path("/nonexistent")) / "curve.png"
            if curve_png.exists():
                gr.Image(str(curve_png), label="Learning curve", type="filepath")
        with gr.Tab("Teach"):
            gr.Markdown(
                "Add a labeled example to the retrieval index: it counts at once. The fine-tuned model would need "
                "retraining to learn it."
            )
            teach_text = gr.Textbox(label="Example", max_length=MAX_CHARS)
            teach_label = gr.Radio(service.labels(), value=service.labels()[-1], label="Its label")
            teach_query = gr.Textbox(label="Then classify this with RAG", value=EXAMPLES[3])
            teach_token = gr.Textbox(
                label="Operator token", type="password", visible=service.teach_policy.token is not None
            )
            teach_btn = gr.Button("Teach", variant="primary", interactive=service.teach_policy.open)
            if not service.teach_policy.open:
                gr.Markdown("*Teaching the shared index is off on this public app.*")
            teach_msg = gr.Markdown()
            teach_scores = gr.Label(label="RAG now says")
            teach_neighbours = gr.Dataframe(headers=["neighbour", "label", "similarity"])
            teach_btn.click(on_teach, [teach_text, teach_label, teach_query, teach_token],
                            [teach_msg, teach_scores, teach_neighbours], api_name="teach")  # fmt: skip
        with gr.Tab("Models"):
            gr.Markdown(models_markdown)
    return demo


def create_app(state: App) -> FastAPI:
    """The FastAPI app: the JSON API under /api and the Gradio UI at /."""
    demo = build_demo(state)
    # Single-text events wait on the micro-batcher, so many may run at once; batch evaluation runs one at a time.
    demo.queue(default_concurrency_limit=GRADIO_CONCURRENCY, max_size=256)
    mounted = gr.mount_gradio_app(create_api(state), demo, path="/", max_file_size=MAX_UPLOAD_BYTES)
    # Gradio checks that a file handed to a handler was uploaded (and refuses any other server path) only once the
    # Blocks count as launched, which `mount_gradio_app` never marks. Mark it, so that check runs; the handlers check
    # the path again themselves (`uploaded_file`).
    demo.has_launched = True
    return mounted


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    on_spaces = bool(os.environ.get("SPACE_ID"))
    parser = argparse.ArgumentParser(description=TITLE)
    parser.add_argument("--artifacts", default="artifacts", help="holds finetune/, rag/ (and report/, curve/)")
    parser.add_argument("--no-build", action="store_true", help="serve what exists; do not build missing backends")
    parser.add_argument(
        "--artifacts-repo",
        metavar="ORG/NAME",
        help="first download prebuilt finetune/ and rag/ folders from this Hugging Face Hub repo into --artifacts",
    )
    parser.add_argument("--host", default="0.0.0.0" if on_spaces else "127.0.0.1")
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    return parser.parse_args(argv)


def _log_progress():
    """A progress callback that logs a line when the percentage or the stage changes, not on every step."""
    last: dict[str, Any] = {"pct": -1, "stage": None}

    def report(fraction: float, message: str) -> None:
        pct, stage = int(100 * fraction), message.split(":")[0]
        if pct != last["pct"] or stage != last["stage"]:
            logger.info("[%3d%%] %s", pct, message)
            last.update(pct=pct, stage=stage)

    return report


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    from core.cli import setup_logging

    args = parse_args(argv)
    setup_logging()
    artifacts = Path(args.artifacts)
    if args.artifacts_repo:
        try:
            fetch_artifacts(args.artifacts_repo, artifacts)
        except ArtifactError as err:
            logger.error("%s; serving what is in %s", err, artifacts)
    service = Service.start(artifacts, build_missing=not args.no_build, progress=_log_progress())
    logger.info("Backends ready in %.1f s: %s", service.started_seconds, sorted(service.backends))
    service.start_compactor(float(os.environ.get("FTRAG_COMPACT_SECONDS", "600")))
    state = App(service, report_dir=artifacts / "report", curve_dir=artifacts / "curve")
    config = uvicorn.Config(
        create_app(state), host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=3
    )
    uvicorn.Server(config).run()
    # SIGTERM: uvicorn stops serving and waits at most 3 s for open requests. A long evaluation may still be running
    # in a worker thread; the teach log is already on disk, so nothing is lost by not waiting for it.
    service.close()
    logging.shutdown()
    os._exit(0)


if __name__ == "__main__":
    main()
