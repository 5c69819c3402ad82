"""Comparators and verdicts.

A verdict says what the measurement means for the claim:

- ``supported``: the expectation holds beyond the measurement's uncertainty band;
- ``refuted``: it fails beyond the band;
- ``inconclusive``: the threshold (or the tolerance edge) lies inside the band;
- ``error``: the metric raised, or returned nothing, NaN or infinity (fail closed);
- ``skipped``: the weights are not available here (with the reason).

A measurement that is only a bound (``Measurement.bound``, e.g. an optimiser's best figure, a
lower bound on what is achievable) decides only the comparisons its side can: a lower bound of
0.35 refutes "at most 0.25" and supports "at least 0.3", but leaves "at least 0.95" or
"about 0.35" inconclusive.

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

from harness.core import formatting
from harness.core.measurement import Z_BAND, Measurement
from harness.core.spec import Expect


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
    """The verdict of ``expect`` on ``measured`` (``reference``: the operand's measurement, if any).

    Each number is read as the interval it pins the quantity to (:func:`interval`); a comparison
    is decided only when the whole interval agrees.  Against a reference the interval is that of
    the difference ``measured - reference``: centre ``v - w``, band ``Z_BAND * sqrt(se_v^2 + se_w^2)``,
    open upwards when ``measured`` is a lower bound or ``reference`` an upper one (and downwards
    conversely), compared with 0.
    """
    comparator = expect.comparator
    if comparator in {"equals", "contains", "subset_of"} and isinstance(expect.operand, list):
        return _judge_set(comparator, expect.operand, measured.value)
    if reference is not None:
        return _threshold(_difference(measured, reference), 0.0, comparator)
    span = interval(measured)
    if comparator == "between":
        low, high = expect.between
        return _and(_threshold(span, low, ">="), _threshold(span, high, "<="))
    target = float(expect.operand)
    if comparator == "approx":
        tolerance = max(expect.abs or 0.0, (expect.rel or 0.0) * abs(target))
        return _within(span, target - tolerance, target + tolerance)
    if comparator == "equals":
        return _within(span, target, target)
    return _threshold(span, target, comparator)


Interval = tuple[float, float]
"""``(low, high)``: where the measured quantity lies, as far as the measurement can tell (ends may be infinite)."""


def interval(measurement: Measurement) -> Interval:
    """``[v - band, v + band]`` for an estimate; a lower bound opens it upwards to ``+inf``, an
    upper bound downwards to ``-inf`` (the quantity is at least / at most ``v``, within its band)."""
    value, band = _scalar(measurement), _band(measurement)
    return _opened((value - band, value + band), measurement.bound)


def _difference(measured: Measurement, reference: Measurement) -> Interval:
    centre = _scalar(measured) - _scalar(reference)
    band = math.hypot(_band(measured), _band(reference))
    span = _opened((centre - band, centre + band), measured.bound)
    return _opened(span, {"lower": "upper", "upper": "lower", None: None}[reference.bound])


def _opened(span: Interval, bound: str | None) -> Interval:
    low, high = span
    if bound == "lower":
        return low, math.inf
    if bound == "upper":
        return -math.inf, high
    return low, high


def _and(left: Verdict, right: Verdict) -> Verdict:
    """Both parts of a claim (``between`` is ``>= low`` and ``<= high``)."""
    if Verdict.REFUTED in (left, right):
        return Verdict.REFUTED
    if Verdict.INCONCLUSIVE in (left, right):
        return Verdict.INCONCLUSIVE
    return Verdict.SUPPORTED


def _threshold(span: Interval, target: float, comparator: str) -> Verdict:
    """``quantity <op> target``: decided only if it holds (or fails) over the whole interval."""
    holds = {">=": lambda x: x >= target, ">": lambda x: x > target, "<=": lambda x: x <= target, "<": lambda x: x < target}[comparator]
    low, high = span
    if holds(low) and holds(high):
        return Verdict.SUPPORTED
    if not holds(low) and not holds(high):
        return Verdict.REFUTED
    return Verdict.INCONCLUSIVE


def _within(span: Interval, low: float, high: float) -> Verdict:
    """The quantity lies in ``[low, high]``: supported if the interval is inside, refuted if disjoint."""
    if low <= span[0] and span[1] <= high:
        return Verdict.SUPPORTED
    if span[1] < low or span[0] > high:
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


def format_value(measurement: Measurement) -> str:
    """A measurement as text (:func:`harness.core.formatting.format_value`): ``0.6190 ± 0.0123``,
    ``≥ 0.3477 (lower bound)`` for a bound, ``{1.4, 1.10}`` for a head set, a short table otherwise."""
    return formatting.format_value(measurement.value, measurement.uncertainty, measurement.bound)
