"""ov.full_circuit_topk: equals a dense float64 reference, and recovers the planted accuracies."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

from fixtures.planted import PLANTED_MODELS
from harness.core.model_handle import ModelHandle, ModelIdentity
from harness.runner import measure
from harness.session import Session

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is 5-10x cheaper in CPU time


def dense_topk(W_E: np.ndarray, W_OV: np.ndarray, W_U: np.ndarray, k: int) -> float:
    """Top-k by definition, argmax tie rule: rank = #{j: M_ij > M_ii} + #{j < i: M_ij == M_ii}."""
    M = W_E.astype(np.float64) @ W_OV.astype(np.float64) @ W_U.astype(np.float64)
    diag = np.diag(M)[:, None]
    index = np.arange(M.shape[0])
    rank = (M > diag).sum(1) + ((M == diag) & (index[None, :] < index[:, None])).sum(1)
    return float((rank < k).mean())


def random_handle(seed: int, d_vocab: int, n_heads: int) -> ModelHandle:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=1, d_model=16, d_head=4, n_heads=n_heads, d_vocab=d_vocab, n_ctx=8,
        attn_only=True, normalization_type=None, act_fn=None, seed=seed,
    )
    model = HookedTransformer(cfg)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator))
    identity = ModelIdentity(f"random-{seed}-{d_vocab}-{n_heads}", "test", None, None)
    return ModelHandle(model, identity, bos_token_id=0)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), d_vocab=st.integers(2, 80), heads=st.sets(st.integers(0, 2), min_size=1))
def test_equals_dense_reference(seed: int, d_vocab: int, heads: set[int]) -> None:
    handle = random_handle(seed, d_vocab, 3)
    session = Session()
    session.models[handle.identity.name] = handle
    names = [f"0.{h}" for h in sorted(heads)]
    measured = measure(session, handle.identity.name, "ov.full_circuit_topk", {"heads": names, "ks": [1, 3, 5]}, None, None)
    W_OV = sum(handle.W_V[0, h].numpy() @ handle.W_O[0, h].numpy() for h in sorted(heads))
    for k in (1, 3, 5):
        assert measured.value[f"top{k}"] == dense_topk(handle.W_E.numpy(), W_OV, handle.W_U.numpy(), k)


@pytest.mark.parametrize("model", ["planted-ov-rank", "planted-split-copy"])
def test_recovers_planted_accuracies(model: str) -> None:
    truth = PLANTED_MODELS[model].ground_truth["ov_topk"]
    session = Session()
    for heads, expected in truth.items():
        measured = measure(session, model, "ov.full_circuit_topk", {"heads": heads.split("+"), "ks": [1, 5, 10]}, None, None)
        for k, accuracy in expected.items():
            assert measured.value[f"top{k}"] == pytest.approx(accuracy, abs=0), (heads, k)
        assert sum(measured.details["tie_rows"].values()) == 0
