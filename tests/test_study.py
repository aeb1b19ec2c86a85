"""jobs/study.py: the whole decision in one command, end to end on small slices of both TweetEval sets."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import time
from pathlib import Path

import pytest

from compare.decide import CHOICES
from core.settings import packaged_embedder_path
from finetune.config import FinetuneConfig
from finetune.protocol import MIN_STEPS, apply_protocol
from jobs.study import (
    STAGES,
    OverBudget,
    Study,
    StudyConfig,
    StudyError,
    curve_sizes,
    deadline_callback,
    deadline_progress,
    main,
    plan_budget,
    plan_finetune,
    split_data,
)

RATES = {
    "embed_s_per_text": 0.005,
    "embed_single_s": 0.01,
    "load_s": 1.0,
    "train_s_per_text": 0.05,
    "infer_s_per_text": 0.005,
    "ft_single_s": 0.01,
}
IRONY_LABELS = ["non_irony", "irony"]
PLANNED_STAGES = ("index", "finetune", "tune", "evaluate", "curve", "decide")


def run_study(argv: list[str]) -> tuple[int, str]:
    """`jobs.study.main(argv)` and what it printed to stdout."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(argv)
    return code, out.getvalue()


def study_args(shared_dir: Path, data: str, out: Path, *extra: str) -> list[str]:
    tiny = str(shared_dir / "models" / "tiny-random-gpt2")
    return ["--data", data, "--out", str(out), "--base-model", tiny, "--embedder", packaged_embedder_path(),
            "--latency-queries", "10", "--epochs", "2", "--min-steps", "20", *extra]  # fmt: skip


@pytest.fixture(scope="module")
def emotion_study(shared_dir, tmp_path_factory):
    """The study on 120 train / 40 test emotion tweets (4 labels) with the hybrid; no tuned embedder, no curve."""
    out = tmp_path_factory.mktemp("study") / "emotion"
    argv = study_args(shared_dir, str(shared_dir / "data" / "tweeteval_emotion"), out, "--train-size", "120",
                      "--test-limit", "40", "--budget-minutes", "5", "--no-tune-embedder", "--no-curve")  # fmt: skip
    code, printed = run_study(argv)
    assert code == 0, printed
    return out, argv, printed


@pytest.fixture(scope="module")
def irony_study(shared_dir, tmp_path_factory):
    """The study on 100 train / 40 test irony tweets (2 labels) with an embedder tuned for 2 steps; no hybrid, no
    curve."""
    out = tmp_path_factory.mktemp("study") / "irony"
    argv = study_args(shared_dir, str(shared_dir / "data" / "tweeteval_irony"), out, "--train-size", "100",
                      "--test-limit", "40", "--budget-minutes", "5", "--tune-steps", "2", "--no-curve",
                      "--no-hybrid")  # fmt: skip
    code, printed = run_study(argv)
    assert code == 0, printed
    return out, argv, printed


