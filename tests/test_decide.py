"""compare/decide.py: hard limits, a reason per criterion, noise from intervals or spread, the tie-break, the CLI."""

from __future__ import annotations

import itertools
import json

import pytest

from compare.decide import (
    CRITERIA,
    WEIGHTS,
    Constraints,
    Contenders,
    crossover,
    data_availability,
    decide,
    explainability,
    freshness,
    kind_of,
    resource_limits,
    task_nature,
)
from compare.decide import main as decide_main
from core.types import LABELS

CRITERIA_NAMES = {"task nature", "data availability", "resource limits", "freshness", "explainability"}


def synthetic_report(ft_acc=0.80, rag_acc=0.66, hybrid_acc=0.81, ft_p95=30.0, rag_p95=12.0, n=3534, half=0.02,
                     tuned_acc=None):  # fmt: skip
    """A report as jobs.run writes it; every paired interval is the difference ± `half` (None: no intervals)."""

    def backend(acc, p95, **extra):
        return {"accuracy": acc, "macro_f1": acc, "latency_ms": {"p50": p95 * 0.8, "p95": p95, "p99": p95 * 1.2},
                "samples_per_second": 300.0, **extra}  # fmt: skip

    backends = {
        "finetune": backend(ft_acc, ft_p95, train_size=26480),
        "rag": backend(rag_acc, rag_p95),
        "hybrid": backend(hybrid_acc, ft_p95 + rag_p95),
    }
    if tuned_acc is not None:
        backends["rag-tuned"] = backend(tuned_acc, rag_p95 + 1.0)
    pairs = [
        {"a": a, "b": b, "accuracy_diff": d, "diff_ci95": [round(d - half, 4), round(d + half, 4)], "mcnemar_p": 0.5}
        for a, b in itertools.combinations(backends, 2)
        for d in [backends[a]["accuracy"] - backends[b]["accuracy"]]
        if half is not None
    ]
    return {
        "format_version": 1,
        "dataset": {"n": n, "split": "test", "source": "x"},
        "backends": backends,
        "pairwise": pairs,
        "knowledge_update": {
            "new_examples": 500,
            "rag": {"seconds": 2.1, "accuracy_change": 0.004},
            "finetune": {"seconds": 1980.0},
        },
    }


CURVE = {"sizes": [100, 300, 1000, 3000], "backends": {"finetune": [0.40, 0.52, 0.66, 0.72],
                                                       "rag": [0.50, 0.57, 0.61, 0.63]}}  # fmt: skip
"""A curve of the format before seeds: one accuracy per size, no spread."""


def banded_curve(ft_std=0.03, rag_std=0.03):
    return {
        "sizes": [100, 300, 1000, 3000],
        "seeds": [0, 1, 2],
        "test_size": 1000,
        "backends": {
            "finetune": {"mean": [0.40, 0.52, 0.66, 0.72], "std": [ft_std] * 4},
            "rag": {"mean": [0.50, 0.57, 0.61, 0.63], "std": [rag_std] * 4},
            "rag-tuned": {"mean": [0.45, 0.60, 0.70, 0.74], "std": [0.01] * 4},
        },
    }


def field(report, constraints=None, kinds=None, curve=None, curve_size=None):
    """A Contenders over the report's backends (all feasible), for calling a criterion directly."""
    measured = {kind_of(name): {**b, "name": name} for name, b in report["backends"].items()}
    feasible = list(kinds or measured)
    return Contenders(measured, feasible, constraints or Constraints(), report, curve, curve_size)


def texts(scores):
    return {s.kind: s.reason for s in scores}


