"""One attention-input norm per block (:mod:`harness.core.norm_once`): the same activations, bit for bit.

Small seeded random models of the two shapes the shipped models have (GPT-2-like: LayerNorm,
learned positions; SmolLM2-like: RMSNorm, rotary, gated MLP, grouped-query attention), one
wrapped and one not, run on the same tokens.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from harness.core.norm_once import norm_once_per_block
from harness.testing import ad_hoc_handle
from tests.test_fast_patching import SHAPES, assert_same_activations, hooked_model, tokens

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.parametrize("shape", list(SHAPES))
def test_norm_once_changes_no_activation(shape: str) -> None:
    plain, once = hooked_model(shape), hooked_model(shape)
    assert norm_once_per_block(once) == once.cfg.n_layers
    assert_same_activations(plain, once)


def count_norm_calls(model: HookedTransformer) -> int:
    calls = []

    def hook(act: torch.Tensor, hook: Any) -> None:
        calls.append(hook.name)

    with torch.no_grad():
        model.run_with_hooks(tokens(), fwd_hooks=[(lambda name: name.endswith("ln1.hook_scale"), hook)])
    return len(calls)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_norm_runs_once_per_block_and_pass(shape: str) -> None:
    plain, once = hooked_model(shape), hooked_model(shape)
    norm_once_per_block(once)
    layers = once.cfg.n_layers
    assert count_norm_calls(plain) == 3 * layers
    assert count_norm_calls(once) == layers
    assert count_norm_calls(once) == layers  # a second pass on other tensors: computed again, not served stale
    assert all(block.ln1.__dict__["_norm_once_memo"] is None for block in once.blocks)  # nothing held after a pass


def test_a_new_input_is_normalised_afresh() -> None:
    """Inside a block's forward the memo serves only the tensor it was given: another input (even
    with equal values) is computed; outside it every call is computed."""
    once = hooked_model("smollm2-like")
    norm_once_per_block(once)
    norm = once.blocks[0].ln1
    x = torch.randn(2, 3, 64)
    y = x.clone()
    norm.__dict__["_norm_once_memo"] = []  # as the block's forward opens it
    try:
        first = norm(x)
        assert norm(x) is first and norm(x) is first
        other = norm(y)
        assert other is not first and torch.equal(other, first)
    finally:
        norm.__dict__["_norm_once_memo"] = None
    assert norm(x) is not norm(x)  # outside the block's forward: nothing kept


def test_per_head_inputs_are_left_alone() -> None:
    cfg = hooked_model("gpt2-like").cfg
    split = HookedTransformer(HookedTransformerConfig.from_dict({**cfg.to_dict(), "use_split_qkv_input": True}))
    assert norm_once_per_block(split) == 0
    assert count_norm_calls(split) == 3 * cfg.n_layers


def test_model_handles_are_wrapped_once() -> None:
    hooked = hooked_model("gpt2-like")
    ad_hoc_handle(hooked, "gpt2-like")
    assert all("forward" in block.ln1.__dict__ for block in hooked.blocks)
    assert norm_once_per_block(hooked) == 0  # already wrapped


def test_a_norm_called_outside_its_block_keeps_nothing() -> None:
    """A norm computed on its own (a metric normalising a residual itself) must not be served to
    the next pass given the same tensor: there a hook on the norm edits what the attention reads."""
    plain, once = hooked_model("smollm2-like"), hooked_model("smollm2-like")
    norm_once_per_block(once)
    x = torch.randn(2, 5, plain.cfg.d_model)

    def zero(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return torch.zeros_like(act)

    outs = []
    with torch.no_grad():
        for model in (plain, once):
            model.blocks[0].ln1(x)
            with model.hooks(fwd_hooks=[("blocks.0.ln1.hook_normalized", zero)]):
                outs.append(model.blocks[0](x))
    assert torch.equal(*outs)
    assert once.blocks[0].ln1.__dict__["_norm_once_memo"] is None

