"""Turn a comparison report into report.md and PNG plots a stakeholder can read.

Text from the data (tweets) is escaped before it goes into Markdown, so a tweet holding HTML, a Markdown link or a
table pipe shows as text.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from core.files import atomic_write

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


def disagreements_csv(report: dict[str, Any]) -> str:
    """The texts where the backends disagree, as CSV with every cell made spreadsheet-safe."""
    import csv
    import io

    names = list(report["backends"])
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["text", "reference", *names])
    for row in report.get("disagreements", []):
        cells = [row["text"], row["reference"], *(row["predictions"].get(n, "") for n in names)]
        writer.writerow([csv_safe(cell) for cell in cells])
    return buffer.getvalue()


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def _num(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return f"{value:,}"


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
)


def headline_rows(report: dict[str, Any]) -> list[dict[str, str]]:
    """One row per backend: the numbers of the headline table (README, app, report.md)."""
    rows = []
    for name, b in report["backends"].items():
        calibration = b.get("calibration") or {}
        cost = b.get("cost") or {}
        rows.append(
            {
                "backend": name,
                "accuracy": f"{b['accuracy']:.4f}",
                "macro-F1": f"{b['macro_f1']:.4f}",
                "ECE": f"{calibration['ece']:.3f}" if "ece" in calibration else "n/a",
                "p50 ms": _num(b.get("latency_ms", {}).get("p50")),
                "p95 ms": _num(b.get("latency_ms", {}).get("p95")),
                "batch texts/s": _num(b.get("samples_per_second")),
                "$ per 1M queries": _num(cost.get("per_million_queries_usd"), 3),
                "one-off s": _num(b.get("one_off_seconds")),
                "disk MB": _num(b.get("size_on_disk_mb")),
            }
        )
    return rows


def markdown_table(rows: list[dict[str, Any]], limit: int = 200) -> str:
    """A Markdown table; every cell (and header) is escaped and kept to one line of at most `limit` characters."""
    if not rows:
        return ""
    columns = list(rows[0])
    lines = ["| " + " | ".join(escape_markdown(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(escape_markdown(str(row[c]), limit) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def render_markdown(report: dict[str, Any], plots: list[str] | None = None) -> str:
    """The whole report as Markdown: headline table, what each backend is, per-class scores, disagreements."""
    data = report["dataset"]
    lines = [
        "# Fine-tune vs RAG: comparison report",
        "",
        f"Data: {escape_markdown(str(data.get('source')))} [{data.get('split')}], {data['n']} labeled texts. "
        f"Machine: {report['machine']['cpu']}, {report['machine']['cpu_count']} CPUs "
        f"({report['machine']['torch_threads']} torch threads). Created {report['created']}.",
        "",
        markdown_table(headline_rows(report)),
        "",
        f"Latency: {report['latency']['queries']} single queries per backend, interleaved across backends, warm-up "
        f"excluded; throughput in batches of {report['latency']['batch_size']}. Cost at "
        f"${report['hourly_price_usd']:.2f} per machine-hour. ECE: expected calibration error (0 = a score of 0.9 "
        "is right 90% of the time).",
        "",
        "## Backends",
        "",
    ]
    for name, b in report["backends"].items():
        lines.append(f"- **{escape_markdown(name)}**: {escape_markdown(b.get('description') or name, 300)}")
        if b.get("from_scratch"):
            lines.append(f"  - **{escape_markdown(b.get('notice') or 'trained from scratch', 300)}**")
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


def plot(report: dict[str, Any], out: str | Path) -> list[Path]:
    """confusion_matrices.png, latency.png and reliability.png in `out`; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    names = list(report["backends"])
    labels = report["labels"]
    written = []

    fig, axes = plt.subplots(1, len(names), figsize=(4.2 * len(names), 4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        matrix = np.array(report["backends"][name]["confusion_matrix"])
        shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
        ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        for (i, j), count in np.ndenumerate(matrix):
            ax.text(j, i, str(count), ha="center", va="center", color="white" if shares[i, j] > 0.5 else "black")
        ax.set(xticks=range(len(labels)), yticks=range(len(labels)), xlabel="predicted", ylabel="reference")
        ax.set_xticklabels(labels, rotation=30)
        ax.set_yticklabels(labels)
        ax.set_title(f"{name}: accuracy {report['backends'][name]['accuracy']:.3f}")
    written.append(_save(fig, out / "confusion_matrices.png"))

    fig, ax = plt.subplots(figsize=(7, 4))
    samples = [report["backends"][n].get("latency_samples_ms") or [0.0] for n in names]
    ax.boxplot(samples, showfliers=True)
    ax.set_xticks(range(1, len(names) + 1), names)
    ax.set(ylabel="single-query latency (ms)", title="Latency per query (warm, interleaved)")
    ax.set_yscale("log")
    written.append(_save(fig, out / "latency.png"))

    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfectly calibrated")
    for name in names:
        bins = [b for b in (report["backends"][name].get("calibration") or {}).get("bins", []) if b["count"]]
        if bins:
            ece = report["backends"][name]["calibration"]["ece"]
            xs, ys = [b["confidence"] for b in bins], [b["accuracy"] for b in bins]
            ax.plot(xs, ys, "o-", label=f"{name} (ECE {ece:.3f})")
    ax.set(xlabel="confidence (top score)", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title="Reliability")
    ax.legend(loc="upper left")
    written.append(_save(fig, out / "reliability.png"))
    return written


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)
    return path


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
