"""Writing artifacts so that a crash, a full disk or a concurrent writer never leaves a half-written one.

Single files are written to a temporary sibling, flushed to disk, then renamed over the target (rename is atomic on
POSIX). Artifact directories (several files that must agree) are built complete in a temporary sibling directory
and swapped in with two renames; `recover_dir` repairs the one crash window between them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

_OLD_SUFFIX = ".previous"


class ArtifactError(ValueError):
    """A saved artifact directory (model or index) that is missing a file, corrupted, or does not fit."""


def _default_mode(directory: bool) -> int:
    # mkstemp/mkdtemp create private (0600/0700) entries; artifacts get the usual permissions under the umask.
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


_TMP_MARK = ".tmp-"


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> None:
    """Call ``write(tmp_path)`` and move the result onto `path` only if it succeeded.

    On any error (including a full disk) the temporary file is removed and `path` keeps its previous content.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}{_TMP_MARK}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        os.chmod(tmp, _default_mode(directory=False))
        write(tmp)
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write `text` (UTF-8) to `path` atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _json_default(value: Any) -> Any:
    # numpy scalars and arrays (metrics, vectors) without importing numpy here
    if hasattr(value, "tolist") and callable(value.tolist):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def dumps_json(data: Any) -> str:
    """Indented UTF-8 JSON with numpy values converted and non-finite floats written as null.

    >>> json.loads(dumps_json({"a": float("nan"), "b": (1.5,)}))
    {'a': None, 'b': [1.5]}
    """
    return json.dumps(_finite(data), indent=2, ensure_ascii=False, default=_json_default) + "\n"


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    return data


def atomic_write_json(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON (see `dumps_json`) to `path` atomically."""
    atomic_write_text(path, dumps_json(data))


def read_json(path: str | Path, what: str = "file") -> Any:
    """Read a JSON file, raising ValueError that names the file when it is missing or not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise ValueError(f"{path}: {what} is missing") from err
    except IsADirectoryError as err:
        raise ValueError(f"{path}: is a directory, not the {what} file") from err
    except PermissionError as err:
        raise ValueError(f"{path}: {what} cannot be read (permission denied)") from err
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: {what} is corrupted (not valid JSON: {err})") from err


@contextlib.contextmanager
def staged_dir(dest: str | Path) -> Iterator[Path]:
    """Yield an empty temporary directory beside `dest`; on success it replaces `dest` as a whole.

    If the body raises, `dest` is left exactly as it was and the temporary directory is removed.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{dest.name}{_TMP_MARK}", dir=dest.parent))
    try:
        os.chmod(stage, _default_mode(directory=True))
        yield stage
        for file in stage.rglob("*"):
            if file.is_file():
                with file.open("rb") as handle:
                    os.fsync(handle.fileno())
        replace_dir(stage, dest)
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise


class OutputError(ValueError):
    """An output location that cannot be written: found before any long work starts, not after it."""


def check_writable(dest: str | Path, what: str) -> None:
    """Raise `OutputError` unless `dest`'s parent can be created and holds a new file (where the stage will go)."""
    parent = Path(dest).parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise OutputError(f"cannot write {what} to {dest}: {err.strerror or err}") from err


def check_new_output(path: str | Path, what: str, overwrite: bool) -> None:
    """Before any work: `path`'s folder must take a new file (`check_writable`), and an existing `path` is kept
    (FileExistsError naming ``--overwrite``) unless `overwrite`."""
    check_writable(path, what)
    if Path(path).exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass --overwrite to replace it")


def refuse_to_replace(dest: str | Path, what: str, overwrite: bool) -> None:
    """Raise FileExistsError when `dest` is a non-empty directory and replacing it was not asked for (`overwrite`),
    and `OutputError` when it cannot be written at all (checked up front, before hours of training or embedding)."""
    dest = Path(dest)
    if dest.exists() and not dest.is_dir():
        raise FileExistsError(f"{dest} is a file, not a directory for {what}; choose another --out")
    if not overwrite and dest.is_dir() and any(dest.iterdir()):
        raise FileExistsError(f"{dest} already holds {what}; pass --overwrite to replace it")
    check_writable(dest, what)


def replace_dir(new: Path, dest: Path) -> None:
    """Move directory `new` to `dest`, replacing any existing `dest`.

    `dest` is first renamed to ``<dest>.previous``, then `new` takes its name, then the old copy is deleted. A crash
    between the two renames leaves only ``<dest>.previous``, which `recover_dir` puts back.
    """
    old = dest.with_name(dest.name + _OLD_SUFFIX)
    if old.exists():
        if dest.exists():
            shutil.rmtree(old)
        else:  # an earlier swap was interrupted: the previous copy is the good one; keep it until `new` is in place
            os.rename(old, dest)
    if dest.exists():
        os.rename(dest, old)
    os.rename(new, dest)
    _fsync_dir(dest.parent)
    shutil.rmtree(old, ignore_errors=True)


def recover_dir(dest: str | Path) -> Path:
    """Undo an interrupted `replace_dir`: if `dest` is missing but its previous copy exists, restore it."""
    dest = Path(dest)
    old = dest.with_name(dest.name + _OLD_SUFFIX)
    if not dest.exists() and old.is_dir():
        os.rename(old, dest)
    return dest


@contextlib.contextmanager
def dir_lock(dest: str | Path) -> Iterator[None]:
    """An exclusive inter-process lock for writers of artifact directory `dest` (a lock file beside it)."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(dest.with_name(f".{dest.name}.lock"), "w") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