@pytest.mark.parametrize(
    ("report_kw", "constraints", "curve", "choice", "must_cite"),
    [
        ({}, Constraints(), None, "finetune", ["0.8000", "within noise", "What broke the tie: resource limits"]),
        ({"hybrid_acc": 0.85}, Constraints(), None, "hybrid", ["0.8500", "excludes 0"]),
        ({}, Constraints(latency_budget_ms=20), None, "rag", ["p95 latency 30.0 ms exceeds the 20 ms budget"]),
        ({"rag_acc": 0.795}, Constraints(updates="daily"), None, "rag", ["2.1 s", "33 min", "freshness (+1.00)"]),
        ({}, Constraints(need_evidence=True), None, "rag", ["shows no labeled examples", "blends in a fine-tuned"]),
        ({}, Constraints(labeled_examples=3000), CURVE, "finetune", ["ahead of retrieval from 1000"]),
        (
            {"ft_acc": 0.66, "hybrid_acc": 0.64},
            Constraints(labeled_examples=300),
            CURVE,
            "rag",
            ["favours rag", "finetune 0.5200, rag 0.5700"],
        ),
        ({}, Constraints(accuracy_target=0.9), None, None, ["below the 0.9000 target"]),
        ({"tuned_acc": 0.79}, Constraints(need_evidence=True), None, "rag-tuned", ["every answer lists"]),
    ],
    ids=[
        "accuracy",
        "hybrid-wins",
        "latency",
        "freshness",
        "evidence",
        "curve-measured",
        "curve-few-labels",
        "none",
        "rag-tuned",
    ],
)
def test_decide_table(report_kw, constraints, curve, choice, must_cite):
    rec = decide(synthetic_report(**report_kw), constraints, curve)
    assert rec.choice == choice
    text = json.dumps(rec.to_dict(), ensure_ascii=False)
    for cited in must_cite:
        assert cited in text
    for r in rec.reasons:
        assert r["criterion"] in CRITERIA_NAMES | {"constraint", "verdict"}
        assert any(ch.isdigit() for ch in r["text"])  # every reason cites a number
    if choice is None:
        assert rec.caveats and "no measured backend meets every constraint" in rec.caveats[0]


def test_the_weights_table_covers_every_criterion_with_a_reason():
    assert set(WEIGHTS) == set(CRITERIA) == CRITERIA_NAMES
    for weight, why in WEIGHTS.values():
        assert weight > 0 and len(why.split()) >= 10


# --- each criterion's score and reason -------------------------------------------------------------------------------


def test_task_nature_reads_the_noise_from_the_paired_interval():
    report = synthetic_report(ft_acc=0.80, hybrid_acc=0.81, rag_acc=0.66)
    reasons = texts(task_nature(field(report)))
    assert reasons["hybrid"] == "highest accuracy of the contenders: hybrid 0.8100 on 3534 texts"
    assert "within noise of the best (hybrid 0.8100)" in reasons["finetune"]
    assert (
        "the paired 95% interval of hybrid minus finetune, [-0.010, +0.030] on 3534 texts, includes 0"
        in (reasons["finetune"])
    )
    assert "15.0 points below hybrid" in reasons["rag"] and "excludes 0" in reasons["rag"]
    scores = {s.kind: s.value for s in task_nature(field(report))}
    assert scores["finetune"] == 0.0 and scores["rag"] == pytest.approx(-0.15)
    wide = synthetic_report(ft_acc=0.80, hybrid_acc=0.81, rag_acc=0.66, half=0.2)  # the same gap, noisier
    assert {s.kind: s.value for s in task_nature(field(wide))}["rag"] == 0.0


def test_task_nature_without_a_paired_interval_uses_the_two_intervals_or_says_there_are_none():
    report = synthetic_report(half=None)
    assert "no intervals to judge the noise by" in texts(task_nature(field(report)))["finetune"]
    report["backends"]["hybrid"]["accuracy_ci95"] = [0.797, 0.823]
    report["backends"]["finetune"]["accuracy_ci95"] = [0.787, 0.813]
    report["backends"]["rag"]["accuracy_ci95"] = [0.644, 0.676]
    reasons = texts(task_nature(field(report)))
    assert "finetune [0.787, 0.813], overlap" in reasons["finetune"].replace("hybrid [0.797, 0.823] and ", "")
    assert "do not overlap" in reasons["rag"]


