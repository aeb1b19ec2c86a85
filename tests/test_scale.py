"""Retrieval at scale: the index type follows the size, approximate recall is measured and recorded, additions
never copy the index, embeddings stream and resume, and the examples can live in a vector engine (Qdrant)."""

from __future__ import annotations

import os
import threading

import faiss
import numpy as np
import pytest

import rag
from core.cli import parse_config
from rag import RagClassifier, RagConfig
from rag.build import build_classifier, embed_resumable, main
from rag.engine import QdrantIndex, VectorStoreError, connect, parse_store
from rag.index import EXACT_MAX, VectorIndex, choose_index

EXAMPLE = "the zorblax gadget is absolutely wonderful"


@pytest.fixture(scope="module")
def hnsw_built(small_train, embedder) -> RagClassifier:
    """An HNSW index over 300 real tweets, k=25, with its recall measured on 30 held-out tweets."""
    cfg = RagConfig(index_type="hnsw", tune=False, k=25, recall_queries=30)
    return rag.build_index(cfg, small_train, embedder=embedder, show_progress=False)


# --- the index type follows the size ---------------------------------------------------------------------------


def test_auto_is_exact_while_cheap_then_hnsw_then_ivfpq_when_memory_is_short():
    assert choose_index("auto", EXACT_MAX, 384)[0] == "flat"
    kind, why = choose_index("auto", EXACT_MAX + 1, 384)
    assert kind == "hnsw" and "GB" in why
    assert choose_index("auto", 1_000_000, 384, memory_gb=1.0)[0] == "ivfpq"
    assert choose_index("flat", 10_000_000, 384) == ("flat", "flat as requested")
    with pytest.raises(ValueError, match="unknown index type 'annoy'"):
        choose_index("annoy", 10, 4)


def test_the_index_flag_overrides_the_rule(small_train, embedder):
    cfg, _ = parse_config(RagConfig, ["--index", "ivfpq"], "build")
    assert cfg.index_type == "ivfpq" and RagConfig().index_type == "auto"
    clf = rag.build_index(RagConfig(tune=False, k=5), small_train, embedder=embedder, show_progress=False)
    assert clf.index.kind == "flat" and clf.meta["index"]["chosen"] == "flat" and clf.meta["approximate"] is None
    assert "exact search" in clf.meta["index"]["why"]


# --- recall recorded -------------------------------------------------------------------------------------------


def test_an_approximate_index_records_its_recall_and_vote_agreement_at_the_served_k(hnsw_built, tmp_path):
    measured = hnsw_built.meta["approximate"]
    assert measured["k"] == hnsw_built.k == 25 and measured["queries"] == 30
    assert 0.9 <= measured["recall_at_k"] <= 1.0 and 0.9 <= measured["vote_agreement"] <= 1.0
    assert measured["effort"] >= 25  # HNSW's efSearch is at least k, or it cannot find k good hits
    assert hnsw_built.index.effort == measured["effort"]
    assert f"recall@25 {measured['recall_at_k']:.3f}" in hnsw_built.describe()
    saved = rag.load(hnsw_built.save(tmp_path / "hnsw"), embedder=hnsw_built.embedder)
    assert saved.meta["approximate"] == measured and saved.index.effort == measured["effort"]
    assert saved.index.kind == "hnsw" and saved.describe() == hnsw_built.describe()


def test_ivfpq_reranks_deeper_once_probing_more_cells_no_longer_reaches_the_recall(embedder, tmp_path):
    """IVF-PQ's re-ranking depth is part of the tuned effort: when every cell is probed and recall@k still falls short
    (random vectors: the compressed codes rank them poorly), deeper re-ranking is tried, and the depth chosen is
    served and saved like the cells probed."""
    from datasets import Dataset

    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4000, embedder.dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    dataset = Dataset.from_dict({"text": [f"example {i}" for i in range(4000)],
                                 "label": rng.choice(["a", "b", "c"], 4000).tolist()})  # fmt: skip
    cfg = RagConfig(index_type="ivfpq", tune=False, k=50, recall_queries=100)
    clf = build_classifier(cfg, dataset, embedder=embedder, vectors=vectors, show_progress=False)
    measured = clf.meta["approximate"]
    depths = [row["rerank"] for row in measured["tried"]]
    assert depths[0] == 4 and measured["rerank"] > 4, measured["tried"]
    shallow = max(row["recall_at_k"] for row in measured["tried"] if row["rerank"] == 4)
    assert measured["recall_at_k"] > shallow + 0.05  # the deeper re-rank is what raised it
    assert clf.index.rerank == measured["rerank"]
    saved = rag.load(clf.save(tmp_path / "ivfpq"), embedder=embedder)
    assert saved.index.kind == "ivfpq"
    assert (saved.index.rerank, saved.index.effort) == (measured["rerank"], measured["effort"])


