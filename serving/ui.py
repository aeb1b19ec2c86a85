"""The Gradio page: one builder per tab, each wiring components to `serving.state.App` and `serving.service`.

Every handler turns an expected error into a message that stays on the page and names no server path. What one
visitor measures (a batch evaluation) lives in that visitor's session (`gr.State`), never in the shared `App`.
"""

from __future__ import annotations

import html
import math
import re
import secrets
import shutil
import tempfile
import zipfile
from functools import partial
from pathlib import Path
from typing import Any

import gradio as gr

from compare.decide import HARDWARE, UPDATES, Constraints
from compare.report import (
    HEADLINE_COLUMNS,
    REPORT_FILES,
    disagreement_rows,
    escape_markdown,
    headline_rows,
    write_report,
)
from core.files import read_json
from core.limits import MAX_CHARS, MAX_LABEL_CHARS, MAX_LABELS, MAX_UPLOAD_ROWS, clip_message
from serving.access import Refused, client_of
from serving.service import InputError, Service, hide_paths, uploaded_file, validate_texts
from serving.state import LATENCY_QUERIES, App

TITLE = "Fine-tune vs RAG: which classifier should you build?"
EXAMPLES = [
    "my flight got cancelled again and nobody at the desk will tell us anything",
    "just finished the marathon!!! best feeling ever",
    "the meeting has been moved to 3pm on thursday",
    "not sure how I feel about the new update tbh",
]
KEEP_REPORTS = 8
"""Downloadable reports kept on disk (several people may be downloading theirs)."""
COLUMN_TITLES = {
    "finetune": "Fine-tuned model",
    "rag": "Retrieval (RAG)",
    "rag-tuned": "Retrieval over a tuned embedder",
    "hybrid": "Hybrid",
    "rag-llm": "Retrieval + LLM prompt",
}
INTRO = """\
You have labeled text and must choose: **fine-tune** a model on it, or **retrieve** the nearest labeled examples and
let them vote (RAG). This page runs both on the same input. *Compare* one text, score both on labeled data in
*Batch evaluation*, get a recommendation for your constraints in *Decide*, and see in *Teach* how retrieval learns a
new example at once. Every accuracy comes with the number of texts it rests on and a 95% interval."""
GLOSSARY = """\
- **accuracy [low, high]**: share of texts labeled right, with its 95% bootstrap interval (resampling the scored
  texts). Two backends whose difference has an interval containing 0 are *within noise* of each other.
- **macro-F1**: the F1 score of each label, averaged with equal weight, so a rare label counts as much as a common
  one.
- **ECE** (expected calibration error): how far the confidence is from the hit rate; 0 means "90% sure" is right
  90% of the time.
- **p50 / p95 latency**: the time within which half / 95% of single requests were answered.
- **evidence**: the labeled examples nearest to the text; retrieval's answer is their similarity-weighted vote."""
START_UP_POLL_S = 2.0
"""How often a page asks how far the backends are, while they build."""
LATENCY_NOTE = (
    "Latency here is one request, timed on a machine other visitors share: treat it as a rough figure. Decide uses "
    "the calm measurement made at start-up."
)


def ui_error(err: Exception) -> gr.Error:
    """An error for the page: it stays until dismissed, names no server path and is cut to MAX_ERROR_CHARS."""
    return gr.Error(clip_message(hide_paths(str(err))), duration=None)


def neighbours(result: dict[str, Any]) -> list[list[Any]]:
    return [[e["text"], e["label"], round(e["score"], 3)] for e in result.get("evidence", [])]


def label_value(result: dict[str, Any] | None) -> dict[str, float] | None:
    return None if result is None else {k: float(v) for k, v in result["scores"].items()}


def what_is(service: Service, name: str) -> str:
    """One line under each answer column: what the backend is (in bold when trained from scratch) and how many
    labeled examples it learned from; while it builds, how far it is."""
    clf = service.backends.get(name)
    if clf is None:
        if name in service.unavailable:
            return f"*unavailable: {escape_markdown(service.unavailable[name], 300)}*"
        fraction, message = service.building.get(name, (0.0, "waiting"))
        if service.ready.is_set():  # the line-up is up without it (the hybrid needs a fine-tune it can fit beside)
            return f"*{escape_markdown(hide_paths(message), 300)}*"
        return f"*still building: {fraction:.0%} ({escape_markdown(hide_paths(message), 200)})*"
    describe = getattr(clf, "describe", None)
    text = escape_markdown(hide_paths(describe() if callable(describe) else name), 300)
    return f"**{text}**" if getattr(clf, "from_scratch", False) else text


def evidence_label(service: Service) -> str:
    rag = service.backends.get("rag")
    voters = f": the 10 nearest of the {rag.k} that vote" if rag is not None else ""
    return f"Labeled tweets the RAG answer rests on{voters}"


def column_names(service: Service) -> list[str]:
    """Every backend of the line-up, in the order they come up, then any other loaded or unavailable one."""
    return list(dict.fromkeys([*service.expected, *service.backends, *service.unavailable]))


