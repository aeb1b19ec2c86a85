"""The Gradio page: one builder per tab, each wiring components to `serving.state.App` and `serving.service`.

Every handler turns an expected error into a message that stays on the page and names no server path. What one
visitor measures (a batch evaluation) lives in that visitor's session (`gr.State`), never in the shared `App`.
"""

from __future__ import annotations

import math
import shutil
import tempfile
import zipfile
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
from core.limits import MAX_CHARS, MAX_UPLOAD_ROWS
from serving.access import Refused, client_of
from serving.service import InputError, Service, hide_paths
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
LATENCY_NOTE = (
    "Latency here is one request, timed on a machine other visitors share: treat it as a rough figure. Decide uses "
    "the calm measurement made at start-up."
)


def ui_error(err: Exception) -> gr.Error:
    """An error for the page: it stays until dismissed and names no server path."""
    return gr.Error(hide_paths(str(err)), duration=None)


def neighbours(result: dict[str, Any]) -> list[list[Any]]:
    return [[e["text"], e["label"], round(e["score"], 3)] for e in result.get("evidence", [])]


def label_value(result: dict[str, Any] | None) -> dict[str, float] | None:
    return None if result is None else {k: float(v) for k, v in result["scores"].items()}


def what_is(service: Service, name: str) -> str:
    """One line under each answer column: what the backend is, in bold when it was trained from scratch."""
    clf = service.backends.get(name)
    if clf is None:
        return f"*unavailable: {escape_markdown(service.unavailable.get(name, 'not loaded'), 300)}*"
    describe = getattr(clf, "describe", None)
    text = escape_markdown(hide_paths(describe() if callable(describe) else name), 300)
    return f"**{text}**" if getattr(clf, "from_scratch", False) else text


# --- Compare ---------------------------------------------------------------------------------------------------------


def compare_tab(state: App) -> None:
    service = state.service
    names = [*service.backends, *(n for n in service.unavailable if n not in service.backends)]
    text = gr.Textbox(label="A tweet", lines=2, max_length=MAX_CHARS, placeholder="Type or pick an example")
    gr.Examples(EXAMPLES, inputs=text)
    go = gr.Button("Compare", variant="primary")
    outputs = []
    with gr.Row():
        for name in names:
            with gr.Column():
                gr.Markdown(f"### {COLUMN_TITLES.get(name, escape_markdown(name))}")
                gr.Markdown(what_is(service, name), elem_id=f"what-{name}")
                outputs.append(gr.Label(num_top_classes=5, label=f"{name} scores", elem_id=f"label-{name}"))
                outputs.append(gr.Markdown(elem_id=f"latency-{name}"))
    gr.Markdown(f"*{LATENCY_NOTE}*")
    rag = service.backends.get("rag")
    voters = f": the 10 nearest of the {rag.k} that vote" if rag is not None else ""
    evidence = gr.Dataframe(
        headers=["neighbour", "label", "similarity"],
        label=f"Labeled tweets the RAG answer rests on{voters}",
        wrap=True,
        column_widths=["70%", "15%", "15%"],
    )

    def on_compare(query: str):
        try:
            [row] = service.classify([query])
        except InputError as err:
            raise ui_error(err) from err
        out: list[Any] = []
        for name in names:
            result = row["results"].get(name)
            out.append(label_value(result))
            out.append(
                f"**{escape_markdown(result['label'])}** in {result['latency_ms']:.1f} ms"
                if result
                else f"unavailable: {escape_markdown(service.unavailable.get(name, 'not loaded'), 300)}"
            )
        rag_result = row["results"].get("rag")
        return [*out, neighbours(rag_result) if rag_result else []]

    go.click(on_compare, text, [*outputs, evidence], api_name="classify")
    text.submit(on_compare, text, [*outputs, evidence], api_visibility="private")


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
    lines = [f"## Recommendation: {escape_markdown(choice)}", ""]
    lines += [f"- *{r['criterion']}* ({escape_markdown(r['backend'])}): {escape_markdown(r['text'], 500)}"
              for r in rec["reasons"]]  # fmt: skip
    if rec["caveats"]:
        lines += ["", "**Caveats**", ""] + [f"- {escape_markdown(c, 500)}" for c in rec["caveats"]]
    data = report["dataset"]
    what = data.get("scored") or f"{data['n']:,} texts of {data.get('source')}"
    lines += ["", f"*Based on: {escape_markdown(what, 300)} ({escape_markdown(str(report.get('created')))}).*"]
    return "\n".join(lines)


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
    curve_png = (state.curve_dir or Path("/nonexistent")) / "curve.png"
    if curve_png.exists():
        gr.Image(str(curve_png), label="Learning curve", type="filepath")
    else:
        gr.Markdown("*No learning curve in the artifacts: `python -m compare.curve` makes one (curve.json / .png).*")


