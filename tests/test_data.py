from __future__ import annotations

import json
import logging
from collections import Counter

import pandas as pd
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from core.data import DataError, label_names, leak_report, load_tweets, stratified_sample
from core.types import LABELS


def test_real_dataset_loads_with_string_labels(tweets, caplog):
    assert isinstance(tweets, DatasetDict)
    assert tweets["train"].num_rows == 27_480  # the one empty train text is dropped
    assert tweets["test"].num_rows == 3_534
    for split in tweets.values():
        assert split.column_names == ["text", "label"]
        assert set(split["label"]) == set(LABELS)
        assert label_names(split) == list(LABELS)  # the default data's ids carry no names: the reference ones
        assert all(t.strip() for t in split["text"])
    # the dataset's own order and mapping: 0 negative, 1 neutral, 2 positive
    assert tweets["train"][1] == {"text": " Sooo SAD I will miss you here in San Diego!!!", "label": "negative"}


def test_dropping_empty_texts_is_reported(data_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="core.data"):
        train = load_tweets(str(data_dir), split="train")
    assert train.num_rows == 27_480
    assert "dropped 1 empty or whitespace-only text(s) of 27481" in caplog.text


def test_source_defaults_to_ftrag_data(clean_env, data_dir):
    clean_env.setenv("FTRAG_DATA", str(data_dir))
    assert load_tweets(split="test").num_rows == 3_534


def test_limit_is_seeded_and_stratified(data_dir, tweets):
    a = load_tweets(str(data_dir), split="train", limit=300, seed=1)
    b = load_tweets(str(data_dir), split="train", limit=300, seed=1)
    c = load_tweets(str(data_dir), split="train", limit=300, seed=2)
    assert a.num_rows == 300
    assert a["text"] == b["text"]
    assert a["text"] != c["text"]
    full = Counter(tweets["train"]["label"])
    got = Counter(a["label"])
    for label in LABELS:  # each share within one row of the full data's share
        assert abs(got[label] - 300 * full[label] / tweets["train"].num_rows) <= 1
    assert set(a["text"]) <= set(tweets["train"]["text"])


def test_limit_applies_to_each_split_and_rejects_too_large(data_dir):
    both = load_tweets(str(data_dir), limit=100)
    assert {k: v.num_rows for k, v in both.items()} == {"train": 100, "test": 100}
    with pytest.raises(DataError, match="asked for 5000 rows but it has only 3534"):
        load_tweets(str(data_dir), split="test", limit=5000)
    with pytest.raises(DataError, match="positive integer"):
        load_tweets(str(data_dir), limit=0)


def test_unknown_split(data_dir):
    with pytest.raises(DataError, match=r"no split 'validation'; it has \['test', 'train'\]"):
        load_tweets(str(data_dir), split="validation")


def test_stratified_sample_keeps_every_row_when_n_is_all():
    ds = Dataset.from_dict({"text": ["a", "b", "c"], "label": ["negative", "neutral", "positive"]})
    assert stratified_sample(ds, 3)["text"] == ["a", "b", "c"]
    two = stratified_sample(ds, 2, seed=3)
    assert len(two) == 2 and len(set(two["label"])) == 2  # two rows of two different labels, no repeat
    assert two["text"] == stratified_sample(ds, 2, seed=3)["text"]  # the same seed, the same rows


# --- other sources and their column names ----------------------------------------------------------------------


def test_csv_with_tweet_and_sentiment_columns(tmp_path):
    path = tmp_path / "tweets.csv"
    pd.DataFrame(
        {"tweet": ["so happy", "meh", "awful", "   "], "sentiment": ["Positive", "neutral", "NEGATIVE", "neutral"]}
    ).to_csv(path, index=False)
    ds = load_tweets(str(path), split="train")
    assert ds["text"] == ["so happy", "meh", "awful"]
    assert ds["label"] == ["positive", "neutral", "negative"]


