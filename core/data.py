"""Loading labeled tweets from any source into one shape: ``text`` (str) and ``label`` (str) columns.

Normalising once, here, means the backends and the comparison never see a source's own column names. The label
set comes from the data: integer ids with their names (a ``ClassLabel`` feature, a ``label_text`` column beside
the ids, or names given by the caller) keep the id order; plain string labels are sorted. `label_names` hands the
ordered set to the backends, which record it in every artifact.
"""

from __future__ import annotations

import codecs
import json
import logging
import re
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from datasets import ClassLabel, Dataset, DatasetDict, DatasetInfo, load_dataset

from core.settings import SourceError, resolve
from core.types import LABELS, check_labels, normalise_label

logger = logging.getLogger(__name__)

TEXT_COLUMNS = ("text", "tweet", "sentence", "content", "review", "document")
"""Column names taken as the text, in order of preference."""
LABEL_COLUMNS = ("label_text", "sentiment", "label", "labels", "class", "category")
"""Column names taken as the label, in order of preference (a string column before an integer one)."""
KNOWN_LABEL_NAMES: dict[str, tuple[str, ...]] = {"tweet_sentiment_extraction": LABELS}
"""Names of the integer ids of datasets whose files carry the ids alone (the default dataset's parquet files)."""
FILE_FORMATS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}
_UTF8_CHECK_CHUNK = 1 << 20
_LABELS_NOTE = "label names in id order: "


class DataError(ValueError):
    """A dataset that cannot be used as it is; the message names the source and the problem."""


