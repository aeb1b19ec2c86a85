"""Uncertainty: bootstrap intervals, the paired difference and McNemar in compare.metrics; how the evaluation puts them
in every report, and how report.md, the plots and old reports show them."""

from __future__ import annotations

import copy
import json
import re
import time

import numpy as np
import pytest
from scipy.stats import norm

from compare import metrics
from compare.decide import Constraints, decide
from compare.evaluation import check_report, evaluate
from compare.metrics import bootstrap_ci, mcnemar_p, paired_difference
from compare.report import headline_rows, plot, render_markdown, write_report
from core.types import LABELS, Prediction


def right_on(share: float, n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Predictions right on `share` of `n` texts (the wrong ones shifted to the next label), and the references."""
    rng = np.random.default_rng(seed)
    refs = [str(label) for label in rng.choice(LABELS, n)]
    n_right = round(share * n)
    preds = [r if i < n_right else LABELS[(LABELS.index(r) + 1) % 3] for i, r in enumerate(refs)]
    return preds, refs


# --- bootstrap_ci ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("share", [0.55, 0.8, 0.95])
def test_intervals_contain_the_point_estimate(share, seed):
    preds, refs = right_on(share, 300, seed)
    for metric, point in (
        ("accuracy", metrics.accuracy(preds, refs)),
        ("macro_f1", metrics.macro_f1(preds, refs, LABELS)),
    ):
        low, high = bootstrap_ci(preds, refs, metric, LABELS, seed=seed)
        assert low < point < high, (metric, low, point, high)


def test_accuracy_interval_matches_the_normal_approximation():
    # 2,800 of 3,500 right: standard error sqrt(0.8 * 0.2 / 3500) = 0.00676, 95% half-width 1.96 x that = 0.01325
    preds, refs = right_on(0.8, 3500)
    low, high = bootstrap_ci(preds, refs)
    half_width = norm.ppf(0.975) * np.sqrt(0.8 * 0.2 / 3500)
    assert (high - low) / 2 == pytest.approx(half_width, rel=0.1)
    assert (low + high) / 2 == pytest.approx(0.8, abs=0.003)


def test_intervals_narrow_with_more_data():
    small, large = right_on(0.8, 100), right_on(0.8, 2500)
    for metric in ("accuracy", "macro_f1"):
        width_small = np.subtract(*bootstrap_ci(*small, metric, LABELS)[::-1])
        width_large = np.subtract(*bootstrap_ci(*large, metric, LABELS)[::-1])
        assert width_large < width_small / 3  # sqrt(25) = 5 in theory


def test_intervals_widen_with_the_confidence_asked_for():
    preds, refs = right_on(0.7, 500)
    low90, high90 = bootstrap_ci(preds, refs, confidence=0.90)
    low99, high99 = bootstrap_ci(preds, refs, confidence=0.99)
    assert low99 < low90 and high90 < high99


def test_intervals_are_deterministic_for_a_seed():
    preds, refs = right_on(0.7, 400)
    assert bootstrap_ci(preds, refs, seed=3) == bootstrap_ci(preds, refs, seed=3)
    assert bootstrap_ci(preds, refs, seed=3) != bootstrap_ci(preds, refs, seed=4)
    assert paired_difference(preds, refs, refs, seed=5) == paired_difference(preds, refs, refs, seed=5)


def test_every_resampled_macro_f1_equals_scikit_learn_on_that_resample():
    preds, refs = right_on(0.6, 120, seed=7)
    preds[:3] = ["neutral"] * 3  # some variety in what goes wrong
    weights = metrics._resample_weights(len(refs), 20, seed=1)
    fast = metrics._macro_f1_rows(weights, np.asarray(preds), np.asarray(refs), LABELS)
    for row, value in zip(weights.astype(int), fast, strict=True):
        drawn = np.repeat(np.arange(len(refs)), row)
        slow = metrics.macro_f1([preds[i] for i in drawn], [refs[i] for i in drawn], LABELS)
        assert value == pytest.approx(slow)


def test_resampling_draws_n_texts_with_replacement():
    weights = metrics._resample_weights(50, 200, seed=0)
    assert weights.shape == (200, 50) and (weights.sum(axis=1) == 50).all()
    assert weights.max() > 1 and (weights == 0).any()  # with replacement: repeats and misses
    assert weights.mean(axis=0) == pytest.approx(np.ones(50), abs=0.25)  # every text equally likely


def test_a_perfect_backend_has_a_degenerate_interval():
    assert bootstrap_ci(LABELS * 10, LABELS * 10) == (1.0, 1.0)
    assert bootstrap_ci(LABELS * 10, LABELS * 10, "macro_f1", LABELS) == (1.0, 1.0)


def test_bootstrap_is_cheap_at_full_test_set_size():
    preds, refs = right_on(0.75, 3500)
    bootstrap_ci(preds[:10], refs[:10])  # first-call costs (imports, allocator) are not the bootstrap's
    start = time.process_time()  # CPU time: the other jobs on a shared machine do not count
    bootstrap_ci(preds, refs, "accuracy", LABELS)
    bootstrap_ci(preds, refs, "macro_f1", LABELS)
    assert time.process_time() - start < 1.0  # about 0.1 s measured


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: bootstrap_ci(["a"], ["a", "b"]), "1 predictions for 2 references"),
        (lambda: bootstrap_ci([], []), "no examples"),
        (lambda: bootstrap_ci(["a"], ["a"], "f2"), "metric must be one of"),
        (lambda: bootstrap_ci(["a"], ["a"], confidence=95), "confidence must be between 0 and 1"),
        (lambda: bootstrap_ci(["a"], ["a"], n_resamples=0), "n_resamples must be at least 1"),
        (lambda: paired_difference(["a"], ["a", "b"], ["a", "b"]), "1 predictions for 2 references"),
        (lambda: mcnemar_p(["a", "b"], ["a"], ["a", "b"]), "1 predictions for 2 references"),
    ],
)
def test_uncertainty_rejects_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# --- McNemar and the paired difference -------------------------------------------------------------------------------


def discordant(b: int, c: int, both: int = 5, neither: int = 3) -> tuple[list[str], list[str], list[str]]:
    """Predictions of A and B with b texts right by A only, c right by B only, and some concordant ones."""
    a = ["x"] * b + ["y"] * c + ["x"] * both + ["y"] * neither
    bb = ["y"] * b + ["x"] * c + ["x"] * both + ["y"] * neither
    return a, bb, ["x"] * len(a)


@pytest.mark.parametrize(
    ("b", "c", "p"),
    [
        (1, 9, 0.021484375),  # 2 * (1 + 10) / 2**10
        (9, 1, 0.021484375),  # symmetric
        (0, 5, 0.0625),  # 2 / 2**5
        (0, 10, 2 / 1024),
        (2, 8, 2 * (1 + 10 + 45) / 1024),  # 0.109375
        (4, 4, 1.0),  # balanced: capped at 1
        (0, 1, 1.0),
        (0, 0, 1.0),  # no discordant texts: no evidence of a difference
    ],
)
def test_mcnemar_by_hand(b, c, p):
    assert mcnemar_p(*discordant(b, c)) == pytest.approx(p, rel=1e-12)


def test_paired_difference_sign_and_interval():
    refs = ["x"] * 200
    a = ["x"] * 160 + ["y"] * 40
    b = ["x"] * 130 + ["y"] * 70
    ab, ba = paired_difference(a, b, refs), paired_difference(b, a, refs)
    assert ab["accuracy_diff"] == pytest.approx(0.15) and ba["accuracy_diff"] == pytest.approx(-0.15)
    low, high = ab["diff_ci95"]
    assert 0 < low < 0.15 < high
    assert ba["diff_ci95"][1] < 0
    assert ab["mcnemar_p"] == ba["mcnemar_p"] == pytest.approx(2 / 2**30)


def test_identical_backends_differ_by_nothing():
    preds, refs = right_on(0.7, 300)
    assert paired_difference(preds, list(preds), refs) == {
        "accuracy_diff": 0.0,
        "diff_ci95": (0.0, 0.0),
        "mcnemar_p": 1.0,
    }


def test_the_paired_interval_is_narrower_than_the_unpaired_one_when_backends_fail_together():
    preds_a, refs = right_on(0.80, 1000)
    preds_b = list(preds_a)
    for i in range(0, 1000, 50):  # B gets 20 more texts wrong; otherwise the same answers
        preds_b[i] = "wrong"
    low, high = paired_difference(preds_a, preds_b, refs)["diff_ci95"]
    width_a = np.subtract(*bootstrap_ci(preds_a, refs)[::-1])
    assert low > 0 and high - low < width_a / 2


# --- the evaluation: intervals and pairs in every report -------------------------------------------------------------


class Answers:
    """A stand-in backend: a fixed label per text, from a dict."""

    labels = list(LABELS)

    def __init__(self, name: str, answers: dict[str, str]) -> None:
        self.name, self.answers = name, answers

    def predict(self, texts):
        return [Prediction.from_scores({k: 0.8 if k == self.answers[t] else 0.1 for k in LABELS}) for t in texts]


WRONG_ON = {
    "good": range(270, 300),  # accuracy 0.90
    "poor": range(0, 120),  # 0.60
    "close": [*range(0, 9), *range(270, 294)],  # 0.89; against good: 9 texts right by good only, 6 by close only
}


@pytest.fixture(scope="module")
def three_backends():
    """300 texts and three stand-in backends, each wrong on the texts WRONG_ON names."""
    _, refs = right_on(1.0, 300, seed=11)
    texts = [f"text {i}" for i in range(300)]
    backends = {}
    for name, wrong in WRONG_ON.items():
        answers = [LABELS[(LABELS.index(r) + 1) % 3] if i in wrong else r for i, r in enumerate(refs)]
        backends[name] = Answers(name, dict(zip(texts, answers, strict=True)))
    return backends, {"text": texts, "label": refs}


@pytest.fixture(scope="module")
def report(three_backends):
    backends, dataset = three_backends
    return evaluate(backends, dataset, latency_queries=2, batch_size=8, batch_rounds=1)


def test_every_backend_gets_intervals_around_its_scores(report):
    for b in report["backends"].values():
        for metric in ("accuracy", "macro_f1"):
            low, high = b[f"{metric}_ci95"]
            assert low < b[metric] < high and high - low < 0.2
            assert round(low, 4) == low and round(high, 4) == high
    assert report["intervals"] == {"method": "percentile bootstrap", "resamples": 1000, "seed": 0,
                                   "confidence": 0.95, "paired_test": "exact McNemar"}  # fmt: skip


def test_every_pair_of_backends_is_compared_once_in_order(report):
    pairs = report["pairwise"]
    assert [(p["a"], p["b"]) for p in pairs] == [("good", "poor"), ("good", "close"), ("poor", "close")]
    by_pair = {(p["a"], p["b"]): p for p in pairs}
    assert by_pair["good", "poor"]["accuracy_diff"] == 0.30
    assert by_pair["poor", "close"]["accuracy_diff"] == -0.29
    assert by_pair["good", "poor"]["diff_ci95"][0] > 0 and by_pair["poor", "close"]["diff_ci95"][1] < 0
    assert 0 < by_pair["good", "poor"]["mcnemar_p"] < 1e-6  # 120 against 30: tiny, yet not rounded to 0
    low, high = by_pair["good", "close"]["diff_ci95"]
    assert by_pair["good", "close"]["accuracy_diff"] == 0.01 and low < 0 < high
    # b = 9, c = 6: p = 2 (C(15,0) + ... + C(15,6)) / 2**15 = 2 * 9949 / 32768
    assert by_pair["good", "close"]["mcnemar_p"] == pytest.approx(2 * 9949 / 32768, rel=1e-3)
    for p in pairs:
        assert set(p) == {"a", "b", "accuracy_diff", "diff_ci95", "mcnemar_p"}


def test_the_intervals_do_not_depend_on_the_run(three_backends, report):
    backends, dataset = three_backends
    again = evaluate(backends, dataset, latency_queries=2, batch_size=8, batch_rounds=1)
    assert again["pairwise"] == report["pairwise"]
    assert [b["accuracy_ci95"] for b in again["backends"].values()] == [
        b["accuracy_ci95"] for b in report["backends"].values()
    ]


def test_a_report_survives_json_with_its_intervals(report, tmp_path):
    write_report(report, tmp_path / "r")
    stored = json.loads((tmp_path / "r" / "report.json").read_text())
    assert stored["pairwise"] == json.loads(json.dumps(report["pairwise"]))
    assert stored["backends"]["good"]["macro_f1_ci95"] == report["backends"]["good"]["macro_f1_ci95"]
    assert check_report(stored) is stored


# --- report.md, the tables and the plots -----------------------------------------------------------------------------


def test_headline_table_shows_each_score_with_its_interval(report):
    rows = {row["backend"]: row for row in headline_rows(report)}
    good = report["backends"]["good"]
    low, high = good["accuracy_ci95"]
    assert rows["good"]["accuracy"] == f"{good['accuracy']:.4f} [{low:.3f}, {high:.3f}]"
    low, high = good["macro_f1_ci95"]
    assert rows["good"]["macro-F1"] == f"{good['macro_f1']:.4f} [{low:.3f}, {high:.3f}]"


def test_markdown_has_the_intervals_and_the_paired_section(report):
    text = render_markdown(report)
    good = report["backends"]["good"]
    assert f"{good['accuracy']:.4f} \\[{good['accuracy_ci95'][0]:.3f}, {good['accuracy_ci95'][1]:.3f}\\]" in text
    assert "95% percentile bootstrap over the 300 texts (1000 resamples, seed 0)" in text
    section = text.split("## Paired comparisons")[1].split("\n## ")[0]
    lines = [line for line in section.splitlines() if line.startswith("- ")]
    assert len(lines) == 3
    assert (
        lines[0].startswith("- **good − poor**: +0.3000 [+")
        and "good is more accurate: the interval excludes 0" in lines[0]
    )
    assert "close is more accurate" in lines[2] and "-0.2900" in lines[2]
    assert "+0.0100 [-" in lines[1] and "McNemar p = 0.607. Within noise: the interval contains 0." in lines[1]


def test_backend_names_in_the_paired_section_are_escaped(report):
    hostile = copy.deepcopy(report)
    hostile["pairwise"][0]["a"] = "<img src=x onerror=alert(1)>"
    section = render_markdown(hostile).split("## Paired comparisons")[1]
    assert not re.search(r"(?<!\\)<", section) and "\\<img" in section  # every < is escaped


def test_plots_show_the_intervals(report, tmp_path, monkeypatch):
    import matplotlib.axes

    titles, error_bars = [], []
    monkeypatch.setattr(matplotlib.axes.Axes, "set_title", lambda self, t, *a, **k: titles.append(t))
    real_bar = matplotlib.axes.Axes.bar
    monkeypatch.setattr(
        matplotlib.axes.Axes, "bar", lambda self, *a, **k: error_bars.append(k.get("yerr")) or real_bar(self, *a, **k)
    )
    paths = plot(report, tmp_path)
    assert [p.name for p in paths][:2] == ["confusion_matrices.png", "latency.png"]  # the app takes these two
    assert paths[-1].name == "accuracy.png" and paths[-1].read_bytes()[:4] == b"\x89PNG"
    good = report["backends"]["good"]
    half = (good["accuracy_ci95"][1] - good["accuracy_ci95"][0]) / 2
    assert f"good: accuracy {good['accuracy']:.3f} ± {half:.3f}" in titles
    (yerr,) = error_bars
    accuracy = np.array([b["accuracy"] for b in report["backends"].values()])
    intervals = np.array([b["accuracy_ci95"] for b in report["backends"].values()])
    assert yerr == pytest.approx(np.stack([accuracy - intervals[:, 0], intervals[:, 1] - accuracy]))


# --- reports written before intervals --------------------------------------------------------------------------------


def without_intervals(report):
    old = copy.deepcopy(report)
    del old["pairwise"], old["intervals"]
    for b in old["backends"].values():
        del b["accuracy_ci95"], b["macro_f1_ci95"]
    return old


def test_an_old_report_without_intervals_still_renders(report, tmp_path):
    old = without_intervals(report)
    assert check_report(old) is old
    rows = headline_rows(old)
    assert rows[0]["accuracy"] == f"{old['backends']['good']['accuracy']:.4f} [n/a]"
    text = render_markdown(old)
    assert "Intervals: n/a" in text
    assert "## Paired comparisons\n\nn/a: this report predates paired comparisons" in text
    paths = write_report(old, tmp_path / "old")
    assert len(paths) == 4 and all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)
    old["backends"] = dict(zip(("finetune", "rag", "close"), old["backends"].values(), strict=True))
    assert decide(old, Constraints()).choice == "finetune"