def test_recall_is_measured_against_exact_search_not_assumed(small_train, embedder, monkeypatch):
    """A search that misses every true neighbour must read as recall 0."""
    import rag.index

    monkeypatch.setattr(rag.index, "effort_grid", lambda kind, k: [(k, None)])
    original = VectorIndex.search

    def wrong(self, queries, k):
        scores, ids = original(self, queries, k)
        return scores, np.where(ids >= 0, (ids + 97) % len(self), -1)

    monkeypatch.setattr(VectorIndex, "search", wrong)
    cfg = RagConfig(index_type="hnsw", tune=False, k=5, recall_queries=20)
    clf = rag.build_index(cfg, small_train, embedder=embedder, show_progress=False)
    assert clf.meta["approximate"]["recall_at_k"] < 0.2


# --- adding never copies the index -----------------------------------------------------------------------------


def test_choosing_the_vote_finds_the_neighbours_an_index_of_the_rest_would_without_copying_the_vectors():
    """`rag.tuning.held_out_neighbours` answers as a flat index over the examples not held out (how the vote used to
    be chosen) while allocating nothing the size of the vectors (that copy was 1.5 GB at a million examples)."""
    import tracemalloc

    from rag.tuning import held_out_neighbours

    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((3000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    held = np.sort(rng.choice(len(vectors), 200, replace=False))
    rest = np.setdiff1d(np.arange(len(vectors)), held)
    reference = faiss.IndexFlatIP(16)
    reference.add(vectors[rest])
    want_scores, positions = reference.search(vectors[held], 50)
    scores, ids = held_out_neighbours(vectors, held, 50)
    assert np.array_equal(ids, rest[positions]) and np.allclose(scores, want_scores, atol=1e-5)
    assert not np.isin(ids, held).any()

    big = rng.standard_normal((200_000, 16)).astype(np.float32)  # 12.8 MB
    tracemalloc.start()
    held_out_neighbours(big, np.arange(0, 200_000, 5_000), 50)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < big.nbytes / 4


def test_add_and_teach_append_in_place_without_copying_the_index(hnsw_built, tmp_path, monkeypatch):
    clf = hnsw_built.copy()
    main_index = clf.index.index
    assert main_index is hnsw_built.index.index  # a copy shares the main index too

    def no_copy(*args, **kwargs):
        raise AssertionError("the index was copied")

    monkeypatch.setattr(faiss, "clone_index", no_copy)
    assert clf.add([EXAMPLE], ["positive"]) == 301
    clf.open_log(tmp_path / "log.sqlite")
    [taught] = clf.teach(["llamas are fine I guess"], ["neutral"])
    assert clf.index.index is main_index and clf.index.delta.ntotal == 2 and clf.size == 302
    assert clf.retrieve("zorblax gadget", 1)[0]["text"] == EXAMPLE
    assert hnsw_built.size == 300 and EXAMPLE not in hnsw_built.examples()[0]  # the original is untouched
    assert clf.forget(taught["id"]) and clf.size == 301


def test_add_to_a_saved_index_links_the_unchanged_main_file_and_is_all_or_nothing(rag_built, tmp_path, monkeypatch):
    clf = rag_built.copy()
    directory = clf.save(tmp_path / "rag")
    clf.directory = directory
    inode = (directory / "index.faiss").stat().st_ino
    clf.add([EXAMPLE], ["positive"])
    assert (directory / "index.faiss").stat().st_ino == inode  # the main index was not written again
    assert (directory / "index.delta.faiss").is_file()
    loaded = rag.load(directory, embedder=clf.embedder)
    assert loaded.size == 301 and loaded.retrieve("zorblax gadget", 1)[0]["text"] == EXAMPLE

    def full_disk(*args, **kwargs):
        raise OSError("no space left on device")

    monkeypatch.setattr("rag.store.staged_dir", full_disk)
    before = clf.predict(["zorblax gadget"])[0]
    with pytest.raises(OSError, match="no space"):
        clf.add(["another zorblax gadget, terrible"], ["negative"])
    assert clf.size == 301 and len(clf.index) == 301 and clf.meta["added"] == 1
    assert clf.predict(["zorblax gadget"])[0] == before


def test_predict_runs_beside_add(hnsw_built):
    clf = hnsw_built.copy()
    errors = []

    def ask():
        try:
            for _ in range(20):
                [p] = clf.predict(["what a lovely day"])
                assert p.label in clf.labels
        except Exception as err:  # pragma: no cover - the failure is reported below
            errors.append(err)

    threads = [threading.Thread(target=ask) for _ in range(2)]
    for t in threads:
        t.start()
    for i in range(20):
        clf.add([f"example number {i} is great"], ["positive"])
    for t in threads:
        t.join()
    assert not errors and clf.size == 320


# --- embedding at scale ----------------------------------------------------------------------------------------


def test_embedding_streams_to_disk_and_resumes_after_an_interruption(embedder, small_train, tmp_path):
    texts = list(small_train["text"][:50])
    path = tmp_path / "v.npy"
    calls, resumed = [], []

    class Interrupted(type(embedder)):
        def encode(self, batch, **kwargs):
            calls.append(len(batch))
            if len(calls) == 3 and not resumed:
                raise KeyboardInterrupt
            return super().encode(batch, **kwargs)

    flaky = Interrupted(embedder.model, embedder.name)
    assert flaky.probe.shape == (embedder.dim,)  # computed once, before the chunks are counted
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        embed_resumable(flaky, texts, path, show_progress=False, chunk=10)
    assert calls == [10, 10, 10]  # two chunks done, the third interrupted
    calls.clear()
    resumed.append(True)
    vectors = embed_resumable(flaky, texts, path, show_progress=False, chunk=10)
    assert calls == [10, 10, 10]  # resumed at row 20
    assert np.allclose(vectors, embedder.encode(texts), atol=1e-5)


# --- the vector engine -----------------------------------------------------------------------------------------


def test_bad_vector_store_uris_are_one_clear_error():
    for uri, message in [
        ("", "empty vector-store URI"),
        ("qdrant.example", "unsupported vector-store URI"),
        ("ftp://host/c", "unsupported vector-store URI"),
        ("http://host:99999/c", "malformed vector-store URI"),
        ("http://host/a/b", "bad collection name"),
    ]:
        with pytest.raises(VectorStoreError, match=message):
            parse_store(uri)
    with pytest.raises(ValueError, match="unsupported vector-store URI"):
        RagConfig(vector_store="/some/folder")
    with pytest.raises(VectorStoreError, match="cannot reach the vector engine at http://127.0.0.1:9"):
        connect("http://127.0.0.1:9/examples")


def test_rag_build_cli_refuses_an_unreachable_engine_in_one_line(capsys, data_dir, tmp_path):
    out = str(tmp_path / "out")
    status = main(
        ["--data", str(data_dir), "--train-size", "30", "--vector-store", "http://127.0.0.1:9/t", "--out", out]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1 and err[0].startswith("error: cannot reach the vector engine")
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def engine_built(small_train, embedder) -> RagClassifier:
    cfg = RagConfig(tune=False, k=10, vector_store="memory://test-scale")
    return build_classifier(cfg, small_train, embedder=embedder, show_progress=False, overwrite=True)


def test_the_engine_answers_as_exact_faiss_does(engine_built, rag_built, small_train, embedder, small_test):
    flat = rag.build_index(RagConfig(tune=False, k=10), small_train, embedder=embedder, show_progress=False)
    texts = list(small_test["text"][:40])
    for a, b in zip(engine_built.predict(texts), flat.predict(texts), strict=True):
        assert a.label == b.label and a.scores == pytest.approx(b.scores, abs=1e-4)
        assert [e["text"] for e in a.evidence][:3] == [e["text"] for e in b.evidence][:3]
    assert engine_built.index.kind == "qdrant" and "Qdrant collection examples" in engine_built.describe()


def test_an_engine_index_saves_only_where_it_is_and_loads_back_from_it(small_train, embedder, tmp_path):
    cfg = RagConfig(tune=False, k=10, vector_store="memory://test-reload")
    clf = build_classifier(cfg, small_train.select(range(80)), embedder=embedder, show_progress=False)
    directory = clf.save(tmp_path / "rag")
    assert sorted(p.name for p in directory.iterdir()) == ["run.json"]
    clf.directory = directory
    clf.open_log()
    clf.add([EXAMPLE], ["positive"])
    [taught] = clf.teach(["llamas are fine I guess"], ["neutral"])
    store = connect("memory://test-reload")
    assert store.count("examples", exact=True).count == 82  # added and taught examples went to the engine
    loaded = rag.load(directory, embedder=embedder)
    assert loaded.size == 82 and loaded.retrieve("zorblax gadget", 1)[0]["text"] == EXAMPLE
    assert loaded.forget(taught["id"]) and store.count("examples", exact=True).count == 81
    assert rag.load(directory, embedder=embedder).size == 81  # the taught one is not replayed back


def test_an_engine_collection_that_does_not_fit_is_refused_and_left_as_it_was(engine_built, small_train, embedder):
    uri = "memory://test-scale"
    store = connect(uri)
    with pytest.raises(VectorStoreError, match="holds 384-d vectors, not 8-d ones"):
        QdrantIndex.check(uri, 8, engine_built.labels)
    with pytest.raises(VectorStoreError, match="has the labels"):
        QdrantIndex.check(uri, 384, ["joy", "anger"])
    cfg = RagConfig(tune=False, k=10, vector_store=uri)
    with pytest.raises(FileExistsError, match="already holds 300 examples; pass --overwrite"):
        build_classifier(cfg, small_train.select(range(40)), embedder=embedder, show_progress=False)
    assert store.count("examples", exact=True).count == 300


def test_a_failed_write_leaves_no_collection(small_train, embedder, monkeypatch):
    uri = "memory://test-failed"

    def broken(self, vectors, payloads=None):
        raise VectorStoreError("writing to memory://test-failed failed: the engine went away")

    monkeypatch.setattr(QdrantIndex, "add", broken)
    with pytest.raises(VectorStoreError, match="went away"):
        build_classifier(RagConfig(tune=False, vector_store=uri), small_train, embedder=embedder, show_progress=False)
    assert not connect(uri).collection_exists("examples")


def test_a_copy_of_an_engine_index_never_writes_to_the_engine(engine_built):
    sandbox = engine_built.copy()
    sandbox.add([EXAMPLE], ["positive"])
    assert sandbox.retrieve("zorblax gadget", 1)[0]["text"] == EXAMPLE
    assert connect("memory://test-scale").count("examples", exact=True).count == 300 == engine_built.size


def test_the_app_serves_from_the_engine(ft_dir, small_train, embedder, tmp_path):
    import shutil

    from serving.service import Service

    root = tmp_path / "artifacts"
    root.mkdir()
    shutil.copytree(ft_dir, root / "finetune")
    cfg = RagConfig(tune=False, k=10, vector_store="memory://test-app")
    clf = build_classifier(cfg, small_train, embedder=embedder, show_progress=False, overwrite=True)
    clf.save(root / "rag")
    assert not (root / "rag" / "index.faiss").exists()
    service = Service.start(root, build_missing=False)
    [answer] = service.classify(["what a lovely day"], ["rag"])
    assert answer["results"]["rag"]["label"] in clf.labels and answer["results"]["rag"]["evidence"]
    result = service.teach([EXAMPLE], ["positive"])
    assert result["index_size"] == 301
    assert connect("memory://test-app").count("examples", exact=True).count == 301
    top = service.classify(["zorblax gadget"], ["rag"])[0]["results"]["rag"]["evidence"][0]["text"]
    assert top == EXAMPLE
    assert os.path.exists(root / "rag.teach.sqlite")
