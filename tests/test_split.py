"""core/split.py: the fit / validation rows made once, saved, and handed to whatever trains or evaluates on them."""

from __future__ import annotations

import pytest

from core.data import DataError
from core.split import Split, split_parts

LABELS = ["negative", "neutral", "positive"]


def test_split_carves_a_disjoint_stratified_validation_part(small_train):
    fit, validation = split_parts(small_train, 60, 200, seed=0)
    assert (fit.num_rows, validation.num_rows) == (200, 60)
    assert not set(fit["text"]) & set(validation["text"])
    share = {label: validation["label"].count(label) / 60 for label in LABELS}
    overall = {label: small_train["label"].count(label) / 300 for label in LABELS}
    for label in LABELS:
        assert share[label] == pytest.approx(overall[label], abs=0.03)
    assert split_parts(small_train, 60, 200, seed=0)[0]["text"] == fit["text"]  # seeded
    assert split_parts(small_train, 60)[0].num_rows == 240


@pytest.mark.parametrize(
    ("fit_size", "validation_size", "message"),
    [(250, 60, "only 300; use --train-size 240"), (None, 300, "leaves no training examples")],
)
def test_split_refuses_more_than_the_data(small_train, fit_size, validation_size, message):
    with pytest.raises(DataError, match=message):
        Split.of(small_train, validation_size, fit_size)


def test_a_saved_split_comes_back_the_same_and_cuts_the_same_rows(small_train, tmp_path):
    split = Split.of(small_train, 60, 100, seed=3)
    path = split.save(tmp_path)
    assert path.name == "split.json" and Split.load(tmp_path) == split == Split.load(path)
    assert Split.load(tmp_path).parts(small_train)[1]["text"] == split.parts(small_train)[1]["text"]
    assert "seed 3" in split.how and split.summary() == {"fit": 100, "validation": 60, "rows": 300, "how": split.how}


def test_a_split_refuses_other_data_and_rows_that_do_not_fit(small_train):
    split = Split.of(small_train, 60, seed=0)
    with pytest.raises(DataError, match="made on 300 rows but this data has 299"):
        split.parts(small_train.select(range(299)))
    with pytest.raises(ValueError, match="share 1 row"):
        Split((0, 1), (1, 2), rows=3)
    with pytest.raises(ValueError, match="below 3"):
        Split((0, 3), (1,), rows=3)
    with pytest.raises(ValueError, match="not a split record"):
        Split.from_dict({"fit": [0]})


def test_no_module_re_derives_the_split_through_the_fine_tune():
    """The split lives in core: nothing imports the fine-tune's trainer to cut data (it once did, by seed)."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[1]
    offenders = [
        str(path.relative_to(root))
        for package in ("compare", "jobs", "hybrid", "serving", "rag", "finetune", "core", "bench")
        for path in (root / package).rglob("*.py")
        if "split_train_eval" in path.read_text(encoding="utf-8")
    ]
    assert offenders == []
