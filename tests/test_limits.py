"""core/limits.py: the label limits hold on every way labels come in (data files, configs, a study's upload), and
are checked before any model runs."""

from __future__ import annotations

import time

import pytest

from core.data import DataError, load_tweets
from core.limits import MAX_LABEL_CHARS, MAX_LABELS, MAX_UPLOAD_CELLS
from core.types import check_labels
from serving.inputs import InputError


def write_csv(path, rows):
    path.write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in rows), encoding="utf-8")
    return path


def test_a_label_set_is_at_most_50_names_of_at_most_64_characters():
    assert len(check_labels([f"l{i}" for i in range(MAX_LABELS)])) == MAX_LABELS
    with pytest.raises(ValueError, match=f"at most {MAX_LABELS} labels are allowed, got 51"):
        check_labels([f"l{i}" for i in range(MAX_LABELS + 1)])
    with pytest.raises(ValueError, match=f"at most {MAX_LABEL_CHARS} characters; 'xxx.*has 65"):
        check_labels(["ok", "x" * (MAX_LABEL_CHARS + 1)])
    started = time.perf_counter()
    with pytest.raises(ValueError) as refused:  # checked before anything grows with the count
        check_labels([f"label {i}" for i in range(200_000)])
    assert time.perf_counter() - started < 1 and len(str(refused.value)) < 200


def test_the_cli_data_loading_refuses_too_many_or_too_long_labels(tmp_path):
    many = write_csv(tmp_path / "many.csv", [(f"tweet {i}", f"label{i % 500}") for i in range(1000)])
    with pytest.raises(DataError, match="at most 50 labels are allowed, got 500"):
        load_tweets(str(many))
    long = write_csv(tmp_path / "long.csv", [(f"tweet {i}", "ab"[i % 2] * (1 + 4999 * (i == 0))) for i in range(10)])
    with pytest.raises(DataError, match="has 5,000"):
        load_tweets(str(long))


def test_a_study_preview_refuses_hostile_label_sets_in_seconds(tmp_path):
    """The red team's 75 KB file of 1,000 rows and 500 labels once took the server down in the study's plots."""
    from serving.studies import MIN_PER_LABEL, preview

    started = time.perf_counter()
    many = write_csv(tmp_path / "many.csv", [(f"some tweet text number {i}", f"label{i % 500}") for i in range(1000)])
    with pytest.raises(InputError, match="at most 50 labels are allowed, got 500"):
        preview(many)
    long = write_csv(tmp_path / "long.csv", [(f"tweet {i}", ["a", "b" * 5000][i % 2]) for i in range(100)])
    with pytest.raises(InputError, match="at most 64 characters"):
        preview(long)
    assert time.perf_counter() - started < 30
    # 10 labels of 6 examples pass; one of a single example (as 60 one-off labels once did) is refused up front
    enough = [(f"tweet {i}", f"label{i % 10}") for i in range(60)]
    assert len(preview(write_csv(tmp_path / "ok.csv", enough))["labels"]) == 10
    rare = write_csv(tmp_path / "rare.csv", [*enough, ("a lone one", "once")])
    with pytest.raises(InputError, match=f"1 of the 11 labels have fewer than {MIN_PER_LABEL} examples: 'once'"):
        preview(rare)
    cells = write_csv(tmp_path / "cells.csv", [(f"tweet {i}", f"label{i % 11}") for i in range(20_000)])
    too_many = f"20,000 rows and 11 labels; rows x labels may be at most {MAX_UPLOAD_CELLS:,}"
    with pytest.raises(InputError, match=too_many):
        preview(cells)
