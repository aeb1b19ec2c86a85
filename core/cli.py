"""Command-line flags generated from a config dataclass: one flag per field, same name, same default.

argparse rejects an unknown flag with an error, so a typo never runs with the default silently.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import logging
import sys
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _parse_tuple(item_type: type) -> Any:
    def parse(text: str) -> tuple:
        try:
            return tuple(item_type(part) for part in text.split(",") if part.strip())
        except ValueError as err:
            raise argparse.ArgumentTypeError(
                f"expected comma-separated {item_type.__name__} values, got {text!r}"
            ) from err

    return parse


def _optional(number: type, none_words: tuple[str, ...]) -> Any:
    """A parser for an optional number: one of `none_words` means None.

    >>> _optional(int, ("all",))("ALL"), _optional(float, ("auto",))("0.5")
    (None, 0.5)
    """

    def parse(text: str) -> Any:
        if text.lower() in {*none_words, "none"}:
            return None
        try:
            return number(text)
        except ValueError as err:
            words = " or ".join(f"'{w}'" for w in none_words)
            raise argparse.ArgumentTypeError(f"expected {'an integer' if number is int else 'a number'} or "
                                             f"{words}, got {text!r}") from err  # fmt: skip

    return parse


def field_docs(config_cls: type) -> dict[str, str]:
    """Field descriptions from the ``Args:`` section of the class docstring (``name: text`` entries).

    >>> class C:
    ...     '''A config.
    ...
    ...     Args:
    ...         k: neighbours that
    ...             vote.
    ...         out: where to save.
    ...     '''
    >>> field_docs(C)
    {'k': 'neighbours that vote.', 'out': 'where to save.'}
    """
    docs: dict[str, str] = {}
    current: list[str] | None = None
    in_args = False
    for raw in inspect.cleandoc(config_cls.__doc__ or "").splitlines():
        line = raw.strip()
        if line == "Args:":
            in_args = True
            continue
        if not in_args:
            continue
        if not raw.startswith(" "):  # the next section
            break
        indent = len(raw) - len(raw.lstrip())
        names, sep, text = line.partition(":")
        if indent <= 4 and sep and all(n.strip().isidentifier() for n in names.split("/")):
            current = [text.strip()]
            for name in names.split("/"):
                docs[name.strip()] = current  # type: ignore[assignment]
        elif current is not None:
            current.append(line)
    return {name: " ".join(parts).strip() for name, parts in docs.items()}  # type: ignore[arg-type]


def add_config_arguments(parser: argparse.ArgumentParser, config_cls: type) -> None:
    """Add one flag per field of `config_cls`, documented from its docstring; bools get ``--x`` / ``--no-x``, tuples
    ``--x a,b``, and a field with ``metadata={"repeat": True}`` is given once per value (``--x a --x b``)."""
    hints = typing.get_type_hints(config_cls)
    docs = field_docs(config_cls)
    for field in dataclasses.fields(config_cls):
        hint = hints[field.name]
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()  # type: ignore[misc]
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        optional = origin in (typing.Union, types.UnionType) and type(None) in args
        base = next((a for a in args if a is not type(None)), hint) if optional else hint
        kwargs: dict[str, Any] = {"dest": field.name, "default": default, "help": docs.get(field.name, " ")}
        if "choices" in field.metadata:
            kwargs["choices"] = field.metadata["choices"]
        if field.metadata.get("repeat"):  # ``--x A --x B``: a tuple of strings, one per use of the flag
            kwargs.update(action="append", metavar=field.metadata.get("metavar", "STR"))
        elif base is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is tuple:
            item = typing.get_args(base)[0]
            kwargs.update(type=_parse_tuple(item), metavar=f"{item.__name__.upper()},...")
        elif base is int and optional:
            kwargs.update(type=_optional(int, ("all",)), metavar="N|all")
        elif base is float and optional:
            kwargs.update(type=_optional(float, ("auto",)), metavar="X|auto")
        elif base in (int, float, str):
            kwargs.update(type=base, metavar=base.__name__.upper())
        else:  # pragma: no cover - configs use only the types above
            raise TypeError(f"no flag type for {field.name}: {hint}")
        parser.add_argument(_flag(field.name), *field.metadata.get("aliases", ()), **kwargs)


def config_from_args(config_cls: type[T], args: argparse.Namespace) -> T:
    """Build the config from parsed flags; its own validation turns bad values into a parser error upstream."""
    names = {f.name for f in dataclasses.fields(config_cls)}  # type: ignore[arg-type]
    return config_cls(**{k: v for k, v in vars(args).items() if k in names})


def parse_config(
    config_cls: type[T], argv: list[str] | None, description: str, **extra: Any
) -> tuple[T, argparse.Namespace]:
    """Parse `argv` into `config_cls`; invalid values exit with status 2 and a message naming them."""
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter, allow_abbrev=False
    )
    add_config_arguments(parser, config_cls)
    for flag, options in extra.items():
        parser.add_argument(_flag(flag), **options)
    args = parser.parse_args(argv)
    try:
        return config_from_args(config_cls, args), args
    except ValueError as err:
        parser.error(str(err))
        raise  # pragma: no cover - parser.error exits


def run_job(
    config_cls: type[T],
    argv: list[str] | None,
    description: str,
    job: Any,
    *,
    overwrite_help: str | None = None,
) -> tuple[int, T, Any]:
    """The body of every ``main`` that builds something: flags into `config_cls` (plus ``--overwrite`` when
    `overwrite_help` is given), logging, then ``job(cfg, overwrite)``. A `ValueError` (bad data, a model that does
    not fit...) or a `FileExistsError` (an output in the way) becomes one ``error:`` line and status 2.

    Returns ``(status, cfg, what job returned or None)``.
    """
    extra = {"overwrite": {"action": "store_true", "help": overwrite_help}} if overwrite_help else {}
    cfg, args = parse_config(config_cls, argv, description, **extra)
    setup_logging()
    try:
        return 0, cfg, job(cfg, bool(getattr(args, "overwrite", False)))
    except (ValueError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2, cfg, None


def setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