def start_up_html(service: Service) -> str:
    """A progress bar per backend while the line-up builds; afterwards only what is unavailable, and why."""
    status = service.status()
    rows = []
    for name, b in status["backends"].items():
        title = html.escape(COLUMN_TITLES.get(name, name))
        if b["state"] == "unavailable":
            why = html.escape(service.unavailable.get(name, "unavailable"))
            rows.append(f"<div>⚠️ <b>{title}</b> is unavailable: {why}</div>")
        elif not status["ready"]:
            done = "ready" if b["state"] == "ready" else html.escape(b["message"])
            rows.append(f"<div><b>{title}</b> <progress value='{b['progress']:.3f}' max='1'></progress> "
                        f"{b['progress']:.0%}: {done}</div>")  # fmt: skip
    if not rows:
        return ""
    head = "" if status["ready"] else "<p>Building the backends: each one is served as soon as it is ready.</p>"
    return f"<div id='start-up'>{head}{''.join(rows)}</div>"


# --- Compare ---------------------------------------------------------------------------------------------------------


def compare_tab(state: App) -> tuple[dict[str, gr.Markdown], gr.Dataframe]:
    """The Compare tab; returns each column's "what is it" line by backend and the evidence table, whose labels
    change while the backends build (the start-up timer updates them)."""
    service = state.service
    names = column_names(service)
    what_lines: dict[str, gr.Markdown] = {}
    text = gr.Textbox(label="A tweet", lines=2, max_length=MAX_CHARS, placeholder="Type or pick an example")
    gr.Examples(EXAMPLES, inputs=text)
    go = gr.Button("Compare", variant="primary")
    outputs = []
    with gr.Row():
        for name in names:
            with gr.Column():
                gr.Markdown(f"### {COLUMN_TITLES.get(name, escape_markdown(name))}")
                what_lines[name] = gr.Markdown(what_is(service, name), elem_id=f"what-{name}")
                outputs.append(gr.Label(num_top_classes=5, label=f"{name} scores", elem_id=f"label-{name}"))
                outputs.append(gr.Markdown(elem_id=f"latency-{name}"))
    gr.Markdown(f"*{LATENCY_NOTE}*")
    evidence = gr.Dataframe(
        headers=["neighbour", "label", "similarity"],
        label=evidence_label(service),
        wrap=True,
        column_widths=["70%", "15%", "15%"],
    )

    def on_compare(query: str):
        try:
            [row] = service.classify([query])
        except (InputError, Refused) as err:
            raise ui_error(err) from err
        out: list[Any] = []
        for name in names:
            result = row["results"].get(name)
            out.append(label_value(result))
            # A backend with no answer says why, as its column does: unavailable, still building, or not served.
            out.append(f"**{escape_markdown(result['label'])}** in {result['latency_ms']:.1f} ms" if result
                       else what_is(service, name))  # fmt: skip
        rag_result = row["results"].get("rag")
        # A plain value, not an update of the table's label: Gradio would rebuild the component and its config (a
        # signature inspection and a JSON schema) on every call. The start-up timer keeps the label current.
        return [*out, neighbours(rag_result) if rag_result else []]

    go.click(on_compare, text, [*outputs, evidence], api_name="classify")
    text.submit(on_compare, text, [*outputs, evidence], api_visibility="private")
    return what_lines, evidence


# --- Batch evaluation ------------------------------------------------------------------------------------------------


def per_class_rows(report: dict[str, Any]) -> list[list[Any]]:
    """One row per backend and label: precision, recall, F1 and support."""
    return [
        [name, label, round(s["precision"], 3), round(s["recall"], 3), round(s["f1"], 3), s["support"]]
        for name, b in report["backends"].items()
        for label, s in b.get("per_class", {}).items()
    ]


def scored_line(report: dict[str, Any]) -> str:
    """What a report rests on, in one paragraph: the data, how many texts, how latency was measured."""
    data = report["dataset"]
    spread = [
        f"{escape_markdown(n)} p50 {b['latency_ms']['p50']:.1f} ms / p95 {b['latency_ms']['p95']:.1f} ms"
        for n, b in report["backends"].items()
        if b.get("latency_ms")
    ]
    busy = any(b.get("latency_ms", {}).get("p95", 0) > 3 * b.get("latency_ms", {}).get("p50", 1) for b in
               report["backends"].values())  # fmt: skip
    what = data.get("scored") or f"{data['n']:,} texts"
    return (
        f"**Scored:** {escape_markdown(what, 300)}. Accuracies carry a 95% "
        f"bootstrap interval over these {data['n']:,} texts. **Latency:** {report['latency']['queries']} single "
        f"queries per backend, interleaved, warm-up excluded ({'; '.join(spread)})."
        + (" The spread is wide: the machine was busy, so treat these latencies as rough." if busy else "")
    )


def report_zip(report: dict[str, Any], keep: list[Path]) -> Path:
    """report.json, report.md, disagreements.csv and the plots in one zip (report.md links the PNGs beside it)."""
    out = Path(tempfile.mkdtemp(prefix="ftrag-report-"))
    keep.append(out)
    while len(keep) > KEEP_REPORTS:
        shutil.rmtree(keep.pop(0), ignore_errors=True)
    plots = write_report(report, out / "report")
    archive = out / "report.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for file in [*(out / "report" / name for name in REPORT_FILES), *plots]:
            bundle.write(file, file.name)
    return archive


