"""Comparators and verdicts, including the uncertainty band and fail-closed cases."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from harness.measurement import Measurement, non_finite_reason
from harness.spec import Expect
from harness.verdicts import Z_BAND, ComparisonError, Verdict, judge


def verdict(expect: dict, value, uncertainty=None, reference=None) -> Verdict:
    return judge(Expect.model_validate(expect), Measurement(value, uncertainty), reference)


@pytest.mark.parametrize(
    "expect, value, expected",
    [
        ({">=": 0.4}, 0.5, Verdict.SUPPORTED),
        ({">=": 0.4}, 0.4, Verdict.SUPPORTED),
        ({">": 0.4}, 0.4, Verdict.REFUTED),
        ({"<": 0.4}, 0.3, Verdict.SUPPORTED),
        ({"<=": 0.4}, 0.41, Verdict.REFUTED),
        ({"between": [0.1, 0.2]}, 0.15, Verdict.SUPPORTED),
        ({"between": [0.1, 0.2]}, 0.25, Verdict.REFUTED),
        ({"approx": 0.3079, "abs": 0.005}, 0.31, Verdict.SUPPORTED),
        ({"approx": 0.3079, "abs": 0.005}, 0.32, Verdict.REFUTED),
        ({"approx": 100.0, "rel": 0.1}, 109.0, Verdict.SUPPORTED),
        ({"approx": 100.0, "rel": 0.1}, 111.0, Verdict.REFUTED),
        ({"equals": 3}, 3.0, Verdict.SUPPORTED),
    ],
)
def test_deterministic_comparisons(expect: dict, value: float, expected: Verdict) -> None:
    assert verdict(expect, value) is expected


def test_threshold_inside_band_is_inconclusive() -> None:
    # 0.41 with se 0.01: band [0.39, 0.43] straddles 0.4.
    assert verdict({">=": 0.4}, 0.41, 0.01) is Verdict.INCONCLUSIVE
    assert verdict({">=": 0.4}, 0.45, 0.01) is Verdict.SUPPORTED
    assert verdict({">=": 0.4}, 0.35, 0.01) is Verdict.REFUTED


def test_approx_edge_inside_band_is_inconclusive() -> None:
    assert verdict({"approx": 1.0, "abs": 0.1}, 1.09, 0.01) is Verdict.INCONCLUSIVE
    assert verdict({"approx": 1.0, "abs": 0.1}, 1.05, 0.01) is Verdict.SUPPORTED
    assert verdict({"approx": 1.0, "abs": 0.1}, 1.2, 0.01) is Verdict.REFUTED


def test_sets() -> None:
    assert verdict({"equals": ["1.4", "1.10"]}, ["1.10", "1.4"]) is Verdict.SUPPORTED
    assert verdict({"equals": ["1.4"]}, ["1.4", "1.10"]) is Verdict.REFUTED
    assert verdict({"contains": ["1.4"]}, ["1.4", "1.10"]) is Verdict.SUPPORTED
    assert verdict({"subset_of": ["1.4"]}, ["1.4", "1.10"]) is Verdict.REFUTED
    assert verdict({"equals": []}, []) is Verdict.SUPPORTED


def test_against_another_measurement_combines_errors() -> None:
    other = Measurement(0.5, 0.03)
    expect = {"<": {"metric": "m", "params": {}}}
    assert verdict(expect, 0.3, 0.01, other) is Verdict.SUPPORTED
    # difference 0.05 < Z * hypot(0.01, 0.03) = 0.063: inconclusive
    assert verdict(expect, 0.45, 0.01, other) is Verdict.INCONCLUSIVE


def test_table_needs_select() -> None:
    with pytest.raises(ComparisonError, match="select"):
        verdict({">=": 0.4}, {"1.4": 0.6})


def test_non_finite_values_are_not_judgeable() -> None:
    assert non_finite_reason(float("nan")) is not None
    assert non_finite_reason(float("inf")) is not None
    assert non_finite_reason(None) is not None
    assert non_finite_reason({"a": float("nan")}) is not None
    assert non_finite_reason({}) is not None
    assert non_finite_reason(0.5) is None
    assert non_finite_reason(["1.4"]) is None


@given(
    value=st.floats(-1e6, 1e6), threshold=st.floats(-1e6, 1e6), se=st.floats(0, 1e3),
)
def test_band_decides_only_when_whole_band_agrees(value: float, threshold: float, se: float) -> None:
    result = verdict({">=": threshold}, value, se)
    band = Z_BAND * se
    if value - band >= threshold:
        assert result is Verdict.SUPPORTED
    elif value + band < threshold:
        assert result is Verdict.REFUTED
    else:
        assert result is Verdict.INCONCLUSIVE
    assert not math.isnan(value)
