"""G25's series shape (harness.metrics.modular_series.rise_profile) and the course's trig ratio (harness.metrics._modular.trig_ratio)."""

from __future__ import annotations

import math

import pytest
import torch

from fixtures.modular_task import P, all_data
from harness.metrics._modular import trig_energy, trig_ratio, trig_sum_directions
from harness.metrics.modular_series import rise_profile


def test_a_uniform_rise_has_rate_one_and_reaches_its_share_on_time() -> None:
    linear = {e: 1.0 + 0.01 * e for e in range(0, 1001, 100)}
    got = rise_profile(linear, 300, "linear")
    assert got["reached_by"] == pytest.approx(0.3) and got["peak_rate"] == pytest.approx(1.0)
    exponential = {e: math.exp(0.004 * e) for e in (0, 100, 250, 700, 1000)}  # uniform on the log scale, uneven snapshots
    got = rise_profile(exponential, 700, "log")
    assert got["reached_by"] == pytest.approx(0.7) and got["peak_rate"] == pytest.approx(1.0)


def test_a_step_has_its_rise_in_one_interval() -> None:
    step = {0: 1.0, 1000: 1.0, 2000: 1.0, 2100: 100.0, 4000: 100.0}
    got = rise_profile(step, 2000, "log")
    assert got["reached_by"] == 0.0 and got["peak_rate"] == pytest.approx(4000 / 100) and got["peak_at"] == 2100.0
    late = rise_profile({0: 1.0, 2000: 1.0, 2100: 100.0, 4000: 100.0}, 2100, "linear")
    assert late["reached_by"] == 1.0


@pytest.mark.parametrize("series, until, scale, message", [
    ({0: 2.0, 10: 3.0, 20: 1.0}, 10, "log", "does not rise"),
    ({0: 1.0, 10: 1.0, 20: 1.0}, 10, "linear", "does not rise"),
    ({0: 0.0, 10: 1.0, 20: 2.0}, 10, "log", "positive values"),
    ({0: 1.0, 10: 2.0, 20: 3.0}, 20, "log", "strictly between"),
    ({0: 1.0, 10: 2.0, 20: 3.0}, 15, "log", "strictly between"),
    ({0: 1.0, 20: 3.0}, 10, "log", "at least 3"),
])
def test_a_series_without_a_rise_to_share_is_refused(series: dict[int, float], until: int, scale: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        rise_profile(series, until, scale)


def course_trig_ratio(tensor: torch.Tensor, frequencies: list[int]) -> float:
    """ARENA 1.5.2's tensor_trig_ratio written out (project onto each direction, sum of squares, / variance, mean over columns)."""
    centred = tensor - tensor.mean(0, keepdim=True)
    variance = centred.pow(2).sum(0)
    parts = []
    for k in frequencies:
        for direction in trig_sum_directions(k):
            projection = (centred.T @ direction)[:, None] * direction[None, :] / (direction @ direction)  # (n, p^2)
            parts.append(projection.pow(2).sum(1))
    return float((sum(parts) / variance).mean())


def test_trig_ratio_equals_the_courses_loop_and_a_planted_answer() -> None:
    g = torch.Generator().manual_seed(0)
    tensor = torch.randn(P * P, 7, generator=g, dtype=torch.float64)
    energy, variance = trig_energy(tensor)
    assert trig_ratio(energy, variance, [3, 14, 56]) == pytest.approx(course_trig_ratio(tensor, [3, 14, 56]), rel=1e-10)
    data = all_data()
    s = 2 * math.pi * 14 * (data.x + data.y).double() / P
    planted = torch.stack([3 * torch.cos(s) + 1.0, torch.sin(s) - 2 * torch.cos(s), torch.full_like(s, 5.0)], 1)  # last: constant
    energy, variance = trig_energy(planted)
    assert trig_ratio(energy, variance, [14]) == pytest.approx(1.0, abs=1e-12)  # the constant column is left out
    assert trig_ratio(energy, variance, [13, 15]) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="constant"):
        trig_ratio(*trig_energy(planted[:, 2:]), [14])
