"""Fast tests run offline: the Hub is never touched, and every cache lives in a temporary directory."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

# Before any Hugging Face library is imported: offline, with caches that start empty and vanish afterwards.
_CACHE = tempfile.mkdtemp(prefix="ftrag-tests-hf-")
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_HOME"] = _CACHE
os.environ["HF_DATASETS_CACHE"] = os.path.join(_CACHE, "datasets")
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
if os.environ.get("PYTEST_XDIST_WORKER"):  # one of several test processes: one CPU thread each, or they thrash
    os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FTRAG_SHARED", REPO.parent / "shared")).resolve()


@pytest.fixture(autouse=True)
def operator_allows_shared_teaching(monkeypatch):
    """The tests run as an operator who allowed teaching the shared index (``FTRAG_TEACH_SHARED=1``; off by
    default); the tests of that default unset it."""
    monkeypatch.setenv("FTRAG_TEACH_SHARED", "1")


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The offline data and model files that sit beside the checkout."""
    if not SHARED.is_dir():
        pytest.fail(f"shared files not found at {SHARED}; set FTRAG_SHARED to their directory")
    return SHARED


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "tweet_sentiment_extraction"


@pytest.fixture(scope="session")
def tweets(data_dir: Path):
    """The real dataset, both splits, loaded once."""
    from core.data import load_tweets

    return load_tweets(str(data_dir))


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No FTRAG_* source variables, so each test states the ones it needs."""
    for var in ("FTRAG_DATA", "FTRAG_BASE_MODEL", "FTRAG_TOKENIZER", "FTRAG_EMBEDDER", "HF_ENDPOINT"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


@pytest.fixture(scope="session")
def small_train(data_dir: Path):
    """300 real training tweets (seeded, stratified)."""
    from core.data import load_tweets

    return load_tweets(str(data_dir), split="train", limit=300, seed=0)


@pytest.fixture(scope="session")
def small_test(data_dir: Path):
    """300 real test tweets (seeded, stratified)."""
    from core.data import load_tweets

    return load_tweets(str(data_dir), split="test", limit=300, seed=0)


@pytest.fixture(scope="session")
def embedder():
    """The packaged all-MiniLM-L6-v2, loaded once."""
    from rag.embed import Embedder

    return Embedder.load()


@pytest.fixture(scope="session")
def rag_built(small_train, embedder):
    """A RAG classifier over 300 real tweets, tuned on a 60-tweet validation slice; tests must not mutate it."""
    from rag import RagConfig, build_index

    return build_index(RagConfig(val_size=60, k_grid=(5, 10, 25)), small_train, embedder=embedder, show_progress=False)


@pytest.fixture()
def rag_dir(rag_built, tmp_path: Path) -> Path:
    """A fresh saved copy of `rag_built` in this test's tmp dir."""
    return rag_built.save(tmp_path / "rag")


@pytest.fixture(scope="session")
def ft_dir(shared_dir: Path, small_train, tmp_path_factory) -> Path:
    """The tiny random GPT-2 fine-tuned for 2 epochs on 240 real tweets (60 more held out), saved once."""
    from finetune.config import FinetuneConfig
    from finetune.train import train

    out = tmp_path_factory.mktemp("finetune") / "model"
    cfg = FinetuneConfig(
        base_model=str(shared_dir / "models" / "tiny-random-gpt2"), eval_size=60, epochs=2, out=str(out)
    )
    train(cfg, small_train, show_progress=False)
    return out


@pytest.fixture(scope="session")
def finetuned(ft_dir: Path):
    """The saved tiny fine-tuned model, loaded; tests must not mutate it."""
    import finetune

    return finetune.load(ft_dir)


@pytest.fixture(scope="session")
def emotion_labels() -> list[str]:
    """TweetEval emotion's labels in the order of its ids (0-3): a label set other than the default's."""
    return ["anger", "joy", "optimism", "sadness"]


@pytest.fixture(scope="session")
def emotion_dir(shared_dir: Path) -> Path:
    return shared_dir / "data" / "tweeteval_emotion"


@pytest.fixture(scope="session")
def emotion_train(emotion_dir: Path):
    """200 real training tweets of TweetEval emotion (4 labels), seeded and stratified."""
    from core.data import load_tweets

    return load_tweets(str(emotion_dir), split="train", limit=200, seed=0)


@pytest.fixture(scope="session")
def emotion_test(emotion_dir: Path):
    """120 real test tweets of TweetEval emotion, seeded and stratified."""
    from core.data import load_tweets

    return load_tweets(str(emotion_dir), split="test", limit=120, seed=0)


@pytest.fixture(scope="session")
def emotion_rag(emotion_train, embedder):
    """A RAG classifier over 200 emotion tweets, k and the weighting tuned; tests must not mutate it."""
    from rag import RagConfig, build_index

    cfg = RagConfig(val_size=40, k_grid=(5, 10))
    return build_index(cfg, emotion_train, embedder=embedder, show_progress=False)


@pytest.fixture(scope="session")
def emotion_ft_dir(shared_dir: Path, emotion_dir: Path, tmp_path_factory) -> Path:
    """The tiny random GPT-2 fine-tuned for 1 epoch on 160 emotion tweets read from --data (40 more held out)."""
    from finetune.config import FinetuneConfig
    from finetune.train import train

    out = tmp_path_factory.mktemp("finetune-emotion") / "model"
    cfg = FinetuneConfig(
        base_model=str(shared_dir / "models" / "tiny-random-gpt2"),
        data=str(emotion_dir),
        train_size=160,
        eval_size=40,
        epochs=1,
        min_steps=10,  # 1 epoch as said: these tests are about the label set, not the protocol
        out=str(out),
    )
    train(cfg, show_progress=False)
    return out


@pytest.fixture(scope="session")
def emotion_finetuned(emotion_ft_dir: Path):
    """The tiny fine-tune on emotion, loaded; tests must not mutate it."""
    import finetune

    return finetune.load(emotion_ft_dir)


@pytest.fixture()
def app_artifacts(ft_dir: Path, rag_dir: Path, tmp_path: Path) -> Path:
    """An artifacts directory as the app expects it: fresh copies of the tiny fine-tune and the small index."""
    root = tmp_path / "artifacts"
    root.mkdir()
    shutil.copytree(ft_dir, root / "finetune")
    shutil.copytree(rag_dir, root / "rag")
    return root


@pytest.fixture()
def serve():
    """``serve(asgi_app) -> url``: run an app with uvicorn on a free local port for the rest of the test."""
    import socket
    import threading
    import time

    import uvicorn

    servers = []

    def start(asgi_app) -> str:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        server = uvicorn.Server(uvicorn.Config(asgi_app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        servers.append((server, thread))
        deadline = time.time() + 30
        while not server.started and time.time() < deadline:
            time.sleep(0.05)
        return f"http://127.0.0.1:{port}/"

    yield start
    for server, thread in servers:
        server.should_exit = True
        server.force_exit = True  # do not wait for open streams (a gradio_client's heartbeat) to close
        thread.join(timeout=10)
