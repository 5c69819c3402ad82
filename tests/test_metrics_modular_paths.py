"""The grokking path and Fourier-share metrics: planted grids, planted weights, and a dense reference."""

from __future__ import annotations

import math

import pytest
import torch

from fixtures.grokking_model import initial_state_dict
from fixtures.modular_task import P, all_data
from harness.core.model_handle import ModelHandle
from harness.metrics import _modular as M
from harness.metrics import modular_paths
from harness.metrics._modular import split_loss
from tests.test_metrics_modular import Ctx, handle_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # a 12,769 x 512 model: one thread is several times cheaper in CPU time


def test_grid_shares_of_planted_grids() -> None:
    x = torch.arange(P, dtype=torch.float64)
    w = 2 * math.pi / P
    additive = (torch.cos(3 * w * x)[:, None] + 2 * torch.sin(5 * w * x)[None, :])  # linear terms only: 2 coefficients
    product = torch.cos(7 * w * x)[:, None] * torch.cos(7 * w * x)[None, :]  # one quadratic term
    noise = torch.randn(P, P, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    grid = torch.stack([additive + 5.0, product, noise, torch.full((P, P), 3.0, dtype=torch.float64)], -1)
    top, linear = modular_paths.grid_fourier_shares(grid, top=2)
    assert top[:2].tolist() == pytest.approx([1.0, 1.0]) and linear[:2].tolist() == pytest.approx([1.0, 0.0], abs=1e-12)
    assert float(top[2]) < 0.01 and float(linear[2]) == pytest.approx(2 * (P - 1) / (P * P - 1), rel=0.3)  # spread over every term
    assert float(top[3]) == 0.0 and float(linear[3]) == 0.0  # a constant grid has no centred energy


def test_column_shares_of_planted_coordinates() -> None:
    coords = torch.zeros(4, P, dtype=torch.float64)
    coords[0, 2 * 5 - 1] = 3.0  # row 0 writes cos 5
    coords[1, 2 * 5] = 1.0  # row 1 writes sin 5
    coords[2, 2 * 9] = 2.0  # row 2 writes sin 9
    coords[3, 0] = 1.0  # row 3 writes the constant
    members = {5: torch.tensor([True, False, False, False]), 9: torch.tensor([False, False, True, False])}
    key, own = modular_paths.column_shares(coords, [5, 9], members)
    assert key == pytest.approx(14 / 15)
    assert own == pytest.approx({"k=5": 0.9, "k=9": 1.0})


@pytest.fixture(scope="module")
def random_model() -> ModelHandle:
    """A randomly initialised model with a nonzero b_out (so that the neuron path's logits carry it), read by
    the tests of this module (its all-pairs run is made once: the metrics keep it)."""
    state = initial_state_dict(6)
    state["blocks.0.mlp.b_out"] = 0.1 * torch.randn(128, generator=torch.Generator().manual_seed(1))
    return handle_of(state, "shares-grok")


def test_neuron_path_loss_against_transformer_lens_hooks(random_model: ModelHandle) -> None:
    model = random_model
    hooked = model._hooked
    with torch.no_grad():
        _, cache = hooked.run_with_cache(all_data().tokens)
    mlp_out = cache["blocks.0.hook_mlp_out"][:, -1].double()
    dense = mlp_out @ hooked.W_U.detach().double()[:, :P]  # the logits with resid_mid zero-ablated
    zero = modular_paths.neuron_path_loss(Ctx(model), ablation="zero").value
    assert zero["ablated"] == pytest.approx(split_loss(dense, "all"), rel=1e-6)
    resid_mid = cache["blocks.0.hook_resid_mid"][:, -1].double() @ hooked.W_U.detach().double()[:, :P]
    mean = modular_paths.neuron_path_loss(Ctx(model), ablation="mean").value
    assert mean["ablated"] == pytest.approx(split_loss(dense + resid_mid.mean(0), "all"), rel=1e-6)
    assert mean["original"] == pytest.approx(split_loss(dense + resid_mid, "all"), rel=1e-6)


def test_logit_weight_share_is_the_fourier_norm_of_w_out_w_u(random_model: ModelHandle) -> None:
    model = random_model
    value = modular_paths.logit_weight_fourier_share(Ctx(model), frequencies=list(range(1, 57))).value
    assert value["key_share"] == pytest.approx(1 - 1 / P, abs=0.02)  # every column but the constant: a random W_logit is flat
    assert 0.0 <= value["own_cluster_share"] <= 1.0
    assert M.fourier_basis().shape == (P, P)


def test_fourier_2d_shares_of_a_random_model_leave_dead_neurons_out(random_model: ModelHandle) -> None:
    model = random_model
    for of in ("attention", "neurons", "logits"):
        value = modular_paths.fourier_2d_shares(Ctx(model), of=of).value
        assert 0.0 < value["top_share"] <= 1.0 and value["linear_share"] + value["quadratic_share"] == pytest.approx(1.0)
