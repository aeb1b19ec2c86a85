"""Turn a comparison report (and optionally a learning curve) into a recommendation with reasons.

``python -m compare.decide --report FILE --labeled-examples N --latency-budget-ms X --updates daily|weekly|rarely``
prints JSON (every field of `Constraints` is a flag). Hard limits (latency budget, accuracy target, required
evidence) rule contenders out first. Each remaining contender is then scored by one small function per criterion,
each returning a score and a reason that cites the measured number behind it; WEIGHTS below says how much each
criterion counts and why. Whether two accuracies differ is read from the report's paired intervals (or the
learning curve's spread), never from a fixed formula; when the best two are within that noise, a reason says so
and names what broke the tie. When the numbers cannot support a choice, it says so.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compare.crossover import crossover, crossover_range, describe_crossover, series
from compare.evaluation import check_report
from compare.latency import p95_interval
from core.cli import parse_config
from core.files import read_json
from core.types import check_same_labels

__all__ = [
    "CHOICES",
    "HARDWARE",
    "KINDS",
    "UPDATES",
    "WEIGHTS",
    "Constraints",
    "Recommendation",
    "crossover",
    "decide",
]

WEIGHTS: dict[str, tuple[float, str]] = {
    "task nature": (10.0, "per unit of accuracy lost beyond the noise: a real 10-point deficit costs 1.0, as much as "
                          "any one preference below, and a deficit within the noise costs nothing"),
    "data availability": (1.5, "the learning curve at the team's own number of examples is direct evidence of what "
                               "each approach makes of that many, though on fewer test texts than the report"),
    "freshness": (2.0, "labels that change daily leave a fine-tune stale until its next retraining, so instant "
                       "updates weigh the most of the preferences (weekly changes count half, rare ones nothing)"),
    "explainability": (1.0, "required evidence already rules the fine-tune out; among the rest, evidence with every "
                            "answer beats evidence with some"),
    "resource limits": (0.5, "past the hard latency budget, speed only breaks ties: scored as the fastest p95 over "
                             "each one's"),
}  # fmt: skip
"""Criterion -> (weight, why). A contender's total is the sum of weight x score over the criteria."""

KINDS = ("finetune", "rag-tuned", "rag", "hybrid")
"""What is chosen between, named as jobs.run names its backends; ``finetune-x`` is a finetune (longest name
first, so that ``rag-tuned`` is not taken for ``rag``)."""
CHOICES = {kind: kind for kind in KINDS}
"""Kind -> the name a recommendation gives it: one name, the backend's own (kept as a table for older readers)."""
EVIDENCE_SHARE = {"finetune": 0.0, "rag": 1.0, "rag-tuned": 1.0, "hybrid": 0.5}
"""How much of its answers each kind backs with labeled examples (the hybrid's label blends in the fine-tune)."""
INSTANT_UPDATE_SHARE = {"finetune": 0.0, "rag": 1.0, "rag-tuned": 1.0, "hybrid": 0.5}
"""How much of a kind new labels reach at once, by `add` (the hybrid's fine-tuned half waits for a retrain)."""
UPDATE_FREQUENCY = {"daily": 1.0, "weekly": 0.5, "rarely": 0.0}
UPDATES = tuple(UPDATE_FREQUENCY)
HARDWARE = ("cpu", "gpu")
MIN_LATENCY_SAMPLES = 20
"""Fewest timed queries behind a p95 for its interval to be judged; with fewer, latencies are taken as measured."""
SAME_SCORE = 1e-9


