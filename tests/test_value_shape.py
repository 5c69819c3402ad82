"""harness/core/value_shape.py and harness/core/details.py: what a metric declares about its value
and details, checked at load time (select) and at run time (the returned measurement)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.core.details import HeadScores, details_problem
from harness.core.heads import Head
from harness.core.measurement import Measurement
from harness.core.value_shape import (
    CELLS, COMPONENT_PAIRS, HEAD_GROUPS, HEAD_PAIRS, HEADS, LAYERS, Curve, NameSet, OneOf, Scalar, Table, either,
    labelled, names, numbered,
)
from harness.registry import MetricInfo, get_metric, metric_names
from harness.runner import declaration_problem


@dataclass(frozen=True)
class Size:
    n_layers: int
    n_heads: int


SIZE = Size(2, 4)


@pytest.mark.parametrize(("grammar", "key"), [
    (HEADS, "1.3"), (HEAD_GROUPS, "0.0+1.3"), (HEAD_GROUPS, "1.2"), (HEAD_PAIRS, "0.1->1.2"), (LAYERS, "1"),
    (CELLS, "1:17"), (COMPONENT_PAIRS, "embed|0.3"), (COMPONENT_PAIRS, "1.0|pos"), (names("top1", "top5"), "top5"),
    (names(), "first_half"), (labelled("rank"), "rank=64"), (numbered("top"), "top10"),
])
def test_keys_in_their_grammar_parse_inside_the_model(grammar, key):
    assert grammar.problem(key, SIZE) is None


@pytest.mark.parametrize(("grammar", "key", "words"), [
    (HEADS, "1.4", "head 1.4 is outside"), (HEADS, "1", "is not a head"), (HEAD_GROUPS, "0.0+2.0", "head 2.0"),
    (HEAD_PAIRS, "0.0->1.4", "head 1.4"), (HEAD_PAIRS, "0.0>1.0", "write 'EARLIER->LATER'"), (LAYERS, "2", "layer 2"),
    (LAYERS, "-1", "not a layer"), (CELLS, "2:0", "layer 2"), (CELLS, "1", "write 'LAYER:POSITION'"),
    (COMPONENT_PAIRS, "embed|0.4", "head 0.4"), (COMPONENT_PAIRS, "mlp|0.0", "neither a head"),
    (names("top1"), "top2", "the names are top1"), (names(), "a/b", "without '/'"), (labelled("rank"), "rank64", "rank=N"),
    (numbered("top"), "topk", "whole number"), (either(HEADS, LAYERS), "3", "layer 3"),
])
def test_keys_outside_their_grammar_or_the_model_say_why(grammar, key, words):
    problem = grammar.problem(key, SIZE)
    assert problem is not None and words in problem


@given(st.integers(0, 40), st.integers(0, 40), st.integers(0, 40), st.integers(0, 40))
def test_a_head_pair_is_inside_exactly_when_both_heads_are(l1, h1, l2, h2):
    size = Size(8, 12)
    inside = all(layer < size.n_layers and head < size.n_heads for layer, head in ((l1, h1), (l2, h2)))
    assert (HEAD_PAIRS.problem(f"{l1}.{h1}->{l2}.{h2}", size) is None) == inside
    assert (COMPONENT_PAIRS.problem(f"{l1}.{h1}|{l2}.{h2}", size) is None) == inside


@pytest.mark.parametrize(("shape", "steps", "ok"), [
    (Scalar(), [], True), (Scalar(), ["x"], False), (Table(HEADS), ["1.0"], True), (Table(HEADS), [], False),
    (Table(HEADS), ["1.0", "x"], False), (NameSet(HEADS), [], True), (NameSet(HEADS), ["1.0"], False),
    (Curve(labelled("rank"), ("top1",)), ["rank=2", "top1"], True), (Curve(labelled("rank"), ("top1",)), ["rank=2"], False),
    (OneOf(Table(HEADS), NameSet(HEADS)), ["1.0"], True), (OneOf(Table(HEADS), NameSet(HEADS)), [], True),
])
def test_select_paths_against_shapes(shape, steps, ok):
    """A select must end at one number (or, for a set, be absent)."""
    assert (shape.select_problem(steps, SIZE) is None) == ok


@pytest.mark.parametrize(("shape", "value", "ok"), [
    (Scalar(), 0.5, True), (Scalar(), {"a": 1.0}, False), (Table(HEADS), {"0.0": 1.0}, True),
    (Table(HEADS), {"mean": 1.0}, False), (Table(HEADS), {"0.0": "x"}, False), (NameSet(HEADS), ["0.0", "1.2"], True),
    (NameSet(HEADS), ["0.0", 3], False), (Curve(labelled("rank"), ("top1",)), [{"label": "rank=1", "top1": 0.5}], True),
    (Curve(labelled("rank"), ("top1",)), [{"label": "r1"}], False), (OneOf(Table(HEADS), NameSet(HEADS)), ["0.1"], True),
])
def test_values_against_shapes(shape, value, ok):
    assert (shape.value_problem(value) is None) == ok


def test_every_built_in_metric_declares_its_value_shape():
    undeclared = [name for name in metric_names() if not name.startswith("test") and get_metric(name).value is None]
    assert undeclared == []


def test_details_kinds_are_checked():
    assert details_problem({"scores": {"0.0": 1.0}, "threshold": 0.4, "other": 1}, HeadScores) is None
    problem = details_problem({"threshold": 0.4}, HeadScores)
    assert problem is not None and "scores" in problem and "HeadScores" in problem


def _info(value, details=()) -> MetricInfo:
    return MetricInfo(name="t", function=lambda ctx: None, params_model=None, needs_inputs=False, head_params=(),  # type: ignore[arg-type]
                      description="", value=value, details=details)


def test_a_measurement_that_breaks_its_declaration_is_named():
    assert declaration_problem(_info(Table(HEADS)), Measurement({"0.0": 1.0})) is None
    problem = declaration_problem(_info(Table(HEADS)), Measurement({"layer0": 1.0}))
    assert problem is not None and "'layer0' is not a head" in problem and "declared: a table keyed by" in problem
    problem = declaration_problem(_info(NameSet(HEADS), (HeadScores,)), Measurement(["0.0"], details={}))
    assert problem is not None and "HeadScores" in problem


def test_heads_parse_as_the_head_type():
    assert HEAD_GROUPS.parse("0.1+1.2").heads == (Head(0, 1), Head(1, 2))