def batch_tab(state: App, visitor_report: gr.State, keep: list[Path]) -> None:
    with gr.Row():
        upload = gr.File(
            label="CSV or JSONL with text and label columns", file_types=[".csv", ".jsonl"], elem_id="upload"
        )
        with gr.Column():
            use_test = gr.Checkbox(value=True, label="Use the bundled test split instead")
            size = gr.Slider(50, MAX_UPLOAD_ROWS, value=300, step=50, label="Test texts")
    run = gr.Button("Evaluate every backend", variant="primary")
    scored = gr.Markdown(elem_id="scored")
    metrics = gr.Dataframe(headers=list(HEADLINE_COLUMNS), label="Metrics", wrap=True)
    with gr.Row():
        confusion = gr.Image(label="Confusion matrices", type="filepath")
        accuracy_plot = gr.Image(label="Accuracy with 95% intervals", type="filepath")
    with gr.Row():
        latency = gr.Image(label="Latency", type="filepath")
        reliability = gr.Image(label="Reliability (calibration)", type="filepath")
    per_class = gr.Dataframe(headers=["backend", "label", "precision", "recall", "F1", "support"], label="Per class")
    disagreements = gr.Dataframe(label="Where the backends disagree", wrap=True)
    download = gr.File(label="Download the report (zip: JSON, Markdown, CSV and the plots)")
    upload.upload(lambda: False, None, use_test, api_visibility="private")  # a file was given: score the file

    def on_evaluate(file, use_test_split: bool, n: float, progress=gr.Progress()):  # noqa: B008 - Gradio's idiom
        try:
            report = state.evaluate_file(
                getattr(file, "name", file), use_test_split, int(n), progress=lambda f, m: progress(f, desc=m)
            )
        except ValueError as err:  # InputError, DataError, backends that cannot be compared
            raise ui_error(err) from err
        archive = report_zip(report, keep)
        folder = archive.parent / "report"
        table = [list(r.values()) for r in headline_rows(report)]
        names, disagreeing = disagreement_rows(report)
        images = [
            str(folder / f) for f in ("confusion_matrices.png", "accuracy.png", "latency.png", "reliability.png")
        ]
        return (
            scored_line(report),
            table,
            *images,
            per_class_rows(report),
            gr.update(value=disagreeing, headers=names),
            str(archive),
            report,
        )

    outputs = [scored, metrics, confusion, accuracy_plot, latency, reliability, per_class, disagreements, download]
    run.click(on_evaluate, [upload, use_test, size], [*outputs, visitor_report], api_name="evaluate",
              concurrency_limit=1, concurrency_id="evaluate")  # fmt: skip


# --- Decide ----------------------------------------------------------------------------------------------------------


def number(text: Any, what: str) -> float | None:
    """A number typed in a Decide field; empty means no constraint. "80%" is 80; anything else is an InputError.

    >>> number("", "x"), number(" 1,000 ", "x"), number("80%", "x"), number(0.5, "x")
    (None, 1000.0, 80.0, 0.5)
    """
    if text is None or not str(text).strip():
        return None
    cleaned = str(text).strip().replace(",", "").removesuffix("%").strip()
    try:
        value = float(cleaned)
    except ValueError:
        raise InputError(f"{what}: {str(text)[:40]!r} is not a number (leave it empty for no constraint)") from None
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"{what}: must be a positive number (leave it empty for no constraint)")
    return value


def share(text: Any) -> float | None:
    """An accuracy target as a share: "0.8" stays 0.8, "80" or "80%" becomes 0.8, "0.5%" 0.005; empty: no target.

    >>> share("0.8"), share("80"), share("80%"), share("0.5%"), share("")
    (0.8, 0.8, 0.8, 0.005, None)
    """
    value = number(text, "accuracy target")
    if value is None:
        return None
    return value / 100 if str(text).strip().endswith("%") or value > 1 else value


def recommendation_markdown(rec: dict[str, Any], report: dict[str, Any]) -> str:
    choice = rec["choice"] or "no choice: the measurements do not support one"
    if len(rec.get("tie") or []) > 1:
        choice = "a tie between " + " and ".join(rec["tie"])
    lines = [f"## Recommendation: {escape_markdown(choice)}", ""]
    if rec.get("decided_by"):
        lines += [f"**What decided it:** {escape_markdown(rec['decided_by'], 800)}", ""]
    lines += [f"- *{r['criterion']}* ({escape_markdown(r['backend'])}): {escape_markdown(r['text'], 500)}"
              for r in rec["reasons"]]  # fmt: skip
    effects = (rec.get("constraints") or {}).get("effects") or []
    if effects:
        lines += ["", "**Your constraints**", ""] + [f"- {escape_markdown(e, 300)}" for e in effects]
    if rec["caveats"]:
        lines += ["", "**Caveats**", ""] + [f"- {escape_markdown(c, 500)}" for c in rec["caveats"]]
    data = report["dataset"]
    what = data.get("scored") or f"{data['n']:,} texts of {data.get('source')}"
    lines += ["", f"*Based on: {escape_markdown(what, 300)} ({escape_markdown(str(report.get('created')))}).*"]
    return "\n".join(lines)


