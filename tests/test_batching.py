"""Micro-batching: concurrent single texts share one predict call, answers go to the right caller, errors too."""

from __future__ import annotations

import itertools
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from core.types import Prediction
from serving.batching import MicroBatcher, wait_ms_from_env


class Recorder:
    """A classifier that labels a text by its length's parity and records the size of every batch it gets."""

    name = "recorder"
    labels = ["even", "odd"]

    def __init__(self, delay_s: float = 0.0, fail_on: str | None = None) -> None:
        self.batch_sizes: list[int] = []
        self.threads: set[str] = set()
        self.delay_s, self.fail_on = delay_s, fail_on

    def predict(self, texts):
        self.batch_sizes.append(len(texts))
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay_s)  # a model's fixed per-call cost
        if self.fail_on in texts:
            raise RuntimeError("model broke")
        return [Prediction.from_scores({"even": float(len(t) % 2 == 0), "odd": float(len(t) % 2)}) for t in texts]


def test_concurrent_single_texts_are_answered_in_few_batches_each_to_its_caller():
    model = Recorder(delay_s=0.02)
    batcher = MicroBatcher(model, wait_ms=20)
    texts = ["x" * n for n in range(1, 33)]
    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(batcher.predict_one, texts))
    assert [a.label for a in answers] == ["odd" if n % 2 else "even" for n in range(1, 33)]
    assert sum(model.batch_sizes) == 32 and len(model.batch_sizes) <= 8 and max(model.batch_sizes) > 1
    assert model.threads == {"batcher-recorder"}  # the model is called from the batcher's thread only
    batcher.close()


def test_a_lone_text_is_answered_at_once_and_only_a_crowd_waits_for_company():
    model = Recorder(delay_s=0.05)
    batcher = MicroBatcher(model, wait_ms=400)
    batcher.predict_one("warm")
    start = time.perf_counter()
    assert batcher.predict_one("ab").label == "even"
    assert time.perf_counter() - start < 0.3 and model.batch_sizes == [1, 1]  # no 400 ms wait alone
    with ThreadPoolExecutor(8) as pool:  # a crowd: the first is answered at once, the rest queue behind it
        list(pool.map(batcher.predict_one, ["x" * n for n in range(8)]))
    assert max(model.batch_sizes[2:]) > 1
    late = threading.Timer(0.1, batcher.predict_one, ["late"])  # after a batch of several, the worker waits
    late.start()
    batcher.predict_one("early")
    late.join()
    assert model.batch_sizes[-1] == 2, model.batch_sizes
    batcher.close()


def test_a_failing_batch_fails_each_caller_with_the_error_and_the_batcher_goes_on():
    model = Recorder(fail_on="boom")
    batcher = MicroBatcher(model, wait_ms=0)
    with pytest.raises(RuntimeError, match="model broke"):
        batcher.predict_one("boom")
    assert batcher.predict_one("fine").label == "even"
    batcher.close()


def test_the_wait_comes_from_the_environment(monkeypatch):
    monkeypatch.setenv("FTRAG_BATCH_WAIT_MS", "0")
    assert wait_ms_from_env() == 0
    monkeypatch.setenv("FTRAG_BATCH_WAIT_MS", "-1")
    with pytest.raises(ValueError, match="FTRAG_BATCH_WAIT_MS"):
        wait_ms_from_env()


def test_the_service_batches_single_texts_and_not_multi_text_calls(app_artifacts, monkeypatch):
    from serving.service import Service

    monkeypatch.setenv("FTRAG_BATCH_WAIT_MS", "20")
    service = Service.start(app_artifacts, build_missing=False)
    warm = service._batchers["rag"].texts  # the start-up warm-up went through the batcher too
    with ThreadPoolExecutor(16) as pool:
        rows = list(pool.map(lambda t: service.classify([t])[0], [f"tweet number {i}" for i in range(16)]))
    assert {r["text"] for r in rows} == {f"tweet number {i}" for i in range(16)}
    batcher = service._batchers["rag"]
    assert batcher.texts - warm == 16 and batcher.batches - warm < 16
    direct = service.backends["rag"].predict(["tweet number 3"])[0]
    assert rows[3]["results"]["rag"]["scores"] == pytest.approx(direct.scores)
    service.classify(["a", "b"])
    assert batcher.texts - warm == 16  # a multi-text call is a batch already
    reported = service.models()["batching"]  # what /api/models tells an operator (and bench/load.py)
    assert reported["wait_ms"] == 20
    assert reported["backends"]["rag"] == {"batches": batcher.batches, "texts": warm + 16, "threads": batcher.threads}
    service.close()


def test_latency_measure_with_warmup_zero_makes_no_untimed_call():
    from compare.latency import measure

    model = Recorder()
    measure({"recorder": model}, ["a", "bb", "ccc"], warmup=0, batch_size=2, batch_rounds=1)
    assert model.batch_sizes == [1, 1, 1, 2]  # 3 timed singles and 1 timed batch, nothing untimed


def test_one_bad_text_fails_only_its_own_caller():
    model = Recorder(delay_s=0.01, fail_on="boom")
    batcher = MicroBatcher(model, wait_ms=50)
    futures = [batcher.submit(t) for t in ("ok", "boom", "fine")]
    assert futures[0].result(timeout=10).label == "even" and futures[2].result(timeout=10).label == "even"
    with pytest.raises(RuntimeError, match="model broke"):
        futures[1].result(timeout=10)
    batcher.close()


