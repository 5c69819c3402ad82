"""G10, G11, G21 metrics (harness.metrics.modular_weights) against dense references and planted ground truths."""

from __future__ import annotations

import math

import pytest
import torch

from fixtures.grokking_model import initial_state_dict
from fixtures.modular_task import P, all_data
from harness.metrics import _modular as M
from harness.metrics import modular_weights as W
from tests.test_metrics_modular import Ctx, handle_of

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def orthogonal_embedding(scales: dict[int, float], seed: int = 0) -> torch.Tensor:
    """(p, 128) W_E[:p] = F_K^T S V^T exactly: each frequency's cos/sin rows carry orthonormal d_model rows times a distinct scale."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(128, 2 * len(scales), generator=g, dtype=torch.float64))
    coords = torch.zeros(P, 128, dtype=torch.float64)
    for i, (k, scale) in enumerate(scales.items()):
        coords[2 * k - 1] = scale * q[:, 2 * i]
        coords[2 * k] = 0.9 * scale * q[:, 2 * i + 1]
    return M.fourier_basis().T @ coords


def with_embedding(w_e: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    state = initial_state_dict(seed)
    state["embed.W_E"] = state["embed.W_E"].clone()
    state["embed.W_E"][:P] = w_e.float()
    return state


def test_effective_weights_follow_the_models_attention_scores() -> None:
    """W_attn[h, t] - W_attn[h, t'] is the difference of head h's score from "=" to x = t and to x = t' (zero attention biases)."""
    model = handle_of(initial_state_dict(5), "eff-5")
    attn = W.effective_weights(model)["attn"]
    tokens = torch.tensor([[3, 8, P], [17, 8, P]])
    scores = model.run_with_cache(tokens).activations[("attn_scores", 0)][:, :, 2, 0].double()  # (2, h)
    assert torch.allclose(scores[0] - scores[1], attn[:, 3] - attn[:, 17], atol=1e-5)


def test_effective_weight_energy_against_a_dense_loop() -> None:
    model = handle_of(initial_state_dict(6), "eff-6")
    neur = W.effective_weights(model)["neur"]
    basis = M.fourier_basis()
    energy = W.token_axis_energy(neur)
    for k in (0, 1, 30, 56):
        rows = [0] if k == 0 else [2 * k - 1, 2 * k]
        dense = sum(float((basis[r] @ neur[h, :, j]) ** 2) for r in rows for h in range(4) for j in range(0, 512, 97))
        sub = W.token_axis_energy(neur[:, :, ::97])[k]
        assert float(sub) == pytest.approx(dense, rel=1e-10)
    assert float(energy.sum()) == pytest.approx(float(neur.pow(2).sum()), rel=1e-10)  # F orthonormal: Parseval


def test_planted_embedding_confines_both_effective_weights_to_its_frequencies() -> None:
    model = handle_of(with_embedding(orthogonal_embedding({5: 3.0, 9: 2.0})), "eff-planted")
    for matrix in ("neur", "attn"):
        share = W.effective_weight_fourier_share(Ctx(model), matrix=matrix, frequencies=[5, 9]).value
        assert share["share"] > 1 - 1e-9
        keys = W.effective_weight_key_frequencies(Ctx(model), matrix=matrix, rel_threshold=0.05).value
        assert set(keys) <= {"k=5", "k=9"}
    random = handle_of(initial_state_dict(6), "eff-6")
    assert W.effective_weight_fourier_share(Ctx(random), matrix="neur", frequencies=[5, 9]).value["share"] < 0.2


def test_svd_alignment_is_one_for_an_exact_fourier_embedding_and_low_for_a_random_one() -> None:
    exact = W.svd_fourier_alignment(orthogonal_embedding({3: 4.0, 7: 3.0, 20: 2.0}), [3, 7, 20])
    assert all(v == pytest.approx(1.0, abs=1e-9) for v in exact.values()), exact
    g = torch.Generator().manual_seed(1)
    noisy = W.svd_fourier_alignment(torch.randn(P, 128, generator=g, dtype=torch.float64), [3, 7, 20])
    assert noisy["subspace_share"] < 0.2 and noisy["min_purity"] < 0.3 and noisy["sigma_share"] < 0.2


def test_svd_purity_against_a_dense_loop() -> None:
    g = torch.Generator().manual_seed(2)
    w_e = orthogonal_embedding({3: 4.0, 7: 3.0}) + 0.3 * torch.randn(P, 128, generator=g, dtype=torch.float64)
    got = W.svd_fourier_alignment(w_e, [3, 7])
    u = torch.linalg.svd(w_e, full_matrices=False).U[:, :4]
    x = torch.arange(P, dtype=torch.float64)
    purities = []
    for i in range(4):
        shares = []
        for k in range(1, 57):
            c, s = torch.cos(2 * math.pi * k * x / P), torch.sin(2 * math.pi * k * x / P)
            shares.append(float((c @ u[:, i]) ** 2 / (c @ c) + (s @ u[:, i]) ** 2 / (s @ s)))
        purities.append(max(shares))
    assert got["min_purity"] == pytest.approx(min(purities), rel=1e-9)
    assert got["mean_purity"] == pytest.approx(sum(purities) / 4, rel=1e-9)


def test_logit_directions_of_the_trig_algorithm_pass_and_a_lone_quadratic_term_fails() -> None:
    k = 14
    data = all_data()
    wx, wy = 2 * math.pi * k * data.x.double() / P, 2 * math.pi * k * data.y.double() / P
    neurons = torch.stack([torch.cos(wx + wy) + 0.5, torch.sin(wx + wy), torch.cos(wx) * torch.cos(wy),
                           torch.sin(wx) * torch.sin(wy)], 1)  # (p^2, 4)
    us = torch.zeros(4, P, dtype=torch.float64)
    us[0, 2 * k - 1], us[1, 2 * k] = 2.0, 2.0
    value, _ = W.logit_direction_checks(neurons, us, [k])
    assert value["min_share"] == pytest.approx(1.0, abs=1e-12) and value["sign_pattern"] == 1.0
    assert value["max_magnitude_gap"] == pytest.approx(0.0, abs=1e-9)
    us[0, 2 * k - 1] = 0.0
    us[2, 2 * k - 1] = 1.0  # the cos column reads cos x cos y alone: half of cos(x + y), no - sin x sin y
    value, details = W.logit_direction_checks(neurons, us, [k])
    assert value[f"k={k}"] == pytest.approx(0.5, abs=1e-9) and value["sign_pattern"] == 0.5
    assert value["max_magnitude_gap"] == pytest.approx(1.0, abs=1e-9)
    a, b = details["coefficients"][f"k={k} cos"]
    dense = float((neurons[:, 2] * torch.cos(wx) * torch.cos(wy)).sum()) * 2 / P  # unit-norm cos rows: (2 / p) sum
    assert a == pytest.approx(dense, rel=1e-9) and b == pytest.approx(0.0, abs=1e-9)


def test_logit_direction_metric_runs_on_a_model() -> None:
    model = handle_of(initial_state_dict(8), "eff-8")
    value = W.logit_direction_fourier(Ctx(model), frequencies=[5, 9]).value
    assert set(value) == {"k=5", "k=9", "min_share", "sign_pattern", "max_magnitude_gap"}
    assert 0.0 <= value["min_share"] < 0.5  # an untrained model: no trig algorithm


@pytest.mark.parametrize("noise", [1e-17, -1e-17, 0.0])
def test_a_coefficient_at_rounding_level_has_no_sign(noise: float) -> None:
    """A 2-D coefficient that is zero but for rounding fails its sign check whatever its sign, so the
    verdict does not depend on which kernels rounded it (sin x sin y's coefficient planted at +-1e-17)."""
    k = 14
    data = all_data()
    wx, wy = 2 * math.pi * k * data.x.double() / P, 2 * math.pi * k * data.y.double() / P
    basis = torch.stack([torch.cos(wx) * torch.cos(wy), torch.sin(wx) * torch.sin(wy), torch.sin(wx + wy)], 1)
    scale = (basis[:, 1] @ basis[:, 1]).item()
    neurons = torch.stack([basis[:, 0] + noise / scale * basis[:, 1], basis[:, 2]], 1)  # (p^2, 2)
    us = torch.zeros(2, P, dtype=torch.float64)
    us[0, 2 * k - 1], us[1, 2 * k] = 1.0, 1.0
    value, details = W.logit_direction_checks(neurons, us, [k])
    assert value["sign_pattern"] == 0.5  # the sin pair holds; the cos pair has one coefficient at zero
    assert abs(details["coefficients"][f"k={k} cos"][1]) < 1e-15