# --- Teach -----------------------------------------------------------------------------------------------------------


def teach_tab(state: App) -> None:
    service = state.service
    gr.Markdown(
        "Add a labeled example to the shared retrieval index: it counts at once (and can be removed by its id). The "
        "fine-tuned model would need retraining to learn it."
    )
    teach_text = gr.Textbox(label="Example", max_length=MAX_CHARS)
    teach_label = gr.Radio(service.labels(), value=service.labels()[-1], label="Its label")
    teach_query = gr.Textbox(label="Then classify this with RAG", value=EXAMPLES[3])
    teach_token = gr.Textbox(label="Operator token", type="password", visible=service.teach_policy.token is not None)
    teach_btn = gr.Button("Teach", variant="primary", interactive=service.teach_policy.open)
    if not service.teach_policy.open:
        gr.Markdown("*Teaching the shared index is off on this public app.*")
    teach_msg = gr.Markdown()
    teach_scores = gr.Label(label="RAG now says")
    teach_neighbours = gr.Dataframe(headers=["neighbour", "label", "similarity"], wrap=True)

    def on_teach(text: str, label: str, query: str, token: str, request: gr.Request):
        try:
            result = service.teach([text], [label], token=token or None, client=client_of(request))
            after = service.classify([query])[0]["results"].get("rag") if query.strip() else None
        except (InputError, Refused, ValueError) as err:
            raise ui_error(err) from err
        what = "was already taught: merged" if result["merged"] else "added"
        message = (
            f"“{escape_markdown(text, 200)}” as **{escape_markdown(label)}** {what} (id {result['ids'][0]}; "
            f"`DELETE /api/teach/{result['ids'][0]}` removes it): the index now holds {result['index_size']:,} "
            f"examples ({result['seconds'] * 1000:.0f} ms). {escape_markdown(result['finetune_note'], 400)}."
        )
        return message, label_value(after), neighbours(after) if after else []

    teach_btn.click(on_teach, [teach_text, teach_label, teach_query, teach_token],
                    [teach_msg, teach_scores, teach_neighbours], api_name="teach")  # fmt: skip


# --- Models ----------------------------------------------------------------------------------------------------------


def models_markdown(service: Service) -> str:
    """What is loaded: names, what each is, its labels, the data and how much of it, sizes. No server paths."""
    info = service.models()
    lines = []
    for name, b in info["backends"].items():
        lines.append(f"### {COLUMN_TITLES.get(name, escape_markdown(name))} (`{escape_markdown(name)}`)")
        lines.append(f"- {escape_markdown(b['description'], 400)}")
        if b["from_scratch"]:
            lines.append(f"- **{escape_markdown(b['notice'] or 'trained from scratch', 400)}**")
        lines.append(f"- labeled examples: **{b['train_size']:,}** ({escape_markdown(str(b['data_source']), 300)})"
                     if b["train_size"] is not None else "- labeled examples: not recorded")  # fmt: skip
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
        if service.unavailable:
            missing = [f"**{escape_markdown(k)}** unavailable: {escape_markdown(v, 300)}" for k, v in
                       service.unavailable.items()]  # fmt: skip
            gr.Markdown("⚠️ " + "; ".join(missing))
        visitor_report = gr.State(None)  # this visitor's latest batch evaluation: theirs alone
        with gr.Tab("Compare"):
            compare_tab(state)
        with gr.Tab("Batch evaluation"):
            batch_tab(state, visitor_report, keep)
        with gr.Tab("Decide"):
            decide_tab(state, visitor_report)
        with gr.Tab("Teach"):
            teach_tab(state)
        with gr.Tab("Models"):
            shown = gr.Markdown(models_markdown(service))  # at build time: a load event would hold a stream open
            gr.Button("Refresh", size="sm").click(lambda: models_markdown(service), None, shown, api_name=False)
    return demo


__all__ = ["EXAMPLES", "KEEP_REPORTS", "LATENCY_QUERIES", "TITLE", "build_demo", "what_is"]
