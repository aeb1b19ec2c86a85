"""The one set of input limits, for every way text comes in (API, UI, uploads, batch evaluation) and for the models.

The app checks these before any expensive work; the backends bound tokenization on their own as a second line, so a
caller that skips the app's checks (a script, a test, a future route) still cannot make a tokenizer chew on
megabytes.
"""

from __future__ import annotations

from collections.abc import Sequence

MAX_CHARS = 2000
"""Characters per text (a tweet has at most 280); longer input is refused with a message, never cut silently."""
MAX_TEXTS = 64
"""Texts per classify / compare / teach call."""
MAX_UPLOAD_BYTES = 5 * 2**20
"""Bytes per uploaded file (Gradio refuses larger uploads with 413 before they are stored)."""
MAX_UPLOAD_ROWS = 2000
"""Rows of an uploaded file that are evaluated; more is refused unless the caller asks for the first rows only."""
MAX_BODY_BYTES = 2 * 2**20
"""Bytes per JSON request body: room for MAX_TEXTS texts of MAX_CHARS characters even when every character is
written as a JSON escape (an emoji is 12 bytes as ``\\ud83d\\ude00``), and no more."""
MAX_LABELS = 50
"""Distinct labels of any data set, model or index: every report, table and plot grows with the labels (a confusion
matrix with their square), so a file of 500 one-off labels is refused before any model runs."""
MAX_LABEL_CHARS = 64
"""Characters per label name (a label is a class name, not a text)."""
MAX_NAME_CHARS = 64
"""Characters of a name a request gives: a backend, an option value such as ``hardware``."""
MAX_UPLOAD_CELLS = 200_000
"""Rows x labels of an uploaded file: what its scores, tables and reports hold (20,000 rows of 10 labels, or 4,000
of 50)."""
MAX_ERROR_CHARS = 1_000
"""Characters of an error message sent back (API bodies, page messages): an error that quotes its input is cut."""
CHARS_PER_TOKEN_BOUND = 16
"""Characters kept per token of a model's window before tokenizing. A token of real text is a few characters, so
nothing a model would have kept is cut; a multi-megabyte string is cut to a few kilobytes first."""


def clip_for_tokenizer(texts: Sequence[str], max_tokens: int) -> list[str]:
    """Cut each text to ``max_tokens * CHARS_PER_TOKEN_BOUND`` characters: tokenization then costs at most that much.

    A model keeps only its first `max_tokens` tokens anyway, so this changes no prediction for texts of ordinary
    words; it only bounds the work on hostile input.

    >>> [len(t) for t in clip_for_tokenizer(["a" * 10, "b" * 5000], max_tokens=128)]
    [10, 2048]
    """
    limit = max(1, int(max_tokens)) * CHARS_PER_TOKEN_BOUND
    return [t if len(t) <= limit else t[:limit] for t in texts]


def check_upload_cells(rows: int, labels: int) -> None:
    """A ValueError when `rows` x `labels` is over MAX_UPLOAD_CELLS, naming both.

    >>> check_upload_cells(4_000, 50)
    """
    if rows * labels > MAX_UPLOAD_CELLS:
        raise ValueError(
            f"the uploaded file has {rows:,} rows and {labels} labels; rows x labels may be at most "
            f"{MAX_UPLOAD_CELLS:,} here ({MAX_UPLOAD_CELLS // labels:,} rows of {labels} labels)"
        )


def clip_message(text: str, limit: int = MAX_ERROR_CHARS) -> str:
    r"""An error message fit to send: at most `limit` characters, and valid UTF-8 (a lone surrogate it quotes, as
    JSON allows, is written as its escape instead of failing the response).

    >>> clip_message("x" * 10, limit=5), clip_message("bad \ud800")
    ('xxxx…', 'bad \\ud800')
    """
    text = str(text)
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")
