"""Comparators and verdicts.

A verdict says what the measurement means for the claim:

- ``supported``: the expectation holds beyond the measurement's uncertainty band;
- ``refuted``: it fails beyond the band;
- ``inconclusive``: the threshold (or the tolerance edge) lies inside the band;
- ``error``: the metric raised, or returned nothing, NaN or infinity (fail closed);
- ``skipped``: the weights are not available here (with the reason).

The band of a measurement with standard error ``se`` is ``Z_BAND * se`` (about a 95% interval);
deterministic measurements (``se`` is ``None``) have no band. For ``approx x`` with tolerance
``tol = max(abs, rel*|x|)`` and ``d = |v - x|``: supported when ``d + band <= tol``, refuted
when ``d - band > tol``, inconclusive otherwise. Comparing two measurements combines their
standard errors as ``sqrt(se1^2 + se2^2)``.
"""

from __future__ import annotations

import math
from enum import Enum
from typing import Any

from harness.heads import sort_heads
from harness.measurement import Measurement
from harness.spec import Expect

Z_BAND = 2.0


class Verdict(str, Enum):
    SUPPORTED = "supported"
    REFUTED = "refuted"
    INCONCLUSIVE = "inconclusive"
    ERROR = "error"
    SKIPPED = "skipped"

    def __str__(self) -> str:
        return self.value


class ComparisonError(Exception):
    """The measurement's value cannot be compared with the expectation (wrong kind of value)."""


def judge(expect: Expect, measured: Measurement, reference: Measurement | None = None) -> Verdict:
    """The verdict of ``expect`` on ``measured`` (``reference``: the operand's measurement, if any)."""
    comparator = expect.comparator
    if comparator in {"equals", "contains", "subset_of"} and isinstance(expect.operand, list):
        return _judge_set(comparator, expect.operand, measured.value)
    value = _scalar(measured)
    band = _band(measured)
    if reference is not None:
        target = _scalar(reference)
        band = math.hypot(band, _band(reference))
    elif comparator == "between":
        low, high = expect.between
        return _and(_threshold(value, band, low, ">="), _threshold(value, band, high, "<="))
    else:
        target = float(expect.operand)
    if comparator == "approx":
        tolerance = max(expect.abs or 0.0, (expect.rel or 0.0) * abs(target))
        return _approx(value, band, target, tolerance)
    if comparator == "equals":
        return _approx(value, band, target, 0.0)
    return _threshold(value, band, target, comparator)


def _and(left: Verdict, right: Verdict) -> Verdict:
    """Both parts of a claim (``between`` is ``>= low`` and ``<= high``)."""
    if Verdict.REFUTED in (left, right):
        return Verdict.REFUTED
    if Verdict.INCONCLUSIVE in (left, right):
        return Verdict.INCONCLUSIVE
    return Verdict.SUPPORTED


def _threshold(value: float, band: float, target: float, comparator: str) -> Verdict:
    """``value <op> target`` with the band: decided only if the whole band agrees."""
    low, high = value - band, value + band
    holds = {">=": lambda x: x >= target, ">": lambda x: x > target, "<=": lambda x: x <= target, "<": lambda x: x < target}[comparator]
    if holds(low) and holds(high):
        return Verdict.SUPPORTED
    if not holds(low) and not holds(high):
        return Verdict.REFUTED
    return Verdict.INCONCLUSIVE


def _approx(value: float, band: float, target: float, tolerance: float) -> Verdict:
    distance = abs(value - target)
    if distance + band <= tolerance:
        return Verdict.SUPPORTED
    if distance - band > tolerance:
        return Verdict.REFUTED
    return Verdict.INCONCLUSIVE


def _judge_set(comparator: str, expected: list[str], value: Any) -> Verdict:
    if not isinstance(value, list):
        raise ComparisonError(f"'{comparator}' compares sets of heads or names, but the metric returned {type(value).__name__}")
    measured, wanted = set(map(str, value)), set(expected)
    holds = {
        "equals": measured == wanted,
        "contains": wanted <= measured,
        "subset_of": measured <= wanted,
    }[comparator]
    return Verdict.SUPPORTED if holds else Verdict.REFUTED


def _scalar(measurement: Measurement) -> float:
    value = measurement.value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        shown = type(value).__name__
        hint = " (use 'select' to pick one entry of a table)" if isinstance(value, dict) else ""
        raise ComparisonError(f"this comparator needs a number, but the metric returned a {shown}{hint}")
    return float(value)


def _band(measurement: Measurement) -> float:
    uncertainty = measurement.uncertainty
    if uncertainty is None:
        return 0.0
    if not isinstance(uncertainty, (int, float)):
        raise ComparisonError("a table's uncertainty needs 'select' to pick one entry")
    return Z_BAND * float(uncertainty)


def format_value(measurement: Measurement, digits: int = 4) -> str:
    """``0.6190 ± 0.0123`` for scalars, ``[1.4, 1.10]`` for head sets, a short table otherwise."""
    value = measurement.value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        shown = f"{value:.{digits}g}" if abs(value) >= 1e4 or (value != 0 and abs(value) < 1e-3) else f"{value:.{digits}f}"
        if isinstance(measurement.uncertainty, (int, float)):
            shown += f" ± {measurement.uncertainty:.{digits}f}"
        return shown
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        try:
            return "[" + ", ".join(sort_heads(list(value))) + "]"
        except ValueError:
            return "[" + ", ".join(sorted(value)) + "]"
    if isinstance(value, dict):
        items = list(value.items())
        shown = ", ".join(f"{k}: {v:.{digits}f}" if isinstance(v, float) else f"{k}: {v}" for k, v in items[:8])
        return "{" + shown + (", ..." if len(items) > 8 else "") + "}"
    return str(value)