@dataclass
class Constraints:
    """What the team has and needs (the flags of ``python -m compare.decide``).

    Args:
        labeled_examples: labeled examples available for training / indexing; None = as many as were measured.
        accuracy_target: the lowest acceptable accuracy (0 to 1); None = no target.
        latency_budget_ms: the highest acceptable single-query p95 latency; None = no budget.
        updates: how often the labeled data changes: daily, weekly or rarely.
        hardware: where it will be served and retrained: cpu or gpu.
        need_evidence: every answer must show the labeled examples it rests on.
    """

    labeled_examples: int | None = None
    accuracy_target: float | None = None
    latency_budget_ms: float | None = None
    updates: str = field(default="rarely", metadata={"choices": UPDATES})
    hardware: str = field(default="cpu", metadata={"choices": HARDWARE})
    need_evidence: bool = False

    def __post_init__(self) -> None:
        if self.labeled_examples is not None and self.labeled_examples < 1:
            raise ValueError(f"labeled_examples must be at least 1, got {self.labeled_examples}")
        if self.accuracy_target is not None and not 0.0 < self.accuracy_target <= 1.0:
            raise ValueError(f"accuracy_target must be in (0, 1], got {self.accuracy_target}")
        if self.latency_budget_ms is not None and not self.latency_budget_ms > 0:
            raise ValueError(f"latency_budget_ms must be positive, got {self.latency_budget_ms}")
        if self.updates not in UPDATES:
            raise ValueError(f"updates must be one of {UPDATES}, got {self.updates!r}")
        if self.hardware not in HARDWARE:
            raise ValueError(f"hardware must be one of {HARDWARE}, got {self.hardware!r}")


@dataclass
class Recommendation:
    """The choice (None when the measurements cannot support one), what decided it in one sentence, a statistical
    tie named as one (``tie``: the contenders either of which will do), the reasons for the choice and the runner-up,
    what to keep in mind, and every constraint given with what it changed."""

    choice: str | None
    backend: str | None = None
    decided_by: str | None = None
    tie: list[str] = field(default_factory=list)
    runner_up: str | None = None
    reasons: list[dict[str, str]] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    constraints: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Score:
    """One criterion's score of one contender, and the reason (None when there is nothing worth saying)."""

    kind: str
    value: float
    reason: str | None = None


@dataclass
class Contenders:
    """The contenders still in the running, with the figures they are judged on, and what they are judged under.

    `measured` holds, per kind, its best backend's report entry (its accuracy replaced by the learning curve's at
    `curve_size` when the team has fewer examples than the report measured).
    """

    measured: dict[str, dict[str, Any]]
    feasible: list[str]
    constraints: Constraints
    report: dict[str, Any]
    curve: dict[str, Any] | None = None
    curve_size: int | None = None

    def accuracy(self, kind: str) -> float:
        return self.measured[kind]["accuracy"]

    @property
    def n(self) -> int:
        n = self.curve.get("test_size") if self.curve_size and self.curve else None
        return int(n or self.report["dataset"]["n"])


def kind_of(name: str) -> str | None:
    """The kind of a report backend, by its name.

    >>> kind_of("finetune-minilm"), kind_of("rag-tuned"), kind_of("rag"), kind_of("llm")
    ('finetune', 'rag-tuned', 'rag', None)
    """
    for kind in sorted(KINDS, key=len, reverse=True):
        if name == kind or name.startswith(kind + "-"):
            return kind
    return None


# --- noise: from the report's intervals or the curve's spread --------------------------------------------------------


def noise(f: Contenders, a: str, b: str) -> dict[str, Any]:
    """``{"diff", "within", "how"}``: `a`'s accuracy minus `b`'s, whether that is within the noise, and how that was
    judged, in plain words (the report's paired interval; else its two intervals; or the curve's spread)."""
    diff = f.accuracy(a) - f.accuracy(b)
    judged = _curve_noise(f, a, b) if f.curve_size else _report_noise(f, a, b)
    return {"diff": diff, **judged}