def test_jsonl_with_integer_labels_named_by_the_caller(tmp_path):
    path = tmp_path / "tweets.jsonl"
    path.write_text("\n".join(json.dumps({"text": t, "label": y}) for t, y in [("bad", 0), ("ok", 1), ("good", 2)]))
    with pytest.raises(DataError, match=r"tweets.jsonl: the labels are integer ids with no names.*--labels a,b,c"):
        load_tweets(str(path))
    ds = load_tweets(str(path), labels=["Worst", "middle", "best"])
    assert isinstance(ds, DatasetDict) and list(ds) == ["train"]
    assert ds["train"]["label"] == ["worst", "middle", "best"]
    assert label_names(ds) == label_names(ds["train"]) == ["worst", "middle", "best"]  # id order, not sorted


def test_emotion_and_irony_load_with_their_own_labels_in_id_order(shared_dir):
    emotion = load_tweets(str(shared_dir / "data" / "tweeteval_emotion"))
    assert {k: v.num_rows for k, v in emotion.items()} == {"train": 3257, "validation": 374, "test": 1421}
    assert all(label_names(split) == ["anger", "joy", "optimism", "sadness"] for split in emotion.values())
    assert emotion["train"][0]["label"] == "optimism"  # id 2
    irony = load_tweets(str(shared_dir / "data" / "tweeteval_irony"), split="test", limit=40, seed=3)
    assert label_names(irony) == ["non_irony", "irony"]  # ids 0 and 1: not the sorted order
    assert set(irony["label"]) == {"non_irony", "irony"}
    # the recorded set survives sampling down to rows of one label
    assert label_names(irony.filter(lambda row: row["label"] == "irony")) == ["non_irony", "irony"]


def test_labels_flag_names_the_ids_of_a_real_dataset(shared_dir):
    renamed = load_tweets(str(shared_dir / "data" / "tweeteval_irony"), split="train", labels=("plain", "ironic"))
    assert label_names(renamed) == ["plain", "ironic"]
    assert set(renamed["label"]) == {"plain", "ironic"}  # the ids, named by the caller, win over label_text


def test_string_labels_are_sorted_and_class_label_keeps_its_order(tmp_path):
    path = tmp_path / "yes_no.csv"
    path.write_text("text,label\na,Yes\nb,no\nc,maybe\n")
    assert label_names(load_tweets(str(path), split="train")) == ["maybe", "no", "yes"]
    features = Features({"text": Value("string"), "label": ClassLabel(names=["zebra", "apple"])})
    Dataset.from_dict({"text": ["x", "y"], "label": [0, 1]}, features=features).to_parquet(tmp_path / "cl.parquet")
    loaded = load_tweets(str(tmp_path / "cl.parquet"), split="train")
    assert label_names(loaded) == ["zebra", "apple"] and loaded["label"] == ["zebra", "apple"]


def test_fewer_than_two_labels_is_an_error(tmp_path):
    path = tmp_path / "one.csv"
    path.write_text("text,label\na,spam\nb,spam\n")
    with pytest.raises(DataError, match=r"one.csv: a classifier needs at least 2 labels, got \['spam'\]"):
        load_tweets(str(path))
    with pytest.raises(DataError, match="at least 2 labels"):
        load_tweets(str(path), labels=["spam"])
    with pytest.raises(DataError, match="distinct"):
        load_tweets(str(path), labels=["spam", "Spam"])


def test_ids_and_names_that_disagree_are_an_error(tmp_path):
    path = tmp_path / "clash.parquet"
    pd.DataFrame({"text": ["a", "b", "c"], "label": [0, 0, 1], "label_text": ["x", "y", "z"]}).to_parquet(path)
    with pytest.raises(DataError, match=r"clash.parquet: the label ids and names do not match one to one"):
        load_tweets(str(path))


def test_parquet_prefers_label_text(tmp_path):
    path = tmp_path / "tweets.parquet"
    pd.DataFrame(
        {"id": [1, 2], "text": ["x", "y"], "label": [0, 2], "label_text": ["negative", "positive"]}
    ).to_parquet(path)
    assert load_tweets(str(path), split="train")["label"] == ["negative", "positive"]


def test_tsv(tmp_path):
    path = tmp_path / "tweets.tsv"
    path.write_text("text\tlabel\nhello, world\tneutral\nbye\tnegative\n")
    assert load_tweets(str(path), split="train")["text"] == ["hello, world", "bye"]


