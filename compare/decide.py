"""Turn a comparison report (and optionally a learning curve) into a recommendation with reasons.

``python -m compare.decide --report FILE --labeled-examples N --latency-budget-ms X --updates daily|weekly|rarely``
prints JSON. Every reason cites a measured number and the criterion it serves: task nature (accuracy), data
availability (labeled examples, learning curve), resource limits (latency, cost, hardware), freshness (how often
the labeled data changes) and explainability (evidence). When the numbers cannot support a choice, it says so.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compare.runner import check_report
from core.files import read_json
from core.types import check_same_labels

CHOICES = {"finetune": "fine-tune", "rag": "rag", "hybrid": "hybrid"}
UPDATES = ("daily", "weekly", "rarely")
HARDWARE = ("cpu", "gpu")


@dataclass
class Constraints:
    """What the team has and needs.

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
    updates: str = "rarely"
    hardware: str = "cpu"
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
    """The choice (None when the measurements cannot support one), the reasons behind it, and what to keep in mind."""

    choice: str | None
    backend: str | None = None
    reasons: list[dict[str, str]] = field(default_factory=list)
    caveats: list[str] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def noise_margin(accuracy: float, n: int) -> float:
    """Two standard errors of the difference of two accuracies measured on the same `n` texts (a rough bound).

    >>> round(noise_margin(0.75, 3534), 4)
    0.0206
    """
    return 2.0 * math.sqrt(2.0 * accuracy * (1.0 - accuracy) / max(n, 1))


def crossover(curve: dict[str, Any]) -> int | None:
    """The smallest number of labeled examples from which the fine-tune beats retrieval on the curve."""
    sizes = curve.get("sizes") or []
    ft, rg = (curve.get("backends") or {}).get("finetune"), (curve.get("backends") or {}).get("rag")
    if not ft or not rg:
        return None
    for size, a, b in zip(sizes, ft, rg, strict=False):
        if a is not None and b is not None and a > b:
            return int(size)
    return None


def _accuracy_at(curve: dict[str, Any], backend: str, n: int) -> tuple[int, float] | None:
    sizes, values = curve.get("sizes") or [], (curve.get("backends") or {}).get(backend) or []
    below = [(s, v) for s, v in zip(sizes, values, strict=False) if v is not None and s <= n]
    return max(below) if below else None