def test_data_availability_favours_the_lines_at_the_top_of_the_curve():
    report, curve = synthetic_report(), banded_curve()
    scores = data_availability(field(report, Constraints(labeled_examples=300), curve=curve))
    assert {s.kind: s.value for s in scores} == {"rag": 1.0, "finetune": 1.0}  # rag-tuned is not in the report
    reason = next(s.reason for s in scores if s.reason)
    assert reason.startswith("with 300 labeled examples the learning curve favours rag and finetune (within the")
    assert "finetune 0.5200 ± 0.0300, rag 0.5700 ± 0.0300" in reason
    narrow = data_availability(field(report, Constraints(labeled_examples=300), curve=banded_curve(0.001, 0.001)))
    assert {s.kind for s in narrow} == {"rag"}
    assert data_availability(field(report, Constraints(), curve=curve)) == []


def test_freshness_counts_instant_updates_by_how_often_labels_change():
    report = synthetic_report(tuned_acc=0.78)
    daily = freshness(field(report, Constraints(updates="daily")))
    assert {s.kind: s.value for s in daily} == {"finetune": 0.0, "rag": 1.0, "hybrid": 0.5, "rag-tuned": 1.0}
    reasons = texts(daily)
    assert reasons["rag"].startswith("labeled data changes daily: rag takes new labeled examples at once")
    assert reasons["finetune"].startswith("labeled data changes daily: finetune takes new labeled examples only by")
    assert "in its retrieval half only" in reasons["hybrid"]
    assert all("took retrieval 2.1 s" in r and "retrain of about 33 min" in r for r in reasons.values())
    assert {s.kind: s.value for s in freshness(field(report, Constraints(updates="weekly")))}["rag"] == 0.5
    assert freshness(field(report, Constraints(updates="rarely"))) == []


def test_explainability_scores_the_share_of_answers_with_evidence():
    report = synthetic_report(tuned_acc=0.78)
    scores = explainability(field(report, Constraints(need_evidence=True), kinds=["rag", "rag-tuned", "hybrid"]))
    assert {s.kind: s.value for s in scores} == {"rag": 1.0, "rag-tuned": 1.0, "hybrid": 0.5}
    assert texts(scores)["rag-tuned"] == "every answer lists the labeled neighbours it rests on (accuracy 0.7800)"
    assert "blends in a fine-tune (accuracy 0.8100)" in texts(scores)["hybrid"]
    assert explainability(field(report)) == []


def test_resource_limits_score_the_fastest_over_each_ones_latency():
    scores = resource_limits(field(synthetic_report(ft_p95=30.0, rag_p95=12.0)))
    assert {s.kind: round(s.value, 3) for s in scores} == {"finetune": 0.4, "rag": 1.0, "hybrid": 0.286}
    assert texts(scores)["rag"] == "lowest p95 latency of the contenders: 12.0 ms here"
    assert texts(scores)["finetune"] == "p95 latency 30.0 ms, 2.5x the fastest (rag, 12.0 ms)"


# --- the verdict -----------------------------------------------------------------------------------------------------


def test_a_tie_within_noise_names_what_broke_it():
    rec = decide(synthetic_report(ft_acc=0.80, rag_acc=0.795, hybrid_acc=0.70), Constraints(updates="daily"))
    verdict = rec.reasons[0]
    assert verdict["criterion"] == "verdict" and rec.choice == "rag"
    assert verdict["text"].startswith("rag (0.7950) and finetune (0.8000) are within noise of each other on accuracy")
    assert "includes 0. What broke the tie: freshness (+2.00), resource limits (+0.30)" in verdict["text"]


def test_a_choice_less_accurate_beyond_the_noise_says_why():
    rec = decide(synthetic_report(ft_acc=0.80, rag_acc=0.75, hybrid_acc=0.70), Constraints(updates="daily"))
    assert rec.choice == "rag"
    assert rec.reasons[0]["text"].startswith("rag is chosen although finetune is 5.0 points more accurate")
    assert rec.reasons[0]["text"].endswith("because of freshness (+2.00), resource limits (+0.30)")
    clear = decide(synthetic_report(hybrid_acc=0.70), Constraints())
    assert clear.choice == "finetune" and clear.reasons[0]["criterion"] != "verdict"  # simply the most accurate