# --- bad input: each a DataError (a ValueError) naming the file and the problem --------------------------------


def test_missing_file(tmp_path):
    missing = tmp_path / "nope.csv"
    with pytest.raises(DataError, match="nope.csv.*does not exist"):
        load_tweets(str(missing))


def test_unknown_format(tmp_path):
    path = tmp_path / "tweets.xlsx"
    path.write_bytes(b"PK\x03\x04 not really a spreadsheet")
    with pytest.raises(DataError, match=r"tweets.xlsx: unknown file format '.xlsx'"):
        load_tweets(str(path))


def test_no_text_column(tmp_path):
    path = tmp_path / "no_text.csv"
    path.write_text("body,label\nhello,positive\n")
    with pytest.raises(DataError, match=r"no_text.csv \[train\]: no text column.*found \['body', 'label'\]"):
        load_tweets(str(path))


def test_no_label_column(tmp_path):
    path = tmp_path / "no_label.csv"
    path.write_text("text,score\nhello,3\n")
    with pytest.raises(DataError, match=r"no_label.csv \[train\]: no label column"):
        load_tweets(str(path))


@pytest.mark.parametrize("bad", ["joy", "3", "-1"])
def test_labels_outside_the_named_ones(tmp_path, bad):
    path = tmp_path / "labels.csv"
    path.write_text(f"text,label\nfine,positive\nhmm,{bad}\n")
    with pytest.raises(DataError, match=r"labels.csv \[train\]: 1 label\(s\) in column 'label' outside"):
        load_tweets(str(path), labels=LABELS)


def test_non_utf8_bytes(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\u00e9 ol\u00e9,positive\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1.csv: not UTF-8 text \(invalid byte near offset 14\)"):
        load_tweets(str(path))


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.touch()
    with pytest.raises(DataError, match="empty.jsonl: the file is empty"):
        load_tweets(str(path))


def test_header_only_and_all_blank_files(tmp_path):
    header = tmp_path / "header.csv"
    header.write_text("text,label\n")
    with pytest.raises(DataError, match="header.csv"):
        load_tweets(str(header))
    blank = tmp_path / "blank.csv"
    blank.write_text('text,label\n"  ",neutral\n" ",positive\n')
    with pytest.raises(DataError, match=r"blank.csv \[train\]: every text is empty"):
        load_tweets(str(blank))


def test_malformed_json(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "ok", "label": 1}\n{"text": "unterminated\n')
    with pytest.raises(DataError, match="broken.jsonl: could not be read"):
        load_tweets(str(path))


def test_data_error_is_a_value_error():
    assert issubclass(DataError, ValueError)


# --- leakage ---------------------------------------------------------------------------------------------------


def test_leak_report_counts_duplicates_and_shared_texts():
    train = Dataset.from_dict(
        {
            "text": ["good  day", "Good day", "good day ", "bad", "same", "same"],
            "label": ["positive", "positive", "positive", "negative", "neutral", "negative"],
        }
    )
    test = Dataset.from_dict({"text": [" bad", "new", "new", "good day"], "label": ["negative"] * 4})
    report = leak_report(train, test)
    assert report["train_duplicates"] == 2  # "good day" twice more after whitespace is collapsed; "same" once more
    assert report["test_duplicates"] == 1
    assert report["shared"] == 2  # "bad", "good day"; case still matters ("Good day")
    assert report["shared_test_rows"] == 2
    assert report["conflicting_labels"] == 2  # "same" (neutral/negative), "good day" (positive/negative)
    assert report["examples"]["shared"] == ["bad", "good day"]
    assert report["examples"]["train_duplicates"] == ["good day", "same"]


def test_leak_report_on_the_real_splits(tweets):
    report = leak_report(tweets["train"], tweets["test"])
    assert report["train_rows"] == 27_480 and report["test_rows"] == 3_534
    # the ids differ, but a few texts repeat once whitespace is normalised
    assert report["shared"] == 8
    assert report["train_duplicates"] == 32
    assert len(report["examples"]["shared"]) == 5


def test_leak_report_accepts_plain_lists():
    assert leak_report(["a", "b"], ["b", "c"])["shared"] == 1
