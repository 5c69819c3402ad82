"""Measured values as text, for both report renderers: :mod:`harness.core.formatting` read from a record entry.

A record holds values as the run wrote them (see :mod:`harness.core.formatting`). An entry's (or the
reference's) ``bound`` is ``"lower"``, ``"upper"``, or ``null``/absent (an estimate; records
written before the field existed have no ``bound`` key).
"""

from __future__ import annotations

import math
from typing import Any

from harness.core.formatting import BOUND_SIGN, NON_FINITE, TABLE_ITEMS_SHOWN, as_number, format_number, format_value

__all__ = ["BOUND_SIGN", "NON_FINITE", "TABLE_ITEMS_SHOWN", "as_number", "bound_of", "finite_numbers", "format_measured",
           "format_number"]


def bound_of(measured: dict[str, Any]) -> str | None:
    """The ``bound`` of an entry or reference: ``"lower"``, ``"upper"``, or ``None`` (also when absent)."""
    bound = measured.get("bound")
    return None if bound is None else str(bound)


def format_measured(measured: dict[str, Any]) -> str:
    """The value of a claim entry or reference with its uncertainty and bound (:func:`harness.core.formatting.format_value`)."""
    return format_value(measured.get("value"), measured.get("uncertainty"), bound_of(measured))


def finite_numbers(values: Any) -> list[float] | None:
    """``values`` as finite floats, ``None`` unless it is a non-empty list of finite numbers (a plot's data)."""
    if not isinstance(values, list) or not values:
        return None
    numbers = [as_number(v) for v in values]
    if any(n is None or not math.isfinite(n) for n in numbers):
        return None
    return [float(n) for n in numbers]  # type: ignore[arg-type]
