"""The shape of a quantity's course over a run's snapshots: "rises early and smoothly" against "a phase change" (G25).

A series q(e_0), ..., q(e_n) over snapshot epochs e_0 < ... < e_n (every snapshot of the claim's
model, or the chosen ``epochs``; quantities of :mod:`harness.metrics.modular_dynamics`) is read on a
``scale`` f: ``log`` (f = ln q; every value must be positive: the course reads these curves on a log
axis) or ``linear`` (f = q). Its rise R = f(q(e_n)) - f(q(e_0)) must be positive; a series that does
not rise has no rise to share out, and the claim is an error, not a verdict.

- ``reached_by``: (f(q(u)) - f(q(e_0))) / R, the share of the rise made by epoch u = ``until_epoch``
  (one of the epochs, strictly between the first and the last). Early: most of it before u.
- ``peak_rate``: over consecutive snapshots, the largest ratio of an interval's share of the rise,
  (f(q(e_{i+1})) - f(q(e_i))) / R, to its share of the epochs, (e_{i+1} - e_i) / (e_n - e_0).
  1: the series rises at its average rate throughout; a phase change puts much of the rise in a
  short interval (a large value); a smooth rise keeps it near 1. Resolution: an interval averages
  whatever happens inside it, so the true peak rate (over finer snapshots) is at least this one: a
  claim ``peak_rate > x`` is conservative, a claim ``peak_rate < x`` holds at the snapshots'
  resolution only, which such a claim must state.
- ``peak_at``: the last epoch of that steepest interval.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import Field

from harness.context import MetricContext
from harness.core.measurement import Measurement
from harness.core.value_shape import Table, names
from harness.metrics.modular_dynamics import Epoch, Quantity, series
from harness.metrics.modular_logits import Frequency
from harness.registry import metric

Scale = Literal["log", "linear"]


def rise_profile(values: dict[int, float], until_epoch: int, scale: str) -> dict[str, float]:
    """``reached_by``, ``peak_rate`` and ``peak_at`` of a series {epoch: value} (see the module docstring)."""
    epochs = sorted(values)
    if len(epochs) < 3:
        raise ValueError(f"a rise profile needs at least 3 snapshots, got epochs {epochs}")
    if until_epoch not in values or not epochs[0] < until_epoch < epochs[-1]:
        raise ValueError(f"until_epoch {until_epoch} must be one of the series' epochs strictly between {epochs[0]} and {epochs[-1]}: {epochs}")
    if scale == "log":
        bad = [e for e in epochs if not values[e] > 0]
        if bad:
            raise ValueError(f"the log scale needs positive values; not at epoch(s) {bad}")
    f = {e: math.log(values[e]) if scale == "log" else values[e] for e in epochs}
    rise = f[epochs[-1]] - f[epochs[0]]
    if not rise > 0:
        raise ValueError(f"the series does not rise from epoch {epochs[0]} ({values[epochs[0]]:.4g}) to {epochs[-1]} "
                         f"({values[epochs[-1]]:.4g}): no rise to share out")
    span = epochs[-1] - epochs[0]
    rates = [((f[b] - f[a]) / rise) / ((b - a) / span) for a, b in zip(epochs, epochs[1:])]
    steepest = max(range(len(rates)), key=lambda i: rates[i])
    return {"reached_by": (f[until_epoch] - f[epochs[0]]) / rise, "peak_rate": rates[steepest], "peak_at": float(epochs[steepest + 1])}


@metric("modular.series_rise", value=Table(names("reached_by", "peak_rate", "peak_at")))
def series_rise(ctx: MetricContext, *, quantity: Quantity, until_epoch: Epoch, scale: Scale = "log",
                frequencies: list[Frequency] | None = None, epochs: list[Epoch] | None = None) -> Measurement:
    """How early and how abruptly the quantity rises over the snapshots (``epochs``, default all) of the claim's model: see the module docstring."""
    if epochs is not None and sorted(set(epochs)) != epochs:
        raise ValueError(f"give 'epochs' in increasing order, each once: {epochs}")
    values, _shas = series(ctx.model.identity.name, quantity, frequencies, epochs)
    value = rise_profile(values, until_epoch, scale)
    return Measurement(value, None, {"series": {str(e): values[e] for e in sorted(values)}, "scale": scale, "quantity": quantity})