def load_tweets(
    source: str | Path | None = None,
    split: str | None = None,
    limit: int | None = None,
    seed: int = 0,
    labels: Sequence[str] | None = None,
    cache_dir: str | None = None,
) -> Dataset | DatasetDict:
    """Load labeled texts as ``text`` / ``label`` columns with string labels; `label_names` gives their order.

    Args:
        source: a Hub dataset id, a local directory in the Hub layout, or a CSV / TSV / JSON(L) / parquet file.
            None means the configured source (``FTRAG_DATA`` or the default Hub dataset, see core.settings).
            A single file is one split, named ``train``.
        split: return only this split as a `Dataset`; None returns every split as a `DatasetDict`.
        limit: keep a seeded, label-stratified sample of this many rows from each returned split.
        seed: the sampling seed.
        labels: the label names, in the order of the integer ids 0, 1, ... (``--labels a,b,c``): they name the
            ids even where the data also has a name column; string labels must be among them. None: the names
            the data carries (see the module docstring).
        cache_dir: where the datasets library may cache what it reads (default: its own cache). The rows
            returned are held in memory, so a temporary folder can be deleted afterwards (uploads use one).

    Label names are trimmed and lower-cased. Empty and whitespace-only texts are dropped, and the number dropped is
    logged; nothing else is removed.

    Raises:
        DataError: missing file, unknown format, no text or label column, integer labels without names, fewer
            than 2 labels, labels outside `labels`, bytes that are not UTF-8, no rows, an unknown split, a limit
            larger than a split.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise DataError(f"limit must be a positive integer, got {limit!r}")
    try:
        resolved = resolve("data", None if source is None else str(source))
    except SourceError as err:
        raise DataError(str(err)) from err
    name = resolved.value
    splits = _read(name, is_local=resolved.is_local, cache_dir=cache_dir)
    if split is not None and split not in splits:
        raise DataError(f"{name}: no split {split!r}; it has {sorted(splits)}")
    names = _label_set(splits, name, labels)
    wanted = {split: splits[split]} if split is not None else dict(splits)
    out = {}
    for split_name, ds in wanted.items():
        ds = _normalise(ds, f"{name} [{split_name}]", names, by_id=labels is not None)
        if limit is not None:
            ds = stratified_sample(ds, limit, seed=seed, what=f"{name} [{split_name}]")
        out[split_name] = ds
    return out[split] if split is not None else DatasetDict(out)


def detected_columns(source: str | Path, cache_dir: str | None = None) -> dict[str, str | None]:
    """Which of a local file's (or dataset's) columns `load_tweets` takes as the text and the label, and the
    column of integer ids beside label names, if any: ``{"text", "label", "label_ids"}``. A `DataError` when
    there is none."""
    splits = _read(str(source), is_local=Path(source).exists(), cache_dir=cache_dir)
    text, label, ids = _columns(next(iter(splits.values())), str(source))
    return {"text": text, "label": label, "label_ids": ids}


def label_names(dataset: Dataset | DatasetDict) -> list[str]:
    """The ordered label set of `dataset`: as `load_tweets` recorded it, else its labels sorted.

    The recorded set survives `select`, `shuffle`, `filter` and sampling, and holds every label of the source
    even when a small sample misses one.

    >>> label_names(Dataset.from_dict({"text": ["a", "b"], "label": ["yes", "no"]}))
    ['no', 'yes']
    """
    if isinstance(dataset, DatasetDict):
        dataset = next(iter(dataset.values()))
    note = dataset.info.description or ""
    if note.startswith(_LABELS_NOTE):
        return list(json.loads(note[len(_LABELS_NOTE) :]))
    return sorted(set(dataset["label"]))


def with_label_names(dataset: Dataset, names: Sequence[str]) -> Dataset:
    """`dataset` (``text`` / ``label``) with `names` recorded as its ordered label set (see `label_names`)."""
    columns = {"text": list(dataset["text"]), "label": list(dataset["label"])}
    return Dataset.from_dict(columns, info=_names_info(check_labels(names)))


def _names_info(names: Sequence[str]) -> DatasetInfo:
    return DatasetInfo(description=_LABELS_NOTE + json.dumps(list(names)))


def _read(name: str, is_local: bool, cache_dir: str | None = None) -> DatasetDict:
    path = Path(name)
    try:
        if is_local and path.is_file():
            fmt = FILE_FORMATS.get(path.suffix.lower())
            if fmt is None:
                raise DataError(
                    f"{path}: unknown file format {path.suffix!r}; expected one of {', '.join(sorted(FILE_FORMATS))}"
                )
            if path.stat().st_size == 0:
                raise DataError(f"{path}: the file is empty")
            if fmt != "parquet":
                _check_utf8(path)
            kwargs: dict[str, Any] = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
            loaded = load_dataset(fmt, data_files={"train": str(path)}, cache_dir=cache_dir, **kwargs)
        else:
            if is_local:
                _check_dir_utf8(path)
            loaded = load_dataset(name, cache_dir=cache_dir)
    except DataError:
        raise
    except Exception as err:  # the loaders raise many types for a bad file; one clear error is what a user needs
        raise DataError(f"{name}: could not be read as a dataset ({type(err).__name__}: {err})") from err
    if not isinstance(loaded, DatasetDict):  # pragma: no cover - load_dataset without split returns a dict
        loaded = DatasetDict({"train": loaded})
    return loaded


def _check_utf8(path: Path) -> None:
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    with path.open("rb") as handle:
        while chunk := handle.read(_UTF8_CHECK_CHUNK):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as err:
                raise DataError(f"{path}: not UTF-8 text (invalid byte near offset {offset + err.start})") from err
            offset += len(chunk)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:
            raise DataError(f"{path}: not UTF-8 text (truncated character at the end)") from err


def _check_dir_utf8(path: Path) -> None:
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.suffix.lower() in {".csv", ".tsv", ".json", ".jsonl"}:
            _check_utf8(file)


def _pick(columns: Sequence[str], candidates: Sequence[str]) -> str | None:
    lowered = {c.lower(): c for c in columns}
    return next((lowered[c] for c in candidates if c in lowered), None)


def _columns(ds: Dataset, what: str) -> tuple[str, str, str | None]:
    """The text column, the label column and (when the labels are names) a column of their integer ids."""
    text_col = _pick(ds.column_names, TEXT_COLUMNS)
    if text_col is None:
        raise DataError(f"{what}: no text column; expected one of {list(TEXT_COLUMNS)}, found {ds.column_names}")
    label_col = _pick(ds.column_names, LABEL_COLUMNS)
    if label_col is None:
        raise DataError(f"{what}: no label column; expected one of {list(LABEL_COLUMNS)}, found {ds.column_names}")
    ids = [c for c in ds.column_names if c.lower() in LABEL_COLUMNS and c != label_col and _is_id_column(ds, c)]
    return text_col, label_col, (ids[0] if ids and not _is_id_column(ds, label_col) else None)


def _is_id_column(ds: Dataset, column: str) -> bool:
    feature = ds.features[column]
    return isinstance(feature, ClassLabel) or str(getattr(feature, "dtype", "")).startswith(("int", "uint"))


def _label_set(splits: DatasetDict, source: str, given: Sequence[str] | None) -> list[str]:
    """The ordered label names of the whole source (every split), or a DataError saying why there are none."""
    try:
        if given is not None:
            return check_labels([normalise_label(name) for name in given])
        return check_labels(_names_from_data(splits, source))
    except DataError:
        raise
    except ValueError as err:
        raise DataError(f"{source}: {err}") from err


def _names_from_data(splits: DatasetDict, source: str) -> list[str]:
    """ClassLabel names; else names ordered by the ids beside them; else known names of bare ids; else sorted."""
    pairs: set[tuple[int, str]] = set()
    names: set[str] = set()
    has_ids = False
    for split_name, ds in splits.items():
        _, label_col, id_col = _columns(ds, f"{source} [{split_name}]")
        feature = ds.features[label_col]
        if isinstance(feature, ClassLabel):
            return [normalise_label(name) for name in feature.names]
        values = [_raw_label(v) for v in ds[label_col]]
        has_ids = has_ids or any(isinstance(v, int) for v in values)
        names.update(v for v in values if isinstance(v, str))
        if id_col is not None:
            named = zip(ds[id_col], values, strict=True)
            pairs.update((i, v) for i, v in named if isinstance(i, int) and i >= 0 and isinstance(v, str))
    if has_ids:
        known = KNOWN_LABEL_NAMES.get(Path(source).name)
        if known is None:
            raise ValueError(
                "the labels are integer ids with no names; name them in id order with --labels a,b,c "
                "(labels=[...]), or add a label_text column"
            )
        return list(known)
    return _order_by_id(pairs) if pairs else sorted(names)


def _order_by_id(pairs: set[tuple[int, str]]) -> list[str]:
    """Names ordered by their ids, or a ValueError when an id has two names or a name two ids."""
    for side in (0, 1):
        seen: dict = defaultdict(set)
        for pair in pairs:
            seen[pair[side]].add(pair[1 - side])
        clash = {k: sorted(v) for k, v in seen.items() if len(v) > 1}
        if clash:
            raise ValueError(f"the label ids and names do not match one to one: {clash}")
    return [name for _, name in sorted(pairs)]


def _raw_label(value: Any) -> int | str | None:
    """One raw label as an integer id, a (normalised) name, or None when it is neither."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, np.integer)) or (isinstance(value, float) and float(value).is_integer()):
        return int(value)
    if isinstance(value, str):
        name = normalise_label(value)
        return int(name) if name.lstrip("-").isdigit() else (name or None)
    return None