def read(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def check_outputs(out: Path, labels: list[str], backends: set[str], n_train: int, n_test: int) -> dict:
    """Every output is there and says what was measured on; returns study.json."""
    for name in ("report.json", "report.md", "disagreements.csv", "accuracy.png", "decision.json", "study.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    report, decision, study = read(out / "report.json"), read(out / "decision.json"), read(out / "study.json")
    assert report["labels"] == labels and set(report["backends"]) == backends
    assert report["dataset"]["n"] == n_test and report["dataset"]["split"] == "the data's own test split"
    for backend in report["backends"].values():
        low, high = backend["accuracy_ci95"]
        assert low <= backend["accuracy"] <= high
    assert {(p["a"], p["b"]) for p in report["pairwise"]}  # McNemar between every pair
    assert decision["choice"] in CHOICES.values() or decision["caveats"]
    assert decision["reasons"] or decision["caveats"]
    measured = decision["measured_on"]
    assert measured["labels"] == labels
    assert (measured["train_examples"], measured["test_examples"]) == (n_train, n_test)
    assert measured["budget"]["minutes"] == study["budget_minutes"]
    assert set(study["stages"]) == set(STAGES)
    for name, stage in study["stages"].items():
        assert stage["actual_minutes"] is not None and stage["actual_minutes"] >= 0, name
    for name in PLANNED_STAGES:
        assert study["stages"][name]["planned_minutes"] is not None, name
    assert 0 < study["minutes"]["actual"] <= study["budget_minutes"]
    assert study["minutes"]["planned"] <= study["budget_minutes"]
    return study


def test_emotion_study_end_to_end(emotion_study, emotion_labels):
    out, _, printed = emotion_study
    study = check_outputs(out, emotion_labels, {"finetune", "rag", "hybrid"}, 120, 40)
    assert study["stages"]["tune"]["status"] == "skipped" and "--no-tune-embedder" in study["stages"]["tune"]["reason"]
    assert read(out / "split" / "split.json")["leaks"]["test_rows"] == 40
    assert read(out / "finetune" / "run.json")["labels"] == emotion_labels
    assert "[plan] minutes per stage" in printed and "planned" in printed and "decision:" in printed


def test_irony_study_end_to_end(irony_study):
    out, _, _ = irony_study
    study = check_outputs(out, IRONY_LABELS, {"finetune", "rag", "rag-tuned"}, 100, 40)
    assert study["stages"]["curve"]["status"] == "skipped" and "--no-curve" in study["stages"]["curve"]["reason"]
    assert not (out / "curve.json").exists()
    assert read(out / "finetune" / "run.json")["labels"] == IRONY_LABELS
    assert read(out / "embedder-tuned" / "run.json")["steps"] == 2 and study["tune"]["steps"] == 2
    assert read(out / "report.json")["backends"]["rag-tuned"]["accuracy_ci95"]


def test_the_curve_is_skipped_with_a_reason_when_no_time_is_left(emotion_study):
    out, _, _ = emotion_study
    study = Study(StudyConfig(out=str(out), curve=True, budget_minutes=5), say=lambda message: None)
    study.state = read(out / "study.json")
    study.state["resume"] = {"seconds_before_this_run": 5 * 60.0}
    assert re.search(r"needs about [\d.]+ min: a budget of about \d+ min would give one", study.do_curve())
    assert not (out / "curve.json").exists()


def test_the_curve_scores_the_studys_own_fine_tune_at_the_full_size(emotion_study, tmp_path, monkeypatch):
    """The study's fine-tune is the curve's point at all the training rows (the same protocol): scored, not trained
    again, so a small budget has time for a curve; only the smaller sizes train their own."""
    import shutil

    import jobs.curve
    from jobs.study import parse_args

    out, argv, _ = emotion_study
    copy = tmp_path / "study"
    shutil.copytree(out, copy)
    cfg = dataclasses.replace(parse_args([str(copy) if a == str(out) else a for a in argv]), curve=True)
    study = Study(cfg, say=lambda message: None)
    study.state = read(copy / "study.json")
    study.state["resume"] = {"seconds_before_this_run": 0.0}
    trained, real = [], jobs.curve.run_finetune
    monkeypatch.setattr(jobs.curve, "run_finetune", lambda c, sample, *a: trained.append(sample.num_rows)
                        or real(c, sample, *a))  # fmt: skip
    assert study.do_curve() is None
    curve = read(copy / "curve.json")
    assert curve["sizes"][-1] == 120 and len(curve["sizes"]) >= 2
    assert "not trained again" in curve["rows"][-1]["finetune"]["reused"]
    assert trained == curve["sizes"][:-1]  # the smaller sizes train their own fine-tune


@pytest.mark.slow
def test_emotion_study_with_a_learning_curve(shared_dir, emotion_labels, tmp_path):
    out = tmp_path / "study"
    argv = study_args(shared_dir, str(shared_dir / "data" / "tweeteval_emotion"), out, "--train-size", "150",
                      "--test-limit", "60", "--budget-minutes", "6", "--no-tune-embedder")  # fmt: skip
    assert run_study(argv)[0] == 0
    study = check_outputs(out, emotion_labels, {"finetune", "rag", "hybrid"}, 150, 60)
    curve = read(out / "curve.json")
    assert curve["labels"] == emotion_labels and len(curve["sizes"]) >= 2 and (out / "curve.png").is_file()
    assert study["stages"]["curve"]["status"] == "done"
    assert read(out / "decision.json")["measured_on"]["learning_curve"] == curve["sizes"]


def test_a_rerun_skips_finished_stages_and_an_interrupted_one_resumes(emotion_study):
    out, argv, _ = emotion_study
    weights = out / "finetune" / "model.safetensors"
    index = out / "rag" / "index.faiss"
    before = {p: p.stat().st_mtime_ns for p in (weights, index, out / "report.json")}
    code, printed = run_study(argv)
    assert code == 0 and printed.count("done in an earlier run") == len(STAGES)
    assert {p: p.stat().st_mtime_ns for p in before} == before
    # Interrupted before the decision: only the decision is made again.
    study = read(out / "study.json")
    del study["stages"]["decide"]
    (out / "study.json").write_text(json.dumps(study), encoding="utf-8")
    (out / "decision.json").unlink()
    code, printed = run_study(argv)
    assert code == 0 and printed.count("done in an earlier run") == len(STAGES) - 1
    assert "[decide] done" in printed and (out / "decision.json").is_file()
    assert {p: p.stat().st_mtime_ns for p in before} == before


def test_a_study_with_other_settings_is_not_resumed(emotion_study, capsys):
    _, argv, _ = emotion_study
    assert main([*argv, "--seed", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error:") and "other settings (seed)" in err


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0] == err.strip().splitlines()[-1], err
    return lines[0]


def write_csv(path: Path, rows: list[tuple[str, str]]) -> str:
    path.write_text("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows), encoding="utf-8")
    return str(path)


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown data", "does not exist"),
        ("one label", "label"),
        ("too few examples", "too few examples"),
        ("a label too rare", "1 of the 3 labels have fewer than 5 examples: 'rare' (1)"),
        ("unwritable out", "cannot write"),
        ("budget zero", "budget_minutes must be a positive number"),
        ("budget negative", "budget_minutes must be a positive number"),
        ("budget infinite", "budget_minutes must be a positive number of minutes, got inf"),
        ("unknown flag", "unrecognized arguments"),
    ],
)
def test_bad_input_exits_2_with_one_line(case, message, shared_dir, tmp_path, capsys):
    data, out, budget = str(shared_dir / "data" / "tweeteval_irony"), tmp_path / "out", "1"
    extra: list[str] = []
    if case == "unknown data":
        data = str(tmp_path / "no-such-data")
    elif case == "one label":
        data = write_csv(tmp_path / "one.csv", [(f"tweet number {i}", "joy") for i in range(80)])
    elif case == "too few examples":
        data = write_csv(tmp_path / "few.csv", [(f"tweet number {i}", "ab"[i % 2]) for i in range(30)])
    elif case == "a label too rare":  # it fails at once, not after the plan and the index
        rows = [(f"tweet number {i}", "ab"[i % 2]) for i in range(100)] + [("the only one", "rare")]
        data = write_csv(tmp_path / "rare.csv", rows)
    elif case == "unwritable out":
        (tmp_path / "a-file").write_text("x")
        out = tmp_path / "a-file" / "out"
    elif case.startswith("budget"):
        budget = {"budget zero": "0", "budget negative": "-1", "budget infinite": "inf"}[case]
    else:
        extra = ["--no-such-flag"]
    code = main(["--data", data, "--out", str(out), "--budget-minutes", budget, *extra])
    assert code == 2
    assert message in one_error_line(capsys)


def test_bad_flag_values_exit_2_with_one_line(capsys):
    assert main(["--budget-minutes", "soon"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error:") and "budget-minutes" in err


def test_a_budget_too_small_for_the_data_is_refused_by_the_plan():
    with pytest.raises(StudyError, match="too small for this data"):
        plan_budget(RATES, 10.0, 500, 200, StudyConfig(budget_minutes=0.2))


def test_data_without_a_test_split_gets_a_stratified_held_out_one_without_shared_texts(tmp_path):
    rows = [(f"tweet {i % 150}", "ab"[i % 150 % 3 == 0]) for i in range(300)]  # every text twice
    cfg = StudyConfig(data=write_csv(tmp_path / "d.csv", rows), out=str(tmp_path / "o"), test_size=0.2, seed=3)
    train, test, info = split_data(cfg)
    assert "held out" in info["test_from"] and info["available"]["train"] == 240
    assert not set(train["text"]) & set(test["text"])
    assert test.num_rows == 60 - info["shared_texts_dropped_from_test"] and test.num_rows > 0
    share = sum(label == "b" for label in train["label"]) / train.num_rows
    assert abs(share - 1 / 3) < 0.02


def test_the_plan_gives_the_fine_tune_its_protocol_or_says_what_budget_would():
    cfg = FinetuneConfig(epochs=3.0)
    full = plan_finetune(RATES, 1e6, 500, cfg)  # 400 to fit: 25 steps an epoch, raised to the protocol's 200
    assert (full["steps"], full["capped"], full["skipped"], full["eval_size"]) == (MIN_STEPS, None, None, 100)
    assert "raised from 3 to 8" in full["protocol"]
    wanted = plan_finetune(RATES, 1e6, 5000, cfg)  # 4,000 to fit: 250 steps an epoch, 750 wanted
    capped = plan_finetune(RATES, wanted["seconds"] * 0.6, 5000, cfg)
    assert MIN_STEPS < capped["steps"] < 750 and "optimizer steps wanted" in capped["capped"]
    assert capped["seconds"] <= wanted["seconds"] * 0.6
    _, trained = apply_protocol(dataclasses.replace(cfg, epochs=capped["epochs"]), 4000)
    assert abs(trained["steps"] - capped["steps"]) <= 1  # what `train` then runs is what was planned
    # Never a token model: fewer than the protocol's steps is no fine-tune, and the plan says what would fit one.
    short = plan_finetune(RATES, 0.5 * full["seconds"], 500, cfg)
    assert short["skipped"] and short["seconds"] == 0 and short["steps"] == 0
    assert f"its training protocol ({MIN_STEPS} optimizer steps) needs about 2.8 min" in short["skipped"]
    planned = plan_budget(RATES, 120.0, 500, 200, StudyConfig(budget_minutes=2, curve=False))
    assert planned["finetune"]["skipped"].endswith("a budget of about 4 min would fit it")


def test_plan_budget_fits_the_budget_and_leaves_the_rest_to_the_curve():
    cfg = StudyConfig(budget_minutes=15, curve=True)
    plan = plan_budget(RATES, 900.0, 500, 200, cfg)
    assert sum(plan["seconds"].values()) == pytest.approx(900.0, abs=0.01)
    assert plan["tune"]["steps"] >= 200 and plan["seconds"]["tune"] > 0  # the tuned embedder's own fewest steps
    assert plan["seconds"]["curve"] > 0 and set(plan["seconds"]) == set(PLANNED_STAGES)
    no_curve = plan_budget(RATES, 900.0, 500, 200, StudyConfig(budget_minutes=15, curve=False))
    assert no_curve["seconds"]["curve"] == 0 and sum(no_curve["seconds"].values()) <= 900.0
    short = plan_budget(RATES, 300.0, 500, 200, StudyConfig(budget_minutes=5))  # the fine-tune's protocol first
    assert short["finetune"]["steps"] == MIN_STEPS and short["tune"]["skipped"].startswith("the budget leaves")
    no_tuning = plan_budget(RATES, 900.0, 500, 200, StudyConfig(budget_minutes=15, tune_embedder=False))
    assert no_tuning["seconds"]["tune"] == 0 and no_tuning["tune"]["skipped"]
    assert no_tuning["finetune"]["seconds"] >= plan["finetune"]["seconds"]


def test_curve_sizes_fit_the_time_left():
    assert curve_sizes(1000, 1e9, lambda n: 1.0) == [37, 111, 333, 1000]
    assert curve_sizes(1000, 2.5, lambda n: 1.0) == [37, 111]
    assert curve_sizes(1000, 1.5, lambda n: 1.0) == []


def test_the_fine_tune_stops_at_its_deadline():
    class Control:
        should_training_stop = False

    late, early, control = deadline_callback(0.0), deadline_callback(float("inf")), Control()
    early.on_step_end(None, None, control)
    assert not control.should_training_stop and not early.fired
    late.on_step_end(None, None, control)
    assert control.should_training_stop and late.fired


def test_a_fine_tune_faster_than_planned_leaves_its_time_to_the_tuned_embedder(tmp_path, monkeypatch):
    cfg = StudyConfig(budget_minutes=700 / 60, curve=True, out=str(tmp_path / "study"))
    study = Study(cfg, say=lambda message: None)
    (tmp_path / "study").mkdir()
    plan = plan_budget(dict(RATES), 700.0, 500, 200, cfg)
    assert plan["tune"]["capped"]
    study.state = {"plan": plan, "stages": {}}
    monkeypatch.setattr(Study, "split", property(lambda self: (type("T", (), {"num_rows": 500})(), None, None)))
    # The fine-tune measured a rate five times the probe's, and finished early: the time it saved is left.
    study.remeasure({"epochs_run": 3, "train_size": 400, "train_seconds": 3 * 400 * RATES["train_s_per_text"] / 5})
    assert plan["rates"]["train_s_per_text"] == pytest.approx(RATES["train_s_per_text"] / 5)
    assert plan["rates"]["probed_train_s_per_text"] == RATES["train_s_per_text"]
    planned = dict(plan["tune"])
    saved = plan["seconds"]["finetune"] * 0.8
    monkeypatch.setattr(
        Study, "seconds_left", lambda self: 700.0 - plan["seconds"]["index"] - plan["seconds"]["finetune"] + saved
    )
    replanned = study.replan_tuning()
    assert replanned["steps"] > planned["steps"] and replanned["replanned_from"]["steps"] == planned["steps"]
    assert plan["seconds"]["tune"] == replanned["seconds"] and plan["tune"] is replanned
    later = sum(plan["seconds"][k] for k in ("evaluate", "decide", "curve"))
    assert replanned["seconds"] <= study.seconds_left() - later  # the later stages keep their planned time
    # On schedule (give or take a second), nothing changes.
    monkeypatch.setattr(Study, "seconds_left", lambda self: later + replanned["seconds"] - 1.0)
    assert study.replan_tuning() is replanned
    assert json.loads((tmp_path / "study" / "study.json").read_text())["plan"]["tune"]["steps"] == replanned["steps"]


def test_a_tuning_skipped_for_time_is_built_when_the_fine_tune_leaves_enough(tmp_path, monkeypatch):
    cfg = StudyConfig(budget_minutes=5, curve=True, out=str(tmp_path / "study"))
    study = Study(cfg, say=lambda message: None)
    (tmp_path / "study").mkdir()
    plan = plan_budget(dict(RATES), 300.0, 500, 200, cfg)
    assert plan["tune"]["skipped"] and plan["tune"]["needs_seconds"] and plan["seconds"]["curve"] > 0
    study.state = {"plan": plan, "stages": {}}
    monkeypatch.setattr(Study, "split", property(lambda self: (type("T", (), {"num_rows": 500})(), None, None)))
    # The fine-tune finished early: what is left fits the tuning's fewest steps once the curve yields its time.
    room = plan["tune"]["needs_seconds"] + plan["seconds"]["evaluate"] + plan["seconds"]["decide"] + 1.0
    monkeypatch.setattr(Study, "seconds_left", lambda self: room)
    built = study.replan_tuning()
    assert not built["skipped"] and built["steps"] >= 200 and built["replanned_from"]["skipped"]
    # Turned off is never turned back on.
    study.state["plan"]["tune"] = off = {"steps": 0, "seconds": 0.0, "capped": None, "skipped": "turned off"}
    assert study.replan_tuning() is off


def test_deadline_progress_stops_a_stage_whose_first_part_says_it_would_overrun():
    on_time = deadline_progress(time.monotonic() + 60, "indexing")
    on_time(0.5, "half")  # half done at once: ends well within its minute
    late = deadline_progress(time.monotonic() + 0.3, "indexing")
    time.sleep(0.1)
    late(0.01, "too little done to say")  # below `least`: no estimate yet
    with pytest.raises(OverBudget, match=r"indexing would take about [\d.]+ min on this machine"):
        late(0.1, "a tenth")  # 0.1 s for a tenth: about 1 s for the whole, past the 0.3 s left
    passed = deadline_progress(time.monotonic() - 1, "indexing")
    with pytest.raises(OverBudget, match="passed its deadline"):
        passed(0.0, "starting")
    passed(1.0, "240/240 examples")  # finished, if late: kept (throwing it away gives no time back)
    nearly = deadline_progress(time.monotonic() + 1.0, "indexing")
    time.sleep(1.1)
    nearly(0.95, "embedding 1600/1600 examples")  # past it, but what is left is a sliver of its time: finished
    with pytest.raises(OverBudget, match="passed its deadline"):
        nearly(0.5, "embedding 800/1600 examples")  # half of it still to do: stopped


def test_an_index_slower_than_the_probe_said_stops_before_its_deadline(shared_dir, tmp_path, monkeypatch, capsys):
    """A slower (or busier) machine than the probe measured: the index stops once its first chunks say it would end
    after its deadline, and the study says why, instead of running past the budget."""
    import rag.embed

    out = tmp_path / "study"
    argv = study_args(shared_dir, str(shared_dir / "data" / "tweeteval_irony"), out, "--train-size", "100",
                      "--test-limit", "20", "--budget-minutes", "5", "--no-tune-embedder", "--no-curve")  # fmt: skip
    real_plan, real_encode = Study.do_plan, rag.embed.Embedder._encode
    chunks = []

    def slow_encode(embedder, texts, batch):
        chunks.append(len(texts))
        time.sleep(1.0)
        return real_encode(embedder, texts, batch)

    def plan_then_slow_down(self):
        real_plan(self)
        self.embedder.batch_size = 16
        monkeypatch.setattr(rag.embed, "PROGRESS_CHUNK", 16)  # 7 chunks of the 100 texts, 1 s each or more
        monkeypatch.setattr(rag.embed.Embedder, "_encode", slow_encode)
        monkeypatch.setattr(Study, "deadline_before", lambda self, *stages: time.monotonic() + 4.0)

    monkeypatch.setattr(Study, "do_plan", plan_then_slow_down)
    code, _ = run_study(argv)
    assert code == 2 and chunks == [16]  # stopped after its first chunk said it would overrun, not after seven
    assert "slower than the probe measured" in capsys.readouterr().err
    state = json.loads((out / "study.json").read_text())
    assert "index" not in state["stages"] and not (out / "rag").exists()


def test_the_evaluation_cuts_the_test_set_to_the_time_left_and_says_so(tmp_path, monkeypatch):
    from datasets import Dataset

    cfg = StudyConfig(budget_minutes=10, curve=False, tune_embedder=False, out=str(tmp_path / "study"))
    study = Study(cfg, say=lambda message: None)
    (tmp_path / "study").mkdir()
    plan = plan_budget(dict(RATES), 600.0, 500, 400, cfg)
    study.state = {"plan": plan, "stages": {}}
    test = Dataset.from_dict({"text": [f"t{i}" for i in range(400)], "label": ["a", "b"] * 200})
    monkeypatch.setattr(Study, "split", property(lambda self: (type("T", (), {"num_rows": 500})(), test, None)))
    monkeypatch.setattr(Study, "seconds_left", lambda self: plan["seconds"]["evaluate"] + plan["seconds"]["decide"])
    assert study.fit_test(test) == (test, None)  # on plan: the whole test set
    plan["rates"]["embed_s_per_text"] *= 4  # the index measured this machine four times slower than the probe
    cut, note = study.fit_test(test)
    assert 10 <= cut.num_rows < 400 and f"cut from 400 to {cut.num_rows} texts" in note
    assert abs(cut["label"].count("a") - cut["label"].count("b")) <= 1  # stratified
    from jobs.study import essential_seconds

    assert essential_seconds(plan["rates"], 500, cut.num_rows, cfg)["evaluate"] <= plan["seconds"]["evaluate"]
