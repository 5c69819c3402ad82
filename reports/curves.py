"""The rank curve inside a claim's record entry, for both report renderers."""

from __future__ import annotations

from typing import Any

from reports.values import as_number

Point = dict[str, Any]

BOUND_MARK = {"lower": "lower bound", "upper": "upper bound"}


def curve_points(entry: dict[str, Any]) -> list[Point] | None:
    """The rank curve of ``entry``: its value, or the curve its ``select`` picked from
    (``details.selected_from``); ``None`` when the claim has none."""
    for value in (entry.get("value"), _details(entry).get("selected_from")):
        if isinstance(value, list) and value and all(isinstance(p, dict) and "rank" in p for p in value):
            return value
    return None


def plottable_rank(point: Point) -> float | None:
    """The point's rank when it can sit on a log axis (a finite number above 0), else ``None``."""
    rank = as_number(point.get("rank"))
    return rank if rank is not None and 0 < rank < float("inf") else None


def point_bound(entry: dict[str, Any], point: Point) -> str | None:
    """Whether ``point`` is a bound: its own ``bound`` (``"lower"``, ``"upper"`` or ``None``)
    when it carries the key; else ``"lower"`` for a trained fit that stopped on its budget
    before converging (:func:`stopped_early`), ``None`` otherwise."""
    if "bound" in point:
        return None if point["bound"] is None else str(point["bound"])
    return "lower" if stopped_early(entry, point) else None


def stopped_early(entry: dict[str, Any], point: Point) -> bool:
    """Whether ``point`` is a trained fit that stopped on its step or time budget before
    converging (``details.fits[rank].stopped_by``): its accuracy is a lower bound."""
    if point.get("kind", "trained") != "trained":
        return False
    fits = _details(entry).get("fits")
    fit = fits.get(str(point.get("rank"))) if isinstance(fits, dict) else None
    return isinstance(fit, dict) and fit.get("stopped_by", "converged") != "converged"


def _details(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry's ``details`` (``{}`` when it has none)."""
    details = entry.get("details")
    return details if isinstance(details, dict) else {}