def _report_noise(f: Contenders, a: str, b: str) -> dict[str, Any]:
    na, nb = f.measured[a]["name"], f.measured[b]["name"]
    for pair in f.report.get("pairwise") or []:
        if {pair.get("a"), pair.get("b")} == {na, nb} and pair.get("diff_ci95"):
            low, high = pair["diff_ci95"] if pair["a"] == na else [-x for x in reversed(pair["diff_ci95"])]
            within = low <= 0 <= high
            verb = "includes" if within else "excludes"
            how = f"the paired 95% interval of {na} minus {nb}, [{low:+.3f}, {high:+.3f}] on {f.n} texts, {verb} 0"
            return {"within": within, "how": how}
    ia, ib = f.measured[a].get("accuracy_ci95"), f.measured[b].get("accuracy_ci95")
    if ia and ib:
        within = ia[0] <= ib[1] and ib[0] <= ia[1]
        verb = "overlap" if within else "do not overlap"
        how = f"their 95% intervals, {na} [{ia[0]:.3f}, {ia[1]:.3f}] and {nb} [{ib[0]:.3f}, {ib[1]:.3f}], {verb}"
        return {"within": within, "how": how + " (the report has no paired interval)"}
    return {"within": False, "how": "the report has no intervals to judge the noise by (re-run jobs.run)"}


def _curve_noise(f: Contenders, a: str, b: str) -> dict[str, Any]:
    sa, sb = f.measured[a].get("accuracy_std", 0.0), f.measured[b].get("accuracy_std", 0.0)
    gap = abs(f.accuracy(a) - f.accuracy(b))
    if sa == sb == 0:
        return {"within": gap == 0, "how": f"the learning curve has no spread at {f.curve_size} examples (one seed), "
                                           "so the difference is taken as measured"}  # fmt: skip
    within = gap <= sa + sb
    seeds = len(f.curve.get("seeds") or [])
    verb = "overlap" if within else "do not overlap"
    return {"within": within, "how": f"on the learning curve at {f.curve_size} examples (mean ± std over {seeds} "
                                     f"seeds: {a} ± {sa:.4f}, {b} ± {sb:.4f}) the bands {verb}"}  # fmt: skip


# --- one function per criterion: each returns a score per contender and its reason ---------------------------------


def task_nature(f: Contenders) -> list[Score]:
    """Accuracy: 0 for the best and for those within the noise of it, minus the gap for the others."""
    best = max(f.feasible, key=f.accuracy)
    scores = []
    for kind in f.feasible:
        acc, name = f.accuracy(kind), f.measured[kind]["name"]
        if kind == best:
            text = f"highest accuracy of the contenders: {name} {acc:.4f} on {f.n} texts"
            scores.append(Score(kind, 0.0, text))
            continue
        judged = noise(f, best, kind)
        if judged["within"]:
            text = f"accuracy {acc:.4f} is within noise of the best ({best} {f.accuracy(best):.4f}): {judged['how']}"
            scores.append(Score(kind, 0.0, text))
        else:
            gap = judged["diff"]
            text = (
                f"accuracy {acc:.4f} is {100 * gap:.1f} points below {best} ({f.accuracy(best):.4f}): {judged['how']}"
            )
            scores.append(Score(kind, -gap, text))
    return scores


def data_availability(f: Contenders) -> list[Score]:
    """The learning curve at the team's number of labeled examples: 1 for the lines at the top (within its spread)."""
    have, curve = f.constraints.labeled_examples, f.curve
    if have is None or not curve:
        return []
    points = {k: _curve_point(curve, k, have) for k in f.feasible}
    points = {k: p for k, p in points.items() if p is not None}
    if not points:
        return []
    top = max(points, key=lambda k: points[k][1])
    _, top_mean, top_std = points[top]
    leaders = sorted(
        (k for k, (_, m, s) in points.items() if m + s >= top_mean - top_std), key=lambda k: -points[k][1]
    )
    size = points[top][0]
    figures = _figures(points)
    crossing = {**curve, "crossover": crossover(curve), "crossover_range": crossover_range(curve)}
    tied = " (within the curve's spread of each other)" if len(leaders) > 1 else ""
    text = (
        f"with {have} labeled examples the learning curve favours {' and '.join(leaders)}{tied}: at {size} examples "
        f"{figures}; {describe_crossover(crossing)}"
    )
    return [Score(k, 1.0, text if k == leaders[0] else None) for k in leaders]


