"""Hyperparameters: dataclass fields with help text, and parsing of ``key=value`` overrides."""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

from dalib.errors import ConfigError, first_line

__all__ = ["build_config", "describe_config", "param", "parse_value", "read_toml"]


def _toml() -> Any:
    """The standard library's TOML reader (Python 3.11 on), or the ``tomli`` it came from."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    return tomllib


def read_toml(path: str | Path, what: str) -> dict[str, Any]:
    """The table of the TOML file ``path`` (UTF-8, with or without the byte-order mark that
    Windows editors write), or a one-line :class:`ConfigError` naming it as ``what PATH``."""
    tomllib = _toml()
    try:
        return tomllib.loads(Path(path).read_text(encoding="utf-8-sig"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot parse {what} {path}: {first_line(exc)}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}") from None


class DataclassInstance(typing.Protocol):
    """What type checkers take for an instance of any dataclass (a method's ``Config(...)``)."""

    __dataclass_fields__: typing.ClassVar[dict[str, Any]]


def param(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:  # noqa: A002 - "help" reads best
    """A dataclass field with a help text, shown by ``dalib show`` and the docs.

    ``trade_off: float = param(1.0, "weight of the domain loss")``; a list or dict default
    goes through ``default_factory``: ``sizes: list = param(help="...", default_factory=lambda: [256, 256])``.
    """
    metadata = {"help": help, **kwargs.pop("metadata", {})}
    return dataclasses.field(default=default, metadata=metadata, **kwargs)


def resolved_types(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward refs: fall back to the raw annotations
        return {f.name: f.type for f in dataclasses.fields(cls)}


def parse_value(text: Any, typ: Any, key: str) -> Any:
    """Convert ``text`` (a string from the command line, or a TOML value) to ``typ``."""
    origin = typing.get_origin(typ)
    args = typing.get_args(typ)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and (text is None or (isinstance(text, str) and text.lower() in ("none", "null"))):
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(text, arg, key)
            except ConfigError as exc:
                errors.append(exc)
        if len(errors) == 1:  # float | None: the number's own reason ("expected a finite number" for inf)
            raise ConfigError(f"{errors[0]} (or none)") from None
        raise ConfigError(f"bad value {text!r} for {key}: expected {_type_name(typ)}")
    if origin is typing.Literal:
        for choice in args:
            if str(choice) == str(text):
                return choice
        raise ConfigError(f"bad value {text!r} for {key}: choose one of {', '.join(map(str, args))}")
    if typ in (list, tuple) or origin in (tuple, list):
        kind = typ if origin is None else origin
        bare = isinstance(text, str)  # items read from text: 1,2 or [a, b]
        if not bare:
            items = list(text) if isinstance(text, (list, tuple)) else [text]
        else:
            body = text.strip()
            try:  # [1, 2], ["a", "b"]: TOML or JSON, whose quoted items stay strings
                items, bare = _literal(body, list, key), False
            except ConfigError:  # 1,2 or [a, b]
                if body.startswith("[") and body.endswith("]"):
                    body = body[1:-1]
                items = [t.strip() for t in body.split(",")]
                if not body.strip():  # (an unset shell variable: --set sigmas=$S)
                    raise ConfigError(f"bad value {text!r} for {key}: expected {_type_name(typ)}, got nothing "
                                      "(an empty list is [])")
                if "" in items:  # 1,,2: a missing item, not a shorter list
                    raise ConfigError(f"bad value {text!r} for {key}: an empty item (two commas together, or one at an end)")
        if kind is tuple and args and args[-1] is not Ellipsis:  # tuple[int, float]: item i has type i
            if len(items) != len(args):
                raise ConfigError(f"bad value {text!r} for {key}: expected {len(args)} items "
                                  f"({', '.join(map(_type_name, args))}), got {len(items)}")
            values = [parse_value(item, arg, key) for item, arg in zip(items, args)]
            return tuple(values)
        inner = args[0] if args and args[0] is not Ellipsis else Any
        if inner is Any:  # a bare list: unquoted text a number or boolean where it reads as one
            values = [_guess(item) if bare else item for item in items]
        else:
            values = [parse_value(item, inner, key) for item in items]
        return tuple(values) if kind is tuple else values
    if typ is dict or origin is dict:
        table = text if isinstance(text, dict) else _literal(str(text), dict, key)
        if not all(isinstance(k, str) for k in table):
            raise ConfigError(f"bad value {text!r} for {key}: the keys must be strings")
        if len(args) != 2 or args[1] is Any:  # a bare dict: its values as TOML, JSON or Python gave them
            return dict(table)
        return {k: parse_value(v, args[1], f"{key}.{k}") for k, v in table.items()}
    if typ is Any:
        return text
    if typ is bool:
        if isinstance(text, bool):
            return text
        low = str(text).strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"bad value {text!r} for {key}: expected true or false")
    if typ is int:
        if isinstance(text, bool):
            raise ConfigError(f"bad value {text!r} for {key}: expected an integer")
        if isinstance(text, int):
            return text
        try:
            return int(str(text).strip())
        except ValueError:
            raise ConfigError(f"bad value {text!r} for {key}: expected an integer") from None
    if typ is float:
        if isinstance(text, bool):
            raise ConfigError(f"bad value {text!r} for {key}: expected a number")
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise ConfigError(f"bad value {text!r} for {key}: expected a number") from None
        if not math.isfinite(value):
            raise ConfigError(f"bad value {text!r} for {key}: expected a finite number")
        return value
    if typ is str:
        if not isinstance(text, str):  # a TOML number, list or table is not text
            raise ConfigError(f"bad value {text!r} for {key}: expected text (quote it)")
        return text
    raise ConfigError(f"cannot set {key}: unsupported type {_type_name(typ)}")


def _literal(text: str, kinds: type | tuple[type, ...], key: str) -> Any:
    """``text`` read as a TOML or JSON value (``[1, 2]``, ``{a = 1}``, ``{"a": 1}``, ``2.5``)
    of one of ``kinds``."""
    import json

    tomllib = _toml()
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            value = json.loads(text)
        except ValueError:
            value = None
    if not isinstance(value, kinds):
        names = kinds.__name__ if isinstance(kinds, type) else "|".join(k.__name__ for k in kinds)
        raise ConfigError(f"bad value {text!r} for {key}: expected a {names} (TOML or JSON)")
    return value


def _guess(text: str) -> Any:
    """An unquoted item of a bare list on the command line: a boolean or finite number where it
    reads as one (``128``, ``0.5``, ``true``), else the text."""
    try:
        value = _literal(text, (bool, int, float), "")
    except ConfigError:
        return text
    return value if not isinstance(value, float) or math.isfinite(value) else text


def _type_name(typ: Any) -> str:
    """``float``, ``float|None``, ``biased|unbiased|linear`` (a Literal's choices)."""
    origin = typing.get_origin(typ)
    if origin is typing.Literal:
        return "|".join(str(a) for a in typing.get_args(typ))
    if origin in (typing.Union, types.UnionType):
        return "|".join("None" if a is type(None) else _type_name(a) for a in typing.get_args(typ))
    if origin in (list, tuple, dict) and typing.get_args(typ):  # list[float], tuple[int, float]: their items too
        return f"{origin.__name__}[{', '.join('...' if a is Ellipsis else _type_name(a) for a in typing.get_args(typ))}]"
    return getattr(typ, "__name__", None) or str(typ).replace("typing.", "")


def build_config(cls: type, overrides: dict[str, Any] | None = None, *, owner: str = "") -> Any:
    """Instantiate the frozen dataclass ``cls`` with ``overrides`` (strings or values).

    An unknown key raises :class:`ConfigError` listing the valid ones; a value that does
    not parse as the field's type raises too. Dataclass ``__post_init__`` checks that
    raise ``ValueError`` become :class:`ConfigError`.
    """
    overrides = dict(overrides or {})
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = resolved_types(cls)
    where = f" of {owner}" if owner else ""
    kwargs = {}
    for key, raw in overrides.items():
        if key not in fields:
            known = ", ".join(fields) or "(none)"
            raise ConfigError(f"unknown hyperparameter {key!r}{where}; valid: {known}")
        kwargs[key] = parse_value(raw, hints[key], key)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid hyperparameters{where}: {exc}") from exc


def describe_config(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for each field of the dataclass ``cls``."""
    hints = resolved_types(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            default = repr(f.default_factory())  # type: ignore[misc]
        else:
            default = "(required)"
        rows.append((f.name, _type_name(hints.get(f.name, f.type)), default, f.metadata.get("help", "")))
    return rows
