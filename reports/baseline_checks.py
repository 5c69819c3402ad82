"""What a usable baseline entry and results entry hold: checked on load, so that a hand-edited or
damaged file is a clear error instead of a traceback or a silently disabled drift check.

``json`` reads ``NaN`` and ``Infinity``; a NaN baseline value would make every drift comparison
false (``abs(new - nan) > allowed`` is false), so non-finite numbers are refused here.
"""

from __future__ import annotations

import math
from typing import Any

VERDICTS = ("supported", "refuted", "inconclusive", "error", "skipped")
TOLERANCE_KEYS = ("abs", "rel")


def baseline_entry_problem(claim_id: str, entry: Any) -> str | None:
    """Why baseline entry ``entry`` of ``claim_id`` cannot be compared against, or ``None``."""
    if not isinstance(entry, dict):
        return f"claim {claim_id!r}: entry must be an object, not {type(entry).__name__}"
    if entry.get("verdict") not in VERDICTS:
        return f"claim {claim_id!r}: key 'verdict' must be one of {', '.join(VERDICTS)}, not {entry.get('verdict', '(missing)')!r}"
    for key in ("value", "uncertainty"):
        where = non_finite_path(entry.get(key))
        if where is not None:
            return f"claim {claim_id!r}: key {key!r} holds a non-finite number ({where}); a baseline holds finite values only"
    return tolerance_problem(claim_id, entry.get("tolerance"))


def tolerance_problem(claim_id: str, tolerance: Any) -> str | None:
    """Why a baseline ``tolerance`` (``None`` or ``{"abs": x, "rel": y}``, finite and >= 0) is unusable, or ``None``."""
    if tolerance is None:
        return None
    if not isinstance(tolerance, dict):
        return f"claim {claim_id!r}: key 'tolerance' must be an object with 'abs' and 'rel', not {tolerance!r}"
    for key, bound in tolerance.items():
        if key not in TOLERANCE_KEYS:
            return f"claim {claim_id!r}: key 'tolerance.{key}' is unknown (allowed: {', '.join(TOLERANCE_KEYS)})"
        if not is_number(bound) or not math.isfinite(bound) or bound < 0:
            return f"claim {claim_id!r}: key 'tolerance.{key}' must be a finite number >= 0, not {bound!r}"
    return None


def record_entry_problem(index: int, entry: Any) -> str | None:
    """Why claim entry number ``index`` of a results record cannot be compared or blessed, or ``None``."""
    if not isinstance(entry, dict):
        return f"claims[{index}]: entry must be an object, not {type(entry).__name__}"
    if not isinstance(entry.get("id"), str):
        return f"claims[{index}]: key 'id' must be a string, not {entry.get('id', '(missing)')!r}"
    if entry.get("verdict") not in VERDICTS:
        return f"claim {entry['id']!r}: key 'verdict' must be one of {', '.join(VERDICTS)}, not {entry.get('verdict', '(missing)')!r}"
    return None


def non_finite_path(value: Any, path: str = "") -> str | None:
    """Where in ``value`` (nested tables and lists) a NaN or infinite number sits (``"[1.4] nan"``), or ``None``."""
    if is_number(value):
        return None if math.isfinite(value) else f"{path or 'the value'} is {value}"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = non_finite_path(item, f"{path}[{key}]")
        if found is not None:
            return found
    return None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