def curve_png(state: App) -> str | None:
    path = (state.curve_dir or Path("/nonexistent")) / "curve.png"
    return str(path) if path.exists() else None


def curve_markdown(state: App) -> str:
    """What the learning curve below is, or why there is none yet."""
    curve = state.curve
    if curve is not None:
        seeds = len(curve.get("seeds") or [0])
        return (f"*Learning curve: accuracy at {', '.join(f'{n:,}' for n in curve['sizes'])} labeled examples, "
                f"{seeds} seed{'s' if seeds > 1 else ''}, on {curve['test_size']:,} test texts. Decide reads it for "
                "fewer labeled examples than the backends were given.*")  # fmt: skip
    if state.curving and not state.curving.startswith("failed"):
        return f"*A small learning curve is being measured in the background ({escape_markdown(state.curving)}).*"
    return "*No learning curve in the artifacts: `python -m compare.curve` makes one (curve.json / .png).*"


def decide_tab(state: App, visitor_report: gr.State) -> None:
    gr.Markdown("Leave a field empty for *no constraint*.")
    with gr.Row():
        examples_in = gr.Textbox(label="Labeled examples you have", placeholder="no constraint, e.g. 300")
        target_in = gr.Textbox(label="Accuracy target", placeholder="no constraint, e.g. 0.8 or 80%")
        budget_in = gr.Textbox(label="p95 latency budget (ms)", placeholder="no constraint, e.g. 50")
    with gr.Row():
        updates_in = gr.Radio(list(UPDATES), value="rarely", label="Labeled data changes")
        hardware_in = gr.Radio(list(HARDWARE), value="cpu", label="Hardware")
        evidence_in = gr.Checkbox(label="Answers must show their evidence")
    use_mine = gr.Checkbox(label="Use my latest batch evaluation instead of the start-up comparison", value=False)
    decide_btn = gr.Button("Recommend", variant="primary")
    recommendation = gr.Markdown(elem_id="recommendation")

    def on_decide(examples, target, budget, updates, hardware, evidence, mine, report):
        try:
            n_examples = number(examples, "labeled examples")
            constraints = Constraints(
                labeled_examples=int(n_examples) if n_examples is not None else None,
                accuracy_target=share(target),
                latency_budget_ms=number(budget, "latency budget"),
                updates=updates,
                hardware=hardware,
                need_evidence=bool(evidence),
            )
            if mine and report is None:
                raise InputError("you have not run a batch evaluation yet in this session")
            chosen = report if mine else state.report
            rec = state.recommend(constraints, chosen)
        except (InputError, Refused, ValueError) as err:
            raise ui_error(err) from err
        return recommendation_markdown(rec, chosen or state.report)

    inputs = [examples_in, target_in, budget_in, updates_in, hardware_in, evidence_in, use_mine, visitor_report]
    decide_btn.click(on_decide, inputs, recommendation, api_name="recommend")
    curve_note = gr.Markdown(curve_markdown(state))
    curve_image = gr.Image(curve_png(state), label="Learning curve", type="filepath", visible=bool(curve_png(state)))

    # The start-up curve may finish after the page was built: each Recommend also shows the latest.
    def latest_curve():
        return curve_markdown(state), gr.update(value=curve_png(state), visible=bool(curve_png(state)))

    decide_btn.click(latest_curve, None, [curve_note, curve_image], api_visibility="private")


# --- Teach -----------------------------------------------------------------------------------------------------------


def teach_intro(shared_open: bool) -> str:
    """The Teach tab's opening paragraph; it mentions the shared index only when the operator opened it."""
    shared_note = (
        " The operator also lets you add an example to the **shared** index, where every visitor's answers use it."
        if shared_open
        else ""
    )
    return (
        "Teach retrieval a labeled example and see a query's answer before and after, at once; the fine-tuned model "
        "would need retraining to learn it. What you teach here stays **in your session**: nobody else's answers "
        f"change, and *Undo* takes it back.{shared_note}"
    )


def session_view(service: Service, query: str, examples: list[dict[str, Any]]) -> list[Any]:
    """`query` before and after the visitor's taught `examples`: the two answers, the evidence now (marking the
    visitor's own examples) and the list of what they taught and where."""
    mine = [e for e in examples if e.get("vector") is not None]  # shared ones are in the index already
    answer = service.compare_session(query, mine) if query and query.strip() else None
    rows = [[e["text"], e["label"], round(e["score"], 3), "yes" if e.get("own") else ""]
            for e in answer["after"]["evidence"]] if answer else []  # fmt: skip
    table = [[e["text"], e["label"], f"shared index (id {e['shared_id']})" if e.get("shared_id") else
              "your session"] for e in examples]  # fmt: skip
    if answer is None:
        return [None, None, rows, table]
    return [label_value(answer["before"]), label_value(answer["after"]), rows, table]


