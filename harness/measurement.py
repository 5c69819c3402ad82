"""What a metric returns: a value, its uncertainty, and details for reports."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Union

Scalar = float
Table = dict[str, float]
"""Named scalars: a per-head table keyed ``"L.H"``, or named figures (``{"1": 0.31, "5": 0.48}``)."""
HeadSet = list[str]
Curve = list[dict[str, Any]]
"""Points of a curve, e.g. ``[{"rank": 1, "top1": 0.0}, {"rank": 2, "top1": 0.1}]``."""
Value = Union[Scalar, Table, HeadSet, Curve]


@dataclass(frozen=True)
class Measurement:
    """The result of one metric on one model and input.

    ``uncertainty`` is a standard error (same shape as ``value`` for scalars and tables), set
    by metrics that sample (e.g. over a batch of sequences); ``None`` for deterministic ones.
    ``details`` carries whatever a report should show (per-head tables, counts, settings).
    """

    value: Value
    uncertainty: float | Table | None = None
    details: dict[str, Any] = field(default_factory=dict)
    unit: str | None = None

    def select(self, key: str | None) -> "Measurement":
        """The sub-measurement under ``key`` of a table (``None`` returns ``self``).

        Raises ``KeyError`` naming the keys that exist.
        """
        if key is None:
            return self
        if not isinstance(self.value, dict):
            raise KeyError(f"select: {key!r} needs a table value, got {type(self.value).__name__}")
        if key not in self.value:
            shown = ", ".join(list(self.value)[:20])
            raise KeyError(f"select: no entry {key!r}; entries are: {shown}")
        uncertainty = self.uncertainty.get(key) if isinstance(self.uncertainty, dict) else None
        return Measurement(self.value[key], uncertainty, self.details, self.unit)


def non_finite_reason(value: Any) -> str | None:
    """Why ``value`` cannot be judged (``None``, NaN, infinity, empty table), or ``None`` if it can."""
    if value is None:
        return "the metric returned nothing"
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return None if math.isfinite(value) else f"the metric returned {value}"
    if isinstance(value, dict):
        if not value:
            return "the metric returned an empty table"
        for key, item in value.items():
            reason = non_finite_reason(item)
            if reason is not None:
                return f"{reason} for {key!r}"
        return None
    if isinstance(value, list):
        for item in value:
            if isinstance(item, dict):
                for key, entry in item.items():
                    if isinstance(entry, float) and not math.isfinite(entry):
                        return f"the metric returned {entry} in a curve point ({key})"
        return None
    return f"the metric returned an unsupported value of type {type(value).__name__}"
