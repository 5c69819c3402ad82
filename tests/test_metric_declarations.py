"""What a metric declares about itself in ``@metric(...)``: ``heavy`` (sweeps the whole vocabulary)."""

from __future__ import annotations

import pytest

from harness import registry
from harness.registry import get_metric, metric, metric_names

VOCABULARY_SWEEPS = {"ov.full_circuit_topk", "low_rank.achievable_accuracy", "low_rank.rank_curve",
                     "composition.kcomp_full_circuit_top1"}


def test_the_vocabulary_sweeps_declare_heavy_and_no_other_metric_does() -> None:
    assert {name for name in metric_names() if get_metric(name).heavy} == VOCABULARY_SWEEPS


@pytest.mark.parametrize("heavy", [False, True])
def test_the_heavy_flag_is_recorded_as_declared(heavy: bool) -> None:
    name = f"test_declarations.heavy_{heavy}"

    get_metric("attention.detect")  # the built-in metrics are loaded first

    @metric(name, heavy=heavy)
    def probe(ctx, *, k: int = 1):  # noqa: ANN001, ANN202
        """A probe."""

    try:
        assert get_metric(name).heavy is heavy and get_metric(name).fitted is False
    finally:
        registry._METRICS.pop(name)  # other tests see only the built-in metrics
