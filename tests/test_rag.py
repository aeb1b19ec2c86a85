from __future__ import annotations

import errno
import json
import os
import threading
from pathlib import Path

import faiss
import numpy as np
import pytest

import rag
from core.settings import SourceError
from core.types import LABELS, Prediction
from rag import ArtifactError, Embedder, EmbedderError, RagClassifier, RagConfig, VectorIndex, vote
from rag.build import main as build_main
from rag.classifier import EVIDENCE_SIZE
from rag.tuning import all_votes

# --- voting ---------------------------------------------------------------------------------------------------


def test_vote_weightings_by_hand():
    scores = np.array([[0.9, 0.6, 0.3]])
    ids = np.array([[0, 1, 2]])
    labels = np.array([2, 0, 0])  # positive, negative, negative
    assert vote(scores, ids, labels, 3, "uniform", 1.0)[0].tolist() == pytest.approx([2 / 3, 0, 1 / 3])
    assert vote(scores, ids, labels, 3, "similarity", 1.0)[0].tolist() == pytest.approx([0.9 / 1.8, 0, 0.9 / 1.8])
    e = np.exp([0.0, -3.0, -6.0])  # exp((s - max) / 0.1)
    expected = [(e[1] + e[2]) / e.sum(), 0, e[0] / e.sum()]
    assert vote(scores, ids, labels, 3, "softmax", 0.1)[0].tolist() == pytest.approx(expected)


def test_vote_ignores_missing_hits_and_handles_negative_similarities():
    scores = np.array([[-0.2, -0.5, 0.0]])
    ids = np.array([[1, 0, -1]])
    labels = np.array([0, 1])
    # every similarity is negative: one vote per real hit; the -1 (no hit) is ignored
    assert vote(scores, ids, labels, 3, "similarity", 1.0)[0].tolist() == pytest.approx([0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="weighting must be one of"):
        vote(scores, ids, labels, 3, "majority", 1.0)


# --- config ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"k": 0}, "k must be at least 1, got 0"),
        ({"weighting": "max"}, "weighting must be one of"),
        ({"temperature": 0}, "temperature must be positive"),
        ({"index_type": "annoy"}, "index_type must be one of"),
        ({"train_size": 0}, "train_size must be a positive integer"),
        ({"k_grid": ()}, "k_grid must hold positive integers"),
    ],
)
def test_config_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RagConfig(**kwargs)


# --- build, save, load, predict -------------------------------------------------------------------------------


def test_build_records_the_choice_made_on_a_validation_slice(rag_built):
    tuning = rag_built.meta["tuning"]
    assert tuning["validation_size"] == 60
    chosen = tuning["chosen"]
    assert (rag_built.k, rag_built.weighting) == (chosen["k"], chosen["weighting"])
    assert chosen["accuracy"] == max(row["accuracy"] for row in tuning["grid"])
    assert {(row["weighting"], row["temperature"]) for row in tuning["grid"]} == set(all_votes(RagConfig()))
    assert rag_built.size == 300  # the index holds every example, validation slice included
    assert rag_built.meta["train_size"] == 300 and rag_built.meta["build_seconds"] > 0


def test_predictions_follow_the_contract_and_beat_chance(rag_built, small_test):
    predictions = rag_built.predict(small_test["text"])
    assert len(predictions) == small_test.num_rows
    for p in predictions:
        assert p.label in LABELS and sum(p.scores.values()) == pytest.approx(1.0)
        assert 0 < len(p.evidence) <= EVIDENCE_SIZE
        sims = [e["score"] for e in p.evidence]
        assert sims == sorted(sims, reverse=True)
        assert {e["label"] for e in p.evidence} <= set(LABELS)
    accuracy = np.mean([p.label == y for p, y in zip(predictions, small_test["label"], strict=True)])
    assert accuracy > 0.45  # the majority class is 40% of the test slice; 300 examples already do better


def test_an_indexed_text_finds_itself_first(rag_built, small_train):
    text = small_train["text"][7]
    top = rag_built.predict([text])[0].evidence[0]
    assert top["text"] == text and top["label"] == small_train["label"][7]
    assert top["score"] == pytest.approx(1.0, abs=1e-4)


