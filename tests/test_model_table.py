"""The model table as data: declared planted shapes match the built models; every miss names the close names."""

from __future__ import annotations

import pytest

from fixtures.input_params import INPUT_PARAMS
from fixtures.inputs import INPUT_KINDS
from fixtures.planted import PLANTED_MODELS
from fixtures.registry import get_model_entry, model_entries
from fixtures.sources.planted import PLANTED_DECLARATIONS
from harness.core.named_registry import NamedRegistry, UnknownName
from harness.metric_signatures import metric_declarations
from harness.registry import get_metric
from reports.plots import PLOTS


def test_every_planted_model_is_declared_with_its_description() -> None:
    declared = {d.name: d.description for d in PLANTED_DECLARATIONS}
    assert declared == {name: planted.description for name, planted in PLANTED_MODELS.items()}


@pytest.mark.parametrize("declaration", PLANTED_DECLARATIONS, ids=lambda d: d.name)
def test_a_planted_declaration_has_the_built_shape(declaration) -> None:
    model = get_model_entry(declaration.name).load()  # refuses a shape other than the declared one
    assert model.shape == declaration.shape


def test_input_kinds_and_their_parameters_have_one_set_of_names() -> None:
    assert list(INPUT_KINDS) == list(INPUT_PARAMS)
    assert all(INPUT_KINDS[name].params_model is INPUT_PARAMS[name] for name in INPUT_PARAMS)


@pytest.mark.parametrize(
    ("lookup", "typo", "suggestion"),
    [
        (get_model_entry, "planted-atn-2l", "planted-attn-2l"),
        (get_metric, "attention.detcet", "attention.detect"),
        (metric_declarations().__getitem__, "ov.full_circuit_top", "ov.full_circuit_topk"),
        (INPUT_KINDS.__getitem__, "repeated_randm", "repeated_random"),
        (INPUT_PARAMS.__getitem__, "ioi_prompt", "ioi_prompts"),
        (PLOTS.__getitem__, "head_bar", "head_bars"),
    ],
)
def test_every_registry_miss_says_did_you_mean(lookup, typo: str, suggestion: str) -> None:
    with pytest.raises(KeyError) as raised:
        lookup(typo)
    assert isinstance(raised.value, UnknownName)
    assert f"did you mean {suggestion!r}?" in str(raised.value)


def test_a_miss_without_a_close_name_lists_the_names() -> None:
    registry = NamedRegistry("widget", [("alpha", 1), ("beta", 2)])
    with pytest.raises(UnknownName, match=r"^unknown widget 'zzz'; widgets: alpha, beta$"):
        registry["zzz"]


def test_membership_and_get_build_no_miss_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """``in`` and ``get`` answer from the entries: a miss there is no error, so no "did you mean"
    (difflib over every name) is computed; loading the claim files asks thousands of times."""
    from harness.core import named_registry

    registry = NamedRegistry("widget", [("alpha", 1), ("beta", 2)])
    monkeypatch.setattr(named_registry, "did_you_mean", lambda *args: pytest.fail("a miss message was built"))
    assert "alpha" in registry and "alphb" not in registry
    assert registry.get("beta") == 2 and registry.get("zzz") is None and registry.get("zzz", 3) == 3


def test_a_name_is_registered_once() -> None:
    registry = NamedRegistry("widget", [("alpha", 1)])
    with pytest.raises(ValueError, match="registered twice"):
        registry.add("alpha", 2)


def test_the_table_holds_every_model_once() -> None:
    assert len(set(model_entries())) == len(model_entries())


def test_a_family_of_snapshot_names_is_listed_once_in_a_miss() -> None:
    from harness.core.named_registry import NamedRegistry, UnknownName

    names = ["base"] + [f"run@index={i}" for i in range(0, 60, 10)] + ["other@step=1"]
    registry = NamedRegistry("model", [(name, None) for name in names])
    with pytest.raises(UnknownName) as caught:
        registry["run@index=5"]
    message = str(caught.value)
    assert "run@index=0..50 (6 names)" in message and "other@step=1" in message and "run@index=20," not in message


def test_every_model_marker_is_registered_with_pytest() -> None:
    from harness.frontends.pytest_plugin.options import MARKERS

    registry = model_entries()
    used = {marker for name in registry.names() for marker in registry.get(name).markers}
    assert used <= set(MARKERS), f"markers without a description in MARKERS: {sorted(used - set(MARKERS))}"