def freshness(f: Contenders) -> list[Score]:
    """How much of each contender new labels reach at once, scaled by how often they change."""
    frequency = UPDATE_FREQUENCY[f.constraints.updates]
    if not frequency:
        return []
    update = f.report.get("knowledge_update") or {}
    added, retrain = (update.get("rag") or {}), (update.get("finetune") or {})
    text = None
    if added.get("seconds") is not None and retrain.get("seconds") is not None:
        text = (
            f"adding {update.get('new_examples')} examples took "
            f"retrieval {added['seconds']:.1f} s (measured, held-out accuracy "
            f"{100 * added.get('accuracy_change', 0.0):+.2f} points); the fine-tune needs a retrain of about "
            f"{retrain['seconds'] / 60:.0f} min (estimated from its run.json)"
        )
    how = {
        1.0: "takes new labeled examples at once, by adding them to its index",
        0.5: "takes new labeled examples at once in its retrieval half only; its fine-tuned half waits for a retrain",
        0.0: "takes new labeled examples only by retraining",
    }
    return [
        Score(k, frequency * INSTANT_UPDATE_SHARE[k], f"labeled data changes {f.constraints.updates}: {k} "
              f"{how[INSTANT_UPDATE_SHARE[k]]}" + (f"; {text}" if text else ""))
        for k in f.feasible
    ]  # fmt: skip


def explainability(f: Contenders) -> list[Score]:
    """When evidence is required: the share of answers each contender backs with labeled examples."""
    if not f.constraints.need_evidence:
        return []
    scores = []
    for kind in f.feasible:
        share, acc = EVIDENCE_SHARE[kind], f.accuracy(kind)
        if share == 1.0:
            text = f"every answer lists the labeled neighbours it rests on (accuracy {acc:.4f})"
        else:
            text = (
                f"shows labeled neighbours with every answer but its label blends in a fine-tune (accuracy {acc:.4f})"
            )
        scores.append(Score(kind, share, text))
    return scores


def resource_limits(f: Contenders) -> list[Score]:
    """Speed within the budget: the fastest p95 latency over each contender's (1 for the fastest)."""
    p95 = {k: (f.measured[k].get("latency_ms") or {}).get("p95") for k in f.feasible}
    p95 = {k: v for k, v in p95.items() if v}
    if len(p95) < 2:
        return []
    fastest = min(p95, key=p95.get)
    spans = {k: _p95_span(f.measured[k]) for k in p95}

    def overlap(a: str, b: str) -> bool:
        return bool(spans[a] and spans[b] and spans[a][0] <= spans[b][1] and spans[b][0] <= spans[a][1])

    scores = []
    for kind, value in p95.items():
        # Each is scored by the best p95 within its own noise: two latencies whose intervals overlap score alike.
        peer = min((k for k in p95 if k == kind or overlap(kind, k)), key=p95.get)
        if kind == fastest:
            text = f"lowest p95 latency of the contenders: {value:.1f} ms here"
        elif peer != kind:
            text = (
                f"p95 latency {value:.1f} ms, within the noise of {peer}'s {p95[peer]:.1f} ms (their p95 intervals "
                f"[{spans[kind][0]:.1f}, {spans[kind][1]:.1f}] and [{spans[peer][0]:.1f}, {spans[peer][1]:.1f}] ms "
                f"overlap); {p95[peer] / p95[fastest]:.1f}x the fastest ({fastest}, {p95[fastest]:.1f} ms)"
            )
        else:
            ratio = value / p95[fastest]
            text = f"p95 latency {value:.1f} ms, {ratio:.1f}x the fastest ({fastest}, {p95[fastest]:.1f} ms)"
        scores.append(Score(kind, p95[fastest] / p95[peer], text))
    return scores


def _p95_span(backend: dict[str, Any]) -> list[float] | None:
    """The bootstrap interval of a backend's p95 from its timed queries; None with too few to judge by."""
    samples = backend.get("latency_samples_ms") or []
    return p95_interval(samples) if len(samples) >= MIN_LATENCY_SAMPLES else None