def _normalise(ds: Dataset, what: str, names: Sequence[str], by_id: bool) -> Dataset:
    """`ds` as ``text`` / ``label`` strings; with `by_id` (names given by the caller) an id column wins over names."""
    if ds.num_rows == 0:
        raise DataError(f"{what}: no rows")
    text_col, label_col, id_col = _columns(ds, what)
    label_col = id_col if by_id and id_col is not None else label_col
    texts = ["" if t is None else str(t) for t in ds[text_col]]
    labels = _labels_as_strings(ds, label_col, what, names)
    keep = [i for i, t in enumerate(texts) if t.strip()]
    dropped = len(texts) - len(keep)
    if dropped:
        logger.warning("%s: dropped %d empty or whitespace-only text(s) of %d", what, dropped, len(texts))
    if not keep:
        raise DataError(f"{what}: every text is empty")
    kept = {"text": [texts[i] for i in keep], "label": [labels[i] for i in keep]}
    return Dataset.from_dict(kept, info=_names_info(names))


def _labels_as_strings(ds: Dataset, column: str, what: str, names: Sequence[str]) -> list[str]:
    known = set(names)
    out: list[str] = []
    bad: Counter = Counter()
    for value in ds[column]:
        raw = _raw_label(value)
        if isinstance(raw, int):
            raw = names[raw] if 0 <= raw < len(names) else None
        if raw is None or raw not in known:
            bad[repr(value)] += 1
        else:
            out.append(raw)
    if bad:
        shown = ", ".join(f"{v} x{n}" for v, n in bad.most_common(5))
        raise DataError(f"{what}: {sum(bad.values())} label(s) in column {column!r} outside {list(names)}: {shown}")
    return out


