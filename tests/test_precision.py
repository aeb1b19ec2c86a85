"""Serving precision and runtime (`core.precision`): what is served is what the report and /api/models name, `auto`
refuses a candidate that answers unlike fp32, and a CPU without the instructions serves fp32 and says so."""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest

import compare.precision
import core.precision as precision
import finetune
import rag
from compare.precision import choose
from core.precision import FP32, Hardware, Variant, from_setting, served, served_name

NO_INSTRUCTIONS = Hardware("DEFAULT", frozenset())
"""A CPU with neither bf16 nor int8 kernels (an old laptop, a small cloud machine)."""
EVERYTHING = Hardware("AVX512", frozenset({"avx2", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"}))
TEXTS = ["I love this!", "meh", "worst day of my life, everything went wrong " * 3, "ok then", "thanks a lot"]


@pytest.fixture()
def bare_cpu(monkeypatch):
    monkeypatch.setattr(precision, "_detected", lambda: NO_INSTRUCTIONS)


def needs_int8_kernels():
    if not Hardware.detect().int8:
        pytest.skip("this CPU has no int8 kernels (AVX2)")


def test_the_setting_is_checked_and_fp32_by_default(monkeypatch):
    monkeypatch.delenv(precision.PRECISION_ENV, raising=False)
    monkeypatch.delenv(precision.RUNTIME_ENV, raising=False)
    assert from_setting() == (FP32, "fp32 (the default)")
    assert from_setting("auto")[0] == FP32  # until measured
    with pytest.raises(ValueError, match="fp16"):
        from_setting("fp16")
    monkeypatch.setenv(precision.RUNTIME_ENV, "tensorrt")
    with pytest.raises(ValueError, match="tensorrt"):
        from_setting()
    with pytest.raises(ValueError, match="bf16 is served by the torch runtime only"):
        Variant("bf16", "onnxruntime")


def test_a_cpu_without_the_instructions_serves_fp32_and_says_so(bare_cpu, ft_dir):
    for asked in ("bf16", "int8"):
        clf = finetune.load(ft_dir, precision=asked)
        assert clf.serving["precision"] == "fp32" and clf.variant == FP32
        assert f"{asked} was asked for, but this CPU has no" in clf.serving["why"]
    assert "no bf16 instructions" in from_setting("bf16")[1] and "need AVX2" in from_setting("int8")[1]
    eager = finetune.load(ft_dir)
    assert clf.predict_proba(TEXTS) == pytest.approx(eager.predict_proba(TEXTS), abs=1e-5)  # plain fp32
    assert EVERYTHING.missing(Variant("bf16")) is None and EVERYTHING.missing(Variant("int8")) is None


def test_this_cpu_is_read_not_assumed():
    hardware = Hardware.detect()
    flags = open("/proc/cpuinfo").read()  # noqa: SIM115 - Linux, as every machine this runs on
    assert hardware.bf16 == ("avx512_bf16" in flags or "amx_bf16" in flags)
    assert hardware.describe().startswith(hardware.capability)


def test_int8_serves_close_to_fp32_and_a_batch_answers_as_each_text_alone(ft_dir):
    needs_int8_kernels()
    fp32, int8 = finetune.load(ft_dir), finetune.load(ft_dir, precision="int8")
    batch = int8.predict_proba(TEXTS)
    assert int8.serving == {"precision": "int8", "runtime": "torch", "why": "int8 as set"}
    assert "served int8" in int8.describe()
    alone = np.vstack([int8.predict_proba([t]) for t in TEXTS])
    assert batch == pytest.approx(alone, abs=Variant("int8").tolerance)  # to the precision served
    assert batch == pytest.approx(fp32.predict_proba(TEXTS), abs=Variant("int8").tolerance)
    assert int8.serving["precision"] == "int8"  # still int8 after answering: nothing fell back


def test_the_report_row_and_api_models_name_the_served_precision(ft_dir, small_test):
    from compare.evaluation import evaluate
    from compare.report import headline_rows
    from serving.service import Service

    needs_int8_kernels()
    service = Service(backends={"finetune": finetune.load(ft_dir, precision="int8"), "fp32": finetune.load(ft_dir)})
    report = evaluate(service.backends, small_test.select(range(30)), latency_queries=3, batch_rounds=1)
    models = service.models()
    for name in ("finetune", "fp32"):
        assert report["backends"][name]["serving"] == models["backends"][name]["serving"]
    rows = {row["backend"].split(" (")[0]: row for row in headline_rows(report)}  # the tiny model did not learn
    assert rows["finetune"]["served as"] == "int8" and rows["fp32"]["served as"] == "fp32"
    assert "finetune vs fp32" in report["agreement"]  # side by side, with their agreement
    assert models["precision"]["setting"] == "fp32" and models["precision"]["hardware"] == Hardware.detect().describe()
    from serving.ui import models_markdown

    assert "served as int8 (torch): int8 as set" in models_markdown(service)  # the Models tab says it too


class FakeBackend:
    """A backend whose variants answer at chosen speeds and with chosen mistakes (for `choose`)."""

    def __init__(self, labels: list[str], ms: dict[str, float], wrong: dict[str, list[int]], swap: dict[str, str]):
        self.labels, self.ms, self.wrong, self.swap = labels, ms, wrong, swap
        self.variant = FP32

    def serve_as(self, variant: Variant) -> None:
        self.variant = variant

    def predict(self, texts):
        name = self.variant.name
        time.sleep(self.ms[name] * len(texts) / 1000)
        out = []
        for text in texts:
            i = int(text)
            label = self.labels[i]
            if i in self.wrong[name]:
                label = self.swap.get(name, "x" if label != "x" else "y")
            out.append(SimpleNamespace(label=label))
        return out


def test_auto_serves_the_fastest_candidate_that_answers_like_fp32_and_refuses_the_others():
    n = 200
    labels = [("a", "b", "c")[i % 3] for i in range(n)]
    wrong_fp32 = list(range(0, n, 5))  # fp32 is right on 80%
    backend = FakeBackend(
        labels,
        ms={"fp32": 2.0, "int8": 0.2, "onnxruntime fp32": 1.0, "onnxruntime int8": 0.3},
        wrong={
            "fp32": wrong_fp32,
            "int8": list(range(0, n, 2)),  # fastest, but right on 50%: outside fp32's interval
            "onnxruntime fp32": wrong_fp32,
            "onnxruntime int8": wrong_fp32,  # as accurate, but wrong in another way: agrees on 80%
        },
        swap={"onnxruntime int8": "z"},
    )
    texts = [str(i) for i in range(n)]
    hardware = Hardware("AVX2", frozenset({"avx2"}))  # int8, no bf16
    chosen, record = choose(backend.serve_as, backend.predict, texts, labels, hardware=hardware)
    trials = {t["variant"]: t for t in record["candidates"]}
    assert chosen == Variant("fp32", "onnxruntime") and backend.variant == chosen and record["served"] == chosen.name
    assert "below fp32's interval" in trials["int8"]["refused"] and trials["int8"]["accuracy"] == 0.5
    assert "label on 80.0%" in trials["onnxruntime int8"]["refused"]
    assert "no bf16 instructions" in trials["bf16"]["refused"] and trials["bf16"]["accuracy"] is None
    assert trials["fp32"]["agreement"] == 1.0 and trials["onnxruntime fp32"]["refused"] is None
    assert record["why"].startswith("auto: onnxruntime fp32 is the fastest") and "x fp32's speed" in record["why"]
    low, high = record["fp32_interval"]
    assert low < 0.8 < high

    # Nothing good enough beside fp32: fp32 is served.
    backend.wrong["onnxruntime fp32"] = backend.wrong["int8"]
    chosen, record = choose(backend.serve_as, backend.predict, texts, labels, hardware=hardware)
    assert chosen == FP32 and backend.variant == FP32 and record["served"] == "fp32"


def test_the_service_chooses_with_auto_and_reports_the_trials(ft_dir, small_test, monkeypatch):
    from serving.service import Service

    needs_int8_kernels()
    monkeypatch.setattr(compare.precision, "candidates", lambda: [FP32, Variant("int8")])
    service = Service(precision="auto")
    clf = finetune.load(ft_dir)
    validation = small_test.select(range(80))
    service._serve_precision("finetune", clf, SimpleNamespace(parts=lambda: (None, validation, None)), lambda *a: None)
    service._add("finetune", clf)
    models = service.models()
    record = models["precision"]["auto"]["finetune"]
    assert record["served"] == served_name(models["backends"]["finetune"]["serving"]) == served_name(clf.serving)
    assert models["backends"]["finetune"]["serving"]["why"] == record["why"] and record["why"].startswith("auto: ")
    assert [t["variant"] for t in record["candidates"]] == ["fp32", "int8"] and record["validation_size"] == 80


def test_onnxruntime_serves_the_same_answers_on_the_threads_it_is_given(ft_dir):
    pytest.importorskip("onnxruntime")
    fp32, ort = finetune.load(ft_dir), finetune.load(ft_dir, runtime="onnxruntime")
    assert ort.serving["runtime"] == "onnxruntime" and ort.serving["precision"] == "fp32"
    assert ort.predict_proba(TEXTS) == pytest.approx(fp32.predict_proba(TEXTS), abs=1e-3)
    alone = np.vstack([ort.predict_proba([t]) for t in TEXTS])
    assert alone == pytest.approx(ort.predict_proba(TEXTS), abs=1e-3)
    assert ort.serving["runtime"] == "onnxruntime"  # it answered; nothing fell back
    from serving.batching import _use_torch_threads

    def one_thread():
        _use_torch_threads(1)
        ort.predict_proba(TEXTS[:1])

    worker = threading.Thread(target=one_thread)
    worker.start(), worker.join()
    assert 1 in ort._traced._sessions  # a session sized for the worker's one thread


def test_the_embedder_serves_int8_for_queries_and_keeps_its_fp32_fingerprint(embedder):
    needs_int8_kernels()
    int8 = rag.Embedder(embedder.model, embedder.name)
    assert int8.serve_as(Variant("int8")) is None and int8.serving["precision"] == "int8"
    vectors, reference = int8.encode(TEXTS), embedder.encode(TEXTS)
    assert np.all((vectors * reference).sum(axis=1) > 1 - Variant("int8").tolerance)
    assert float(int8.probe @ embedder.probe) == pytest.approx(1.0, abs=1e-5)  # an index built in fp32 still loads
    assert int8.weight_bytes() < 1.5 * rag.Embedder(embedder.model, embedder.name, trace=False).weight_bytes()


def test_a_variant_that_cannot_be_compiled_serves_fp32_and_says_so(embedder, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("not traceable")

    monkeypatch.setattr("torch.jit.trace", refuse)
    fresh = rag.Embedder(embedder.model, embedder.name, variant=Variant("bf16"), serving_why="bf16 as set")
    vector = fresh.encode(["still works"])
    assert fresh.serving["precision"] == "fp32" and "could not be compiled" in fresh.serving["why"]
    assert float(vector[0] @ embedder.encode(["still works"])[0]) == pytest.approx(1.0, abs=1e-5)


def test_a_hybrid_follows_its_parts():
    part = SimpleNamespace(serving={"precision": "int8", "runtime": "torch", "why": "x"})
    embedder = SimpleNamespace(serving={"precision": "fp32", "runtime": "onnxruntime", "why": "y"})
    hybrid = SimpleNamespace(primary=part, secondary=SimpleNamespace(embedder=embedder))
    assert served(hybrid)["why"] == "follows its parts: int8 and onnxruntime fp32"
    assert served(SimpleNamespace()) is None and served_name(None) == "n/a"


def test_the_app_takes_the_setting_as_flags():
    import app

    assert app.parse_args(["--precision", "auto", "--runtime", "onnxruntime"]).precision == "auto"
    assert app.parse_args([]).precision is None  # FTRAG_PRECISION, else fp32
    with pytest.raises(SystemExit) as exit_:
        app.parse_args(["--precision", "fp16"])
    assert exit_.value.code == 2


def test_auto_times_each_candidate_on_the_threads_it_will_be_served_on():
    """Served beside another backend, a batcher runs on its share of the cores: the candidates are timed on that
    many threads (a variant's gain on two threads is not its gain on one), and the process's setting is restored."""
    import torch

    n = 40
    labels = [("a", "b")[i % 2] for i in range(n)]
    backend = FakeBackend(labels, ms=dict.fromkeys(("fp32", "int8"), 0.0), wrong={"fp32": [], "int8": []}, swap={})
    seen = []

    def predict(texts):
        seen.append((len(texts), torch.get_num_threads()))
        return backend.predict(texts)

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        hardware = Hardware("AVX2", frozenset({"avx2"}))
        texts = [str(i) for i in range(n)]
        _, record = choose(backend.serve_as, predict, texts, labels, hardware, [FP32, Variant("int8")], threads=1)
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(before)
    scoring = [threads for size, threads in seen if size == n]  # each candidate's pass over the validation part
    timing = [threads for size, threads in seen if size < n]
    assert scoring == [2, 2] and timing and set(timing) == {1}
    assert record["timed_threads"] == 1 and "on 1 thread;" in record["why"]
