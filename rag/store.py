"""A built index on disk (or in a vector engine): ``index.faiss``, ``examples.parquet`` and ``run.json`` written as
one atomic unit, read back and checked (files that belong together, the embedder they were built with). The
classifier decides what run.json says; this module only keeps it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from core.files import ArtifactError, dir_lock, dumps_json, read_json, recover_dir, staged_dir
from core.types import LABELS
from rag.embed import Embedder
from rag.engine import QdrantIndex, VectorStoreError
from rag.index import IndexFileError, VectorIndex

FORMAT_VERSION = 1
INDEX_FILE, EXAMPLES_FILE, RUN_FILE = "index.faiss", "examples.parquet", "run.json"
PROBE_MIN_COSINE = 0.99
"""Cosine between the recorded and the loaded embedder's probe vector below which they are not the same model."""


def write_saved(
    directory: Path,
    run: dict[str, Any],
    index: Any,
    texts: list[str],
    labels: list[str],
    teach_ids: np.ndarray | None = None,
    also: Any = None,
) -> None:
    """Write `index`, the examples and `run` into `directory` as one atomic unit (an engine's index: run.json only,
    naming where the engine holds them). The written main index, and `also`'s when it shares it, then reads as that
    file (`source`: the next save links it instead of writing it again)."""
    if index.stores_examples:  # the engine holds vectors, texts and labels: run.json only says where
        run = {**run, "vector_store": {"uri": index.uri, "collection": index.collection}}
        with dir_lock(directory), staged_dir(directory) as stage:
            (stage / RUN_FILE).write_text(dumps_json(run), encoding="utf-8")
        return
    columns: dict[str, list] = {"text": texts, "label": labels}
    if teach_ids is not None and (teach_ids >= 0).any():  # rows folded in from the teach log keep their ids
        columns["teach_id"] = teach_ids.tolist()
    table = pa.table(columns)
    with dir_lock(directory), staged_dir(directory) as stage:
        index.save(stage / INDEX_FILE, replaces=directory / INDEX_FILE)
        pq.write_table(table, stage / EXAMPLES_FILE)
        (stage / RUN_FILE).write_text(dumps_json(run), encoding="utf-8")
    for written in {id(index): index, id(also): also}.values():
        if getattr(written, "index", None) is index.index:  # the main index is now that file (linked next time)
            written.source = directory / INDEX_FILE


def read_saved(directory: str | Path) -> tuple[Path, dict[str, Any], Any, list, list, list | None]:
    """``(directory, run, index, texts, labels, teach_ids or None)`` of a saved index (an interrupted replacement
    recovered first), or an ArtifactError naming what is missing or does not belong together."""
    directory = recover_dir(Path(directory))
    if not directory.is_dir():
        raise ArtifactError(f"{directory}: no such index directory (build one with `python -m rag.build`)")
    run = _read_run(directory)
    if run.get("vector_store"):
        index, texts, labels, teach_ids = _open_store(directory, run)
    else:
        index, texts, labels, teach_ids = _read_files(directory, run)
    return directory, run, index, texts, labels, teach_ids


def _read_run(directory: Path) -> dict[str, Any]:
    """The index's run.json, refused unless it is a RAG index of this format."""
    try:
        run = read_json(directory / RUN_FILE, "run.json")
    except ValueError as err:
        raise ArtifactError(str(err)) from err
    if not isinstance(run, dict) or run.get("backend") != "rag" or run.get("format_version") != FORMAT_VERSION:
        raise ArtifactError(f"{directory / RUN_FILE}: not a run.json of a format-{FORMAT_VERSION} RAG index")
    return run


def _read_files(directory: Path, run: dict[str, Any]) -> tuple[VectorIndex, list, list, list | None]:
    """The saved FAISS index and its examples: ``(index, texts, labels, teach_ids or None)``."""
    table = _read_examples(directory)
    try:
        index = VectorIndex.load(directory / INDEX_FILE)
    except IndexFileError as err:
        raise ArtifactError(str(err)) from err
    if len(index) != table.num_rows or run.get("size") != table.num_rows:
        raise ArtifactError(
            f"{directory}: the index holds {len(index)} vectors, examples.parquet {table.num_rows} rows and "
            f"run.json says {run.get('size')}: the files do not belong together"
        )
    if run.get("search_effort") and index.kind == run.get("index_type"):
        index.effort = int(run["search_effort"])
        if run.get("search_rerank"):
            index.rerank = int(run["search_rerank"])
    teach_ids = table.column("teach_id").to_pylist() if "teach_id" in table.column_names else None
    return index, table.column("text").to_pylist(), table.column("label").to_pylist(), teach_ids


def _open_store(directory: Path, run: dict[str, Any]) -> tuple[QdrantIndex, list, list, list]:
    """The engine collection run.json names, and its examples read back from it."""
    store = run["vector_store"]
    try:
        index, payloads = QdrantIndex.open(store["uri"], int(run["embedding_dim"]), run.get("labels", LABELS))
    except (VectorStoreError, KeyError, TypeError) as err:
        raise ArtifactError(f"{directory}: {err}") from err
    if any("text" not in p or "label" not in p for p in payloads):
        raise ArtifactError(f"{directory}: the collection at {store['uri']} holds points without text and label")
    teach_ids = [p.get("teach_id", -1) for p in payloads]
    return index, [p["text"] for p in payloads], [p["label"] for p in payloads], teach_ids


def _read_examples(directory: Path) -> pa.Table:
    """The indexed examples (``text``, ``label``, optionally ``teach_id``), refused when unreadable."""
    try:
        table = pq.read_table(directory / EXAMPLES_FILE)
    except FileNotFoundError as err:
        raise ArtifactError(f"{directory / EXAMPLES_FILE}: examples file is missing") from err
    except (pa.ArrowException, OSError) as err:
        raise ArtifactError(
            f"{directory / EXAMPLES_FILE}: not a readable parquet file (truncated or corrupted): {err}"
        ) from err
    if set(table.column_names) < {"text", "label"}:
        raise ArtifactError(
            f"{directory / EXAMPLES_FILE}: expected columns text and label, found {table.column_names}"
        )
    return table


def check_embedder(directory: Path, run: dict[str, Any], dim: int, embedder: Embedder) -> None:
    """Refuse an embedder of another width, or one whose probe vector is not the one recorded at build time."""
    if embedder.dim != dim:
        raise ArtifactError(
            f"{directory}: the index holds {dim}-d vectors but the embedder {embedder.name} makes "
            f"{embedder.dim}-d ones; load it with the embedder it was built with ({run.get('embedder')})"
        )
    probe = np.asarray(run.get("probe_embedding") or [], dtype=np.float32)
    if probe.shape == (dim,):
        cosine = float(embedder.probe @ probe)
        if cosine < PROBE_MIN_COSINE:
            raise ArtifactError(
                f"{directory}: the embedder {embedder.name} is not the one this index was built with "
                f"({run.get('embedder')}): probe cosine {cosine:.3f}"
            )


def recorded_embedder(run: dict) -> str | None:
    """The embedder named in run.json, or None (= resolve again) when it was a path that is not on this machine."""
    recorded = run.get("embedder")
    if recorded and (Path(recorded).exists() or not Path(recorded).is_absolute()):
        return recorded
    return None
