"""compare/audit.py: suspects that both signals doubt, conflicting duplicates, and the CLI."""

from __future__ import annotations

import json

import pytest

from compare.audit import AuditConfig, audit, main


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