def teach_tab(state: App) -> gr.Radio:
    """Teach retrieval an example and see a query before and after. What a visitor teaches stays in their session
    (`gr.State`) unless the operator allows the shared index to be taught and the visitor asks for it.

    The tab's layout, in the order the page shows it, then its two handlers; the view they share is `session_view`."""
    service = state.service
    policy = service.teach_policy
    gr.Markdown(teach_intro(policy.open))
    own = gr.State([])  # this visitor's taught examples: {"text", "label", "vector", "shared_id"}
    labels = service.labels()
    teach_text = gr.Textbox(label="Example", max_length=MAX_CHARS)
    teach_label = gr.Radio(labels, value=labels[-1], label="Its label")
    teach_query = gr.Textbox(label="Then classify this with retrieval", value=EXAMPLES[3], max_length=MAX_CHARS)
    shared = gr.Checkbox(label="Also add it to the shared index (every visitor)", value=False, visible=policy.open)
    teach_token = gr.Textbox(label="Operator token", type="password", visible=policy.open and policy.token is not None)
    with gr.Row():
        teach_btn = gr.Button("Teach", variant="primary")
        undo_btn = gr.Button("Undo the last one")
    teach_msg = gr.Markdown()
    with gr.Row():
        before = gr.Label(label="Before: retrieval said", num_top_classes=5)
        after = gr.Label(label="After: retrieval says", num_top_classes=5)
    teach_neighbours = gr.Dataframe(headers=["neighbour", "label", "similarity", "taught by you"], wrap=True,
                                    label="What the answer rests on now: the 10 nearest labeled examples")  # fmt: skip
    yours = gr.Dataframe(headers=["your example", "label", "where"], wrap=True, label="What you taught")

    shown = partial(session_view, service)

    def on_teach(text, label, query, to_shared, token, examples, request: gr.Request):
        try:
            examples = service.teach_session(text, label, examples or [])
            where = "your session"
            if to_shared:
                result = service.teach([text], [label], token=token or None, client=client_of(request))
                examples[-1] = {**examples[-1], "vector": None, "shared_id": result["ids"][0]}
                where = f"the shared index (id {result['ids'][0]}, now {result['index_size']:,} examples)"
            out = shown(query, examples)
        except (InputError, Refused, ValueError) as err:
            raise ui_error(err) from err
        message = (f"“{escape_markdown(text, 200)}” as **{escape_markdown(label)}** was added to {where}. "
                   f"{escape_markdown(service.retrain_cost()['finetune_note'], 400)}.")  # fmt: skip
        return [message, *out, examples]

    def on_undo(query, token, examples, request: gr.Request):
        if not examples:
            raise ui_error(InputError("nothing to undo: you have not taught anything in this session"))
        last = examples[-1]
        try:
            if last.get("shared_id"):
                service.forget(last["shared_id"], token=token or None, client=client_of(request))
            examples = examples[:-1]
            out = shown(query, examples)
        except (InputError, Refused, ValueError) as err:
            raise ui_error(err) from err
        return [f"Took back “{escape_markdown(last['text'], 200)}”.", *out, examples]

    outputs = [teach_msg, before, after, teach_neighbours, yours, own]
    teach_btn.click(on_teach, [teach_text, teach_label, teach_query, shared, teach_token, own], outputs,
                    api_name="teach")  # fmt: skip
    undo_btn.click(on_undo, [teach_query, teach_token, own], outputs, api_name="undo")
    return teach_label


# --- Your data ------------------------------------------------------------------------------------------------------


STUDY_INTRO = """\
Decide on **your own task**. Upload labeled text (CSV or JSONL with a text column and a label column;
{min_rows:,} to {max_rows:,} rows; 2 to {max_labels} labels of at most {label_chars} characters, each with at least
{per_label} examples). The study holds out a test set (your file's own `split` column is not needed: a
stratified 20% is held out, with no text on both sides), fine-tunes the pretrained model, builds the retrieval index
(and one over an embedder tuned on your examples), compares them on the test set with 95% intervals, draws a learning
curve with the time left, and recommends, all within the budget you pick. One study runs at a time on this machine;
yours waits its turn, with its place shown. What you train here is yours alone: nobody else sees it, and it is
deleted after a few hours."""


def study_status_markdown(state: App, job) -> str:
    if job.state == "queued":
        ahead = state.studies.position(job)
        head = f"**Waiting**: {ahead} {'study runs' if ahead == 1 else 'studies run or wait'} before yours."
    elif job.state == "running":
        head = f"**Running** (budget {job.budget_minutes:g} minutes). {study_progress(job.lines)}"
    elif job.state == "failed":
        head = f"**Failed**: {escape_markdown(job.error or 'unknown error', 500)}"
    elif job.state == "cancelled":
        head = "**Cancelled.**"
    else:
        head = "**Done.**"
    recent = "\n".join(line.replace("`", "'") for line in job.lines[-8:])
    if not recent or job.state == "done":
        return head
    return f"{head}\n\n<details><summary>What the study said last</summary>\n\n```text\n{recent}\n```\n</details>"


STAGE_WORDS = {
    "split": "holding out your test set",
    "plan": "planning the budget",
    "index": "building the retrieval index",
    "finetune": "fine-tuning",
    "tune": "tuning the embedder",
    "evaluate": "scoring every contender on your test set",
    "curve": "drawing the learning curve",
    "decide": "deciding",
}
"""What each stage of a study (`compare.study.STAGES`) does, in a visitor's words."""


