"""finetune/: train -> save -> load -> predict on real tweets with tiny models, resume, distributed, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from datasets import Dataset

import finetune
from compare.metrics import accuracy
from core.data import DataError
from core.files import ArtifactError
from core.settings import packaged_embedder_path
from core.types import LABELS
from finetune.config import FinetuneConfig
from finetune.train import FinetuneError, main, train

REPO = Path(__file__).resolve().parents[1]
RUN_KEYS = {
    "base_model",
    "from_scratch",
    "data_source",
    "train_size",
    "eval_accuracy",
    "eval_macro_f1",
    "train_seconds",
    "train_samples_per_second",
}


def tiny_cfg(shared_dir: Path, out: Path, **overrides) -> FinetuneConfig:
    """The tiny random GPT-2 (2-wide, 1 layer) on a slice of real tweets: a full run takes a second or two.

    Trained exactly as configured (no protocol): these tests pin the Trainer's mechanics (epochs, checkpoints, early
    stopping); the protocol has tests of its own (test_protocol.py, and `ft_dir`, trained under it)."""
    settings = {
        "protocol": False,
        "base_model": str(shared_dir / "models" / "tiny-random-gpt2"),
        "eval_size": 60,
        "epochs": 1,
        "batch_size": 16,
        "out": str(out),
    }
    settings.update(overrides)
    return FinetuneConfig(**settings)


def scratch_cfg(shared_dir: Path, out: Path, **overrides) -> FinetuneConfig:
    """GPT-2 of the `tiny` preset from scratch, with the real GPT-2 tokenizer."""
    settings = {
        "protocol": False,  # these tests are about what a scratch model says of itself, not its training budget
        "from_scratch": True,
        "scratch_size": "tiny",
        "tokenizer": str(shared_dir / "models" / "gpt2-tokenizer"),
        "epochs": 1,
        "out": str(out),
    }
    settings.update(overrides)
    return FinetuneConfig(**settings)


@pytest.fixture(scope="session")
def scratch_run(shared_dir, small_train, tmp_path_factory):
    """A GPT-2 of the `tiny` preset trained from scratch with the real GPT-2 tokenizer."""
    out = tmp_path_factory.mktemp("scratch") / "model"
    cfg = scratch_cfg(shared_dir, out, eval_size=60)
    run = train(cfg, small_train, show_progress=False)
    return out, run


# --- config ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("scratch_size", "huge", "scratch_size must be one of"),
        ("train_size", 0, "train_size must be a positive"),
        ("eval_size", 0, "eval_size must be at least 1"),
        ("epochs", 0, "epochs must be positive"),
        ("learning_rate", 2.0, "learning_rate must be in"),
        ("batch_size", 0, "batch_size must be at least 1"),
        ("max_length", 4, "max_length must be between"),
        ("warmup", 1.5, "warmup must be a share"),
        ("patience", -1, "patience must not be negative"),
        ("checkpoint_every", 0, "checkpoint_every must be"),
        ("threads", 0, "threads must be at least 1"),
        ("labels", ("spam",), "at least 2 labels"),
        ("labels", ("spam", " SPAM"), "distinct"),
    ],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        FinetuneConfig(**{field: value})


def test_training_args_evaluate_and_keep_the_best_with_length_grouping(tmp_path):
    cfg = FinetuneConfig(out=str(tmp_path / "m"))
    args = cfg.to_training_args()
    assert args.eval_strategy == "epoch" and args.save_strategy == "epoch"
    assert args.load_best_model_at_end and args.metric_for_best_model == "accuracy"
    assert args.train_sampling_strategy == "group_by_length"
    assert Path(args.output_dir) == tmp_path / "m-checkpoints"
    assert args.learning_rate == 5e-5
    assert FinetuneConfig(from_scratch=True).lr == 5e-4
    steps = FinetuneConfig(out=str(tmp_path / "m"), checkpoint_every=7).to_training_args()
    assert steps.eval_strategy == "steps" and steps.save_steps == 7 and steps.eval_steps == 7


def test_cli_has_a_flag_per_field_and_rejects_unknown_flags(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in ("--base-model", "--from-scratch", "--scratch-size", "--train-size", "--eval-size", "--epochs",
                 "--learning-rate", "--max-length", "--patience", "--quantize", "--no-resume", "--out"):  # fmt: skip
        assert flag in help_text
    with pytest.raises(SystemExit) as exit_info:
        main(["--epoch", "3"])
    assert exit_info.value.code == 2


# --- data ------------------------------------------------------------------------------------------------------------


def test_empty_training_set_is_a_clear_error(shared_dir, tmp_path):
    empty = Dataset.from_dict({"text": [], "label": []})
    with pytest.raises(DataError, match="no examples"):
        train(tiny_cfg(shared_dir, tmp_path / "m"), empty, show_progress=False)
    assert not (tmp_path / "m").exists()


# --- train -> save -> load -> predict ----------------------------------------------------------------------------


def test_training_saves_a_complete_model_directory(ft_dir):
    names = {p.name for p in ft_dir.iterdir()}
    assert {"model.safetensors", "config.json", "labels.json", "README.md", "run.json", "tokenizer.json"} <= names
    assert not any(name.endswith((".bin", ".pt", ".pkl", ".pth")) for name in names)  # nothing pickled
    run = json.loads((ft_dir / "run.json").read_text())
    assert set(run) >= RUN_KEYS
    assert run["from_scratch"] is False and run["backend"] == "finetune"
    assert run["train_size"] == 240 and run["eval_size"] == 60
    assert 0.0 <= run["eval_accuracy"] <= 1.0 and run["train_seconds"] > 0 and run["train_samples_per_second"] > 0
    # Trained under the protocol by default: 240 examples make 15 steps an epoch, so the 2 epochs asked are raised
    # to reach 200 optimizer steps, evaluated 5 times, the best kept.
    protocol = run["protocol"]
    assert (protocol["steps"], protocol["epochs"], protocol["evaluations"]) == (210, 14.0, 5)
    assert protocol["learning_rate"] == 1e-4 and run["config"]["patience"] == 0
    assert len(run["history"]) == 5 and run["history"][-1]["step"] == 210
    assert json.loads((ft_dir / "labels.json").read_text()) == list(LABELS)
    assert not ft_dir.with_name("model-checkpoints").exists()  # removed after a successful run
    assert [p.name for p in ft_dir.parent.iterdir()] == ["model"]  # no staging leftovers


def test_loaded_model_predicts_valid_scores(finetuned):
    assert isinstance(finetuned, finetune.TextClassifier)
    assert finetuned.labels == list(LABELS)
    predictions = finetuned.predict(["I love this!", "this is awful", "meh"])
    assert len(predictions) == 3
    for p in predictions:
        assert set(p.scores) == set(LABELS) and p.evidence == ()
        assert sum(p.scores.values()) == pytest.approx(1.0, abs=1e-9)
    assert finetuned.predict([]) == []


def test_the_traced_classifier_answers_as_the_eager_model_and_serves_batches(ft_dir, monkeypatch):
    from core.tracing import Traced

    traced, eager = finetune.load(ft_dir), finetune.load(ft_dir)
    eager.trace = False
    traced.predict(["warm"]), eager.predict(["warm"])  # traced (and checked) before the count starts
    assert isinstance(traced._traced, Traced) and eager._traced is False
    assert traced.memory_bytes() == 2 * eager.memory_bytes()  # the frozen trace holds its own copy of the weights
    rows: list[int] = []
    call = Traced.__call__
    monkeypatch.setattr(Traced, "__call__", lambda self, *inputs: rows.append(len(inputs[0])) or call(self, *inputs))
    texts = ["I love this!", "", "word " * 300, *(f"tweet {i} " * (i % 9 + 1) for i in range(20))]
    for t in texts[:3]:
        assert traced.predict_proba([t]) == pytest.approx(eager.predict_proba([t]), abs=1e-5)
    assert traced.predict_proba(texts) == pytest.approx(eager.predict_proba(texts), abs=1e-5)
    assert 1 in rows and max(rows) > 1  # single texts and padded batches both ran through the trace
    assert finetune.load(ft_dir, quantize=True).trace is False  # int8 models stay eager


def test_a_trace_that_fails_on_an_input_falls_back_to_the_eager_model(ft_dir, monkeypatch):
    from core.tracing import Traced

    clf, eager = finetune.load(ft_dir), finetune.load(ft_dir)
    eager.trace = False
    clf.predict(["warm"])

    def broken(self, *inputs):
        raise RuntimeError("shape the trace never saw")

    monkeypatch.setattr(Traced, "__call__", broken)
    texts = ["still answered", "and this one"]
    assert clf.predict_proba(texts) == pytest.approx(eager.predict_proba(texts), abs=1e-5)
    assert clf._traced is False  # eager from now on


def test_predict_handles_empty_and_very_long_texts(finetuned):
    empty, long = finetuned.predict(["", "word " * 4000])  # 20,000 characters
    assert empty.label in LABELS and long.label in LABELS
    # truncated at max_length tokens: the same as the first 128 tokens alone
    truncated = finetuned.tokenizer.decode(finetuned.tokenizer("word " * 4000)["input_ids"][:128])
    assert long.scores == pytest.approx(finetuned.predict([truncated])[0].scores, abs=1e-5)
    with pytest.raises(TypeError, match="not a single string"):
        finetuned.predict("one text")
    with pytest.raises(TypeError, match="must be strings"):
        finetuned.predict(["ok", None])


def test_a_pretrained_encoder_fine_tuned_on_real_tweets_beats_the_majority_class(small_train, small_test, tmp_path):
    """The whole loop learns: all-MiniLM-L6-v2 fine-tuned on 260 real tweets (3 epochs, about 20 s) labels 200
    held-out test tweets far better than always answering their commonest label (about 0.70 against 0.39)."""
    cfg = FinetuneConfig(base_model=packaged_embedder_path(), eval_size=40, epochs=3, batch_size=16,
                         learning_rate=1e-4, max_length=64, threads=1, protocol=False,
                         out=str(tmp_path / "model"))  # fmt: skip
    before = torch.get_num_threads()
    try:  # one thread: two fight any other work on a small machine (7x slower beside a busy process)
        train(cfg, small_train, show_progress=False)
    finally:
        torch.set_num_threads(before)
    test = small_test.select(range(200))
    predicted = [p.label for p in finetune.load(tmp_path / "model").predict(list(test["text"]))]
    majority = max(Counter(test["label"]).values()) / test.num_rows
    score = accuracy(predicted, list(test["label"]))
    assert score > majority + 0.15, f"accuracy {score:.3f} vs a majority-class share of {majority:.3f}"


def test_the_training_curve_is_recorded_plotted_and_in_the_model_card(shared_dir, small_train, tmp_path):
    out = tmp_path / "m"
    cfg = tiny_cfg(
        shared_dir, out, train_size=96, eval_size=32, epochs=3, logging_steps=1, checkpoint_every=2, patience=0
    )
    run = train(cfg, small_train, show_progress=False)
    steps = run["config"]["epochs"] * 96 // 16
    assert [row["step"] for row in run["train_history"]] == list(range(1, steps + 1))  # a loss per logging step
    assert all(row["loss"] > 0 for row in run["train_history"]) and len(run["history"]) == steps // 2
    assert (out / "training_curve.png").read_bytes()[:4] == b"\x89PNG"
    card = (out / "README.md").read_text()
    assert "## Training curve" in card and "![training curve](training_curve.png)" in card
    assert f"The kept weights are those of step {run['best_checkpoint_step']}" in card
    assert card.count("\n| ") >= 1 + len(run["history"])  # one table row per evaluation


def test_length_sorted_batches_give_the_same_answers_as_one_by_one(ft_dir):
    texts = ["a", "a much longer tweet about the weather and my terrible morning commute", "ok then", ""]
    model = finetune.load(ft_dir, batch_size=2)
    together = model.predict_proba(texts)
    alone = [model.predict_proba([t])[0] for t in texts]
    for row, single in zip(together, alone, strict=True):
        assert row == pytest.approx(single, abs=1e-5)


def test_from_scratch_says_so_everywhere(scratch_run, caplog):
    out, run = scratch_run
    assert run["from_scratch"] is True and "trained from scratch" in run["notice"]
    assert run["base_model"].startswith("gpt2 (architecture only, random init)")
    assert run["scratch_preset"]["name"] == "tiny" and run["scratch_preset"]["n_layer"] == 2
    card = (out / "README.md").read_text()
    assert "Trained from scratch" in card and "no pretrained GPT-2 weights were used" in card
    assert "trained-from-scratch" in card.split("---")[1]
    model = finetune.load(out)
    assert model.from_scratch and "trained from scratch" in model.describe()
    assert len(model.tokenizer) == 50257  # the real GPT-2 vocabulary


def test_from_scratch_logs_a_warning(shared_dir, small_train, tmp_path, caplog):
    cfg = scratch_cfg(shared_dir, tmp_path / "m", train_size=40, eval_size=20)
    with caplog.at_level("WARNING", logger="finetune.train"):
        train(cfg, small_train, show_progress=False)
    assert any("trained from scratch" in r.getMessage() for r in caplog.records)


def test_progress_callback_reports_up_to_done(shared_dir, small_train, tmp_path):
    seen: list[tuple[float, str]] = []
    cfg = tiny_cfg(shared_dir, tmp_path / "m", train_size=64, eval_size=16)
    train(cfg, small_train, progress=lambda f, m: seen.append((f, m)), show_progress=False)
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert any(m.startswith("step ") for _, m in seen) and any("eval accuracy" in m for _, m in seen)


def test_early_stopping_stops_when_eval_accuracy_stalls(shared_dir, small_train, tmp_path):
    # a learning rate too small to change any prediction: eval accuracy never improves after the first epoch
    cfg = tiny_cfg(shared_dir, tmp_path / "m", train_size=64, eval_size=16, epochs=6, patience=1, learning_rate=1e-12)
    run = train(cfg, small_train, show_progress=False)
    assert run["stopped_early"] is True
    assert run["epochs_run"] == pytest.approx(2.0)
    assert len(run["history"]) == 2


def test_int8_quantization_converts_gpt2_layers_and_keeps_answers_close(ft_dir, finetuned):
    quantized = finetune.load(ft_dir, quantize=True)
    modules = list(quantized.model.modules())
    assert not any(type(m).__name__ == "Conv1D" for m in modules)
    # the tiny GPT-2 has 4 Conv1D layers (attention in/out, MLP in/out) and the score head
    assert sum("quantized.dynamic" in type(m).__module__ for m in modules) == 5
    texts = ["I love this!", "this is awful", "the train is late again", "thanks so much"]
    for q, f in zip(quantized.predict_proba(texts), finetuned.predict_proba(texts), strict=True):
        assert q == pytest.approx(f, abs=0.05)
    assert "int8" in quantized.describe()


# --- resume, overwrite, distributed ------------------------------------------------------------------------------


class CrashAfter:
    """A TrainerCallback stand-in that crashes the run after `step` optimizer steps (checkpoints already saved)."""

    def __new__(cls, step: int):
        from transformers import TrainerCallback

        class _Crash(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step == step:
                    raise KeyboardInterrupt(f"simulated crash at step {step}")

        return _Crash()


def test_interrupted_run_resumes_from_its_last_checkpoint(shared_dir, small_train, tmp_path):
    cfg = tiny_cfg(shared_dir, tmp_path / "m", train_size=160, eval_size=20, epochs=2, checkpoint_every=4, patience=0)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, small_train, callbacks=[CrashAfter(9)], show_progress=False)
    checkpoints = sorted(p.name for p in cfg.checkpoints_dir.glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-4", "checkpoint-8"] and not (tmp_path / "m").exists()

    run = train(cfg, small_train, show_progress=False)
    assert run["resumed_from"] == "checkpoint at step 8"
    assert run["epochs_run"] == pytest.approx(2.0)
    assert (tmp_path / "m" / "model.safetensors").exists()
    assert not cfg.checkpoints_dir.exists()


def test_checkpoints_of_other_settings_are_not_resumed_silently(shared_dir, small_train, tmp_path):
    cfg = tiny_cfg(shared_dir, tmp_path / "m", train_size=160, eval_size=20, epochs=2, checkpoint_every=4)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, small_train, callbacks=[CrashAfter(5)], show_progress=False)
    changed = tiny_cfg(shared_dir, tmp_path / "m", train_size=160, eval_size=20, epochs=2, checkpoint_every=4, seed=1)
    with pytest.raises(FinetuneError, match=r"other settings \(seed\).*--no-resume"):
        train(changed, small_train, show_progress=False)
    changed.resume = False
    run = train(changed, small_train, show_progress=False)
    assert run["resumed_from"] is None


def test_a_good_model_is_never_overwritten_by_accident_or_by_a_failed_run(shared_dir, ft_dir, small_train, tmp_path):
    out = tmp_path / "m"
    out.mkdir()
    for name in ft_dir.iterdir():
        (out / name.name).write_bytes(name.read_bytes())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(FileExistsError, match="--overwrite"):
        train(tiny_cfg(shared_dir, out), small_train, show_progress=False)
    bad = tiny_cfg(shared_dir, out, base_model=str(tmp_path / "nowhere"))
    with pytest.raises(FinetuneError, match="does not exist"):
        train(bad, small_train, overwrite=True, show_progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    finetune.load(out)


def test_a_crash_while_saving_keeps_the_previous_model(shared_dir, ft_dir, small_train, tmp_path, monkeypatch):
    out = tmp_path / "m"
    train(tiny_cfg(shared_dir, out, train_size=40, eval_size=20), small_train, show_progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    def disk_full(run):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("finetune.train.model_card", disk_full)
    with pytest.raises(OSError, match="No space left"):
        train(tiny_cfg(shared_dir, out, seed=3), small_train, overwrite=True, show_progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith("-checkpoints")) == ["m"]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("RANK", None)
    return env


LAUNCHERS = {
    "torchrun": [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533"],
    # accelerate's torchrun-style launcher is behind --multi_gpu; on a machine without a GPU the Trainer runs the
    # processes on the CPU over gloo (FinetuneConfig sets use_cpu)
    "accelerate": [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                   "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
                   "29534"],
}  # fmt: skip


@pytest.mark.parametrize("launcher", list(LAUNCHERS))
def test_two_process_run_trains_and_saves_once(shared_dir, data_dir, tmp_path, launcher):
    out = tmp_path / "m"
    command = [
        *LAUNCHERS[launcher],
        "-m", "finetune.train",
        "--base-model", str(shared_dir / "models" / "tiny-random-gpt2"), "--data", str(data_dir),
        "--train-size", "64", "--eval-size", "32", "--epochs", "1", "--out", str(out),
    ]  # fmt: skip
    done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["world_size"] == 2
    assert done.stdout.count('"world_size": 2') == 1  # only the main process reports
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    finetune.load(out).predict(["works after a distributed run"])


# --- bad input -------------------------------------------------------------------------------------------------------


def test_unknown_or_unreachable_base_model(shared_dir, small_train, tmp_path, clean_env):
    with pytest.raises(FinetuneError, match="is a Hugging Face Hub id.*FTRAG_BASE_MODEL.*--from-scratch"):
        train(tiny_cfg(shared_dir, tmp_path / "m", base_model="gpt2"), small_train, show_progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(FinetuneError, match="cannot be loaded"):
        train(tiny_cfg(shared_dir, tmp_path / "m", base_model=str(broken)), small_train, show_progress=False)
    assert not (tmp_path / "m").exists()


def test_unreadable_tokenizer(shared_dir, small_train, tmp_path):
    junk = tmp_path / "tok"
    junk.mkdir()
    (junk / "tokenizer_config.json").write_text("[]")
    cfg = tiny_cfg(shared_dir, tmp_path / "m", tokenizer=str(junk))
    with pytest.raises(FinetuneError, match="tokenizer .* cannot"):
        train(cfg, small_train, show_progress=False)


def test_checkpoint_with_other_labels_is_refused(shared_dir, small_train, tmp_path):
    from transformers import AutoModelForSequenceClassification

    other = tmp_path / "spam-model"
    model = AutoModelForSequenceClassification.from_pretrained(
        shared_dir / "models" / "tiny-random-gpt2", num_labels=2, id2label={0: "ham", 1: "spam"}
    )
    model.save_pretrained(other)
    with pytest.raises(FinetuneError, match=r"already a classifier for labels \['ham', 'spam'\]"):
        train(tiny_cfg(shared_dir, tmp_path / "m", base_model=str(other)), small_train, show_progress=False)


# --- any label set --------------------------------------------------------------------------------------------------


def test_a_fine_tune_on_emotion_has_a_head_of_its_four_labels(emotion_ft_dir, emotion_labels):
    from transformers import AutoConfig

    assert json.loads((emotion_ft_dir / "labels.json").read_text()) == emotion_labels
    run = json.loads((emotion_ft_dir / "run.json").read_text())
    assert run["labels"] == emotion_labels and run["train_size"] == 160 and run["eval_size"] == 40
    assert AutoConfig.from_pretrained(emotion_ft_dir).id2label == dict(enumerate(emotion_labels))
    assert "tweet classifier (anger, joy, optimism, sadness)" in (emotion_ft_dir / "README.md").read_text()
    model = finetune.load(emotion_ft_dir)
    assert model.labels == emotion_labels
    assert [list(p.scores) for p in model.predict(["so angry", "what a day"])] == [emotion_labels] * 2


def test_eval_metrics_average_over_every_label_of_the_head():
    from transformers import EvalPrediction

    from finetune.train import compute_metrics

    logits = np.eye(4)[[0, 1, 2, 2]]  # 4 labels; label 3 is never predicted nor present
    metrics = compute_metrics(EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 2, 2])))
    assert metrics == {"accuracy": 1.0, "macro_f1": 0.75}


def test_labels_flag_names_the_ids_end_to_end(shared_dir, tmp_path, capsys):
    out = tmp_path / "irony"
    irony = shared_dir / "data" / "tweeteval_irony"
    tiny = shared_dir / "models" / "tiny-random-gpt2"
    argv = ["--data", str(irony), "--labels", "Plain,Ironic", "--base-model", str(tiny), "--train-size", "60"]
    assert main([*argv, "--eval-size", "20", "--epochs", "1", "--out", str(out)]) == 0
    assert json.loads((out / "labels.json").read_text()) == ["plain", "ironic"]  # id order, as named
    assert json.loads((out / "run.json").read_text())["config"]["labels"] == ["plain", "ironic"]


def test_a_head_for_other_labels_is_refused_and_one_for_the_same_labels_is_kept(
    shared_dir, emotion_ft_dir, small_train, emotion_train, tmp_path
):
    with pytest.raises(FinetuneError, match=r"already a classifier for labels \['anger', 'joy', 'optimism', 'sad"):
        train(tiny_cfg(shared_dir, tmp_path / "a", base_model=str(emotion_ft_dir)), small_train, show_progress=False)
    cfg = tiny_cfg(shared_dir, tmp_path / "b", base_model=str(emotion_ft_dir), eval_size=40)
    assert train(cfg, emotion_train, show_progress=False)["labels"] == ["anger", "joy", "optimism", "sadness"]


def test_in_memory_data_with_labels_outside_the_configured_ones_is_refused(shared_dir, small_train, tmp_path):
    cfg = tiny_cfg(shared_dir, tmp_path / "m", labels=("negative", "positive"))
    with pytest.raises(DataError, match=r"labels \['neutral'\] outside the label set \['negative', 'positive'\]"):
        train(cfg, small_train, show_progress=False)
    assert not (tmp_path / "m").exists()


def _copy(src: Path, dest: Path) -> Path:
    dest.mkdir()
    for file in src.iterdir():
        (dest / file.name).write_bytes(file.read_bytes())
    return dest


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:-50]), "truncated"),
        (lambda d: (d / "model.safetensors").write_bytes(b"\x00garbage" * 10), "truncated or corrupted"),
        (lambda d: (d / "model.safetensors").unlink(), "weights are missing"),
        (lambda d: (d / "run.json").write_text("{"), "run.json is corrupted"),
        (lambda d: (d / "run.json").unlink(), "run.json is missing"),
        (lambda d: (d / "run.json").write_text('{"backend": "rag", "format_version": 1}'), "not the run.json"),
        (lambda d: (d / "labels.json").write_text('["a", "b", "c"]'), "do not belong together"),
        (lambda d: (d / "labels.json").write_text('"negative"'), "expected a list of label names"),
    ],
    ids=["truncated", "garbage", "no-weights", "bad-run", "no-run", "other-backend", "labels-mismatch", "bad-labels"],
)
def test_damaged_model_directory_is_a_clear_error(ft_dir, tmp_path, damage, message):
    broken = _copy(ft_dir, tmp_path / "broken")
    damage(broken)
    with pytest.raises(ArtifactError, match=message):
        finetune.load(broken)


def test_missing_model_directory(tmp_path):
    with pytest.raises(ArtifactError, match="no such model directory"):
        finetune.load(tmp_path / "none")


def test_cli_reports_bad_input_without_a_traceback(shared_dir, data_dir, tmp_path, capsys):
    tiny = str(shared_dir / "models" / "tiny-random-gpt2")
    code = main(["--base-model", tiny, "--data", str(data_dir), "--train-size", "30000", "--out", str(tmp_path / "m")])
    assert code == 2
    err = capsys.readouterr().err  # a cold datasets cache may draw its own progress bar first
    assert err.splitlines()[-1].startswith("error: asked for 30000 training") and "Traceback" not in err


def test_threads_setting_applies(ft_dir):
    before = torch.get_num_threads()
    try:
        finetune.load(ft_dir, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_a_training_process_killed_mid_epoch_resumes_and_finishes(shared_dir, data_dir, tmp_path):
    """SIGKILL (no clean-up at all) after a checkpoint: the same command then resumes from it and finishes."""
    import signal
    import time

    out = tmp_path / "m"
    command = [
        sys.executable, "-m", "finetune.train",
        "--base-model", str(shared_dir / "models" / "tiny-random-gpt2"), "--data", str(data_dir),
        "--train-size", "640", "--eval-size", "32", "--epochs", "3", "--checkpoint-every", "10", "--patience", "0",
        "--no-protocol", "--out", str(out),
    ]  # fmt: skip
    first = subprocess.Popen(command, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "m-checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not (checkpoints / "checkpoint-20" / "trainer_state.json").exists():
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    assert first.returncode == -signal.SIGKILL, "training finished before it could be killed"
    assert not out.exists()
    done = subprocess.run(command, cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())
    assert run["resumed_from"].startswith("checkpoint at step ") and _step(run["resumed_from"]) >= 20
    assert run["epochs_run"] == pytest.approx(3.0)
    assert not checkpoints.exists()


def _step(text: str) -> int:
    return int(text.rsplit(" ", 1)[1])


def test_a_half_written_checkpoint_is_skipped_on_resume(shared_dir, small_train, tmp_path):
    cfg = tiny_cfg(shared_dir, tmp_path / "m", train_size=160, eval_size=20, epochs=2, checkpoint_every=4, patience=0)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, small_train, callbacks=[CrashAfter(9)], show_progress=False)
    partial = cfg.checkpoints_dir / "checkpoint-12"  # killed while writing: weights, but no trainer_state.json
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")
    run = train(cfg, small_train, show_progress=False)
    assert run["resumed_from"] == "checkpoint at step 8"


def test_out_that_is_a_file_is_refused(shared_dir, small_train, tmp_path):
    out = tmp_path / "m"
    out.write_text("not a model directory")
    with pytest.raises(FileExistsError, match="is a file, not a directory"):
        train(tiny_cfg(shared_dir, out), small_train, overwrite=True, show_progress=False)
    assert out.read_text() == "not a model directory"


def test_the_hybrid_fits_on_the_rows_the_fine_tune_saved_and_refuses_other_data(tmp_path):
    """The fine-tune's split.json names its validation rows; the hybrid reads them, never re-derives them, and data
    of another size than the split was made on is refused, not fitted on."""
    import csv
    from types import SimpleNamespace

    from core.data import load_tweets
    from core.split import Split
    from hybrid import hybrid_validation

    def write(path, rows):
        with path.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "label"])
            for i in range(rows):
                writer.writerow([f"tweet {i}", ["negative", "neutral", "positive"][i % 3]])

    trained_on, other = tmp_path / "a.csv", tmp_path / "b.csv"
    write(trained_on, 120)
    write(other, 130)
    data = load_tweets(str(trained_on), split="train")
    split = Split.of(data, 30, 60, seed=0)
    split.save(tmp_path)
    model = SimpleNamespace(meta={"config": {"data": str(trained_on), "seed": 0}}, directory=tmp_path)
    texts, _ = hybrid_validation(model, None)
    assert texts == list(split.parts(data)[1]["text"])
    model.meta["config"]["data"] = str(other)
    with pytest.raises(DataError, match="not the data the artifact was trained on"):
        hybrid_validation(model, None)
    (tmp_path / "split.json").unlink()  # a model that keeps no split: no hybrid rather than a guess
    assert hybrid_validation(model, None) is None


def test_the_model_directory_keeps_the_split_it_trained_on(ft_dir, small_train):
    import json

    from core.split import Split

    run = json.loads((ft_dir / "run.json").read_text())
    split = Split.load(ft_dir)
    fit, validation = split.parts(small_train)
    assert (run["train_size"], run["eval_size"]) == (fit.num_rows, validation.num_rows) == (240, 60)
    assert run["split"]["file"] == "split.json" and run["split"]["validation"] == 60
    assert sorted(split.fit + split.validation) == list(range(300))
