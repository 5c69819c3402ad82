"""``Measurement.select``: paths into tables and curves, and the errors that name what exists."""

from __future__ import annotations

import pytest

from harness.core.measurement import Measurement, non_finite_reason
from reports.plots import MAX_BARS, head_bars, rank_curve

CURVE = [
    {"label": "rank=1", "rank": 1, "top1": 0.01, "top5": 0.05, "kind": "trained", "heads": []},
    {"label": "rank=64", "rank": 64, "top1": 0.99, "top5": 1.0, "kind": "trained", "heads": []},
    {"label": "1.4+1.10", "rank": 128, "top1": 0.95, "top5": 0.98, "kind": "head", "heads": ["1.4", "1.10"]},
]


def test_no_path_is_the_measurement_itself() -> None:
    measurement = Measurement(0.5, 0.1)
    assert measurement.select(None) is measurement


def test_a_table_key_keeps_its_uncertainty_and_the_table() -> None:
    table = {"1.4": 0.3, "1.10": 0.2}
    selected = Measurement(table, {"1.4": 0.01, "1.10": 0.02}).select("1.10")
    assert (selected.value, selected.uncertainty) == (0.2, 0.02)
    assert selected.details["selected_from"] == table


def test_a_path_walks_nested_tables() -> None:
    assert Measurement({"a": {"b": {"c": 3.0}}}).select("a/b/c").value == 3.0


@pytest.mark.parametrize(("path", "expected"), [("rank=64/top1", 0.99), ("1.4+1.10/top5", 0.98), ("rank=1/rank", 1)])
def test_a_curve_point_is_found_by_label(path: str, expected: float) -> None:
    assert Measurement(CURVE).select(path).value == expected


def test_a_point_selected_from_a_curve_keeps_the_curve_for_reports() -> None:
    selected = Measurement(CURVE, None, {"fits": {}}).select("rank=64/top1")
    assert selected.details["selected_from"] == CURVE and selected.details["fits"] == {}
    assert selected.uncertainty is None


def test_an_unknown_label_lists_the_labels() -> None:
    with pytest.raises(KeyError, match=r"select 'rank=32/top1': no curve point labelled 'rank=32'; labels are: rank=1, rank=64, 1.4\+1.10"):
        Measurement(CURVE).select("rank=32/top1")


def test_an_unknown_field_of_a_point_lists_the_fields() -> None:
    with pytest.raises(KeyError, match=r"no entry 'top3'; entries are: label, rank, top1, top5, kind, heads"):
        Measurement(CURVE).select("rank=64/top3")


def test_a_step_past_a_number_says_what_it_found() -> None:
    with pytest.raises(KeyError, match=r"'x' needs a table or a curve, got float 0.99"):
        Measurement(CURVE).select("rank=64/top1/x")


def test_long_key_lists_are_cut_with_a_count() -> None:
    table = {f"0.{i}": float(i) for i in range(30)}
    with pytest.raises(KeyError, match=r"0\.19, \.\.\. \(30 in all\)"):
        Measurement(table).select("9.9")


def test_a_whole_curve_point_is_judgeable_but_not_a_number() -> None:
    """Labels and head lists are not non-finite numbers; the comparator then asks for a field."""
    assert non_finite_reason(CURVE[2]) is None
    assert non_finite_reason({**CURVE[2], "top1": float("nan")}) is not None


def test_the_rank_curve_plot_draws_a_selected_point_from_its_curve() -> None:
    entry = {"metric": "low_rank.rank_curve", "select": "rank=64/top1", "value": 0.99, "details": {"selected_from": CURVE}}
    svg = rank_curve(entry)
    assert svg is not None and "selected: rank=64/top1" in svg
    assert rank_curve({"metric": "m", "value": 0.99, "details": {}}) is None


def test_the_rank_curve_plot_marks_fits_that_stopped_before_converging() -> None:
    fits = {"1": {"stopped_by": "converged"}, "64": {"stopped_by": "steps"}}
    svg = rank_curve({"metric": "low_rank.rank_curve", "value": CURVE, "details": {"fits": fits}})
    assert svg is not None and "stopped before converging (lower bound)" in svg
    converged = {"1": {"stopped_by": "converged"}, "64": {"stopped_by": "converged"}}
    assert "stopped before" not in rank_curve({"metric": "m", "value": CURVE, "details": {"fits": converged}})


def test_head_plots_use_the_table_a_head_was_selected_from() -> None:
    table = {"0.0": 0.1, "0.1": 0.9}
    svg = head_bars({"metric": "attention.scores", "select": "0.1", "value": 0.9, "details": {"selected_from": table}})
    assert svg is not None and "attention.scores per head" in svg


def test_large_models_get_a_layer_by_head_grid() -> None:
    table = {f"{layer}.{head}": float(layer * 9 + head) for layer in range(30) for head in range(9)}
    assert len(table) > MAX_BARS
    svg = head_bars({"metric": "attention.detect", "value": ["18.6"], "details": {"scores": table, "threshold": 0.4}})
    assert svg is not None and "(boxed: detected or selected)" in svg


def test_the_markdown_section_lists_the_curve_and_marks_lower_bounds() -> None:
    from reports.markdown import curve_table

    fits = {"1": {"stopped_by": "converged"}, "64": {"stopped_by": "steps"}}
    rows = curve_table({"value": 0.99, "details": {"selected_from": CURVE, "fits": fits}})
    assert rows[1] == "| point | rank | top-1 | top-5 | |"
    assert "| rank=1 | 1 | 1.00% | 5.00% |  |" in rows
    assert "| rank=64 | 64 | 99.00% | 100.00% | lower bound (stopped on its budget) |" in rows
    assert "| 1.4+1.10 | 128 | 95.00% | 98.00% |  |" in rows
    assert curve_table({"value": {"1.4": 0.3}, "details": {}}) == []