def study_progress(lines: list[str]) -> str:
    """A progress bar of the stage a running study is in, from what it said last.

    >>> study_progress(["[finetune] starting (planned 1.20 min; 3.50 min of the budget left)"])
    '`▓▓▓▓░░░░` stage 4 of 8: fine-tuning; at most 3.5 min left'
    """
    for line in reversed(lines):
        found = re.match(r"\[(\w+)\] starting \(.*?([\d.]+) min of the budget left", line)
        if found and found.group(1) in STAGE_WORDS:
            stage = list(STAGE_WORDS).index(found.group(1)) + 1
            bar = "▓" * stage + "░" * (len(STAGE_WORDS) - stage)
            what, left = STAGE_WORDS[found.group(1)], float(found.group(2))
            return f"`{bar}` stage {stage} of {len(STAGE_WORDS)}: {what}; at most {left:.1f} min left"
    return "Starting."


STUDY_FILES = ("report.md", "report.json", "decision.json", "disagreements.csv", "curve.json")
"""What a visitor downloads of their study, besides its plots (study.json, which records server folders, is not)."""


def study_zip(job) -> Path:
    """One zip of what the study wrote that a person reads: the report, the decision, the curve, the plots; every
    text file with this server's folders taken out."""
    archive = job.folder / "study.zip"
    if archive.exists():
        return archive
    names = [*STUDY_FILES, *sorted(p.name for p in job.out.glob("*.png"))]
    tmp = job.folder / f"study.zip.{secrets.token_hex(4)}.tmp"
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in names:
            path = job.out / name
            if not path.is_file():
                continue
            if path.suffix == ".png":
                zf.write(path, name)
            else:
                text = path.read_text(encoding="utf-8").replace(str(job.folder), "your study")
                zf.writestr(name, hide_paths(text))
    tmp.replace(archive)
    return archive


def study_preview_view(state: App, file) -> tuple[str, list]:
    """What the "Your data" tab shows of an upload: the rows, the columns found, the label counts, the first rows."""
    from serving.studies import preview

    if not file:
        return "", []
    try:
        seen = preview(uploaded_file(file, state.upload_root))
    except ValueError as err:
        raise ui_error(err) from err
    cols = seen["columns"]
    counts = ", ".join(f"{escape_markdown(k)} {v:,}" for k, v in seen["labels"].items())
    text = (f"**{seen['rows']:,} rows**; text from column `{escape_markdown(cols['text'])}`, labels from "
            f"`{escape_markdown(cols['label'])}`; {len(seen['labels'])} labels: {counts}.")  # fmt: skip
    return text, seen["first_rows"]


def study_view(state: App, current: str | None) -> list:
    """The visitor's study as the tab shows it: status, verdict, table, curve, download, and whether to keep
    polling (only while it is queued or running)."""
    job = state.studies.find(current)
    if job is None:
        said = "*Your study is over and its files were deleted; run another.*" if current else ""
        return [said, "", None, gr.update(visible=False), None, gr.Timer(active=False)]
    busy = job.state in {"queued", "running"}
    if busy or job.state in {"failed", "cancelled"}:
        return [study_status_markdown(state, job), "", None, gr.update(visible=False), None, gr.Timer(active=busy)]
    report = read_json(job.out / "report.json", "report")
    curve_png = job.out / "curve.png"
    return [
        study_status_markdown(state, job),
        recommendation_markdown(job.decision, report),
        [list(r.values()) for r in headline_rows(report)],
        gr.update(value=str(curve_png) if curve_png.exists() else None, visible=curve_png.exists()),
        str(study_zip(job)),
        gr.Timer(active=False),
    ]


