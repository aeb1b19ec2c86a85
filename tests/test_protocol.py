"""finetune/protocol.py: the one training protocol every fine-tune gets, whatever path starts it."""

from __future__ import annotations

import pytest

from finetune.config import FinetuneConfig
from finetune.protocol import MIN_STEPS, SMALL_DATA_LR, apply_protocol
from finetune.search import with_min_steps


def test_small_data_gets_the_fewest_steps_the_small_data_rate_and_five_evaluations():
    cfg, record = apply_protocol(FinetuneConfig(epochs=3, batch_size=16, patience=2), 240)
    assert (record["steps"], cfg.epochs, cfg.learning_rate) == (210, 14.0, SMALL_DATA_LR)
    assert (cfg.patience, cfg.checkpoint_every, record["evaluations"]) == (0, 42, 5)
    assert "epochs raised from 3 to 14" in record["why"] and record["min_steps"] == MIN_STEPS


def test_large_data_is_trained_as_configured():
    cfg, record = apply_protocol(FinetuneConfig(epochs=1, batch_size=32, patience=2), 10_000)
    assert (record["steps"], cfg.epochs, cfg.lr, cfg.patience, cfg.checkpoint_every) == (313, 1.0, 5e-5, 2, None)
    assert record["small_data"] is False and record["why"] == "trained as configured"


@pytest.mark.parametrize(
    ("settings", "lr"),
    [({"learning_rate": 3e-5}, 3e-5), ({"from_scratch": True}, 5e-4)],
    ids=["a rate set by the user", "from scratch"],
)
def test_the_small_data_rate_is_only_for_a_pretrained_model_without_a_rate(settings, lr):
    cfg, record = apply_protocol(FinetuneConfig(**settings), 100)
    assert cfg.learning_rate == record["learning_rate"] == lr and record["steps"] >= MIN_STEPS


def test_the_protocol_can_be_turned_off_and_its_fewest_steps_set():
    cfg, record = apply_protocol(FinetuneConfig(epochs=1, batch_size=16, protocol=False), 240)
    assert (record["steps"], cfg.epochs, cfg.learning_rate, cfg.patience) == (15, 1, None, 2)
    _, fewer = apply_protocol(FinetuneConfig(epochs=1, batch_size=16, min_steps=30), 240)
    assert (fewer["steps"], fewer["epochs"]) == (30, 2.0)
    with pytest.raises(ValueError, match="min_steps"):
        FinetuneConfig(min_steps=-1)


def test_a_search_trial_on_small_data_reaches_the_fewest_steps():
    trial = {"num_train_epochs": 1, "per_device_train_batch_size": 32, "learning_rate": 1e-4}
    assert with_min_steps(trial, 320)["num_train_epochs"] == 20  # 10 steps an epoch
    assert with_min_steps(trial, 32_000) == trial  # 1,000 steps already
