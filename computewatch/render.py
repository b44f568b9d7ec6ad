"""Human-readable figures: FLOP counts and rates, tables."""

from __future__ import annotations

from collections.abc import Sequence

_PREFIXES = ((1e24, "Y"), (1e21, "Z"), (1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"))


def si(value: float, unit: str) -> str:
    """1.23e18 -> '1.23 EFLOP' style, with the unit given."""
    for scale, prefix in _PREFIXES:
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.3g} {unit}"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(out)


def bar(fraction: float, width: int = 20) -> str:
    """A progress bar for ``fraction`` in [0, 1] (clamped)."""
    f = min(max(fraction, 0.0), 1.0)
    filled = round(f * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


def interval(
    estimate: float | None, upper: float, unit: str, unmeasured_seconds: float = 0.0
) -> str:
    """A compute figure as its interval, never a bare 0 for the unmeasured:
    ``1.2 PFLOP (<= 2.4 PFLOP)``; ``>= 1.2 PFLOP (<= 9 PFLOP, 30 GPU-s
    unmeasured)`` when part of it was not measured; ``unknown (<= 9 PFLOP)``
    when none of it was."""
    if estimate is None:
        text = "unknown"
    else:
        text = (">= " if unmeasured_seconds > 0 else "") + si(estimate, unit)
    extra = f"<= {si(upper, unit)}"
    if unmeasured_seconds > 0:
        extra += f", {unmeasured_seconds:,.0f} GPU-s unmeasured"
    return f"{text} ({extra})"
