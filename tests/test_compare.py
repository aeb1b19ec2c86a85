"""compare/: metrics, latency, the evaluation on two tiny real backends, hybrid, reports, decide(), the CLIs."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

from compare import metrics
from compare.decide import Constraints, decide
from compare.decide import main as decide_main
from compare.evaluation import check_report, cost, evaluate
from compare.latency import measure
from compare.report import escape_markdown, plot, render_markdown
from core.types import LABELS, Prediction
from hybrid import HybridClassifier, combine, fit_hybrid
from jobs.curve import parse_sizes
from jobs.run import main as run_main

# --- metrics ---------------------------------------------------------------------------------------------------------


def test_metrics_match_scikit_learn_on_random_labels():
    rng = np.random.default_rng(0)
    refs = list(rng.choice(LABELS, 500))
    preds = list(rng.choice(LABELS, 500, p=[0.5, 0.3, 0.2]))
    assert metrics.accuracy(preds, refs) == pytest.approx(accuracy_score(refs, preds))
    assert metrics.macro_f1(preds, refs, LABELS) == pytest.approx(f1_score(refs, preds, average="macro"))
    assert metrics.confusion(preds, refs, LABELS) == confusion_matrix(refs, preds, labels=list(LABELS)).tolist()
    _, r, _, s = precision_recall_fscore_support(refs, preds, labels=list(LABELS))
    table = metrics.per_class(preds, refs, LABELS)
    assert [table[label]["recall"] for label in LABELS] == pytest.approx(r)
    assert [table[label]["support"] for label in LABELS] == s.tolist()


def test_metrics_by_hand_with_a_label_never_seen():
    refs = ["negative", "negative", "positive", "positive"]
    preds = ["negative", "positive", "positive", "positive"]
    assert metrics.accuracy(preds, refs) == 0.75
    # negative: P=1, R=.5, F1=2/3; positive: P=2/3, R=1, F1=.8; neutral: 0 -> macro = (2/3 + .8 + 0) / 3
    assert metrics.macro_f1(preds, refs, LABELS) == pytest.approx((2 / 3 + 0.8) / 3)
    assert metrics.confusion(preds, refs, LABELS) == [[1, 0, 1], [0, 0, 0], [0, 0, 2]]
    assert metrics.agreement(preds, refs) == 0.75


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: metrics.accuracy(["a"], ["a", "b"]), "1 predictions for 2 references"),
        (lambda: metrics.accuracy([], []), "no examples"),
        (lambda: metrics.agreement(["a"], []), "cannot compare"),
        (lambda: metrics.calibration([0.5], [True, False]), "1 confidences for 2 outcomes"),
        (lambda: metrics.calibration([], []), "no predictions"),
    ],
)
def test_metrics_reject_mismatched_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_calibration_of_a_perfectly_calibrated_and_an_overconfident_model():
    rng = np.random.default_rng(1)
    conf = rng.uniform(0.34, 1.0, 20000)
    calibrated = rng.uniform(size=conf.size) < conf
    assert metrics.calibration(conf, calibrated)["ece"] < 0.02
    always_sure = np.full(1000, 0.99)
    half_right = np.arange(1000) % 2 == 0
    result = metrics.calibration(always_sure, half_right)
    assert result["ece"] == pytest.approx(0.49)
    assert sum(b["count"] for b in result["bins"]) == 1000


# --- latency ---------------------------------------------------------------------------------------------------------


class Sleeper:
    """A classifier that takes `base` seconds per call plus `per_text` per text, and logs who was called."""

    labels = list(LABELS)

    def __init__(self, name: str, base: float, per_text: float = 0.0, log: list | None = None) -> None:
        self.name, self.base, self.per_text, self.log = name, base, per_text, log

    def predict(self, texts):
        if self.log is not None:
            self.log.append(self.name)
        time.sleep(self.base + self.per_text * len(texts))
        return [Prediction.from_scores({"negative": 0.2, "neutral": 0.5, "positive": 0.3}) for _ in texts]


def test_latency_is_measured_interleaved_with_warmup_excluded():
    log: list[str] = []
    fast, slow = Sleeper("fast", 0.004, 0.0002, log), Sleeper("slow", 0.012, 0.0002, log)
    result = measure({"fast": fast, "slow": slow}, ["q"] * 10, warmup=2, batch_size=20, batch_rounds=2)
    assert result["fast"]["latency_ms"]["p50"] == pytest.approx(4.2, abs=1.5)
    assert result["slow"]["latency_ms"]["p50"] == pytest.approx(12.2, abs=1.5)
    assert len(result["fast"]["samples"]) == 10  # warm-up calls are not in the samples
    # 20 texts take 4 + 4 = 8 ms (fast) and 12 + 4 = 16 ms (slow): 2,500 and 1,250 texts/s
    assert result["fast"]["samples_per_second"] == pytest.approx(2500, rel=0.25)
    assert result["slow"]["samples_per_second"] == pytest.approx(1250, rel=0.25)
    timed = log[4:24]  # after 2 warm-up calls each
    assert timed == ["fast", "slow"] * 10


def test_cost_per_million_queries():
    assert cost(1000.0, None, 0.36) == {"per_million_queries_usd": 0.1, "one_off_usd": None, "hourly_price_usd": 0.36}


# --- hybrid ----------------------------------------------------------------------------------------------------------


class Fixed:
    """A classifier with one fixed score vector per text, from a dict."""

    labels = list(LABELS)

    def __init__(self, name: str, table: dict[str, dict[str, float]], evidence: bool = False) -> None:
        self.name, self.table, self.evidence = name, table, evidence

    def predict(self, texts):
        ev = [{"text": "neighbour", "label": "neutral", "score": 0.9}] if self.evidence else []
        return [Prediction.from_scores(self.table[t], ev) for t in texts]


def _scores(neg, neu, pos):
    return {"negative": neg, "neutral": neu, "positive": pos}


def test_hybrid_gate_consults_the_secondary_only_when_the_primary_is_unsure():
    primary = Fixed("ft", {"sure": _scores(0.9, 0.05, 0.05), "unsure": _scores(0.4, 0.35, 0.25)})
    calls: list[list[str]] = []

    class Spy(Fixed):
        def predict(self, texts):
            calls.append(list(texts))
            return super().predict(texts)

    secondary = Spy("rag", {"sure": _scores(0, 0, 1), "unsure": _scores(0, 0, 1)}, evidence=True)
    hybrid = HybridClassifier(primary, secondary, mode="gate", threshold=0.6)
    sure, unsure = hybrid.predict(["sure", "unsure"])
    assert sure.label == "negative" and unsure.label == "positive" and unsure.evidence
    assert calls == [["unsure"]]


def test_hybrid_mix_and_its_checks():
    a = Prediction.from_scores(_scores(0.6, 0.3, 0.1))
    b = Prediction.from_scores(_scores(0.0, 0.2, 0.8))
    mixed = combine(a, b, 0.5, LABELS)
    assert mixed.scores == pytest.approx(_scores(0.3, 0.25, 0.45)) and mixed.label == "positive"
    other = Fixed("other", {})
    other.labels = ["spam", "ham"]
    with pytest.raises(ValueError, match="different labels"):
        HybridClassifier(Fixed("ft", {}), other)
    with pytest.raises(ValueError, match="mode must be"):
        HybridClassifier(Fixed("ft", {}), Fixed("rag", {}), mode="vote")


def test_fit_hybrid_picks_the_gate_that_fixes_the_primary_when_unsure():
    # the primary is right when sure (>= 0.7) and wrong when unsure; the secondary is always right
    table_p, table_s, refs = {}, {}, []
    for i in range(40):
        text = f"t{i}"
        truth = LABELS[i % 3]
        wrong = LABELS[(i + 1) % 3]
        sure = i % 2 == 0
        top = truth if sure else wrong
        high, low = (0.8, 0.1) if sure else (0.5, 0.25)
        table_p[text] = {label: high if label == top else low for label in LABELS}
        table_s[text] = {label: 0.6 if label == truth else 0.2 for label in LABELS}
        refs.append(truth)
    hybrid = fit_hybrid(Fixed("ft", table_p), Fixed("rag", table_s), list(table_p), refs)
    fit = hybrid.meta["fit"]
    assert fit["primary_accuracy"] == 0.5 and fit["secondary_accuracy"] == 1.0
    assert fit["chosen"]["accuracy"] == 1.0
    assert [p.label for p in hybrid.predict(list(table_p))] == refs


# --- evaluation and reports on two tiny real backends -------------------------------------------------------------


@pytest.fixture(scope="module")
def report(rag_built, finetuned, small_test):
    return evaluate(
        {"finetune": finetuned, "rag": rag_built},
        small_test.select(range(60)),
        data_source="test slice",
        split="test",
        latency_queries=8,
        batch_size=16,
        batch_rounds=1,
    )


def test_evaluation_reports_every_backend_the_same_way(report, small_test):
    assert set(report["backends"]) == {"finetune", "rag"}
    for b in report["backends"].values():
        assert 0 <= b["accuracy"] <= 1 and 0 <= b["macro_f1"] <= 1
        assert np.array(b["confusion_matrix"]).sum() == 60
        assert set(b["latency_ms"]) == {"p50", "p95", "p99", "mean"} and len(b["latency_samples_ms"]) == 8
        assert b["samples_per_second"] > 0 and b["cost"]["per_million_queries_usd"] > 0
        assert 0 <= b["calibration"]["ece"] <= 1
        assert b["memory_mb"] > 0
    assert report["backends"]["finetune"]["one_off_kind"] == "train"
    assert report["backends"]["rag"]["one_off_kind"] == "build"
    assert "finetune vs rag" in report["agreement"]
    assert report["disagreement_count"] == round(60 * (1 - report["agreement"]["finetune vs rag"]))
    for d in report["disagreements"]:
        assert d["predictions"]["finetune"] != d["predictions"]["rag"]


def test_evaluation_rejects_bad_input(rag_built, finetuned, small_test):
    other = Fixed("other", {})
    other.labels = ["spam", "ham"]
    with pytest.raises(ValueError, match="different label sets"):
        evaluate({"rag": rag_built, "other": other}, small_test)
    with pytest.raises(ValueError, match="empty"):
        evaluate({"rag": rag_built}, small_test.select([]))
    with pytest.raises(ValueError, match="no backends"):
        evaluate({}, small_test)
    with pytest.raises(ValueError, match="hourly_price"):
        evaluate({"rag": rag_built}, small_test, hourly_price=0)


def test_old_or_foreign_reports_are_refused(report):
    with pytest.raises(ValueError, match="format 0 is not supported|format 0"):
        check_report({**report, "format_version": 0})
    with pytest.raises(ValueError, match="not a comparison report"):
        check_report({"hello": 1})


def test_markdown_report_escapes_tweets_and_plots_are_pngs(report, tmp_path):
    hostile = {**report, "disagreements": [{"text": "<script>alert(1)</script> [x](http://e.vil) | =cmd",
                                             "reference": "neutral",
                                             "predictions": {"finetune": "negative", "rag": "positive"}}]}  # fmt: skip
    text = render_markdown(hostile)
    assert "<script>" not in text and "\\<script\\>" in text and "[x](" not in text
    accuracy = f"{report['backends']['finetune']['accuracy']:.4f}"
    assert f"| finetune | {accuracy}" in text  # the headline row, with the measured accuracy
    assert "\\<script\\>alert\\(1\\)\\</script\\>" in text  # the hostile tweet is in the disagreements, escaped
    paths = plot(report, tmp_path)
    assert [p.name for p in paths] == [
        "confusion_matrices.png",
        "latency.png",
        "reliability.png",
        "accuracy.png",
        "training_finetune.png",
    ]  # the fine-tune's training curve comes last
    training = report["backends"]["finetune"]["training"]
    assert training["history"] and "train_history" in training and "training curve: kept step" in text
    for p in paths:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert escape_markdown("a\nb  c") == "a b c"


def test_plots_read_on_light_and_dark_pages(report, tmp_path):
    """No white block on a dark page: the background is transparent, and the text is a grey that reads on both."""
    import matplotlib.image as mpimg
    import numpy as np

    from compare.crossover import plot_curve

    curve = {"sizes": [100, 300], "test_size": 50, "seeds": [0, 1],
             "backends": {"finetune": {"mean": [0.5, 0.7], "std": [0.02, 0.01]},
                          "rag": {"mean": [0.6, 0.65], "std": [0.01, 0.01]}}}  # fmt: skip
    for path in [*plot(report, tmp_path), plot_curve(curve, tmp_path / "curve.png")]:
        pixels = mpimg.imread(path)
        assert pixels.shape[2] == 4, path.name  # RGBA
        alpha = pixels[..., 3]
        assert alpha[0, 0] == 0 and (alpha == 0).mean() > 0.3, path.name  # the page shows through around the axes
        opaque = pixels[alpha > 0.9][:, :3]
        assert not np.all(opaque.min(axis=1) > 0.95), path.name  # something is drawn
        darkest = opaque.min(axis=1)
        assert not np.any(darkest < 0.05) or "confusion" in path.name, path.name  # no black ink (dark-page blind)


@pytest.mark.parametrize(("n_labels", "shown", "texts_per_matrix"), [(10, 10, 100), (50, 30, 0), (500, 30, 0)])
def test_confusion_matrices_cost_no_more_than_30_labels_whatever_the_count(n_labels, shown, texts_per_matrix,
                                                                            tmp_path, monkeypatch):  # fmt: skip
    """Counts are written in each cell of up to 15 labels; beyond 30 only the most frequent are drawn. A text object
    per cell once made 500 labels x 3 backends climb to 9 GB."""
    import compare.report as report_module

    rng = np.random.default_rng(0)
    labels = [f"label {i}" for i in range(n_labels)]
    matrices = {f"backend{b}": rng.integers(0, 9, size=(n_labels, n_labels)) for b in range(3)}
    matrices["backend0"][n_labels - 1] += 100  # the most frequent reference label is the last one
    report = {"labels": labels, "backends": {n: {"confusion_matrix": m.tolist(), "accuracy": 0.5}
                                             for n, m in matrices.items()}}  # fmt: skip
    drawn = {}
    save = report_module.save_figure

    def counted(fig, path):
        drawn[path.name] = [(len(ax.texts), [t.get_text() for t in ax.get_yticklabels()], ax.get_title())
                            for ax in fig.axes]  # fmt: skip
        return save(fig, path)

    monkeypatch.setattr(report_module, "save_figure", counted)
    started = time.perf_counter()
    plot(report, tmp_path)
    assert time.perf_counter() - started < 60
    matrices_drawn = drawn["confusion_matrices.png"]
    assert len(matrices_drawn) == 3
    for texts, ticks, title in matrices_drawn:
        assert texts == texts_per_matrix and len(ticks) == shown
        assert (f"the 30 most frequent of {n_labels} labels" in title) == (shown < n_labels)
        assert f"label {n_labels - 1}" in ticks


# --- the CLIs end to end ---------------------------------------------------------------------------------------------


def test_compare_run_cli_writes_the_report_with_a_hybrid(shared_dir, data_dir, rag_dir, tmp_path, capsys):
    from finetune.train import main as train_main

    model = tmp_path / "ft"
    tiny = str(shared_dir / "models" / "tiny-random-gpt2")
    assert train_main(["--base-model", tiny, "--data", str(data_dir), "--train-size", "100", "--eval-size", "40",
                       "--epochs", "1", "--out", str(model)]) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "report"
    code = run_main(["--finetune", str(model), "--rag", str(rag_dir), "--data", str(data_dir), "--limit", "60",
                     "--latency-queries", "5", "--update-examples", "20", "--precision", "int8",
                     "--out", str(out)])  # fmt: skip
    assert code == 0
    names = {p.name for p in out.iterdir()}
    assert {"report.json", "report.md", "confusion_matrices.png", "latency.png", "reliability.png"} <= names
    report = json.loads((out / "report.json").read_text())
    assert set(report["backends"]) == {"finetune", "rag", "hybrid"}
    assert {b["serving"]["precision"] for b in report["backends"].values()} == {"int8"}  # measured as it is served
    assert all(len(b["accuracy_ci95"]) == len(b["macro_f1_ci95"]) == 2 for b in report["backends"].values())
    assert [(p["a"], p["b"]) for p in report["pairwise"]] == [("finetune", "rag"), ("finetune", "hybrid"),
                                                              ("rag", "hybrid")]  # fmt: skip
    assert report["backends"]["hybrid"]["fit"]["validation_size"] == 40
    assert report["knowledge_update"]["rag"]["measured"] and report["knowledge_update"]["new_examples"] == 20
    assert report["knowledge_update"]["finetune"]["measured"] is False
    assert json.loads(capsys.readouterr().out)["n"] == 60
    markdown = (out / "report.md").read_text()
    assert "| finetune |" in markdown and "## Paired comparisons" in markdown


def test_a_run_with_several_precisions_measures_each_backend_in_each_side_by_side(data_dir, rag_dir, tmp_path):
    """``--precision fp32,int8``: the first precision keeps the backends' names, the second adds ``<name>@int8``
    contenders measured in int8, each with the share of texts labelled as its fp32 self labels them."""
    out = tmp_path / "report"
    code = run_main(["--rag", str(rag_dir), "--data", str(data_dir), "--limit", "40", "--latency-queries", "3",
                     "--update-examples", "0", "--precision", "fp32,int8", "--out", str(out)])  # fmt: skip
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    backends = report["backends"]
    assert set(backends) == {"rag", "rag@int8"}
    assert backends["rag"]["serving"]["precision"] == "fp32" and backends["rag@int8"]["serving"]["precision"] == "int8"
    same = backends["rag@int8"]["same_label_as"]
    fp32 = [d["predictions"] for d in report["disagreements"]]  # every text the two label differently
    assert same["backend"] == "rag" and same["share"] == pytest.approx(1 - report["disagreement_count"] / 40)
    assert all(p["rag"] != p["rag@int8"] for p in fp32)
    assert "same_label_as" not in backends["rag"]
    markdown = (out / "report.md").read_text()
    assert "same label as" in markdown and f"{100 * same['share']:.1f}% of rag's" in markdown


def test_precision_lists_are_checked(rag_dir, tmp_path, capsys):
    for bad, message in (("fp32,auto", "--precision auto is chosen"), ("int8,int8", "names a precision twice"),
                         ("fp32,fp64", "must be fp32, bf16, int8 or auto")):  # fmt: skip
        with pytest.raises(SystemExit) as exited:
            run_main(["--rag", str(rag_dir), "--precision", bad, "--out", str(tmp_path / "r")])
        assert exited.value.code == 2 and message in capsys.readouterr().err


def test_compare_run_cli_bad_input(rag_dir, data_dir, tmp_path, capsys):
    assert run_main(["--rag", str(rag_dir), "--data", str(data_dir), "--limit", "99999", "--out", str(tmp_path)]) == 2
    assert "asked for 99999 rows" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        run_main(["--rag", str(rag_dir), "--precision", "auto", "--out", str(tmp_path / "a")])
    assert exited.value.code == 2 and "--precision auto is chosen where the app serves" in capsys.readouterr().err
    assert run_main(["--rag", str(tmp_path / "none"), "--data", str(data_dir), "--out", str(tmp_path / "r")]) == 2
    assert "no such index directory" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        run_main(["--data", str(data_dir)])  # no backend at all


def test_parse_sizes():
    assert parse_sizes("1000, 100,all") == [100, 1000, None]
    with pytest.raises(ValueError, match="at least 10"):
        parse_sizes("5")
    with pytest.raises(ValueError, match="larger than"):
        parse_sizes("500", available=300)
    with pytest.raises(ValueError, match="integers or 'all'"):
        parse_sizes("ten")


def test_report_files_are_json(report, tmp_path):
    from compare.report import write_report

    write_report(report, tmp_path / "r")
    assert json.loads((tmp_path / "r" / "report.json").read_text())["format_version"] == 1
    assert Path(tmp_path / "r" / "report.md").read_text().startswith("# Fine-tune vs RAG")


# --- any label set ---------------------------------------------------------------------------------------------------


def test_emotion_backends_are_compared_and_decided_with_their_own_labels(
    emotion_ft_dir, emotion_rag, emotion_dir, emotion_labels, tmp_path, capsys
):
    rag_dir = emotion_rag.save(tmp_path / "rag")
    out = tmp_path / "report"
    backends = ["--finetune", str(emotion_ft_dir), "--rag", str(rag_dir), "--data", str(emotion_dir)]
    sizes = ["--limit", "60", "--latency-queries", "3", "--update-examples", "10"]
    assert run_main([*backends, *sizes, "--out", str(out)]) == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["labels"] == emotion_labels
    assert set(report["backends"]) == {"finetune", "rag", "hybrid"}  # the hybrid fitted on the emotion eval slice
    assert report["backends"]["hybrid"]["fit"]["validation_size"] == 40
    for b in report["backends"].values():
        assert np.array(b["confusion_matrix"]).shape == (4, 4) and np.array(b["confusion_matrix"]).sum() == 60
        assert list(b["per_class"]) == emotion_labels
    assert report["knowledge_update"]["rag"]["measured"]
    assert "labels: anger, joy, optimism, sadness." in (out / "report.md").read_text()
    rec = decide(report, Constraints(updates="daily"))
    assert rec.choice in {"finetune", "rag", "hybrid"} and rec.reasons
    capsys.readouterr()
    assert decide_main(["--report", str(out / "report.json"), "--need-evidence"]) == 0
    assert json.loads(capsys.readouterr().out)["choice"] in {"rag", "hybrid"}


def test_artifacts_of_two_label_sets_are_refused(
    ft_dir, finetuned, emotion_rag, emotion_dir, emotion_test, tmp_path, capsys
):
    rag_dir = emotion_rag.save(tmp_path / "rag")
    mixed = ["--finetune", str(ft_dir), "--rag", str(rag_dir), "--data", str(emotion_dir)]
    assert run_main([*mixed, "--out", str(tmp_path / "mixed")]) == 2
    err = capsys.readouterr().err
    assert "backends have different label sets" in err and "'anger', 'joy'" in err and "'negative', 'neutral'" in err
    assert not (tmp_path / "mixed").exists()
    with pytest.raises(ValueError, match="different label sets"):
        evaluate({"finetune": finetuned, "rag": emotion_rag}, emotion_test)
    with pytest.raises(ValueError, match="cannot combine backends with different labels"):
        HybridClassifier(finetuned, emotion_rag)


def test_a_model_is_never_scored_against_data_of_other_labels(ft_dir, emotion_dir, emotion_rag, tmp_path, capsys):
    assert run_main(["--finetune", str(ft_dir), "--data", str(emotion_dir), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "label sets differ: finetune has ['negative', 'neutral', 'positive'], the data" in err
    assert "['anger', 'joy', 'optimism', 'sadness']" in err
    subset = tmp_path / "subset.csv"
    subset.write_text("text,label\nso angry,anger\nyay,joy\n")  # string labels: the set is these two
    rag_dir = emotion_rag.save(tmp_path / "rag")
    argv = ["--rag", str(rag_dir), "--data", str(subset), "--split", "train", "--update-examples", "0"]
    argv += ["--latency-queries", "1", "--out", str(tmp_path / "s")]
    assert run_main(argv) == 2
    assert "label sets differ" in capsys.readouterr().err
    assert run_main([*argv, "--labels", "anger,joy,optimism,sadness"]) == 0  # declared: two of the four is a slice


def test_the_hybrid_slice_is_read_with_the_fine_tunes_own_label_names(shared_dir, tmp_path):
    from types import SimpleNamespace

    from core.data import load_tweets
    from core.split import Split
    from hybrid import hybrid_validation

    config = {"data": str(shared_dir / "data" / "tweeteval_irony"), "labels": ["plain", "ironic"], "seed": 0}
    train = load_tweets(config["data"], split="train", labels=config["labels"])
    Split.of(train, 20, 60, seed=0).save(tmp_path)
    texts, labels = hybrid_validation(SimpleNamespace(meta={"config": config}, directory=tmp_path), None)
    assert len(texts) == 20 and set(labels) == {"plain", "ironic"}


def test_hybrid_refuses_a_validation_slice_of_other_labels():
    with pytest.raises(ValueError, match=r"labels \['joy'\] that ft does not know"):
        fit_hybrid(Fixed("ft", {"a": _scores(1, 0, 0)}), Fixed("rag", {"a": _scores(1, 0, 0)}), ["a"], ["joy"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--rag", "x", "--limit", "0"], "--limit must be a positive integer"),
        (["--limit", "5"], "give at least one backend"),
        (["--finetune", "m", "--rag-llm"], "give --rag DIR too"),
    ],
)
def test_compare_run_refuses_bad_flags_before_any_work(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_main(argv)
    assert exit_.value.code == 2 and message in capsys.readouterr().err
