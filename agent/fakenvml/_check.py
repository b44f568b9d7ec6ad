"""Small validators for scenario files: each mistake names file, key path and expectation."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NoReturn

from protos.errors import ConfigError


def _show(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class Where:
    """The file being read; builds ``ConfigError`` messages."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, expected: str, got: object) -> NoReturn:
        raise ConfigError(f"{self.source}: {key}: expected {expected}, got {_show(got)}")

    def problem(self, key: str, message: str) -> NoReturn:
        raise ConfigError(f"{self.source}: {key}: {message}")

    def mapping(
        self,
        key: str,
        value: object,
        *,
        allowed: frozenset[str],
        required: frozenset[str] = frozenset(),
    ) -> Mapping[str, object]:
        if not isinstance(value, Mapping):
            self.fail(key, "a mapping", value)
        for k in value:
            if not isinstance(k, str) or k not in allowed:
                self.fail(key, f"only the keys {', '.join(sorted(allowed))}", k)
        for k in sorted(required):
            if k not in value:
                self.problem(key, f"missing required key {k!r}")
        return value

    def list(self, key: str, value: object, *, nonempty: bool = False) -> list[object]:
        if not isinstance(value, list):
            self.fail(key, "a list", value)
        if nonempty and not value:
            self.fail(key, "a non-empty list", value)
        return value

    def string(self, key: str, value: object, *, allow_int: bool = False) -> str:
        if allow_int and isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return str(value)
        if not isinstance(value, str) or not value:
            self.fail(key, "a non-empty string", value)
        return value

    def number(
        self,
        key: str,
        value: object,
        *,
        low: float | None = None,
        high: float | None = None,
        low_open: bool = False,
    ) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.fail(key, "a number", value)
        number = float(value)
        if not math.isfinite(number):
            self.fail(key, "a finite number", value)
        if low is not None and (number < low or (low_open and number == low)):
            self.fail(key, f"a number {'>' if low_open else '>='} {low:g}", value)
        if high is not None and number > high:
            self.fail(key, f"a number <= {high:g}", value)
        return number

    def integer(self, key: str, value: object, *, low: int = 0, high: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            self.fail(key, "an integer", value)
        if value < low or (high is not None and value > high):
            bound = f" from {low} to {high}" if high is not None else f" >= {low}"
            self.fail(key, f"an integer{bound}", value)
        return value

    def boolean(self, key: str, value: object) -> bool:
        if not isinstance(value, bool):
            self.fail(key, "true or false", value)
        return value

    def choice(self, key: str, value: object, choices: tuple[str, ...]) -> str:
        if not isinstance(value, str) or value not in choices:
            self.fail(key, "one of " + ", ".join(choices), value)
        return value