def test_save_load_round_trip(rag_built, rag_dir, small_test):
    assert sorted(p.name for p in rag_dir.iterdir()) == ["examples.parquet", "index.faiss", "run.json"]
    run = json.loads((rag_dir / "run.json").read_text())
    for key in ("embedder", "data_source", "size", "build_seconds", "embedding_dim", "k", "weighting", "tuning"):
        assert key in run
    assert run["embedding_dim"] == 384 and run["size"] == 300
    loaded = rag.load(rag_dir)
    texts = small_test["text"][:10]
    for a, b in zip(rag_built.predict(texts), loaded.predict(texts), strict=True):
        assert a.label == b.label
        assert a.scores == pytest.approx(b.scores, abs=1e-6)


def test_empty_and_long_queries_have_defined_results(rag_built):
    empty, blank, long = rag_built.predict(["", "  \n", "great " * 4000])
    assert empty == blank and empty.evidence == ()
    labels = rag_built.examples()[1]
    counts = {label: labels.count(label) for label in LABELS}
    shares = {label: n / rag_built.size for label, n in counts.items()}
    assert empty.scores == pytest.approx(shares)  # no query: the label shares of the examples
    assert len("great " * 4000) > 20_000 and long.label in LABELS and long.evidence


def test_predict_rejects_a_bare_string_and_non_strings(rag_built):
    with pytest.raises(TypeError, match="not a single string"):
        rag_built.predict("hello")
    with pytest.raises(TypeError, match="texts must be strings"):
        rag_built.predict(["ok", None])
    assert rag_built.predict([]) == []


def test_k_larger_than_the_corpus_uses_every_example(rag_built):
    texts, labels = rag_built.examples()
    clf = RagClassifier(rag_built.embedder, rag_built.index, texts, labels, k=10_000, weighting="uniform")
    p = clf.predict(["what a day"])[0]
    counts = [labels.count(label) / len(labels) for label in LABELS]
    assert list(p.scores.values()) == pytest.approx(counts)  # all 300 voted, one vote each


# --- adding examples live --------------------------------------------------------------------------------------


def test_add_is_searchable_at_once_and_persisted(rag_dir):
    clf = rag.load(rag_dir)
    before = clf.size
    novel = "the zorblax update made my whole week, zorblax rocks"
    assert clf.add([novel], ["positive"]) == before + 1
    first = clf.predict([novel])[0].evidence[0]
    assert first["text"] == novel and first["label"] == "positive"
    again = rag.load(rag_dir)
    assert again.size == before + 1 and again.meta["added"] == 1
    assert again.predict([novel])[0].evidence[0]["text"] == novel


@pytest.mark.parametrize(
    ("texts", "labels", "error", "message"),
    [
        (["a", "b"], ["positive"], ValueError, "2 texts but 1 labels"),
        (["fine"], ["joyful"], ValueError, r"unknown label\(s\) \['joyful'\]"),
        (["ok", "  "], ["neutral", "neutral"], ValueError, r"empty text at position\(s\) \[1\]"),
        ([], [], ValueError, "at least one"),
        ("text", ["neutral"], TypeError, "not a single string"),
    ],
)
def test_add_rejects_bad_input_and_changes_nothing(rag_dir, texts, labels, error, message):
    clf = rag.load(rag_dir)
    saved = (rag_dir / "index.faiss").read_bytes()
    with pytest.raises(error, match=message):
        clf.add(texts, labels)
    assert clf.size == 300 and (rag_dir / "index.faiss").read_bytes() == saved


