"""What a metric returns: a value, its uncertainty, and details for reports."""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from typing import Any, Literal, Union

Scalar = float
Table = dict[str, float]
"""Named scalars: a per-head table keyed ``"L.H"``, or named figures (``{"1": 0.31, "5": 0.48}``)."""
HeadSet = list[str]
Curve = list[dict[str, Any]]
"""Points of a curve, e.g. ``[{"label": "rank=1", "rank": 1, "top1": 0.0}, ...]``; ``select`` finds a
point by its ``label``."""
Value = Union[Scalar, Table, HeadSet, Curve]
Bound = Literal["lower", "upper"]
"""Which side of the quantity a measured value bounds: ``"lower"`` means the true value is at least
the measured one (an optimiser's best figure: what it found is achievable, more may be), ``"upper"``
at most (e.g. a minimised loss)."""
Z_BAND = 2.0
"""Standard errors either side of a measured value that its uncertainty band spans (about a 95%
interval): verdicts treat a threshold inside ``value ± Z_BAND * se`` as inconclusive, and a baseline
comparison allows ``Z_BAND`` combined standard errors of drift."""
BOUND_KEY = "bound"
"""A curve point's own bound, as a field of the point (``{"label": "rank=2", "top1": 0.34, "bound": "lower"}``)."""


@dataclass(frozen=True)
class Measurement:
    """The result of one metric on one model and input.

    ``uncertainty`` is a standard error (same shape as ``value`` for scalars and tables), set
    by metrics that sample (e.g. over a batch of sequences); ``None`` for deterministic ones.
    ``details`` carries whatever a report should show (per-head tables, counts, settings).
    ``bound`` says the value is only a bound on the quantity (see :data:`Bound`); ``None`` for an
    estimate.  Verdicts judge a bound by the side it is on (:func:`harness.verdicts.judge`).
    """

    value: Value
    uncertainty: float | Table | None = None
    details: dict[str, Any] = field(default_factory=dict)
    unit: str | None = None
    bound: Bound | None = None

    def select(self, path: str | None) -> "Measurement":
        """The sub-measurement at ``path`` (``None`` returns ``self``).

        ``path`` is one key or several joined by ``/``, each step going one level down: into a
        table by key (``"1.4"``), into a curve by a point's ``label`` (``"rank=64"``), into a
        point by field (``"rank=64/top1"``).  The whole value the path started from (the table
        or the curve) is kept in ``details["selected_from"]``, so that reports can still plot
        it.  A curve point's own ``bound`` field is the bound of every figure selected from it.
        Raises ``KeyError`` naming the step that failed and the keys that exist there.
        """
        if path is None:
            return self
        selected = self
        for step in path.split(PATH_SEPARATOR):
            selected = selected._step(step, path)
        details = {**self.details, "selected_from": self.value}
        return Measurement(selected.value, selected.uncertainty, details, selected.unit, selected.bound)

    def _step(self, key: str, path: str) -> "Measurement":
        value = self.value
        if _is_curve(value):
            labels = [str(point.get("label")) for point in value]
            if key not in labels:
                raise KeyError(f"select {path!r}: no curve point labelled {key!r}; labels are: {_shown(labels)}")
            point = value[labels.index(key)]
            return Measurement(point, None, self.details, self.unit, point.get(BOUND_KEY, self.bound))
        if not isinstance(value, dict):
            raise KeyError(f"select {path!r}: {key!r} needs a table or a curve, got {type(value).__name__} {value!r}")
        if key not in value:
            raise KeyError(f"select {path!r}: no entry {key!r}; entries are: {_shown(list(value))}")
        uncertainty = self.uncertainty.get(key) if isinstance(self.uncertainty, dict) else None
        return Measurement(value[key], uncertainty, self.details, self.unit, self.bound)


PATH_SEPARATOR = "/"


def _is_curve(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(point, dict) for point in value)


def _shown(keys: list[str]) -> str:
    return ", ".join(keys[:20]) + (f", ... ({len(keys)} in all)" if len(keys) > 20 else "")


def measurement_non_finite_reason(measurement: Measurement) -> str | None:
    """Why ``measurement`` cannot be judged, or ``None`` if it can.

    Checks its value (:func:`non_finite_reason`), its uncertainty (a number or a table: NaN or
    infinity is refused) and, when the value is a set of names (heads chosen by ranking or
    thresholding scores), the figures it was chosen from: every numeric entry and every table of
    numbers at the top level of ``details`` (e.g. ``details["scores"]``). A NaN score compares
    false with any threshold, so a set chosen from NaN scores looks like a real (empty) answer.
    """
    reason = non_finite_reason(measurement.value)
    if reason is not None:
        return reason
    reason = _uncertainty_reason(measurement.uncertainty)
    if reason is not None:
        return reason
    if _is_name_set(measurement.value):
        return _supporting_figures_reason(measurement.details)
    return None


def _uncertainty_reason(uncertainty: Any) -> str | None:
    """Why an uncertainty (``None``, a number or a table of numbers) is not finite, or ``None``."""
    entries = uncertainty.items() if isinstance(uncertainty, dict) else [(None, uncertainty)]
    for key, item in entries:
        if _is_number(item) and not math.isfinite(item):
            where = "" if key is None else f" for {key!r}"
            return f"the metric returned the uncertainty {item}{where}"
    return None


def _is_name_set(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _supporting_figures_reason(details: dict[str, Any]) -> str | None:
    """The first NaN or infinity among the numbers and tables of numbers directly in ``details``."""
    for name, item in details.items():
        if _is_number(item) and not math.isfinite(item):
            return f"the set was chosen from non-finite figures: details {name!r} is {item}"
        if isinstance(item, dict) and item and all(_is_number(entry) for entry in item.values()):
            for key, entry in item.items():
                if not math.isfinite(entry):
                    return f"the set was chosen from non-finite figures: details {name!r} holds {entry} for {key!r}"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


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
            if isinstance(item, (str, list)) and not _is_curve(item):
                continue  # a curve point's label, kind or head list
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
