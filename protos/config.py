"""Typed config sections from TOML, shared by agent and collector.

A component's config is a frozen dataclass. ``load_section`` reads one
``[section]`` table, applies overrides (CLI flags and environment variables,
already resolved by click) and checks every value against the field's type,
so a mistake names the file, the key and what was expected.
"""

from __future__ import annotations

import dataclasses
import math
import re
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


class SettingError(ConfigError):
    """A value of the right type that is not allowed; carries the key so the
    loader can say where it came from (file and line, or flag/environment)."""

    def __init__(self, key: str, value: object, expected: str) -> None:
        super().__init__(f"key {key!r}: expected {expected}, got {value!r}")
        self.key = key


def check_range(
    key: str, value: float, low: float, high: float, *, above_low: bool = False
) -> None:
    """Raise SettingError unless ``value`` is finite and within [low, high]
    (``(low, high]`` with ``above_low``). NaN fails every comparison, so it
    never slips through a "must be positive" check."""
    ok = math.isfinite(value) and (value > low if above_low else value >= low) and value <= high
    if not ok:
        lower = f"above {low:g}" if above_low else f"at least {low:g}"
        raise SettingError(key, value, f"a finite number {lower} and at most {high:g}")


def check_ranges(obj: object, ranges: Mapping[str, tuple[float, float, bool]]) -> None:
    """``check_range`` for each ``name: (low, high, above_low)`` of ``obj``."""
    for name, (low, high, above_low) in ranges.items():
        check_range(name, getattr(obj, name), low, high, above_low=above_low)


def key_line(text: str, section: str, key: str) -> int | None:
    """1-based line of ``key`` in the ``[section]`` table of TOML ``text``.

    tomllib keeps no positions, so this scans the text: the line that opens
    ``[section]``, then the first ``key =`` (bare or quoted) before the next
    table header. Good enough for the flat tables our configs use."""
    header = re.compile(r"^\s*\[\s*" + re.escape(section) + r"\s*\]\s*(#.*)?$")
    other = re.compile(r"^\s*\[")
    assign = re.compile(r"^\s*(" + re.escape(key) + r"|\"" + re.escape(key) + r"\")\s*=")
    inside = False
    for number, line in enumerate(text.splitlines(), start=1):
        if header.match(line):
            inside = True
        elif other.match(line):
            inside = False
        elif inside and assign.match(line):
            return number
    return None


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
            number = float(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise _expect(where, key, "a number", value) from None
        if not math.isfinite(number):
            raise _expect(where, key, "a finite number", value)
        return number
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
    return _read_toml(path)[0]


def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML (not UTF-8: {exc})") from exc
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from exc


def _where(path: Path, text: str, section: str, key: str) -> str:
    line = key_line(text, section, key)
    return f"{path}:{line} [{section}]" if line is not None else f"{path} [{section}]"


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
    text = ""
    from_file: set[str] = set()
    if path is not None:
        doc, text = _read_toml(path)
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
            values[key] = _coerce(_where(path, text, section, key), key, hints[key], value)
            from_file.add(key)
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key not in fields:
            raise ConfigError(f"unknown setting {key!r} for [{section}]")
        values[key] = _coerce(
            f"setting {section}.{key} (flag or environment)", key, hints[key], value
        )
        from_file.discard(key)
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
    except SettingError as exc:
        if exc.key in values and exc.key not in from_file:
            where = f"setting {section}.{exc.key} (flag or environment)"
        elif path is not None and exc.key in from_file:
            where = _where(path, text, section, exc.key)
        else:
            where = f"{path} [{section}]" if path is not None else "default configuration"
        raise ConfigError(f"{where}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path or 'configuration'}: [{section}]: {exc}") from exc