def test_failed_save_during_add_loses_nothing(rag_dir, monkeypatch):
    clf = rag.load(rag_dir)
    files = {p.name: p.read_bytes() for p in rag_dir.iterdir()}

    def disk_full(index, path):
        with open(path, "wb") as handle:
            handle.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(faiss, "write_index", disk_full)
    with pytest.raises(OSError, match="No space left"):
        clf.add(["lost?"], ["neutral"])
    assert clf.size == 300 and len(clf.index) == 300  # memory unchanged: the add was not acknowledged
    assert {p.name: p.read_bytes() for p in rag_dir.iterdir()} == files  # disk unchanged, no temp files left
    assert [p.name for p in rag_dir.parent.iterdir() if p.name.startswith(".rag.tmp")] == []
    monkeypatch.undo()
    assert rag.load(rag_dir).size == 300


def test_crash_between_the_directory_swaps_is_recovered(rag_dir):
    # What a kill -9 between the two renames of a save leaves behind: only the previous copy.
    previous = rag_dir.with_name(rag_dir.name + ".previous")
    rag_dir.rename(previous)
    clf = rag.load(rag_dir)
    assert clf.size == 300 and rag_dir.is_dir() and not previous.exists()


def test_concurrent_adds_are_all_kept(rag_dir):
    clf = rag.load(rag_dir)
    errors = []

    def worker(n: int) -> None:
        try:
            for i in range(3):
                clf.add([f"thread {n} example {i} about nothing"], [LABELS[(n + i) % 3]])
                clf.predict([f"thread {n} query"])
        except Exception as err:  # pragma: no cover - reported below
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert clf.size == 318
    reloaded = rag.load(rag_dir)
    assert reloaded.size == 318
    assert {f"thread {n} example {i} about nothing" for n in range(6) for i in range(3)} <= set(reloaded.examples()[0])


# --- broken artifacts and mismatched embedders ----------------------------------------------------------------


def test_missing_directory():
    with pytest.raises(ArtifactError, match="no such index directory"):
        rag.load("/nonexistent/rag-index")


@pytest.mark.parametrize("name", ["index.faiss", "examples.parquet", "run.json"])
def test_missing_file(rag_dir, name):
    (rag_dir / name).unlink()
    with pytest.raises(ArtifactError, match=name.replace(".", r"\.") + ".*(missing|file is missing)"):
        rag.load(rag_dir)


@pytest.mark.parametrize("name", ["index.faiss", "examples.parquet", "run.json"])
def test_truncated_file(rag_dir, name):
    path = rag_dir / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ArtifactError, match=rf"{name.replace('.', '[.]')}: .*(truncated|corrupted|not valid JSON)"):
        rag.load(rag_dir)


def test_files_from_different_builds_are_refused(rag_dir, tmp_path, rag_built):
    index = VectorIndex.create("flat", 384)
    index.add(rag_built.embedder.encode(["one"]))
    other = RagClassifier(rag_built.embedder, index, ["one"], ["neutral"], label_names=LABELS).save(tmp_path / "other")
    (rag_dir / "index.faiss").write_bytes((other / "index.faiss").read_bytes())
    with pytest.raises(ArtifactError, match="do not belong together"):
        rag.load(rag_dir)


def test_embedder_of_another_width_is_refused(rag_dir, shared_dir):
    from sentence_transformers import SentenceTransformer

    tiny = Embedder(SentenceTransformer(str(shared_dir / "models" / "tiny-random-gpt2"), device="cpu"), "tiny-gpt2")
    assert tiny.dim == 2
    with pytest.raises(ArtifactError, match="holds 384-d vectors but the embedder tiny-gpt2 makes 2-d ones"):
        rag.load(rag_dir, embedder=tiny)


def test_embedder_of_the_same_width_but_another_model_is_refused(rag_dir, embedder):
    class Scrambled(Embedder):
        def _encode(self, texts, batch_size):
            return np.roll(super()._encode(texts, batch_size), 7, axis=1)

    with pytest.raises(ArtifactError, match="not the one this index was built with"):
        rag.load(rag_dir, embedder=Scrambled(embedder.model, "scrambled"))


def test_unknown_embedder():
    with pytest.raises(SourceError, match="does not exist"):
        Embedder.load("./no/such/embedder")
    with pytest.raises(SourceError, match="FTRAG_EMBEDDER"):
        Embedder.load("org/some-embedder-that-is-not-cached")


