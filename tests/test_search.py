"""finetune/search.py: Optuna trials through the Trainer, scored on the training split's own evaluation slice."""

from __future__ import annotations

import json

from finetune.search import SearchConfig, main


def test_a_three_trial_search_writes_every_trial_and_the_best_as_flags(shared_dir, data_dir, tmp_path, capsys):
    tiny = str(shared_dir / "models" / "tiny-random-gpt2")
    argv = ["--data", str(data_dir), "--base-model", tiny, "--train-size", "96", "--eval-size", "48", "--trials", "3",
            "--epochs-max", "2", "--batch-sizes", "8,16", "--max-length", "32", "--min-steps", "24",
            "--out", str(tmp_path)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    result = json.loads((tmp_path / "search.json").read_text())
    assert len(result["trials"]) == 3 and (tmp_path / "search.png").read_bytes()[:4] == b"\x89PNG"
    cfg = SearchConfig()
    for trial in result["trials"]:
        params = trial["params"]
        assert cfg.lr_min <= params["learning_rate"] <= cfg.lr_max and params["batch_size"] in (8, 16)
        assert 1 <= params["epochs"] <= 2 and trial["state"] in {"complete", "pruned"}
    completed = [t for t in result["trials"] if t["state"] == "complete"]
    assert result["best"]["eval_accuracy"] == max(t["eval_accuracy"] for t in completed)
    assert (result["train_size"], result["eval_size"]) == (96, 48)  # never the test split
    assert result["prune_after_step"] == 96 // 16  # one epoch at the largest batch before any pruning
    assert all(t["last_step"] > result["prune_after_step"] for t in result["trials"] if t["state"] == "pruned")
    assert f"python -m finetune.train {result['best_flags']}" in printed
    assert result["best_flags"].startswith("--learning-rate ") and "--batch-size" in result["best_flags"]
    assert main(argv) == 2  # a search already there is kept unless --overwrite


def test_the_best_flags_are_accepted_by_finetune_train():
    from core.cli import parse_config
    from finetune.config import FinetuneConfig
    from finetune.search import best_flags

    flags = best_flags({"learning_rate": 2e-5, "batch_size": 16, "epochs": 3, "warmup": 0.1, "weight_decay": 0.01})
    cfg, _ = parse_config(FinetuneConfig, flags.split(), "finetune.train")  # the parser finetune.train uses
    assert isinstance(cfg, FinetuneConfig) and (cfg.learning_rate, cfg.batch_size, cfg.epochs) == (2e-5, 16, 3.0)
    assert (cfg.warmup, cfg.weight_decay) == (0.1, 0.01)
