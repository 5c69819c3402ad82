"""The IOI chapter's report plots: layer x position heatmaps, head grids of head and path patching, END-attention bars.

Entries are built from real measurements on small random models (so the details are what the
metrics write, checked against their declared kinds) and from broken data (the plot must not apply).
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.core.details import NamedPositionAttention, PositionGrid, details_problem
from harness.testing import measure_metric
from reports.plots import PLOTS, head_bars, named_position_bars, plots_for, position_grid
from tests.ioi_dataset_support import dataset_model, train_dataset_tokenizer
from tests.test_metrics_ioi import random_model, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def course_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train_tokenizer(tmp_path_factory.mktemp("ioi-plots-course"))


@pytest.fixture(scope="module")
def dataset_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train_dataset_tokenizer(tmp_path_factory.mktemp("ioi-plots-dataset"))


def entry(metric: str, measured: Any, kinds: list[str], select: str | None = None) -> dict[str, Any]:
    return {"metric": metric, "value": measured.value, "details": measured.details, "details_kinds": kinds, "select": select}


def test_residual_patching_draws_a_layer_by_position_heatmap(course_tokenizer: Any) -> None:
    model = random_model(0, course_tokenizer)
    measured = measure_metric(model, "patching.resid_pre", inputs={"ioi_prompts": {}})
    assert details_problem(measured.details, PositionGrid) is None
    svg = position_grid(entry("patching.resid_pre", measured, ["PositionGrid"], select="1:10"))
    assert svg is not None and svg.startswith("<svg") and "per (layer, position)" in svg
    assert position_grid({"details": {"grid": [[1.0, 2.0], [3.0]]}}) is None  # ragged
    assert position_grid({"details": {"grid": []}}) is None
    assert position_grid({"details": {}}) is None


def test_head_patching_and_path_patching_draw_head_grids(dataset_tokenizer: Any) -> None:
    model = dataset_model(0, dataset_tokenizer, n_layers=7, n_heads=8)  # 56 heads: drawn as a layer x head grid
    paths = measure_metric(model, "paths.to_resid", inputs={"ioi_dataset": {"n": 4, "seed": 1}})
    svg = head_bars(entry("paths.to_resid", paths, ["HeadScores"], select="6.1"))
    assert svg is not None and "layer" in svg and "head" in svg


def test_end_attention_bars(dataset_tokenizer: Any) -> None:
    model = dataset_model(1, dataset_tokenizer)
    measured = measure_metric(model, "ioi.attention_between", inputs={"ioi_dataset": {"n": 6, "seed": 1}},
                              query="end", key="IO", heads=["1.0", "2.1"])
    assert details_problem(measured.details, NamedPositionAttention) is None
    assert set(measured.details["by_position"]) == {"1.0", "2.1"}
    assert set(measured.details["by_position"]["1.0"]) == {"IO", "S1", "S1+1", "S2", "end"}
    made = entry("ioi.attention_between", measured, ["HeadScores", "NamedPositionAttention"], select="1.0")
    svg = named_position_bars(made)
    assert svg is not None and "attention from end" in svg
    assert named_position_bars({"details": {"by_position": {}}}) is None
    drawn = plots_for(made)
    assert len(drawn) == 2 and not any("plot-error" in s for s in drawn)  # head bars and the named-position bars


def test_the_new_plots_are_registered_with_their_kinds() -> None:
    assert PLOTS["position_grid"].reads is PositionGrid
    assert PLOTS["named_position_bars"].reads is NamedPositionAttention
    assert not PLOTS["position_grid"].applies_to({"details_kinds": ["HeadScores"]})