def decide(report: dict[str, Any], constraints: Constraints, curve: dict[str, Any] | None = None) -> Recommendation:
    """Recommend fine-tune, rag or hybrid for `constraints`, from the measured `report` (and learning `curve`)."""
    report = check_report(report)
    if curve and curve.get("labels") and report.get("labels"):  # one label set, or the curve says nothing here
        check_same_labels("the report", report["labels"], "the learning curve", curve["labels"])
    rec = Recommendation(choice=None)
    n = int(report["dataset"]["n"])

    def reason(criterion: str, backend: str, text: str) -> None:
        rec.reasons.append({"criterion": criterion, "backend": backend, "text": text})

    by_kind: dict[str, list[dict[str, Any]]] = {}
    for name, b in report["backends"].items():  # several fine-tunes ("finetune", "finetune-x") compete as one kind
        kind = next((CHOICES[k] for k in CHOICES if name == k or name.startswith(k + "-")), None)
        if kind is not None:
            by_kind.setdefault(kind, []).append({**b, "name": name})
    if not by_kind:
        rec.caveats.append(f"the report holds none of the backends {sorted(CHOICES)}; nothing to choose from")
        return rec

    # Fewer labeled examples than were measured: the learning curve, not the full-data report, says how accurate
    # each approach will be.
    have = constraints.labeled_examples
    measured_size = max((b.get("train_size") or 0 for items in by_kind.values() for b in items), default=0)
    if curve and have is not None and have < measured_size:
        at_ft, at_rag = _accuracy_at(curve, "finetune", have), _accuracy_at(curve, "rag", have)
        if at_ft and at_rag:
            for item in by_kind.get("fine-tune", []):
                item["accuracy"] = at_ft[1]
            for item in by_kind.get("rag", []):
                item["accuracy"] = at_rag[1]
            n = int(curve.get("test_size") or n)
            reason(
                "data availability",
                "rag" if at_rag[1] >= at_ft[1] else "fine-tune",
                f"with {have} labeled examples (not the {measured_size} measured), accuracy comes from the learning "
                f"curve at {at_ft[0]} examples: fine-tune {at_ft[1]:.4f}, RAG {at_rag[1]:.4f}",
            )
            if "hybrid" in by_kind:
                rec.excluded["hybrid"] = f"not measured with as few as {have} labeled examples (data availability)"

    def violation(kind: str, b: dict[str, Any]) -> str | None:
        p95 = (b.get("latency_ms") or {}).get("p95")
        if constraints.latency_budget_ms is not None and p95 is not None and p95 > constraints.latency_budget_ms:
            budget = constraints.latency_budget_ms
            return f"p95 latency {p95:.1f} ms exceeds the {budget:g} ms budget (resource limits)"
        if constraints.accuracy_target is not None and b["accuracy"] < constraints.accuracy_target:
            return f"accuracy {b['accuracy']:.4f} is below the {constraints.accuracy_target:.4f} target (task nature)"
        gate = ((b.get("fit") or {}).get("chosen") or {}) if kind == "hybrid" else {}
        if constraints.need_evidence and gate.get("mode") == "gate":
            return (
                f"the hybrid shows labeled evidence only when its fine-tuned part is unsure (confidence below "
                f"{gate.get('threshold', 0):.2f}), not with every answer (explainability)"
            )
        if constraints.need_evidence and kind == "fine-tune":
            return (
                f"a fine-tuned classifier shows no labeled examples as evidence (explainability), so its accuracy of "
                f"{b['accuracy']:.4f} cannot be used"
            )
        return None

    # Hard limits: each kind is represented by its most accurate backend that meets them; a kind with none is out,
    # and the reason says by how much its best backend misses.
    measured: dict[str, dict[str, Any]] = {}
    for kind, items in by_kind.items():
        items = sorted(items, key=lambda b: b["accuracy"], reverse=True)
        ok = [b for b in items if violation(kind, b) is None]
        measured[kind] = ok[0] if ok else items[0]
        if not ok and kind not in rec.excluded:
            rec.excluded[kind] = violation(kind, items[0]) or ""
    score = dict.fromkeys(measured, 0.0)
    feasible = [name for name in measured if name not in rec.excluded]
    if not feasible:
        rec.caveats.append(
            "no measured backend meets every constraint: "
            + "; ".join(f"{k}: {v}" for k, v in rec.excluded.items())
            + ". Relax a constraint, or measure on other hardware."
        )
        return rec

    # Task nature: accuracy, relative to the best feasible one, with the measurement noise in mind.
    best = max(feasible, key=lambda k: measured[k]["accuracy"])
    best_acc = measured[best]["accuracy"]
    margin = noise_margin(best_acc, n)
    for name in feasible:
        acc = measured[name]["accuracy"]
        gap = best_acc - acc
        score[name] += -10.0 * gap if gap > margin else 0.0
        if name == best:
            which = measured[name]["name"]
            label = f"{which}: " if which not in CHOICES else ""
            reason("task nature", name, f"highest accuracy of the feasible backends: {label}{acc:.4f} on {n} texts")
        elif gap <= margin:
            reason(
                "task nature",
                name,
                f"accuracy {acc:.4f} is within measurement noise (±{margin:.3f}) of the best ({best_acc:.4f})",
            )
        else:
            below = f"{100 * gap:.1f} points below the best ({best_acc:.4f})"
            reason("task nature", name, f"accuracy {acc:.4f} is {below}")
    if best == "hybrid" and "fine-tune" in feasible:
        gain = best_acc - measured["fine-tune"]["accuracy"]
        if gain <= margin:
            score["hybrid"] -= 0.5  # the simpler system when the gain is noise
            rec.caveats.append(
                f"the hybrid's gain over the fine-tune alone ({100 * gain:+.1f} points) is within noise "
                f"(±{margin:.3f})"
            )

    # Freshness: what absorbing new labels costs each.
    update = report.get("knowledge_update") or {}
    weight = {"daily": 2.0, "weekly": 1.0, "rarely": 0.0}[constraints.updates]
    if weight:
        rag_update, ft_update = update.get("rag") or {}, update.get("finetune") or {}
        rag_s, ft_s = rag_update.get("seconds"), ft_update.get("seconds")
        for name, share in (("rag", 1.0), ("hybrid", 0.5)):
            if name in feasible:
                score[name] += weight * share
        if rag_s is not None and ft_s is not None:
            detail = (
                f"adding {update.get('new_examples')} examples took RAG {rag_s:.1f} s (measured, held-out accuracy "
                f"{100 * rag_update.get('accuracy_change', 0.0):+.2f} points); the fine-tune needs a retrain of "
                f"about {ft_s / 60:.0f} min (estimated from its run.json)"
            )
            reason("freshness", "rag", f"labeled data changes {constraints.updates}: {detail}")
        else:
            rec.caveats.append(
                f"labeled data changes {constraints.updates}: retrieval absorbs new examples at once, a fine-tune "
                "only after retraining; this report has no knowledge-update figure to size the difference"
            )

    # Explainability.
    if constraints.need_evidence:
        for name, share in (("rag", 1.0), ("hybrid", 0.5)):
            if name in feasible:
                score[name] += 1.0 * share
        if "rag" in measured:
            acc = measured["rag"]["accuracy"]
            shows = "every RAG answer lists the labeled neighbours it rests on"
            reason("explainability", "rag", f"{shows} (accuracy {acc:.4f})")

    # Data availability: the learning curve when there is one, else how many examples were measured.
    ft_meta_size = (measured.get("fine-tune") or {}).get("train_size")
    if constraints.labeled_examples is not None:
        have = constraints.labeled_examples
        cross = crossover(curve) if curve else None
        if curve and cross is not None:
            at_ft, at_rag = _accuracy_at(curve, "finetune", have), _accuracy_at(curve, "rag", have)
            favoured = "fine-tune" if have >= cross else "rag"
            if favoured in feasible:
                score[favoured] += 1.5
            figures = (
                f" (at {at_ft[0]} examples: fine-tune {at_ft[1]:.4f}, RAG {at_rag[1]:.4f})" if at_ft and at_rag else ""
            )
            reason(
                "data availability",
                favoured,
                f"with {have} labeled examples, the learning curve favours {favoured}: the fine-tune overtakes "
                f"retrieval from {cross} examples{figures}",
            )
        elif curve:
            if "rag" in feasible:
                score["rag"] += 1.0
            top = max(curve.get("sizes") or [0])
            never = f"on the learning curve (up to {top} examples) the fine-tune never overtakes retrieval"
            reason("data availability", "rag", never)
        elif ft_meta_size and have < ft_meta_size:
            rec.caveats.append(
                f"the fine-tune was measured with {ft_meta_size} training examples and you have {have}; its accuracy "
                "will be lower. Run `python -m compare.curve` to see by how much."
            )

    # Resource limits: latency and serving cost, as tie-breakers.
    fastest = min(feasible, key=lambda k: (measured[k].get("latency_ms") or {}).get("p95", math.inf))
    p95 = (measured[fastest].get("latency_ms") or {}).get("p95")
    if p95 is not None and len(feasible) > 1:
        score[fastest] += 0.5
        reason("resource limits", fastest, f"lowest p95 latency of the feasible backends: {p95:.1f} ms here")
    if constraints.hardware == "gpu":
        rec.caveats.append("measured on a CPU; on a GPU fine-tuning and retraining are far cheaper (not measured)")

    for name, why in rec.excluded.items():
        reason("constraint", name, f"excluded: {why}")
    rec.scores = {k: round(v, 3) for k, v in score.items() if k in feasible}
    rec.choice = max(feasible, key=lambda k: (score[k], measured[k]["accuracy"]))
    rec.backend = measured[rec.choice]["name"]
    runner_up = sorted(feasible, key=lambda k: score[k], reverse=True)[1:2]
    if runner_up and abs(score[rec.choice] - score[runner_up[0]]) < 0.25:
        rec.caveats.append(f"{rec.choice} and {runner_up[0]} are close on these constraints")
    if any(b.get("from_scratch") for b in measured.values()):
        rec.caveats.append("the fine-tuned model was trained from scratch (no pretrained weights): a pretrained "
                           "model would do better")  # fmt: skip
    return rec


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], allow_abbrev=False)
    parser.add_argument("--report", required=True, help="report.json written by python -m compare.run")
    parser.add_argument("--curve", help="curve.json written by python -m compare.curve")
    parser.add_argument("--labeled-examples", type=int)
    parser.add_argument("--accuracy-target", type=float)
    parser.add_argument("--latency-budget-ms", type=float)
    parser.add_argument("--updates", choices=UPDATES, default="rarely")
    parser.add_argument("--hardware", choices=HARDWARE, default="cpu")
    parser.add_argument("--need-evidence", action="store_true")
    args = parser.parse_args(argv)
    try:
        constraints = Constraints(
            labeled_examples=args.labeled_examples,
            accuracy_target=args.accuracy_target,
            latency_budget_ms=args.latency_budget_ms,
            updates=args.updates,
            hardware=args.hardware,
            need_evidence=args.need_evidence,
        )
        report = read_json(Path(args.report), "report")
        curve = read_json(Path(args.curve), "learning curve") if args.curve else None
        recommendation = decide(report, constraints, curve)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"constraints": asdict(constraints), **recommendation.to_dict()}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
