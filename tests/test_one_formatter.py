"""One formatter, one band, one schema version: the terminal and the reports show a value alike."""

from __future__ import annotations

import json
import math

import pytest

from harness import verdicts
from harness.core import measurement
from harness.core.formatting import format_value as format_plain
from harness.core.measurement import Measurement
from harness.record import to_json
from harness.core.record_schema import SCHEMA_VERSION
from harness.verdicts import format_value
from reports import baseline
from reports.values import format_measured

MEASUREMENTS = [
    Measurement(0.619, 0.0123),
    Measurement(0.34765, None, bound="lower"),
    Measurement(0.5, 0.01, bound="upper"),
    Measurement(123456.0, 0.5),
    Measurement(0.0004),
    Measurement(["1.4", "1.10"]),
    Measurement([]),
    Measurement({"top1": 0.3079, "top5": 0.5, "n": 3}),
    Measurement({str(i): float(i) for i in range(9)}),
    Measurement([{"label": "rank=1", "top1": 0.1}, {"label": "rank=2", "top1": 0.2}], bound="lower"),
    Measurement(math.nan, math.inf),
]


@pytest.mark.parametrize("measured", MEASUREMENTS, ids=lambda m: repr(m.value)[:30])
def test_terminal_and_report_show_a_value_the_same(measured: Measurement) -> None:
    """``format_value`` (terminal, pytest) of a measurement equals ``format_measured`` of its record entry."""
    entry = json.loads(to_json({"value": measured.value, "uncertainty": measured.uncertainty, "bound": measured.bound}))
    assert format_value(measured) == format_measured(entry) == format_plain(measured.value, measured.uncertainty, measured.bound)


def test_a_bound_reads_as_one_everywhere() -> None:
    assert format_value(Measurement(0.34765, None, bound="lower")) == "≥ 0.3477 (lower bound)"
    assert format_measured({"value": 0.34765, "bound": "lower"}) == "≥ 0.3477 (lower bound)"


def test_one_band_width_and_one_schema_version() -> None:
    assert verdicts.Z_BAND is measurement.Z_BAND and baseline.Z_BAND is measurement.Z_BAND
    record = {"tool": "interp-claims", "claims": [], "schema_version": SCHEMA_VERSION + 1}
    with pytest.raises(baseline.BaselineError, match=f"is not {SCHEMA_VERSION}"):
        baseline.diff({"format": baseline.FORMAT, "version": baseline.VERSION, "claims": {}}, record)
