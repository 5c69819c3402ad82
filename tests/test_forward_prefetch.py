"""``Forward.prefetch``: the direct-attribution metrics read every kind of activation and the logits
from one pass; their values equal the ones read kind by kind (one pass each), bit for bit. Logits
read after a pass that cached activations come from its final residual stream, not a second pass."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from harness.core.finite import NonFiniteModelError
from harness.core.model_handle import Forward
from harness.session import Session
from harness.testing import measure_metric, random_handle
from tests.ioi_dataset_support import dataset_model, train_dataset_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
INPUTS = {"ioi_dataset": {"n": 8, "seed": 5}}
CASES = [
    ("ioi.head_attribution", {}),
    ("ioi.head_attribution", {"top_k": 2}),
    ("ioi.ablated_attribution", {"ablate": ["1.0", "2.1"], "at": "end"}),
    ("ioi.ablated_attribution", {"ablate": ["0.1"], "at": "S2"}),
]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train_dataset_tokenizer(tmp_path_factory.mktemp("prefetch-tokenizer"))


def counted(monkeypatch: pytest.MonkeyPatch, prefetch: bool) -> list[str | None]:
    """The return types of the checked passes run from now on; without ``prefetch``, the old way (kind by kind)."""
    passes: list[str | None] = []
    checked = Forward._checked_pass

    def counting(self: Forward, *, return_type: str | None, extra_hooks: list = []) -> Any:
        passes.append(return_type)
        return checked(self, return_type=return_type, extra_hooks=extra_hooks)

    monkeypatch.setattr(Forward, "_checked_pass", counting)
    if not prefetch:
        monkeypatch.setattr(Forward, "prefetch", lambda self, names, *, logits=False: None)
    return passes


@pytest.mark.parametrize(("metric", "params"), CASES)
@pytest.mark.parametrize("normalization", ["LNPre", None])
def test_one_pass_gives_the_values_of_one_pass_per_kind(tokenizer: Any, monkeypatch: pytest.MonkeyPatch, metric: str, params: dict, normalization: str | None) -> None:
    model = dataset_model(3, tokenizer, normalization=normalization)
    with monkeypatch.context() as patch:
        old_passes = counted(patch, prefetch=False)
        old = measure_metric(model, metric, inputs=INPUTS, session=Session(), **params)
    new_passes = counted(monkeypatch, prefetch=True)
    new = measure_metric(model, metric, inputs=INPUTS, session=Session(), **params)
    assert new.value == old.value and new.uncertainty == old.uncertainty and new.details == old.details
    clean_kinds = 4 + (normalization is not None)  # embed, pos_embed, z, mlp_out [, scale]; the logits from the held final residual
    ablation = metric == "ioi.ablated_attribution"
    assert len(old_passes) == clean_kinds + ablation and "logits" not in old_passes  # (+ the ABC run's z)
    assert len(new_passes) == 1 + ablation and new_passes[0] == "logits"


def test_prefetch_skips_what_is_held_and_checks_the_logits(tokenizer: Any) -> None:
    model = dataset_model(4, tokenizer)
    tokens = torch.randint(0, model.shape.d_vocab, (2, 6))
    forward = model.run_with_cache(tokens)
    z = forward.activations["z", 1]
    forward.prefetch(["blocks.1.attn.hook_z", "hook_embed"], logits=True)
    assert forward.activations["z", 1] is z  # held: not recomputed
    assert torch.equal(forward.logits, model.run_with_cache(tokens).logits)
    assert torch.equal(forward.activations["embed"], model.run_with_cache(tokens).activations["embed"])
    with torch.no_grad():
        model._hooked.W_U.mul_(float("inf"))
    broken = model.run_with_cache(tokens)
    with pytest.raises(NonFiniteModelError):
        broken.prefetch(["hook_embed"], logits=True)


@pytest.mark.parametrize(("normalization", "positional", "d_mlp", "gated"), [
    (None, "shortformer", None, False), ("LN", "standard", 6, False), ("LNPre", "standard", 6, False),
    ("RMS", "rotary", 6, True), ("RMSPre", "rotary", 6, True),
])
def test_logits_after_activations_are_the_plain_pass_s_without_a_second_pass(
    monkeypatch: pytest.MonkeyPatch, normalization: str | None, positional: str, d_mlp: int | None, gated: bool,
) -> None:
    """Logits read after the activations: the final norm and unembedding of the held residual stream,
    bit for bit the plain pass's logits, and no second pass through the blocks; a non-finite
    unembedding is still caught."""
    model = random_handle(7, n_layers=3, d_model=8, d_head=4, d_vocab=12, n_ctx=10, normalization=normalization,
                          positional=positional, d_mlp=d_mlp, gated=gated)
    tokens = torch.randint(0, 12, (3, 9), generator=torch.Generator().manual_seed(0))
    plain = model.run_with_cache(tokens).logits
    passes = counted(monkeypatch, prefetch=True)
    forward = model.run_with_cache(tokens)
    forward.activations["pattern", 0]
    assert torch.equal(forward.logits, plain)
    assert passes == [None]  # the pattern's pass only
    with torch.no_grad():
        model._hooked.W_U[0, 0] = float("nan")
    broken = model.run_with_cache(tokens)
    broken.activations["pattern", 0]
    with pytest.raises(NonFiniteModelError):
        broken.logits