def your_data_tab(state: App, demo: gr.Blocks) -> None:
    """The "Your data" tab: upload, preview, budget, the visitor's own study as a background job, its report and
    its models. The handlers that need more than a few lines are `study_preview_view` and `study_view`; what is left
    is the tab's layout, its components in the order the page shows them, and their wiring."""
    from serving.studies import BUDGETS, MAX_STUDY_ROWS, MIN_PER_LABEL, MIN_STUDY_ROWS, max_minutes, preview

    gr.Markdown(STUDY_INTRO.format(min_rows=MIN_STUDY_ROWS, max_rows=MAX_STUDY_ROWS, max_labels=MAX_LABELS,
                                   label_chars=MAX_LABEL_CHARS, per_label=MIN_PER_LABEL))  # fmt: skip
    # This visitor's study: its unguessable id is theirs alone, kept by their browser (encrypted in local storage) so
    # that a reload or a return brings the study back for as long as it is kept.
    job_id = gr.BrowserState(None, storage_key="ftrag-study")
    upload = gr.File(label="Your labeled data (CSV or JSONL)", file_types=[".csv", ".jsonl"],
                     elem_id="study-upload")  # fmt: skip
    found = gr.Markdown(elem_id="study-preview")
    first_rows = gr.Dataframe(headers=["text", "label"], wrap=True, label="First rows, as the study reads them")
    budgets = [b for b in BUDGETS if b <= max_minutes()] or [max_minutes()]
    budget = gr.Radio([str(b) for b in budgets], value=str(budgets[min(1, len(budgets) - 1)]),
                      label="Budget (minutes of this machine)")  # fmt: skip
    with gr.Row():
        run = gr.Button("Run the study", variant="primary")
        cancel = gr.Button("Cancel my study")
    status = gr.Markdown(elem_id="study-status")
    verdict = gr.Markdown(elem_id="study-verdict")
    table = gr.Dataframe(headers=list(HEADLINE_COLUMNS), label="Each contender on your test set", wrap=True)
    curve = gr.Image(label="Learning curve on your data", type="filepath", visible=False)
    download = gr.File(label="Download the study (report, decision, plots)")
    with gr.Row():
        query = gr.Textbox(label="Then try your own models on a text", max_length=MAX_CHARS, scale=4)
        ask = gr.Button("Classify", scale=1)
    with gr.Row():
        yours_ft = gr.Label(label="Your fine-tuned model", num_top_classes=5)
        yours_rag = gr.Label(label="Your retrieval index", num_top_classes=5)
    timer = gr.Timer(2.0, active=False)

    def on_run(file, minutes, current, request: gr.Request):
        job = state.studies.find(current)
        if job is not None and job.state in {"queued", "running"}:
            raise ui_error(InputError("your study is still running; wait for it to finish"))
        if not file:
            raise ui_error(InputError("upload a labeled file first"))
        try:
            path = uploaded_file(file, state.upload_root)
            job = state.studies.submit(path, float(minutes), preview(path)["rows"], client=client_of(request))
        except (ValueError, Refused) as err:
            raise ui_error(err) from err
        return job.id, study_status_markdown(state, job), gr.Timer(active=True)

    def on_cancel(current):
        try:
            job = state.studies.cancel(current)
        except InputError as err:
            raise ui_error(err if current else InputError("you have no study to cancel")) from err
        return study_status_markdown(state, job)

    def on_ask(text, current):
        if not current:
            raise ui_error(InputError("run a study first: its models answer here"))
        try:
            [text] = validate_texts([text])
            models = state.studies.models(state.studies.job(current))
            answers = {name: clf.predict([text])[0] for name, clf in models.items()}
        except (ValueError, Refused) as err:
            raise ui_error(err) from err
        return [label_value(answers[n].to_dict()) if n in answers else None for n in ("finetune", "rag")]

    upload.change(partial(study_preview_view, state), upload, [found, first_rows], api_name="study_preview")
    run.click(on_run, [upload, budget, job_id], [job_id, status, timer], api_name="study")
    cancel.click(on_cancel, job_id, status, api_name="study_cancel")
    outputs = [status, verdict, table, curve, download, timer]
    on_tick = partial(study_view, state)
    timer.tick(on_tick, job_id, outputs, api_visibility="private")
    gr.Button("Refresh", size="sm").click(on_tick, job_id, outputs, api_name="study_status")
    ask.click(on_ask, [query, job_id], [yours_ft, yours_rag], api_name="study_classify")
    demo.load(on_tick, job_id, outputs, api_visibility="private")  # a reload finds the study again


# --- Models ----------------------------------------------------------------------------------------------------------


def examples_line(b: dict[str, Any]) -> str:
    """How many labeled examples a backend learned from and chose its settings on, and from where."""
    seen = []
    if b["train_size"] is not None:
        seen.append(f"learned from **{b['train_size']:,}**")
    if b["validation_size"] is not None:
        seen.append(f"chose its settings on **{b['validation_size']:,}**")
    where = f" ({escape_markdown(str(b['data_source']), 300)})" if b["data_source"] else ""
    return f"- labeled examples: {', '.join(seen)}{where}" if seen else "- labeled examples: not recorded"


_CURVES_DIR = Path(tempfile.mkdtemp(prefix="ftrag-curves-"))


def training_curves(service: Service) -> list[tuple[str, str]]:
    """``(png, caption)`` of each loaded fine-tune's training curve (losses, evaluation accuracy, the kept checkpoint),
    with the overfitting note in the caption when there is one."""
    from finetune.history import overfitting_note, plot

    shown = []
    for name, clf in service.backends.items():
        meta = getattr(clf, "meta", None) or {}
        if not meta.get("history"):
            continue
        path = _CURVES_DIR / f"{name}-{id(clf)}.png"
        if not path.exists() and plot(meta, path, title=f"{COLUMN_TITLES.get(name, name)} ({name})") is None:
            continue
        note = overfitting_note(meta)
        shown.append((str(path), f"{name}: {note}" if note else f"{name}: no sign of overfitting"))
    return shown


AUDIT_SHOWN = 20


