"""``fixtures.sources.tl_pretrained.state_dict_loaded_at_once``: TransformerLens' per-key
``load_state_dict(..., strict=False)`` calls collected and loaded in one call, as its docstring says."""

from __future__ import annotations

import pytest
import torch

from fixtures.sources.tl_pretrained import state_dict_loaded_at_once


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))


def _state() -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return {k: torch.randn(v.shape, generator=generator) for k, v in _model().state_dict().items()}


def test_per_key_loads_collected_then_loaded_once_equal_to_the_loop() -> None:
    state, looped, collected = _state(), _model(), _model()
    for key, value in state.items():  # TransformerLens' loop, unpatched
        looped.load_state_dict({key: value}, strict=False)
    calls: list[int] = []
    load = collected.load_state_dict
    collected.load_state_dict = lambda part, **kw: calls.append(len(part)) or load(part, **kw)  # type: ignore[method-assign]
    with state_dict_loaded_at_once(collected):
        for key, value in {**state, "not.a.key": torch.zeros(1)}.items():  # unknown keys: ignored either way
            collected.load_state_dict({key: value}, strict=False)
        assert calls == [] and not torch.equal(collected[0].weight, state["0.weight"])  # nothing loaded yet
    assert calls == [len(state) + 1]  # one call, every key
    for key, value in looped.state_dict().items():
        assert torch.equal(collected.state_dict()[key], value) and torch.equal(value, state[key])
        assert collected.state_dict()[key].data_ptr() != state[key].data_ptr()  # copied into the parameters, not aliased


def test_a_strict_or_assigning_call_loads_what_was_collected_first() -> None:
    state, model = _state(), _model()
    with state_dict_loaded_at_once(model):
        model.load_state_dict({"0.weight": torch.zeros(4, 3)}, strict=False)  # collected: loaded first, then overwritten
        result = model.load_state_dict(state, strict=True)  # passes through (its result too)
        assert list(result.missing_keys) == [] and torch.equal(model[0].weight, state["0.weight"])
        model.load_state_dict({"2.bias": torch.zeros(2)}, strict=False)
    # the zeros collected before the strict call are not loaded again at the end
    assert torch.equal(model[0].weight, state["0.weight"]) and torch.equal(model[2].bias, torch.zeros(2))
    assert torch.equal(model[2].weight, state["2.weight"])


def test_nothing_is_loaded_when_the_block_raises_and_the_method_is_restored() -> None:
    state, model = _state(), _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="inside"):
        with state_dict_loaded_at_once(model):
            model.load_state_dict(state, strict=False)
            raise RuntimeError("inside")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert "load_state_dict" not in vars(model)  # the class's method again
    model.load_state_dict(state)
    assert torch.equal(model[0].weight, state["0.weight"])