def test_a_wrong_number_of_answers_is_an_error_not_a_hang():
    class Short(Recorder):
        def predict(self, texts):
            return super().predict(texts)[:-1]

    batcher = MicroBatcher(Short(), wait_ms=0)
    with pytest.raises(RuntimeError, match="answered 0 of 1"):
        batcher.submit("x").result(timeout=10)
    batcher.close()


class Scorer(Recorder):
    """A classifier with fixed scores for every text, counting the texts it is asked about."""

    labels = ["even", "odd"]

    def __init__(self, name: str, even: float) -> None:
        super().__init__()
        self.name, self.even = name, even

    def predict(self, texts):  # short texts get `even` as given, longer ones its mirror: answers differ by row
        self.batch_sizes.append(len(texts))
        time.sleep(0.005)  # a model's time, so that the parts' latencies add up to something
        return [
            Prediction.from_scores({"even": e, "odd": 1 - e})
            for e in (self.even if len(t) < 3 else 1 - self.even for t in texts)
        ]


@pytest.mark.parametrize("wait_ms", [0, 5])
@pytest.mark.parametrize(("mode", "primary_even"), [("gate", 0.9), ("gate", 0.6), ("mix", 0.9)])
def test_a_hybrid_served_with_its_parts_is_combined_from_their_answers_not_run_again(wait_ms, mode, primary_even):
    from hybrid import HybridClassifier
    from serving.service import Service

    primary, secondary = Scorer("finetune", primary_even), Scorer("rag", 0.2)
    hybrid = HybridClassifier(primary, secondary, mode=mode, threshold=0.7, weight=0.5)
    service = Service(backends={"finetune": primary, "rag": secondary, "hybrid": hybrid}, batch_wait_ms=wait_ms)
    for texts in (["one text"], ["a", "bb", "ccc", "dddd"]):
        primary.batch_sizes.clear(), secondary.batch_sizes.clear()
        rows = service.classify(texts)
        assert sum(primary.batch_sizes) == len(texts) and sum(secondary.batch_sizes) == len(texts)  # once each
        expected = HybridClassifier(Scorer("a", primary_even), Scorer("b", 0.2), mode=mode, threshold=0.7,
                                    weight=0.5).predict(texts)  # fmt: skip
        for row, want in zip(rows, expected, strict=True):
            got = row["results"]["hybrid"]
            assert got["label"] == want.label and got["scores"] == pytest.approx(want.scores)
            parts = (row["results"]["finetune"]["latency_ms"], row["results"]["rag"]["latency_ms"])
            side_by_side = len(texts) == 1 and wait_ms > 0  # else the parts ran one after the other
            assert got["latency_ms"] == pytest.approx(max(parts) if side_by_side else sum(parts), abs=0.02)
    alone = service.classify(["x"], backends=["hybrid"])[0]["results"]  # without its parts: it runs itself
    assert list(alone) == ["hybrid"] and alone["hybrid"]["label"] == expected[0].label
    service.close()


def test_a_batcher_given_threads_runs_its_model_on_them_and_other_threads_keep_theirs():
    import torch

    counts: list[int] = []

    class ThreadCounter(Recorder):
        def predict(self, texts):
            counts.append(torch.get_num_threads())
            return super().predict(texts)

    before = torch.get_num_threads()
    want = 2 if before == 1 else 1  # differs from the process's count, whatever the test worker runs with
    batcher = MicroBatcher(ThreadCounter(), wait_ms=0, threads=want)
    batcher.predict_one("x")
    assert counts == [want] and torch.get_num_threads() == before
    seen = []
    fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))  # a thread started afterwards
    fresh.start(), fresh.join()
    assert seen == [before]
    batcher.close()


def test_length_batches_hold_every_text_once_shortest_first_within_the_budget():
    import random

    from core.batches import length_batches

    rng = random.Random(0)
    lengths = [rng.randint(1, 60) for _ in range(200)] + [500]  # one text longer than the budget
    batches = length_batches(lengths, max_tokens=384, max_texts=32)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    flat = [lengths[i] for b in batches for i in b]
    assert flat == sorted(lengths)
    for b in batches:
        assert len(b) <= 32 and (len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 384)
    # as few batches as the budget allows: joining any two neighbours would break it
    for a, b in itertools.pairwise(batches):
        joined = a + b
        assert len(joined) > 32 or len(joined) * max(lengths[i] for i in joined) > 384


def test_a_batcher_whose_threads_cannot_be_set_still_serves(monkeypatch):
    def refuse(threads):
        raise RuntimeError("no threads for you")

    monkeypatch.setattr("serving.batching._use_torch_threads", refuse)
    batcher = MicroBatcher(Recorder(), wait_ms=0, threads=1)  # returns: the worker said it is up either way
    assert batcher.predict_one("ab").label == "even"
    batcher.close()


def test_batchers_made_before_the_line_up_is_complete_get_their_share_once_it_is():
    from serving.service import Service

    first, second = Scorer("finetune", 0.9), Scorer("rag", 0.2)
    service = Service(backends={"finetune": first}, batch_wait_ms=5)
    service.classify(["x"])
    early = service._batchers["finetune"]
    assert early.threads is None  # a single backend: the process's own thread count
    service.backends = {**service.backends, "rag": second}
    service.classify(["x"])
    later = service._batchers["finetune"]
    assert later is not early and later.threads == max(1, service._cores // 2)
    assert service._batchers["rag"].threads == later.threads
    service.close()
