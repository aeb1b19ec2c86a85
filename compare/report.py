"""Turn a comparison report into report.md and PNG plots a stakeholder can read.

Text from the data (tweets) is escaped before it goes into Markdown, so a tweet holding HTML, a Markdown link or a
table pipe shows as text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.plots import INK, plotting, save_figure

_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+!|~])")


def escape_markdown(text: str, limit: int = 200) -> str:
    r"""`text` on one line, shortened to `limit` characters, with Markdown and HTML syntax neutralised.

    >>> escape_markdown("<script>x</script> [a](http://b) | c")
    '\\<script\\>x\\</script\\> \\[a\\]\\(http://b\\) \\| c'
    """
    one_line = " ".join(str(text).split())
    if len(one_line) > limit:
        one_line = one_line[: limit - 1] + "…"
    return _MD_SPECIAL.sub(r"\\\1", one_line)


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n")


def csv_safe(value: Any) -> Any:
    """A cell that a spreadsheet will not run: text starting with = + - @ or a control character gets a leading '.

    >>> csv_safe("=cmd|' /C calc'!A0"), csv_safe("fine"), csv_safe(0.5)
    ("'=cmd|' /C calc'!A0", 'fine', 0.5)
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def disagreement_rows(report: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The texts where the backends disagree: the headers (text, reference, each backend) and one row per text."""
    names = list(report["backends"])
    rows = [[d["text"], d["reference"], *(d["predictions"].get(n, "") for n in names)]
            for d in report.get("disagreements", [])]  # fmt: skip
    return ["text", "reference", *names], rows


def disagreements_csv(report: dict[str, Any]) -> str:
    """The texts where the backends disagree, as CSV with every cell made spreadsheet-safe."""
    import csv
    import io

    headers, rows = disagreement_rows(report)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(headers)
    writer.writerows([csv_safe(cell) for cell in row] for row in rows)
    return buffer.getvalue()


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


def with_interval(value: float, interval: list[float] | None) -> str:
    """A score and its interval, as in the headline table; "n/a" for the interval of a report that has none.

    >>> with_interval(0.79263, [0.7791, 0.8062]), with_interval(0.79263, None)
    ('0.7926 [0.779, 0.806]', '0.7926 [n/a]')
    """
    if not interval:
        return f"{value:.4f} [n/a]"
    return f"{value:.4f} [{interval[0]:.3f}, {interval[1]:.3f}]"


def _p_value(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


HEADLINE_COLUMNS = (
    "backend",
    "accuracy",
    "macro-F1",
    "ECE",
    "p50 ms",
    "p95 ms",
    "batch texts/s",
    "$ per 1M queries",
    "one-off s",
    "disk MB",
    "served as",
)


def headline_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per backend: the numbers of the headline table (README, app, report.md)."""
    from core.precision import served_name  # here: it imports torch

    rows = []
    several_precisions = any("same_label_as" in b for b in report["backends"].values())  # jobs.run --precision a,b
    for name, b in report["backends"].items():
        calibration = b.get("calibration") or {}
        cost = b.get("cost") or {}
        rows.append(
            {
                "backend": name if b.get("learned", True) else f"{name} (did not learn)",
                "accuracy": with_interval(b["accuracy"], b.get("accuracy_ci95")),
                "macro-F1": with_interval(b["macro_f1"], b.get("macro_f1_ci95")),
                "ECE": f"{calibration['ece']:.3f}" if "ece" in calibration else "n/a",
                "p50 ms": _num(b.get("latency_ms", {}).get("p50")),
                "p95 ms": _num(b.get("latency_ms", {}).get("p95")),
                "batch texts/s": _num(b.get("samples_per_second")),
                "$ per 1M queries": _num(cost.get("per_million_queries_usd"), 3),
                "one-off s": _num(b.get("one_off_seconds")),
                "disk MB": _num(b.get("size_on_disk_mb")),
                "served as": served_name(b.get("serving")),  # what every figure of the row was measured on
            }
        )
        if several_precisions:
            same = b.get("same_label_as")
            rows[-1]["same label as"] = f"{_pct(same['share'])} of {same['backend']}'s" if same else "-"
    if rows and (baseline := report.get("baseline")):  # the floor every contender must clear
        rows.append({
            **dict.fromkeys(rows[0], "n/a"),
            "backend": f"baseline: {baseline['name']}",
            "accuracy": with_interval(baseline["accuracy"], baseline.get("accuracy_ci95")),
            "macro-F1": with_interval(baseline["macro_f1"], baseline.get("macro_f1_ci95")),
        })  # fmt: skip
    return rows


def learning_lines(report: dict[str, Any]) -> list[str]:
    """The report.md lines that name each contender that did not learn, and why (it is never ranked)."""
    failed = {name: b for name, b in report["backends"].items() if b.get("learned") is False}
    if not failed:
        return []
    lines = ["## Contenders that did not learn", ""]
    for name, b in failed.items():
        on = (b.get("learning_check") or {}).get("on", "the evaluated texts")
        lines.append(f"- **{escape_markdown(name)}** {escape_markdown(b.get('why') or '', 300)} (checked on {on}); "
                     "it is not ranked.")  # fmt: skip
    return [*lines, ""]


def markdown_table(
    rows: list[dict[str, Any]], limit: int = 200, columns: Sequence[str] | None = None, escape: bool = True
) -> str:
    """A Markdown table of `rows` (the first row's keys, or `columns`); every cell and header is kept to one line of
    at most `limit` characters and, with `escape`, has its Markdown and HTML syntax neutralised (texts from data or
    users); ``escape=False`` is for tables whose cells are all ours, such as a benchmark's.

    >>> print(markdown_table([{"a": 1, "b": "x|y"}]))
    | a | b |
    |---|---|
    | 1 | x\\|y |
    """
    if not rows:
        return ""
    columns = list(columns or rows[0])

    def cell(value: Any) -> str:
        return escape_markdown(str(value), limit) if escape else " ".join(str(value).split())[:limit]

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def paired_lines(report: dict[str, Any]) -> list[str]:
    """The "Paired comparisons" section of report.md, one line per pair of backends.

    Each line gives the accuracy difference, its interval, the McNemar p-value, and whether the difference is within
    noise (its interval contains 0).
    """
    if len(report["backends"]) < 2:
        return []
    if "pairwise" not in report:
        old = "n/a: this report predates paired comparisons; re-run `python -m jobs.run` for them."
        return ["## Paired comparisons", "", old, ""]
    lines = [
        "## Paired comparisons",
        "",
        "Accuracy of the first backend minus the second on the same texts, with its paired bootstrap interval, and "
        "the exact McNemar test on the texts that exactly one of the two gets right.",
        "",
    ]
    for pair in report["pairwise"]:
        a, b, diff, (low, high) = pair["a"], pair["b"], pair["accuracy_diff"], pair["diff_ci95"]
        if low <= 0.0 <= high:
            verdict = "Within noise: the interval contains 0."
        else:
            verdict = f"{a if diff > 0 else b} is more accurate: the interval excludes 0."
        lines.append(
            f"- **{escape_markdown(a)} − {escape_markdown(b)}**: {diff:+.4f} [{low:+.3f}, {high:+.3f}], McNemar "
            f"p = {_p_value(pair['mcnemar_p'])}. {escape_markdown(verdict)}"
        )
    return [*lines, ""]


def render_markdown(report: dict[str, Any], plots: list[str] | None = None) -> str:
    """The report as Markdown: headline table with intervals, paired tests, backends, per class, disagreements.

    A screen long on purpose: one short block per section, in the order the reader meets them."""
    data = report["dataset"]
    lines = [
        "# Fine-tune vs RAG: comparison report",
        "",
        f"Data: {escape_markdown(str(data.get('source')))} [{data.get('split')}], {data['n']} labeled texts; "
        f"labels: {escape_markdown(', '.join(report.get('labels') or []))}. "
        f"Machine: {report['machine']['cpu']}, {report['machine']['cpu_count']} CPUs "
        f"({report['machine']['torch_threads']} torch threads). Created {report['created']}.",
        "",
        markdown_table(headline_rows(report)),
        "",
        f"Latency: {report['latency']['queries']} single queries per backend, interleaved across backends, warm-up "
        f"excluded; throughput in batches of {report['latency']['batch_size']}. Cost at "
        f"${report['hourly_price_usd']:.2f} per machine-hour. ECE: expected calibration error (0 = a score of 0.9 "
        "is right 90% of the time). " + _intervals_note(report),
        "",
        *learning_lines(report),
        *paired_lines(report),
        "## Backends",
        "",
    ]
    for name, b in report["backends"].items():
        lines.append(f"- **{escape_markdown(name)}**: {escape_markdown(b.get('description') or name, 300)}")
        if b.get("from_scratch"):
            lines.append(f"  - **{escape_markdown(b.get('notice') or 'trained from scratch', 300)}**")
        training = b.get("training") or {}
        if training:
            lines.append(f"  - training curve: kept step {training.get('best_checkpoint_step')}; "
                         f"{escape_markdown(training.get('note') or 'no sign of overfitting', 300)}")  # fmt: skip
    update = report.get("knowledge_update")
    if update:
        lines += ["", "## Absorbing new labeled examples", "", escape_markdown(update["summary"], 1000)]
    if report.get("agreement"):
        lines += ["", "## Agreement", ""]
        lines += [f"- {escape_markdown(pair)}: {_pct(value)}" for pair, value in report["agreement"].items()]
    lines += ["", "## Per class", ""]
    for name, b in report["backends"].items():
        rows = [
            {
                "label": label,
                "precision": f"{s['precision']:.3f}",
                "recall": f"{s['recall']:.3f}",
                "F1": f"{s['f1']:.3f}",
                "support": str(s["support"]),
            }
            for label, s in b["per_class"].items()
        ]
        lines += [f"### {escape_markdown(name)}", "", markdown_table(rows), ""]
    if report.get("disagreements"):
        lines += [
            f"## Where the backends disagree ({report['disagreement_count']} texts; the first "
            f"{len(report['disagreements'])})",
            "",
        ]
        rows = [{"text": d["text"], "reference": d["reference"], **d["predictions"]} for d in report["disagreements"]]
        lines += [markdown_table(rows), ""]
    for plot in plots or []:
        lines += [f"![{Path(plot).stem}]({Path(plot).name})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _intervals_note(report: dict[str, Any]) -> str:
    how = report.get("intervals")
    if not how:
        return "Intervals: n/a (this report predates them)."
    return (
        f"Intervals: {100 * how['confidence']:g}% {how['method']} over the {report['dataset']['n']} texts "
        f"({how['resamples']} resamples, seed {how['seed']})."
    )


def plot(report: dict[str, Any], out: str | Path) -> list[Path]:
    """confusion_matrices.png, latency.png, reliability.png and accuracy.png in `out`; returns their paths.

    The order is kept (new plots go at the end): callers take the first two as the confusion and latency images.
    """
    with plotting() as plt:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        names = list(report["backends"])
        written = [_confusion_matrices(report, out / "confusion_matrices.png")]

        fig, ax = plt.subplots(figsize=(7, 4))
        samples = [report["backends"][n].get("latency_samples_ms") or [0.0] for n in names]
        ax.boxplot(samples, showfliers=True)
        ax.set_xticks(range(1, len(names) + 1), names)
        ax.set(ylabel="single-query latency (ms)", title="Latency per query (warm, interleaved)")
        ax.set_yscale("log")
        written.append(save_figure(fig, out / "latency.png"))

        fig, ax = plt.subplots(figsize=(5.5, 5))
        ax.plot([0, 1], [0, 1], "--", color=INK, lw=1, label="perfectly calibrated")
        for name in names:
            bins = [b for b in (report["backends"][name].get("calibration") or {}).get("bins", []) if b["count"]]
            if bins:
                ece = report["backends"][name]["calibration"]["ece"]
                xs, ys = [b["confidence"] for b in bins], [b["accuracy"] for b in bins]
                ax.plot(xs, ys, "o-", label=f"{name} (ECE {ece:.3f})")
        ax.set(xlabel="confidence (top score)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="Reliability")
        ax.legend(loc="upper left")
        written.append(save_figure(fig, out / "reliability.png"))
        written.append(_accuracy_bars(report, out / "accuracy.png"))
    written += _training_curves(report, out)
    return written


ANNOTATED_LABELS = 15
"""Up to this many labels, each cell of a confusion matrix shows its count; beyond, colour alone (a text object per
cell would cost backends x labels^2 of them)."""
PLOTTED_LABELS = 30
"""Beyond this many labels, a confusion matrix shows the most frequent ones (by reference count) only."""


def shown_labels(labels: Sequence[str], matrix: Any, limit: int = PLOTTED_LABELS) -> list[int]:
    """The positions of the labels a confusion matrix plot shows: all of them, or the `limit` most frequent as
    references (ties in label order), in label order.

    >>> shown_labels(["a", "b", "c"], [[1, 0, 0], [0, 5, 0], [0, 1, 3]], limit=2)
    [1, 2]
    """
    import numpy as np

    if len(labels) <= limit:
        return list(range(len(labels)))
    support = np.asarray(matrix).sum(axis=1)
    return sorted(np.argsort(-support, kind="stable")[:limit].tolist())


def _confusion_matrices(report: dict[str, Any], path: Path) -> Path:
    """confusion_matrices.png: one matrix per backend, shares by colour, counts written in up to ANNOTATED_LABELS
    labels; beyond PLOTTED_LABELS labels, the most frequent ones only (the title says so). Its cost is bounded by
    PLOTTED_LABELS whatever the label count."""
    import matplotlib.pyplot as plt
    import numpy as np

    names, labels = list(report["backends"]), list(report["labels"])
    keep = shown_labels(labels, report["backends"][names[0]]["confusion_matrix"])
    ticks = [str(labels[i])[:20] for i in keep]
    annotate = len(keep) <= ANNOTATED_LABELS
    side = 4.0 if len(keep) <= ANNOTATED_LABELS else 4.0 + 0.1 * len(keep)
    fig, axes = plt.subplots(1, len(names), figsize=(side * 1.05 * len(names), side), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        matrix = np.array(report["backends"][name]["confusion_matrix"])[np.ix_(keep, keep)]
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        if annotate:
            for (i, j), count in np.ndenumerate(matrix):
                ax.text(j, i, str(count), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
        ax.set(xticks=range(len(keep)), yticks=range(len(keep)), xlabel="predicted", ylabel="reference")
        small = {} if annotate else {"fontsize": 6}
        ax.set_xticklabels(ticks, rotation=30 if annotate else 90, **small)
        ax.set_yticklabels(ticks, **small)
        title = f"{name}: accuracy {_plus_minus(report['backends'][name])}"
        if len(keep) < len(labels):
            title += f"\nthe {len(keep)} most frequent of {len(labels)} labels"
        ax.set_title(title)
    return save_figure(fig, path)


def _training_curves(report: dict[str, Any], out: Path) -> list[Path]:
    """training_<backend>.png for each fine-tune whose report carries its training curve (see finetune.history)."""
    from finetune.history import plot as plot_history

    written = []
    for name, b in report["backends"].items():
        if b.get("training"):
            safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
            path = plot_history(b["training"], out / f"training_{safe}.png", title=f"Training curve: {name}")
            written += [path] if path is not None else []
    return written


def _plus_minus(backend: dict[str, Any]) -> str:
    """Accuracy ± half the width of its interval (percentile intervals are nearly symmetric for accuracy)."""
    interval = backend.get("accuracy_ci95")
    if not interval:
        return f"{backend['accuracy']:.3f} ± n/a"
    return f"{backend['accuracy']:.3f} ± {(interval[1] - interval[0]) / 2:.3f}"


def _accuracy_bars(report: dict[str, Any], path: Path) -> Path:
    """accuracy.png: one bar per backend, its interval as an error bar (none where the report has no interval)."""
    import matplotlib.pyplot as plt
    import numpy as np

    names = list(report["backends"])
    accuracy = np.array([report["backends"][n]["accuracy"] for n in names])
    intervals = [report["backends"][n].get("accuracy_ci95") or [a, a] for n, a in zip(names, accuracy, strict=True)]
    below_above = np.abs(np.array(intervals, dtype=float).T - accuracy)
    fig, ax = plt.subplots(figsize=(1.6 * len(names) + 2.5, 4))
    ax.bar(range(len(names)), accuracy, yerr=below_above, capsize=6, color="tab:blue", alpha=0.8, ecolor=INK)
    for i, (value, interval) in enumerate(zip(accuracy, intervals, strict=True)):
        ax.text(i, interval[1] + 0.01, f"{value:.3f}", ha="center", va="bottom")
    ax.set_xticks(range(len(names)), names)
    how = report.get("intervals")
    caption = f"{100 * how['confidence']:g}% bootstrap intervals" if how else "no intervals in this report"
    ax.set(ylabel="accuracy", ylim=(0, 1.08), title=f"Accuracy ({caption})")
    return save_figure(fig, path)


REPORT_FILES = ("report.json", "report.md", "disagreements.csv")


def write_report(report: dict[str, Any], out: str | Path) -> list[Path]:
    """report.json, report.md, disagreements.csv and the plots, swapped into `out` together; returns the plots."""
    from core.files import dumps_json, staged_dir

    out = Path(out)
    with staged_dir(out) as stage:
        plots = plot(report, stage)
        (stage / "report.json").write_text(dumps_json(report), encoding="utf-8")
        (stage / "report.md").write_text(render_markdown(report, [p.name for p in plots]), encoding="utf-8")
        (stage / "disagreements.csv").write_text(disagreements_csv(report), encoding="utf-8")
    return [out / p.name for p in plots]