def test_a_directory_that_is_not_a_model(tmp_path):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "config.json").write_text("{not json")
    with pytest.raises(EmbedderError, match="could not load the embedder"):
        Embedder.load(str(tmp_path / "junk"))


# --- the index ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_index_kinds_return_sorted_hits_and_round_trip(kind, tmp_path):
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(2000, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    index = VectorIndex.create(kind, 16, train_vectors=vectors)
    index.add(vectors)
    scores, ids = index.search(vectors[:5], 10)
    assert ids[:, 0].tolist() == [0, 1, 2, 3, 4]  # each vector's nearest is itself
    assert np.all(np.diff(scores, axis=1) <= 1e-6)
    index.save(tmp_path / "i.faiss")
    loaded = VectorIndex.load(tmp_path / "i.faiss")
    assert loaded.kind == kind and len(loaded) == 2000
    assert np.array_equal(loaded.search(vectors[:5], 10)[1], ids)


def test_small_searches_run_on_one_thread_and_restore_the_pool(monkeypatch):
    seen = []
    index = VectorIndex.create("flat", 4)
    index.add(np.eye(4, dtype=np.float32))
    original = index.index.search

    class Spy:
        d, ntotal = 4, 4

        def search(self, queries, k):
            seen.append(faiss.omp_get_max_threads())
            return original(queries, k)

    index.index = Spy()
    before = faiss.omp_get_max_threads()
    index.search(np.eye(4, dtype=np.float32)[:1], 2)
    assert seen == [1] and faiss.omp_get_max_threads() == before


def test_search_rejects_wrong_width():
    index = VectorIndex.create("flat", 4)
    index.add(np.eye(4, dtype=np.float32))
    with pytest.raises(ValueError, match=r"shape \(n, 4\)"):
        index.search(np.ones((1, 3), dtype=np.float32), 1)


# --- the command line ------------------------------------------------------------------------------------------


def test_cli_builds_and_refuses_to_overwrite(tmp_path, data_dir, capsys):
    out = tmp_path / "cli-index"
    args = ["--data", str(data_dir), "--train-size", "120", "--no-tune", "--k", "7", "--out", str(out)]
    assert build_main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["size"] == 120 and summary["k"] == 7
    assert rag.load(out).k == 7
    assert build_main(args) == 2
    assert "already holds an index; pass --overwrite" in capsys.readouterr().err
    assert build_main([*args, "--overwrite", "--k", "9"]) == 0
    assert rag.load(out).k == 9


def test_cli_rejects_unknown_flags_and_bad_values(capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_main(["--kk", "3"])
    assert exit_info.value.code == 2 and "unrecognized arguments: --kk" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_main(["--weighting", "max"])
    assert "invalid choice: 'max'" in capsys.readouterr().err


def test_prediction_type(rag_built):
    assert isinstance(rag_built.predict(["hi"])[0], Prediction)


def test_leave_one_out_scoring_never_uses_the_query_itself(rag_built, small_train):
    text = small_train["text"][0]
    with_self = rag_built.predict([text])[0]
    without = rag_built.predict([text], exclude_identical=True)[0]
    assert with_self.evidence[0]["text"] == text
    assert all(e["text"] != text for e in without.evidence)
    assert len(without.evidence) == len(with_self.evidence)
    # other queries are unaffected
    other = "a tweet that is not in the index at all, surely"
    assert rag_built.predict([other], exclude_identical=True)[0].scores == pytest.approx(
        rag_built.predict([other])[0].scores
    )


def test_copy_is_independent_and_saves_nothing(rag_dir):
    import rag

    original = rag.load(rag_dir)
    files = {p.name: p.read_bytes() for p in rag_dir.iterdir()}
    sandbox = original.copy()
    assert sandbox.directory is None
    sandbox.add(["a brand new example about llamas"], ["positive"])
    assert sandbox.size == original.size + 1
    assert sandbox.retrieve("llamas", k=1)[0]["text"] == "a brand new example about llamas"
    assert original.retrieve("llamas", k=1)[0]["text"] != "a brand new example about llamas"
    assert {p.name: p.read_bytes() for p in rag_dir.iterdir()} == files
    assert original.memory_bytes() > original.size * original.embedder.dim * 4


def test_a_process_killed_while_adding_leaves_a_loadable_index(rag_dir, tmp_path):
    """SIGKILL a process that keeps adding (and saving) examples; whatever instant it dies, the index loads."""
    import signal
    import subprocess
    import sys
    import time

    import rag

    before = rag.load(rag_dir).size
    script = tmp_path / "adder.py"
    script.write_text(
        "import sys, rag\n"
        f"clf = rag.load({str(rag_dir)!r})\n"
        "i = 0\n"
        "while True:\n"
        "    clf.add([f'killed example {i}'], ['neutral'])\n"
        "    print(i, flush=True)\n"
        "    i += 1\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    for delay in (0.3, 0.9):
        proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env)
        first = proc.stdout.readline()  # at least one add acknowledged
        assert first.strip() == "0"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        acknowledged = int([first, *proc.stdout.read().split()][-1]) + 1
        proc.wait(timeout=30)
        loaded = rag.load(rag_dir)  # recovers an interrupted swap if the kill landed between the renames
        assert before < loaded.size
        texts = set(loaded.examples()[0])
        # add() saves before it returns, and the number is printed after: every printed add must have been kept
        assert all(f"killed example {i}" in texts for i in range(acknowledged))
        before = loaded.size


def test_the_traced_encoder_matches_the_eager_model_on_single_texts_and_padded_batches(embedder, monkeypatch):
    from core.tracing import Traced

    embedder.encode(["warm"])  # traced (and checked) before the count starts
    rows: list[int] = []
    call = Traced.__call__
    monkeypatch.setattr(Traced, "__call__", lambda self, *inputs: rows.append(len(inputs[0])) or call(self, *inputs))
    eager = rag.Embedder(embedder.model, embedder.name, trace=False)
    texts = ["hi", "my flight got cancelled again and nobody will tell us anything", "", "😀 " * 400]
    for text in texts:
        fast, slow = embedder.encode([text]), eager.encode([text])
        assert float(fast[0] @ slow[0]) == pytest.approx(1.0, abs=1e-5)
    batch = [*texts, *(f"tweet {i} " * (i % 7 + 1) for i in range(16))]  # lengths differ: most rows are padded
    fast, slow = embedder.encode(batch), eager.encode(batch)
    assert np.allclose((fast * slow).sum(axis=1), 1.0, atol=1e-5)
    assert embedder._traced is not False and embedder._traced.batches  # MiniLM traces, padded batches too
    assert embedder.weight_bytes() == 2 * eager.weight_bytes()  # the frozen trace holds its own copy of the weights
    assert 1 in rows and max(rows) > 1  # and the trace ran them


def test_a_trace_that_fails_on_an_input_falls_back_to_the_eager_model(embedder, monkeypatch):
    from core.tracing import Traced

    fresh = rag.Embedder(embedder.model, embedder.name)
    fresh.encode(["warm"])
    assert fresh._traced

    def broken(self, *inputs):
        raise RuntimeError("shape the trace never saw")

    monkeypatch.setattr(Traced, "__call__", broken)
    vectors = fresh.encode(["still embedded"])
    assert fresh._traced is False
    eager = rag.Embedder(embedder.model, embedder.name, trace=False).encode(["still embedded"])
    assert float(vectors[0] @ eager[0]) == pytest.approx(1.0, abs=1e-5)


def test_an_embedder_that_cannot_be_traced_runs_eagerly(embedder, monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("not traceable")

    monkeypatch.setattr("torch.jit.trace", refuse)
    fresh = rag.Embedder(embedder.model, embedder.name)
    vector = fresh.encode(["still works"])
    assert fresh._traced is False
    assert float(vector[0] @ embedder.encode(["still works"])[0]) == pytest.approx(1.0, abs=1e-5)


def test_other_threads_get_the_same_vectors(embedder):
    """The frozen graph is shared by every thread that embeds a single text, with the same result."""
    from concurrent.futures import ThreadPoolExecutor

    main_vector = embedder.encode(["which thread am I on"])
    with ThreadPoolExecutor(3) as pool:
        vectors = list(pool.map(lambda _: embedder.encode(["which thread am I on"]), range(6)))
    for v in vectors:
        assert float(v[0] @ main_vector[0]) == pytest.approx(1.0, abs=1e-6)
    assert embedder._traced is not False


# --- any label set ---------------------------------------------------------------------------------------------------


def test_an_index_on_emotion_votes_over_its_four_labels(emotion_rag, emotion_labels):
    assert emotion_rag.labels == emotion_labels and emotion_rag.size == 200
    assert emotion_rag.meta["tuning"]["chosen"] is not None  # the vote was tuned over the 4 labels
    for p in emotion_rag.predict(["I am so furious right now", "", "what a lovely morning"]):
        assert list(p.scores) == emotion_labels and p.label in emotion_labels


def test_a_saved_index_records_its_labels_and_refuses_others(emotion_rag, emotion_labels, tmp_path):
    directory = emotion_rag.save(tmp_path / "emotion")
    assert json.loads((directory / "run.json").read_text())["labels"] == emotion_labels
    loaded = rag.load(directory, embedder=emotion_rag.embedder)
    assert loaded.labels == emotion_labels
    with pytest.raises(ValueError, match=r"unknown label\(s\) \['positive'\]; this index knows only \['anger', 'joy'"):
        loaded.add(["a sunny day"], ["positive"])
    assert loaded.size == 200
    assert loaded.add(["a sunny day"], ["joy"]) == 201


def test_labels_flag_names_the_ids_when_building(shared_dir, embedder, tmp_path, monkeypatch):
    monkeypatch.setattr("rag.classifier.Embedder.load", lambda *args, **kwargs: embedder)
    irony = shared_dir / "data" / "tweeteval_irony"
    argv = ["--data", str(irony), "--labels", "plain, Ironic", "--train-size", "40", "--no-tune"]
    assert build_main([*argv, "--out", str(tmp_path / "irony")]) == 0
    assert json.loads((tmp_path / "irony" / "run.json").read_text())["labels"] == ["plain", "ironic"]
    assert RagConfig(labels=["A", "b"]).labels == ("a", "b")
    with pytest.raises(ValueError, match="at least 2 labels"):
        RagConfig(labels=("only",))


def test_a_classifier_needs_two_labels(rag_built):
    index = VectorIndex.create("flat", 384)
    index.add(rag_built.embedder.encode(["one"]))
    with pytest.raises(ValueError, match=r"at least 2 labels, got \['neutral'\]"):
        RagClassifier(rag_built.embedder, index, ["one"], ["neutral"])
    two = RagClassifier(rag_built.embedder, index, ["one"], ["yes"], label_names=["no", "yes"])
    assert two.labels == ["no", "yes"] and list(two.predict(["one"])[0].scores) == ["no", "yes"]


def test_the_served_vote_lets_one_taught_example_count(embedder, small_train):
    """choose_vote (the demo line-up's) keeps a vote in which a close example counts: one example taught at a
    query's own text, with another label, changes the answer to that label."""
    from rag import RagConfig, build_index
    from rag.tuning import SERVED_MAX_TEMPERATURE, choose_vote

    fit, validation = small_train.select(range(240)), small_train.select(range(240, 300))
    clf = build_index(RagConfig(tune=False, k=3), fit, embedder=embedder, show_progress=False)
    choose_vote(clf, list(fit["label"]), list(validation["text"]), list(validation["label"]), seed=0)
    assert clf.weighting == "softmax" and clf.temperature <= SERVED_MAX_TEMPERATURE
    changed = 0
    for query in validation["text"][:10]:
        before = clf.predict([query])[0].label
        other = next(label for label in clf.labels if label != before)
        changed += clf.predict_with([query], [clf.embed_example(query, other)])[0].label == other
    assert changed == 10
