"""What the app accepts from a visitor, checked before any model runs: texts, labels, uploaded files; and what its
answers may show of this server (`hide_paths`)."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from core.limits import MAX_CHARS, MAX_TEXTS, MAX_UPLOAD_BYTES, MAX_UPLOAD_ROWS, check_upload_cells
from serving.access import Refused


def still_building() -> Refused:
    """The answer to a request that needs backends the start-up has not brought up yet: 503, try again in 30 s."""
    return Refused("the backends are still being built (the page shows how far); ask again in a minute", 503, 30)


class InputError(ValueError):
    """Input a person gave that cannot be used; the message says what to change."""


def validate_texts(texts: Any, what: str = "text") -> list[str]:
    """1 to MAX_TEXTS non-empty strings of at most MAX_CHARS characters, or an InputError saying which is wrong.

    >>> validate_texts(["ok"])
    ['ok']
    """
    if isinstance(texts, str):
        texts = [texts]
    if not isinstance(texts, (list, tuple)):
        raise InputError(f"expected a list of {what}s, got {type(texts).__name__}")
    if not texts:
        raise InputError(f"no {what} given")
    if len(texts) > MAX_TEXTS:
        raise InputError(f"at most {MAX_TEXTS} {what}s per call, got {len(texts)}")
    out = []
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"{what} {i + 1} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise InputError(f"{what} {i + 1} is empty; type something to classify" if len(texts) > 1 else
                             f"the {what} is empty; type something to classify")  # fmt: skip
        if len(text) > MAX_CHARS:
            raise InputError(
                f"{what} {i + 1} has {len(text):,} characters; the limit is {MAX_CHARS:,} (a tweet has at most 280)"
            )
        if not _encodable(text):
            raise InputError(f"{what} {i + 1} is not valid Unicode (it holds a lone surrogate such as \\ud800)")
        out.append(text)
    return out


UPLOAD_SUFFIXES = (".csv", ".jsonl")


def uploaded_file(path: Any, root: str | Path) -> Path:
    """`path` when it is a file that was uploaded into the folder `root`, else an InputError that reveals nothing.

    A raw API call can name any server path as an "uploaded" file (Gradio's own check is skipped when the UI is
    mounted on another app), so every path a request hands over is checked here: resolved (no ``..``, no links out)
    and inside `root`.
    """
    refusal = InputError("that file was not uploaded here: upload a CSV or JSONL file with the file box")
    if not isinstance(path, (str, Path)) or not str(path):
        raise refusal
    try:
        file = Path(path).resolve(strict=True)
        inside = file.is_relative_to(Path(root).resolve(strict=True))
    except (OSError, RuntimeError, ValueError):
        raise refusal from None
    if not inside or not file.is_file():
        raise refusal
    if file.suffix.lower() not in UPLOAD_SUFFIXES:
        raise InputError(f"upload a .csv or .jsonl file, not {file.suffix or 'a file without an extension'}")
    size = file.stat().st_size
    if size > MAX_UPLOAD_BYTES:
        raise InputError(f"the file is {size / 2**20:.1f} MB; the limit is {MAX_UPLOAD_BYTES / 2**20:.0f} MB")
    return file


def load_upload(
    file: Path, labels: Sequence[str] | None = None, first_rows: bool = True, max_rows: int | None = MAX_UPLOAD_ROWS
):
    """The labeled rows of an uploaded file (see `uploaded_file`) and a note saying what was kept.

    Every text is held to `MAX_CHARS`, as typed text is, and must be valid Unicode: a bad row is refused with its row
    number, before any model sees it. Past `max_rows` rows (None: no cut; the caller bounds the count itself) the
    file is cut to its first rows (said in the note) when `first_rows`, refused otherwise. `labels` (the backends'
    label set) name integer ids, and a file may hold any subset of them. The labels are held to `core.limits` (how
    many, how long, rows x labels). Error messages name "the uploaded file", never a server path.
    """
    from core.data import DataError, label_names, load_tweets

    try:
        with tempfile.TemporaryDirectory(prefix="ftrag-upload-") as cache:  # nothing of it stays in any cache
            dataset = load_tweets(str(file), split="train", labels=labels, cache_dir=cache)
    except DataError as err:
        raise InputError(str(err).replace(str(file), "the uploaded file")) from None
    total = dataset.num_rows
    note = f"all {total:,} rows of the uploaded file"
    if max_rows is not None and total > max_rows:
        if not first_rows:
            raise InputError(f"the uploaded file has {total:,} rows; the limit is {max_rows:,}")
        dataset = dataset.select(range(max_rows))
        note = f"the first {max_rows:,} of {total:,} rows of the uploaded file (the limit per evaluation)"
    texts = dataset["text"]
    long_rows = [i for i, text in enumerate(texts) if len(text) > MAX_CHARS]
    if long_rows:
        longest = max(len(texts[i]) for i in long_rows)
        rows = ", ".join(str(i + 1) for i in long_rows[:5]) + (" ..." if len(long_rows) > 5 else "")
        raise InputError(
            f"{len(long_rows)} row(s) of the uploaded file have more than {MAX_CHARS:,} characters (rows {rows}; "
            f"the longest has {longest:,}); the limit is {MAX_CHARS:,} per text, as for typed text"
        )
    bad = [i for i, text in enumerate(texts) if not _encodable(text)]
    if bad:
        raise InputError(f"row {bad[0] + 1} of the uploaded file is not valid Unicode")
    try:
        check_upload_cells(dataset.num_rows, len(label_names(dataset)))
    except ValueError as err:
        raise InputError(str(err)) from None
    return dataset, note


def validate_labels(labels: Any, n: int, known: Sequence[str], what: str = "text") -> list[str]:
    """One known label per text, or an InputError saying which are wrong (echoing at most a few of them).

    >>> validate_labels(["a"], 1, ["a", "b"])
    ['a']
    """
    if not isinstance(labels, (list, tuple)) or len(labels) != n:
        given = len(labels) if isinstance(labels, (list, tuple)) else 0
        raise InputError(f"give one label per {what}: {n} {what}s, {given} labels")
    bad = sorted({str(x) for x in labels if x not in known})
    if bad:
        raise InputError(f"unknown label(s) {few(bad)}; use one of {list(known)}")
    return list(labels)


_ABSOLUTE_PATH = re.compile(r"(?<![\w/.~:])/[^\s'\"()\[\],;]+")


def hide_paths(text: str) -> str:
    """`text` with every path on this server cut to its last two parts: answers never show where files live.

    A server path is an absolute path whose first folder exists here (``/tmp/...``, ``/home/...``), whether or not
    the rest does; anything else is a user's text and is left as it is (``$5 /month``, ``/r/funny/comments/x``).

    >>> hide_paths("/tmp/app/artifacts/rag/index.faiss: index file is missing; 3 tweets /day")
    'rag/index.faiss: index file is missing; 3 tweets /day'
    """
    roots = {entry.name for entry in _top_folders()}

    def hidden(match: re.Match) -> str:
        parts = Path(match.group()).parts[1:]  # without the leading "/"
        return "/".join(parts[-2:]) if len(parts) > 1 and parts[0] in roots else match.group()

    return _ABSOLUTE_PATH.sub(hidden, str(text))


def _top_folders() -> list[os.DirEntry]:
    try:
        with os.scandir("/") as entries:
            return [entry for entry in entries if entry.is_dir()]
    except OSError:
        return []


def few(items: Sequence[Any], n: int = 5, chars: int = 40) -> list[str]:
    """At most `n` of `items`, each cut to `chars` characters: what an error message may echo of the input.

    >>> few(["a" * 100, "b"], n=1, chars=3)
    ['aaa…', '… and 1 more']
    """
    shown = [str(x)[:chars] + ("…" if len(str(x)) > chars else "") for x in list(items)[:n]]
    return shown + ([f"… and {len(items) - n} more"] if len(items) > n else [])


def _encodable(text: str) -> bool:
    """True when `text` can be written as UTF-8 (JSON allows lone surrogates like "\\ud800"; tokenizers do not)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
