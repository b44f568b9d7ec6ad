"""Typed config sections from TOML, shared by agent and collector.

A component's config is a frozen dataclass. ``load_section`` reads one
``[section]`` table, applies overrides (CLI flags and environment variables,
already resolved by click) and checks every value against the field's type,
so a mistake names the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

from protos.errors import ConfigError

T = TypeVar("T")
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


def _expect(where: str, key: str, expected: str, value: object) -> ConfigError:
    return ConfigError(f"{where}: key {key!r}: expected {expected}, got {value!r}")


def _coerce(where: str, key: str, tp: Any, value: object) -> object:
    origin = typing.get_origin(tp)
    if origin in (types.UnionType, typing.Union):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(where, key, args[0], value)
    if origin is tuple:
        (item,) = typing.get_args(tp)[:1]
        if isinstance(value, str):
            value = [v for v in (s.strip() for s in value.split(",")) if v]
        if not isinstance(value, list | tuple):
            raise _expect(where, key, "a list", value)
        return tuple(_coerce(where, key, item, v) for v in value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in {
            "1",
            "true",
            "yes",
            "on",
            "0",
            "false",
            "no",
            "off",
        }:
            return value.lower() in {"1", "true", "yes", "on"}
        raise _expect(where, key, "true or false", value)
    if tp is int:
        if isinstance(value, bool):
            raise _expect(where, key, "an integer", value)
        if isinstance(value, float) and not value.is_integer():
            raise _expect(where, key, "an integer", value)
        try:
            return int(value)  # type: ignore[call-overload]
        except (TypeError, ValueError):
            raise _expect(where, key, "an integer", value) from None
    if tp is float:
        if isinstance(value, bool):
            raise _expect(where, key, "a number", value)
        try:
            return float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise _expect(where, key, "a number", value) from None
    if tp is Path:
        if not isinstance(value, str | Path) or not str(value):
            raise _expect(where, key, "a path", value)
        return Path(value)
    if tp is str:
        if not isinstance(value, str):
            raise _expect(where, key, "a string", value)
        return value
    raise ConfigError(f"{where}: key {key!r}: unsupported config type {tp!r}")


def read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc


def load_section(
    cls: type[T],
    path: Path | None,
    section: str,
    overrides: Mapping[str, object] | None = None,
) -> T:
    """Build ``cls`` from ``[section]`` of ``path`` (optional) plus ``overrides``.

    Overrides whose value is None are ignored (a flag that was not given).
    Unknown keys in the file are errors: a typo must not silently fall back
    to a default.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, object] = {}
    if path is not None:
        doc = read_toml(path)
        table = doc.get(section, {})
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: [{section}] must be a table")
        unknown = sorted(set(table) - set(fields))
        if unknown:
            raise ConfigError(
                f"{path}: [{section}] has unknown key(s) {', '.join(unknown)};"
                f" expected some of {', '.join(sorted(fields))}"
            )
        for key, value in table.items():
            values[key] = _coerce(f"{path} [{section}]", key, hints[key], value)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in fields:
            raise ConfigError(f"unknown setting {key!r} for [{section}]")
        values[key] = _coerce(f"setting {section}.{key}", key, hints[key], value)
    missing = [
        n
        for n, f in fields.items()
        if n not in values
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        where = str(path) if path else "configuration"
        raise ConfigError(f"{where}: [{section}] is missing required key(s) {', '.join(missing)}")
    try:
        return cls(**values)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path or 'configuration'}: [{section}]: {exc}") from exc