def stratified_indices(labels: Sequence[str], n: int, seed: int = 0) -> list[int]:
    """Seeded positions of `n` items with each label's share as in `labels` (largest-remainder rounding), shuffled.

    >>> labels = ["a", "a", "b", "b"]
    >>> sorted(labels[i] for i in stratified_indices(labels, 2, seed=0))
    ['a', 'b']
    """
    if not 0 <= n <= len(labels):
        raise ValueError(f"cannot take {n} of {len(labels)} items")
    by_label: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_label[label].append(i)
    names = sorted(by_label)
    exact = np.array([len(by_label[k]) * n / len(labels) for k in names])
    counts = np.floor(exact).astype(int)
    for j in np.argsort(-(exact - counts), kind="stable")[: n - counts.sum()]:
        counts[j] += 1
    rng = np.random.default_rng(seed)
    chosen: list[int] = []
    for name, count in zip(names, counts, strict=True):
        chosen.extend(rng.permutation(by_label[name])[:count].tolist())
    return rng.permutation(chosen).tolist()


def stratified_sample(ds: Dataset, n: int, seed: int = 0, what: str = "dataset") -> Dataset:
    """A seeded sample of `n` rows with each label's share as in `ds`, shuffled; all of `ds` when `n` is its size.

    Raises:
        DataError: `n` larger than the number of rows.
    """
    if n > ds.num_rows:
        raise DataError(f"{what}: asked for {n} rows but it has only {ds.num_rows}")
    if n == ds.num_rows:
        return ds
    return ds.select(stratified_indices(ds["label"], n, seed=seed))


def _norm_text(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def leak_report(train: Dataset | Sequence[str], test: Dataset | Sequence[str], max_examples: int = 5) -> dict:
    """Duplicates inside each split and texts shared by both, compared after trimming and collapsing whitespace.

    A score measured on a test set that shares texts with the training set is optimistic; this shows by how much.

    Returns:
        ``train_duplicates`` / ``test_duplicates``: rows that repeat an earlier row of the same split;
        ``shared``: distinct texts found in both splits; ``shared_test_rows``: test rows whose text is in train;
        ``conflicting_labels``: distinct texts given different labels somewhere; ``examples``: a few of each.
    """
    train_texts, train_labels = _texts_and_labels(train)
    test_texts, test_labels = _texts_and_labels(test)
    train_norm = [_norm_text(t) for t in train_texts]
    test_norm = [_norm_text(t) for t in test_texts]

    def duplicates(norm: list[str]) -> list[str]:
        seen: set[str] = set()
        repeats = []
        for t in norm:
            if t in seen:
                repeats.append(t)
            seen.add(t)
        return repeats

    train_dups, test_dups = duplicates(train_norm), duplicates(test_norm)
    shared = sorted(set(train_norm) & set(test_norm))
    train_set = set(train_norm)
    labels_seen: dict[str, set] = defaultdict(set)
    for t, label in zip(train_norm + test_norm, train_labels + test_labels, strict=True):
        if label is not None:
            labels_seen[t].add(label)
    conflicts = sorted(t for t, labels in labels_seen.items() if len(labels) > 1)
    return {
        "train_rows": len(train_norm),
        "test_rows": len(test_norm),
        "train_duplicates": len(train_dups),
        "test_duplicates": len(test_dups),
        "shared": len(shared),
        "shared_test_rows": sum(t in train_set for t in test_norm),
        "conflicting_labels": len(conflicts),
        "examples": {
            "train_duplicates": sorted(set(train_dups))[:max_examples],
            "test_duplicates": sorted(set(test_dups))[:max_examples],
            "shared": shared[:max_examples],
            "conflicting_labels": conflicts[:max_examples],
        },
    }


def _texts_and_labels(data: Dataset | Sequence[str]) -> tuple[list[str], list[str | None]]:
    if isinstance(data, Dataset):
        texts = list(data["text"])
        labels = list(data["label"]) if "label" in data.column_names else [None] * len(texts)
        return texts, labels
    texts = [str(t) for t in data]
    return texts, [None] * len(texts)