def audit_section(service: Service) -> tuple[str, list[list[Any]]]:
    """What `python -m compare.audit` found in the training data (``<artifacts>/audit/audit.json``), if it ran."""
    path = (service.artifacts or Path("/nonexistent")) / "audit" / "audit.json"
    if not path.is_file():
        return ("*No label-quality audit in the artifacts: `python -m compare.audit --out artifacts/audit` makes one "
                "(suspect labels, conflicting duplicates, train/test overlap).*", [])  # fmt: skip
    try:
        audit = read_json(path, "audit")
        suspects = audit["suspects"]
    except (ValueError, KeyError, TypeError) as err:
        return f"*The audit in the artifacts cannot be read: {escape_markdown(hide_paths(str(err)), 300)}*", []
    dups = audit.get("conflicting_duplicates") or {}
    found = audit.get("suspects_found", 0)
    text = (f"**Label-quality audit** of {audit.get('data', 0):,} training examples: **{found:,}"
            f" suspect labels** (another label predicted out of fold with confidence >= "
            f"{audit.get('config', {}).get('min_confidence', 0.7)}, and most nearest neighbours disagree); "
            f"{len(dups.get('exact', []))} exact and {len(dups.get('near', []))} near duplicates with conflicting "
            f"labels. The {min(AUDIT_SHOWN, len(suspects))} most doubtful:")  # fmt: skip
    measured = [
        (who, audit.get(key)) for who, key in (("retrieval", "removal"), ("the fine-tune", "removal_finetune"))
    ]
    said = [f"{who} without the {m['removed']:,} suspects: {m['accuracy_diff']:+.4f} accuracy on {m['test_texts']:,} "
            f"test texts, 95% interval [{m['diff_ci95'][0]:+.4f}, {m['diff_ci95'][1]:+.4f}]"
            for who, m in measured if m]  # fmt: skip
    if said:
        text += f" ({'; '.join(said)})"
    rows = [[s["text"], s["label"], s["suggested"], s["confidence"], s["neighbours_agreeing"]]
            for s in suspects[:AUDIT_SHOWN]]  # fmt: skip
    return text, rows


def models_markdown(service: Service) -> str:
    """What is loaded: names, what each is, its labels, the data and how much of it, sizes. No server paths."""
    info = service.models()
    lines = []
    for name, b in info["backends"].items():
        lines.append(f"### {COLUMN_TITLES.get(name, escape_markdown(name))} (`{escape_markdown(name)}`)")
        lines.append(f"- {escape_markdown(b['description'], 400)}")
        if b["from_scratch"]:
            lines.append(f"- **{escape_markdown(b['notice'] or 'trained from scratch', 400)}**")
        lines.append(examples_line(b))
        lines.append(f"- labels: {escape_markdown(', '.join(b['labels']), 300)}")
        seconds = b["seconds"]
        lines.append(f"- training / build time: {seconds:,.0f} s" if seconds is not None else "- time: n/a")
        if b["eval_accuracy"] is not None:
            lines.append(f"- held-out accuracy {b['eval_accuracy']:.4f}, macro-F1 {b['eval_macro_f1']:.4f}")
    for name, why in info["unavailable"].items():
        lines.append(f"### {escape_markdown(name)}: unavailable\n- {escape_markdown(why, 500)}")
    return "\n".join(lines) or "Nothing is loaded."


# --- the page --------------------------------------------------------------------------------------------------------


def build_demo(state: App) -> gr.Blocks:
    """The whole page; each tab is built by its own function above."""
    service = state.service
    keep: list[Path] = []  # report folders on disk, newest last
    # Uploads and generated files older than an hour are deleted every hour (and all of them at restart).
    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {TITLE}\n\n{INTRO}")
        with gr.Accordion("How to read the numbers", open=False):
            gr.Markdown(GLOSSARY)
        start_up = gr.HTML(start_up_html(service))
        visitor_report = gr.State(None)  # this visitor's latest batch evaluation: theirs alone
        with gr.Tab("Compare"):
            what_lines, evidence = compare_tab(state)
        with gr.Tab("Batch evaluation"):
            batch_tab(state, visitor_report, keep)
        with gr.Tab("Decide"):
            decide_tab(state, visitor_report)
        with gr.Tab("Your data"):
            your_data_tab(state, demo)
        with gr.Tab("Teach"):
            label_choice = teach_tab(state)
        with gr.Tab("Models"):
            shown = gr.Markdown(models_markdown(service))  # at build time: a load event would hold a stream open
            audit_text, audit_rows = audit_section(service)
            gr.Markdown(audit_text, elem_id="audit")
            if audit_rows:
                gr.Dataframe(audit_rows, headers=["text", "label", "suggested", "confidence", "neighbours agreeing"],
                             wrap=True, label="Suspect labels")  # fmt: skip
            curves = gr.Gallery(training_curves(service), label="Training curves of the fine-tuned models", columns=1,
                                height="auto", elem_id="training-curves")  # fmt: skip
            gr.Button("Refresh", size="sm").click(lambda: (models_markdown(service), training_curves(service)), None,
                                                  [shown, curves], api_name=False)  # fmt: skip
        # While the line-up builds, each visitor's page polls its progress; the timer stops once all are up.
        timer = gr.Timer(START_UP_POLL_S, active=not service.ready.is_set())

        def on_tick():
            done = service.ready.is_set()
            labels = service.labels()
            return [
                start_up_html(service),
                *(what_is(service, name) for name in what_lines),
                gr.update(label=evidence_label(service)),
                models_markdown(service),
                training_curves(service),
                gr.update(choices=labels),
                gr.Timer(active=not done),
            ]

        outputs = [start_up, *what_lines.values(), evidence, shown, curves, label_choice, timer]
        timer.tick(on_tick, None, outputs, api_visibility="private")
    return demo


__all__ = ["EXAMPLES", "KEEP_REPORTS", "LATENCY_QUERIES", "TITLE", "build_demo", "what_is"]