def test_with_few_labels_the_noise_is_the_curves_spread():
    report = synthetic_report()
    rec = decide(report, Constraints(labeled_examples=300, updates="daily"), banded_curve())
    assert rec.choice == "rag" and "hybrid" in rec.excluded
    assert "on the learning curve at 300 examples (mean ± std over 3 seeds" in rec.reasons[0]["text"]
    assert "the bands overlap" in rec.reasons[0]["text"]
    one_seed = decide(report, Constraints(labeled_examples=300), CURVE)
    assert any("no spread at 300 examples (one seed)" in r["text"] for r in one_seed.reasons)


def test_rag_tuned_is_a_kind_of_its_own():
    assert [kind_of(n) for n in ("rag-tuned", "rag", "finetune-minilm", "hybrid", "llm")] == [
        "rag-tuned", "rag", "finetune", "hybrid", None]  # fmt: skip
    rec = decide(synthetic_report(tuned_acc=0.80, rag_acc=0.60), Constraints(updates="daily"))
    assert rec.choice == "rag-tuned" and rec.backend == "rag-tuned"


# --- kept from before ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labeled_examples": 0}, "labeled_examples"),
        ({"accuracy_target": 1.5}, "accuracy_target"),
        ({"latency_budget_ms": -1}, "latency_budget_ms"),
        ({"updates": "hourly"}, "updates"),
        ({"hardware": "tpu"}, "hardware"),
    ],
)
def test_constraints_out_of_range(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Constraints(**kwargs)


def test_crossover_of_a_curve():
    assert crossover(CURVE) == 1000
    assert crossover({"sizes": [1, 2], "backends": {"finetune": [0.1, 0.2], "rag": [0.5, 0.6]}}) is None


def test_decide_cli(tmp_path, capsys):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(synthetic_report()))
    assert decide_main(["--report", str(path), "--latency-budget-ms", "20", "--updates", "daily"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["choice"] == "rag" and out["constraints"]["given"]["updates"] == "daily"
    curve = tmp_path / "curve.json"
    curve.write_text(json.dumps(banded_curve()))
    assert decide_main(["--report", str(path), "--curve", str(curve), "--labeled-examples", "300"]) == 0
    assert json.loads(capsys.readouterr().out)["constraints"]["given"]["labeled_examples"] == 300
    path.write_text(json.dumps({**synthetic_report(), "format_version": 99}))
    assert decide_main(["--report", str(path)]) == 2
    assert "format 99 is not supported" in capsys.readouterr().err
    assert decide_main(["--report", str(tmp_path / "none.json")]) == 2
    for bad in (["--report", str(path), "--updates", "hourly"], ["--report", str(path), "--labeled-examples", "0"]):
        with pytest.raises(SystemExit) as exit_:
            decide_main(bad)
        assert exit_.value.code == 2
    assert "labeled_examples must be at least 1" in capsys.readouterr().err


def test_decide_takes_the_best_of_several_fine_tunes():
    report = synthetic_report(ft_acc=0.60, hybrid_acc=0.62)
    report["backends"]["finetune-minilm"] = {**report["backends"]["finetune"], "accuracy": 0.80}
    rec = decide(report, Constraints())
    assert rec.choice == "finetune" and rec.backend == "finetune-minilm"
    assert any("0.8000" in r["text"] and r["backend"] == "finetune" for r in rec.reasons)


def test_decide_picks_the_fine_tune_that_meets_the_latency_budget():
    report = synthetic_report(ft_p95=30.0, rag_p95=12.0)
    report["backends"]["finetune-small"] = {**report["backends"]["finetune"], "accuracy": 0.70,
                                            "latency_ms": {"p50": 3.0, "p95": 4.0, "p99": 5.0}}  # fmt: skip
    rec = decide(report, Constraints(latency_budget_ms=5))
    assert rec.choice == "finetune" and rec.backend == "finetune-small"
    assert "rag" in rec.excluded and "hybrid" in rec.excluded and "finetune" not in rec.excluded
    assert any("0.7000" in r["text"] for r in rec.reasons)


def test_few_labels_use_the_curve_accuracies_not_the_full_data_report():
    rec = decide(synthetic_report(), Constraints(labeled_examples=300), CURVE)
    assert rec.choice == "rag"
    assert "hybrid" in rec.excluded and "300" in rec.excluded["hybrid"]
    assert any("finetune 0.5200, rag 0.5700" in r["text"] for r in rec.reasons)


def test_a_gated_hybrid_does_not_count_as_showing_evidence():
    report = synthetic_report()
    report["backends"]["hybrid"]["fit"] = {"chosen": {"mode": "gate", "threshold": 0.5}}
    rec = decide(report, Constraints(need_evidence=True))
    assert rec.choice == "rag" and "confidence below 0.50" in rec.excluded["hybrid"]


def test_decide_refuses_a_curve_of_other_labels():
    report = {**synthetic_report(), "labels": ["anger", "joy", "optimism", "sadness"]}
    with pytest.raises(ValueError, match="label sets differ: the report has"):
        decide(report, Constraints(labeled_examples=300), {**CURVE, "labels": list(LABELS)})
    assert decide(report, Constraints(labeled_examples=300), {**CURVE, "labels": report["labels"]}).choice == "rag"


def test_a_statistical_tie_is_reported_as_one_and_not_broken_by_latency_inside_its_noise():
    report = synthetic_report(ft_acc=0.80, hybrid_acc=0.80, rag_acc=0.60, ft_p95=13.8, rag_p95=0.4)
    noisy = [10.0] * 90 + [11.0 + 0.7 * i for i in range(10)]  # a tail, as real timings have: p95 13.8 ms
    report["backends"]["finetune"].update(latency_ms={"p50": 10.0, "p95": 13.8}, latency_samples_ms=noisy)
    report["backends"]["hybrid"].update(
        latency_ms={"p50": 10.4, "p95": 14.2}, latency_samples_ms=[t + 0.4 for t in noisy]
    )
    rec = decide(report, Constraints())
    assert rec.tie == ["finetune", "hybrid"] and rec.decided_by.startswith("a tie: finetune and hybrid")
    assert "either will do" in rec.decided_by and rec.scores["finetune"] == rec.scores["hybrid"]
    assert not any("broke the tie" in r["text"] for r in rec.reasons)
    # Latencies far apart (beyond their intervals) are a real difference: no tie, and the sentence says why.
    report["backends"]["hybrid"]["latency_samples_ms"] = [3 * t for t in noisy]
    report["backends"]["hybrid"]["latency_ms"]["p95"] = 3 * 13.8
    rec = decide(report, Constraints())
    assert (
        rec.tie == []
        and rec.choice == "finetune"
        and rec.decided_by.startswith("resource limits: p95 latency 13.8 ms")
    )


def test_a_contender_that_did_not_learn_is_never_ranked():
    report = synthetic_report(ft_acc=0.90)
    report["backends"]["finetune"].update(learned=False, why="answers 'neutral' for 100% of the 60 texts")
    rec = decide(report, Constraints())
    assert rec.choice != "finetune" and "finetune" not in rec.scores
    assert rec.excluded["finetune"].startswith("did not learn (answers 'neutral' for 100%")


def test_the_decision_names_what_decided_it_and_reasons_only_for_the_choice_and_the_runner_up():
    rec = decide(synthetic_report(rag_acc=0.795), Constraints(updates="daily"))
    assert rec.choice == "rag" and rec.runner_up in {"finetune", "hybrid"}
    assert rec.decided_by.startswith("freshness: labeled data changes daily: rag takes new labeled examples at once")
    assert "rag scores" in rec.decided_by and f"against {rec.runner_up}'s" in rec.decided_by
    assert {r["backend"] for r in rec.reasons} == {"rag", rec.runner_up}
    accuracy = decide(synthetic_report(), Constraints(updates="rarely"))
    assert accuracy.choice == "finetune"


def test_every_constraint_is_echoed_with_what_it_changed():
    rec = decide(synthetic_report(), Constraints(latency_budget_ms=500, accuracy_target=0.7, labeled_examples=50))
    effects = " | ".join(rec.constraints["effects"])
    assert "latency budget 500 ms (p95): every contender meets it; it changed nothing" in effects
    assert "accuracy target 0.7000: ruled out rag" in effects and "50 labeled examples" in effects
    assert rec.constraints["given"]["latency_budget_ms"] == 500
