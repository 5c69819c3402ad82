"""Measured values as text: one formatter for the terminal, the pytest report and the reports.

It reads a value the way a results record holds it: numbers (non-finite ones also as the strings
``"nan"``, ``"inf"``, ``"-inf"``, as ``results.json`` writes them), tables, head sets, curves, or
nothing (a skipped or errored claim). A value may be a bound rather than an estimate: ``bound`` is
``"lower"`` (the true value is at least the measured one), ``"upper"`` (at most), or ``None`` (an
estimate). Core layer: imports nothing but the standard library.

Shown as: ``0.6190 ± 0.0123`` (four decimals; four significant digits from 10,000 on),
``≥ 0.3477 (lower bound)``, a head set ``{1.4, 1.10}`` (``∅`` when empty), the first entries of
a table ``a: 0.5000, b: 2 …``, ``curve (n points)``, or ``—`` when nothing was measured.
"""

from __future__ import annotations

import math
from typing import Any

NON_FINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}
"""The strings ``results.json`` holds in place of non-finite numbers (see ``harness.record.to_json``)."""

BOUND_SIGN = {"lower": "≥", "upper": "≤"}
TABLE_ITEMS_SHOWN = 6


def as_number(value: Any) -> float | None:
    """``value`` as a float when it is a number (or a non-finite number written as a string);
    ``None`` for anything else, booleans included."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return NON_FINITE.get(value)
    return None


def format_number(value: float) -> str:
    """Four decimals, or four significant digits for magnitudes of 10,000 and more (and ``nan``, ``inf``)."""
    return f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


def format_value(value: Any, uncertainty: Any = None, bound: str | None = None) -> str:
    """A value with its uncertainty and bound: ``0.6190 ± 0.0123``, ``≥ 0.3477 (lower bound)``,
    a head set ``{1.4, 1.10}``, a short table, ``curve (n points)``, or ``—`` for nothing."""
    text = _value_text(value, uncertainty)
    if bound is None or value is None:
        return text
    sign = BOUND_SIGN.get(bound)
    if sign is not None and as_number(value) is not None:
        text = f"{sign} {text}"
    return f"{text} ({bound} bound)"


def _value_text(value: Any, uncertainty: Any) -> str:
    """The value alone (with ``± uncertainty`` for a number that has a numeric one)."""
    if value is None:
        return "—"
    number = as_number(value)
    if number is not None:
        spread = as_number(uncertainty)
        return format_number(number) + (f" ± {format_number(spread)}" if spread is not None else "")
    if isinstance(value, list):
        return _list_text(value)
    if isinstance(value, dict):
        return _table_text(value)
    return str(value)


def _list_text(value: list[Any]) -> str:
    """A head set ``{1.4, 1.10}`` (``∅`` when empty), or a curve's size."""
    if not value:
        return "∅"
    if all(isinstance(item, str) for item in value):
        return "{" + ", ".join(value) + "}"
    noun = "points" if all(isinstance(item, dict) for item in value) else "items"
    return f"curve ({len(value)} {noun})" if noun == "points" else f"list ({len(value)} {noun})"


def _table_text(value: dict[Any, Any]) -> str:
    """The first entries of a table, ``key: 0.1234``, ``…`` when there are more."""
    if not value:
        return "{}"
    items = list(value.items())[:TABLE_ITEMS_SHOWN]
    shown = ", ".join(f"{key}: {_entry_text(entry)}" for key, entry in items)
    return shown + (" …" if len(value) > TABLE_ITEMS_SHOWN else "")


def _entry_text(entry: Any) -> str:
    """One table entry: a float to four places, anything else as it is."""
    return format_number(entry) if isinstance(entry, float) else str(entry)