CRITERIA: dict[str, Callable[[Contenders], list[Score]]] = {
    "task nature": task_nature,
    "data availability": data_availability,
    "freshness": freshness,
    "explainability": explainability,
    "resource limits": resource_limits,
}


# --- the contenders --------------------------------------------------------------------------------------------------


def _curve_point(curve: dict[str, Any], kind: str, have: int) -> tuple[int, float, float] | None:
    """``(size, mean, std)`` of `kind` at the largest curve size not above `have`; None below the smallest."""
    below = [point for point in series(curve, kind) if point[0] <= have]
    return max(below) if below else None


def _figures(points: dict[str, tuple[int, float, float]]) -> str:
    return ", ".join(f"{k} {m:.4f}" + (f" ± {s:.4f}" if s else "") for k, (_, m, s) in points.items())


def group(report: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """The report's backends by kind (several fine-tunes compete as one kind), each with its ``name``."""
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for name, b in report["backends"].items():
        kind = kind_of(name)
        if kind is not None:
            by_kind.setdefault(kind, []).append({**b, "name": name})
    return by_kind


def apply_curve(by_kind, constraints: Constraints, curve: dict[str, Any] | None, rec: Recommendation) -> int | None:
    """With fewer labeled examples than the report measured, take each kind's accuracy (and spread) from the
    learning curve at that many; a kind the curve does not draw is out. Returns the curve size used, or None."""
    have = constraints.labeled_examples
    measured_size = max((b.get("train_size") or 0 for items in by_kind.values() for b in items), default=0)
    if not curve or have is None or have >= measured_size:
        return None
    points = {kind: _curve_point(curve, kind, have) for kind in by_kind}
    points = {kind: p for kind, p in points.items() if p is not None}
    if not points:
        return None
    for kind, items in by_kind.items():
        if kind not in points:
            rec.excluded[kind] = f"not measured with as few as {have} labeled examples (data availability)"
        for item in items:
            if kind in points:
                item.update(accuracy=points[kind][1], accuracy_std=points[kind][2])
    size = max(p[0] for p in points.values())
    text = (
        f"with {have} labeled examples (not the {measured_size} measured), accuracy comes from the learning curve at "
        f"{size} examples: {_figures(points)}"
    )
    best = max(points, key=lambda k: points[k][1])
    rec.reasons.append({"criterion": "data availability", "backend": best, "text": text})
    return size


def violation(kind: str, b: dict[str, Any], constraints: Constraints) -> str | None:
    """Why backend `b` (of `kind`) breaks a hard limit, or None."""
    p95 = (b.get("latency_ms") or {}).get("p95")
    if constraints.latency_budget_ms is not None and p95 is not None and p95 > constraints.latency_budget_ms:
        return f"p95 latency {p95:.1f} ms exceeds the {constraints.latency_budget_ms:g} ms budget (resource limits)"
    if constraints.accuracy_target is not None and b["accuracy"] < constraints.accuracy_target:
        return f"accuracy {b['accuracy']:.4f} is below the {constraints.accuracy_target:.4f} target (task nature)"
    gate = ((b.get("fit") or {}).get("chosen") or {}) if kind == "hybrid" else {}
    if constraints.need_evidence and gate.get("mode") == "gate":
        return (
            f"the hybrid shows labeled evidence only when its fine-tuned part is unsure (confidence below "
            f"{gate.get('threshold', 0):.2f}), not with every answer (explainability)"
        )
    if constraints.need_evidence and 0.0 < EVIDENCE_SHARE[kind] < 1.0:
        return (
            f"its label blends in a fine-tuned classifier, so the neighbours it shows do not justify its answer "
            f"(explainability), though its accuracy is {b['accuracy']:.4f}"
        )
    if constraints.need_evidence and EVIDENCE_SHARE[kind] == 0.0:
        return (
            f"a fine-tuned classifier shows no labeled examples as evidence (explainability), so its accuracy of "
            f"{b['accuracy']:.4f} cannot be used"
        )
    return None


def pick(by_kind, constraints: Constraints, rec: Recommendation) -> dict[str, dict[str, Any]]:
    """Each kind's most accurate backend within the hard limits; a kind with none is excluded, and the reason says
    by how much its best backend misses."""
    measured = {}
    for kind, items in by_kind.items():
        items = sorted(items, key=lambda b: b["accuracy"], reverse=True)
        ok = [b for b in items if violation(kind, b, constraints) is None]
        measured[kind] = ok[0] if ok else items[0]
        if not ok and kind not in rec.excluded:
            rec.excluded[kind] = violation(kind, items[0], constraints) or ""
    return measured


# --- the verdict ----------------------------------------------------------------------------------------------------


def weigh(f: Contenders, rec: Recommendation) -> dict[str, dict[str, float]]:
    """Every criterion's weighted score per contender (``{kind: {criterion: points}}``); the reasons go to `rec`."""
    weighted: dict[str, dict[str, float]] = {kind: {} for kind in f.feasible}
    for criterion, judge in CRITERIA.items():
        weight = WEIGHTS[criterion][0]
        for score in judge(f):
            weighted[score.kind][criterion] = weight * score.value
            if score.reason:
                rec.reasons.append({"criterion": criterion, "backend": score.kind, "text": score.reason})
    return weighted


def tie_break(f: Contenders, choice: str, runner_up: str, weighted: dict[str, dict[str, float]]) -> str | None:
    """In plain words, when the choice is not simply the more accurate beyond the noise: that the two are within
    noise, or that the choice is less accurate, and which criteria decided it."""
    judged = noise(f, choice, runner_up)
    if not judged["within"] and judged["diff"] > 0:
        return None
    edges = [(c, weighted[choice].get(c, 0.0) - weighted[runner_up].get(c, 0.0)) for c in CRITERIA]
    decided = ", ".join(f"{c} ({d:+.2f})" for c, d in sorted(edges, key=lambda e: -e[1]) if d > 1e-9)
    a, b = f.accuracy(choice), f.accuracy(runner_up)
    if judged["within"]:
        broke = decided or "nothing else: the higher measured accuracy, though within noise (a coin toss)"
        return (
            f"{choice} ({a:.4f}) and {runner_up} ({b:.4f}) are within noise of each other on accuracy: "
            f"{judged['how']}. What broke the tie: {broke}"
        )
    return (
        f"{choice} is chosen although {runner_up} is {100 * (b - a):.1f} points more accurate ({judged['how']}), "
        f"because of {decided}"
    )


def caveats(f: Contenders, rec: Recommendation, totals: dict[str, float]) -> None:
    """What to keep in mind beside the reasons."""
    ranked = sorted(f.feasible, key=lambda k: totals[k], reverse=True)
    if len(ranked) > 1 and totals[ranked[0]] - totals[ranked[1]] < 0.25:
        rec.caveats.append(f"{ranked[0]} and {ranked[1]} are close on these constraints")
    have, ft_size = f.constraints.labeled_examples, (f.measured.get("finetune") or {}).get("train_size")
    if have is not None and not f.curve and ft_size and have < ft_size:
        rec.caveats.append(
            f"the fine-tune was measured with {ft_size} training examples and you have {have}; its accuracy will be "
            "lower. Run `python -m jobs.curve` to see by how much."
        )
    update = f.report.get("knowledge_update") or {}
    if UPDATE_FREQUENCY[f.constraints.updates] and not ((update.get("rag") or {}).get("seconds") is not None):
        rec.caveats.append(
            f"labeled data changes {f.constraints.updates}: retrieval absorbs new examples at once, a fine-tune only "
            "after retraining; this report has no knowledge-update figure to size the difference"
        )
    if f.constraints.hardware == "gpu":
        rec.caveats.append("measured on a CPU; on a GPU fine-tuning and retraining are far cheaper (not measured)")
    if any(b.get("from_scratch") for b in f.measured.values()):
        rec.caveats.append("the fine-tuned model was trained from scratch (no pretrained weights): a pretrained "
                           "model would do better")  # fmt: skip


def decide(report: dict[str, Any], constraints: Constraints, curve: dict[str, Any] | None = None) -> Recommendation:
    """Recommend finetune, rag-tuned, rag or hybrid for `constraints`, from the measured `report` (and the learning
    `curve`): what decided it, or the tie, with the reasons for the choice and the runner-up."""
    report = check_report(report)
    if curve and curve.get("labels") and report.get("labels"):  # one label set, or the curve says nothing here
        check_same_labels("the report", report["labels"], "the learning curve", curve["labels"])
    rec = Recommendation(choice=None)
    grouped = group(report)
    by_kind = learned_only(grouped, rec)
    if not by_kind:
        if grouped:
            rec.decided_by = "nothing: no contender learned anything on this data"
            rec.caveats.append("no contender learned: " + "; ".join(f"{k} {v}" for k, v in rec.excluded.items()))
        else:
            rec.caveats.append(f"the report holds none of the backends {list(KINDS)}; nothing to choose from")
        rec.constraints = constraint_effects(constraints, rec, None)
        return rec
    curve_size = apply_curve(by_kind, constraints, curve, rec)
    measured = pick(by_kind, constraints, rec)
    feasible = [kind for kind in measured if kind not in rec.excluded]
    rec.constraints = constraint_effects(constraints, rec, curve_size)
    if not feasible:
        misses = "; ".join(f"{k}: {v}" for k, v in rec.excluded.items())
        rec.caveats.append(f"no measured backend meets every constraint: {misses}. Relax a constraint, or measure on "
                           "other hardware.")  # fmt: skip
        rec.decided_by = "nothing: no contender meets every constraint"
        return rec
    f = Contenders(measured, feasible, constraints, report, curve, curve_size)
    weighted = weigh(f, rec)
    totals = {kind: sum(points.values()) for kind, points in weighted.items()}
    ranked = sorted(feasible, key=lambda k: (totals[k], f.accuracy(k)), reverse=True)
    choice = ranked[0]
    runner = ranked[1] if len(ranked) > 1 else None
    rec.choice, rec.backend, rec.runner_up = choice, measured[choice]["name"], runner
    if runner is None:
        rec.decided_by = f"{choice} is the only contender left: " + (
            "; ".join(f"{k} {v}" for k, v in rec.excluded.items()) or "no other was measured"
        )
    else:
        tie = [k for k in ranked if abs(totals[k] - totals[choice]) <= SAME_SCORE and
               (k == choice or noise(f, choice, k)["within"])]  # fmt: skip
        rec.tie = tie if len(tie) > 1 else []
        rec.decided_by = tie_sentence(f, rec.tie) if rec.tie else deciding(f, rec, weighted, totals)
        verdict = None if rec.tie else tie_break(f, choice, runner, weighted)
        if verdict:
            rec.reasons.insert(0, {"criterion": "verdict", "backend": choice, "text": verdict})
    shown = {choice, runner, *rec.tie}
    rec.reasons = [r for r in rec.reasons if r["backend"] in shown]
    for name, why in rec.excluded.items():
        rec.reasons.append({"criterion": "constraint", "backend": name, "text": f"excluded: {why}"})
    rec.scores = {k: round(totals[k], 3) for k in ranked}
    caveats(f, rec, totals)
    return rec


def learned_only(by_kind: dict[str, list[dict[str, Any]]], rec: Recommendation) -> dict[str, list[dict[str, Any]]]:
    """`by_kind` without the backends that did not learn (report ``learned: false``); a kind left with none is
    excluded, with why: such a contender is never ranked, so it neither wins nor loses a verdict."""
    kept = {}
    for kind, items in by_kind.items():
        learned = [b for b in items if b.get("learned", True) is not False]
        if learned:
            kept[kind] = learned
        else:
            rec.excluded[kind] = f"did not learn ({items[0].get('why') or 'no better than the majority class'})"
    return kept


def tie_sentence(f: Contenders, tie: list[str]) -> str:
    """The decision when the best are a statistical tie: either will do."""
    how = "; ".join(noise(f, tie[0], k)["how"] for k in tie[1:])
    figures = ", ".join(f"{k} {f.accuracy(k):.4f}" for k in tie)
    return (
        f"a tie: {' and '.join(tie)} ({figures}) differ by less than the interval ({how}), and nothing else weighed "
        "here separates them beyond its noise; either will do"
    )


def deciding(f: Contenders, rec: Recommendation, weighted: dict[str, dict[str, float]], totals) -> str:
    """One sentence: the criterion that gave the choice its largest edge over the runner-up, with the numbers."""
    choice, runner = rec.choice, rec.runner_up
    edges = {c: weighted[choice].get(c, 0.0) - weighted[runner].get(c, 0.0) for c in CRITERIA}
    top = max(edges, key=edges.get)
    scores = f"{choice} scores {totals[choice]:.2f} against {runner}'s {totals[runner]:.2f}"
    if top == "task nature":
        judged = noise(f, choice, runner)
        return (
            f"accuracy: {choice} ({f.accuracy(choice):.4f}) is {100 * judged['diff']:.1f} points more accurate than "
            f"{runner} ({f.accuracy(runner):.4f}), beyond the noise ({judged['how']}); {scores}"
        )
    reason = next((r["text"] for r in rec.reasons if r["criterion"] == top and r["backend"] == choice), top)
    return f"{top}: {reason}. That outweighs the rest: {scores} ({top} {edges[top]:+.2f})"


def constraint_effects(constraints: Constraints, rec: Recommendation, curve_size: int | None) -> dict[str, Any]:
    """Every constraint the team set, echoed with what it changed (a budget that ruled nothing out says so)."""
    effects = []

    def ruled_out(marker: str) -> str:
        out = [k for k, why in rec.excluded.items() if marker in why]
        return f"ruled out {', '.join(out)}" if out else "every contender meets it; it changed nothing"

    if constraints.latency_budget_ms is not None:
        effects.append(f"latency budget {constraints.latency_budget_ms:g} ms (p95): {ruled_out('resource limits')}")
    if constraints.accuracy_target is not None:
        effects.append(f"accuracy target {constraints.accuracy_target:.4f}: {ruled_out('task nature')}")
    if constraints.need_evidence:
        effects.append(f"evidence with every answer: {ruled_out('explainability')}")
    if constraints.labeled_examples is not None:
        effects.append(
            f"{constraints.labeled_examples} labeled examples: "
            + (f"accuracy taken from the learning curve at {curve_size}" if curve_size else
               "the report's accuracies stand (measured with as many or fewer, or no curve to read)")
        )  # fmt: skip
    weight = WEIGHTS["freshness"][0] * UPDATE_FREQUENCY[constraints.updates]
    effects.append(f"labeled data changes {constraints.updates}: instant updates weigh {weight:g}")
    if constraints.hardware == "gpu":
        effects.append("served on a GPU: measured on a CPU, see the caveats")
    return {"given": asdict(constraints), "effects": effects}


def main(argv: list[str] | None = None) -> int:
    constraints, args = parse_config(
        Constraints,
        argv,
        __doc__.splitlines()[0],
        report={"required": True, "metavar": "FILE", "help": "report.json written by python -m jobs.run"},
        curve={"default": None, "metavar": "FILE", "help": "curve.json written by python -m jobs.curve"},
    )
    try:
        report = read_json(Path(args.report), "report")
        curve = read_json(Path(args.curve), "learning curve") if args.curve else None
        recommendation = decide(report, constraints, curve)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(recommendation.to_dict(), indent=2))  # its "constraints" echo what was given
    return 0


if __name__ == "__main__":
    sys.exit(main())
