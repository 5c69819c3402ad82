"""Comparators and verdicts, including the uncertainty band and fail-closed cases."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from harness.core.measurement import Measurement, non_finite_reason
from harness.core.spec import Expect
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


# --- bounds: a lower bound decides only what its side can ---------------------------------------


def bounded(value: float, bound: str | None, uncertainty: float | None = None) -> Measurement:
    return Measurement(value, uncertainty, bound=bound)


@pytest.mark.parametrize(
    "expect, value, bound, expected",
    [
        ({">=": 0.3}, 0.35, "lower", Verdict.SUPPORTED),  # at least 0.35, so at least 0.3
        ({">=": 0.95}, 0.35, "lower", Verdict.INCONCLUSIVE),  # the optimum may still be higher
        ({"<=": 0.25}, 0.35, "lower", Verdict.REFUTED),  # at least 0.35 > 0.25
        ({"<=": 0.5}, 0.35, "lower", Verdict.INCONCLUSIVE),
        ({"approx": 0.35, "abs": 0.01}, 0.35, "lower", Verdict.INCONCLUSIVE),
        ({"approx": 0.2, "abs": 0.01}, 0.35, "lower", Verdict.REFUTED),
        ({"between": [0.3, 0.4]}, 0.35, "lower", Verdict.INCONCLUSIVE),
        ({"between": [0.5, 0.6]}, 0.35, "upper", Verdict.REFUTED),
        ({"<=": 0.5}, 0.35, "upper", Verdict.SUPPORTED),
        ({">=": 0.3}, 0.35, "upper", Verdict.INCONCLUSIVE),
    ],
)
def test_a_bound_decides_only_its_side(expect: dict, value: float, bound: str, expected: Verdict) -> None:
    assert judge(Expect.model_validate(expect), bounded(value, bound)) is expected


def test_a_bound_keeps_its_band_on_the_decided_side() -> None:
    expect = Expect.model_validate({">=": 0.3})
    assert judge(expect, bounded(0.32, "lower", uncertainty=0.02)) is Verdict.INCONCLUSIVE  # 0.32 - 2*0.02 < 0.3
    assert judge(expect, bounded(0.32, "lower", uncertainty=0.005)) is Verdict.SUPPORTED


@pytest.mark.parametrize(
    "mine, theirs, comparator, expected",
    [
        (bounded(0.99, "lower"), bounded(0.95, None), ">", Verdict.SUPPORTED),
        (bounded(0.90, "lower"), bounded(0.95, None), ">", Verdict.INCONCLUSIVE),
        (bounded(0.99, "lower"), bounded(0.95, None), "<", Verdict.REFUTED),
        (bounded(0.90, "lower"), bounded(0.95, None), "<", Verdict.INCONCLUSIVE),
        (bounded(0.90, None), bounded(0.95, "lower"), "<", Verdict.SUPPORTED),  # the other side is at least 0.95
        (bounded(0.99, None), bounded(0.95, "lower"), ">", Verdict.INCONCLUSIVE),
        (bounded(0.99, "lower"), bounded(0.95, "lower"), ">", Verdict.INCONCLUSIVE),
    ],
)
def test_comparing_with_a_bound(mine: Measurement, theirs: Measurement, comparator: str, expected: Verdict) -> None:
    expect = Expect.model_validate({comparator: {"metric": "loss.mean_loss"}})
    assert judge(expect, mine, theirs) is expected


def test_a_curve_point_carries_its_bound_into_a_selection() -> None:
    curve = [
        {"label": "rank=2", "rank": 2, "top1": 0.34, "bound": "lower"},
        {"label": "1.0", "rank": 32, "top1": 0.99},
    ]
    measured = Measurement(curve)
    assert measured.select("rank=2/top1").bound == "lower"
    assert measured.select("1.0/top1").bound is None
    assert Measurement({"top1": 0.5}, bound="lower").select("top1").bound == "lower"
