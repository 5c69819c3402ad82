"""The rank curve inside a claim's record entry, for both report renderers."""

from __future__ import annotations

from typing import Any

Point = dict[str, Any]


def curve_points(entry: dict[str, Any]) -> list[Point] | None:
    """The rank curve of ``entry``: its value, or the curve its ``select`` picked from
    (``details.selected_from``); ``None`` when the claim has none."""
    for value in (entry.get("value"), (entry.get("details") or {}).get("selected_from")):
        if isinstance(value, list) and value and all(isinstance(p, dict) and "rank" in p for p in value):
            return value
    return None


def stopped_early(entry: dict[str, Any], point: Point) -> bool:
    """Whether ``point`` is a trained fit that stopped on its step or time budget before
    converging (``details.fits[rank].stopped_by``): its accuracy is a lower bound."""
    if point.get("kind", "trained") != "trained":
        return False
    fits = (entry.get("details") or {}).get("fits") or {}
    return (fits.get(str(point.get("rank"))) or {}).get("stopped_by", "converged") != "converged"
