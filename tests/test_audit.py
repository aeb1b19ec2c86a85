"""jobs/audit.py: suspects that both signals doubt, conflicting duplicates, and the CLI."""

from __future__ import annotations

import json

import pytest

from jobs.audit import AuditConfig, audit, main, measure_finetune_removal


@pytest.fixture(scope="module")
def flipped(shared_dir, tmp_path_factory):
    """500 real training tweets with 5 clearly positive ones relabeled negative on purpose, and a duplicate of one
    tweet given another label, as a CSV."""
    from core.data import load_tweets

    data = load_tweets(str(shared_dir / "data" / "tweet_sentiment_extraction"), split="train", limit=500, seed=3)
    rows = data.to_pandas()
    positive = rows.index[(rows.label == "positive") & rows.text.str.contains("love|happy|great", case=False)]
    flips = list(positive[:5])
    rows.loc[flips, "label"] = "negative"
    rows.loc[len(rows)] = [rows.text[0], "neutral" if rows.label[0] != "neutral" else "positive"]
    path = tmp_path_factory.mktemp("audit") / "train.csv"
    rows.to_csv(path, index=False)
    return path, [rows.text[i] for i in flips]


def test_the_audit_finds_labels_flipped_on_purpose(flipped, tmp_path):
    path, flipped_texts = flipped
    result = audit(AuditConfig(data=str(path), out=str(tmp_path / "audit")))
    suspects = {s["text"]: s for s in result["suspects"]}
    found = [text for text in flipped_texts if text in suspects]
    assert all(suspects[text]["suggested"] == "positive" and suspects[text]["label"] == "negative" for text in found)
    # Real tweets are noisy and 500 are few: not every flip is caught, but a flipped label is doubted far more often
    # than a label of the data itself.
    rate_flipped, rate_all = len(found) / len(flipped_texts), result["suspects_found"] / result["data"]
    assert len(found) >= 3 and rate_flipped >= 3 * rate_all, (found, result["suspects_found"])
    exact = result["conflicting_duplicates"]["exact"]
    assert len(exact) == 1 and len(exact[0]["labels"]) == 2
    written = json.loads((tmp_path / "audit" / "audit.json").read_text())
    assert written["suspects_found"] == result["suspects_found"]
    lines = (tmp_path / "audit" / "suspects.csv").read_text().splitlines()
    assert lines[0].startswith("text,label,suggested,confidence") and len(lines) == 1 + len(result["suspects"])


def test_the_cli_measures_what_removing_suspects_buys(shared_dir, tmp_path, capsys):
    data = str(shared_dir / "data" / "tweet_sentiment_extraction")
    argv = ["--data", data, "--train-size", "300", "--test-limit", "100", "--measure", "--out", str(tmp_path)]
    assert main(argv) == 0
    summary = json.loads(capsys.readouterr().out)
    removal = summary["removal"]
    assert removal["removed"] == summary["suspects_found"] and set(removal["accuracy"]) == {"all", "without_suspects"}
    low, high = removal["diff_ci95"]
    assert low <= removal["accuracy_diff"] <= high
    assert main(argv) == 2  # an audit already there is not replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err


def test_removal_is_measured_on_the_fine_tune_too_with_one_validation_slice(flipped, shared_dir, tmp_path):
    from core.data import load_tweets

    path, _ = flipped
    tiny = str(shared_dir / "models" / "tiny-random-gpt2")
    cfg = AuditConfig(data=str(path), measure=True, measure_finetune=True, epochs=1, base_model=tiny, min_steps=20)
    train = load_tweets(str(path), split="train")
    real = load_tweets(str(shared_dir / "data" / "tweet_sentiment_extraction"), split="test", limit=60, seed=0)
    suspects = [{"row": r} for r in (1, 2, 3, 4, 5, 400)]
    result = measure_finetune_removal(train, real, suspects, cfg)
    validation = result["validation_size"]
    assert validation == 50 and result["same_validation"]  # a tenth of the 501 rows, carved once for both runs
    sizes = result["train_sizes"]
    assert (
        sizes["all"] == train.num_rows - validation and sizes["all"] - sizes["without_suspects"] == result["removed"]
    )
    assert 1 <= result["removed"] <= len(suspects)  # suspects that fell in the validation slice stay in both runs
    assert set(result["accuracy"]) == {"all", "without_suspects"} and result["test_texts"] == 60
    low, high = result["diff_ci95"]
    assert low <= result["accuracy_diff"] <= high
    assert "tiny-random-gpt2" in result["backend"]
    with pytest.raises(ValueError, match="give --measure too"):
        AuditConfig(measure_finetune=True)
