"""The course's Gated and JumpReLU toy SAEs: straight-through estimators, architectures, losses, resampling."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from fixtures.tms.sae import train_sae
from fixtures.tms.sae_recipes import SAE_RECIPES, sae_recipe_sha256
from fixtures.tms.sae_variants import Heaviside, JumpReLU, variant_init, variant_losses, variant_resample_advanced
from harness.core.model_identity import ModelIdentity
from harness.core.toy_sae_handle import ToySaeHandle
from harness.core.toy_shape import SaeShape

GATED, JUMP = SAE_RECIPES["sae-5f2d-gated"], SAE_RECIPES["sae-5f2d-jumprelu"]


def _ste_inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[1.0, 1.4, 1.6, 2.0]], requires_grad=True), torch.tensor([1.5, 1.5, 1.5, 1.5], requires_grad=True)


def test_heaviside_pseudo_derivative() -> None:
    """SP70: z = [1, 1.4, 1.6, 2], θ = 1.5, ε = 0.5: out [0, 0, 1, 1], dθ [0, −2, −2, 0], dz 0; a doubled batch doubles dθ."""
    z, theta = _ste_inputs()
    out = Heaviside.apply(z, theta, 0.5)
    out.backward(torch.ones_like(out))
    assert out.tolist() == [[0.0, 0.0, 1.0, 1.0]]
    assert theta.grad.tolist() == [0.0, -2.0, -2.0, 0.0] and z.grad.abs().sum() == 0
    theta.grad = None
    doubled = Heaviside.apply(torch.cat([z, z]), theta, 0.5)
    doubled.backward(torch.ones_like(doubled))
    assert theta.grad.tolist() == [0.0, -4.0, -4.0, 0.0]


def test_jumprelu_pseudo_derivative() -> None:
    """SP70: out [0, 0, 1.6, 2], dθ [0, −3, −3, 0], dz [0, 0, 1, 1]."""
    z, theta = _ste_inputs()
    out = JumpReLU.apply(z, theta, 0.5)
    out.backward(torch.ones_like(out))
    assert torch.allclose(out, torch.tensor([[0.0, 0.0, 1.6, 2.0]]))
    assert theta.grad.tolist() == [0.0, -3.0, -3.0, 0.0] and z.grad.tolist() == [[0.0, 0.0, 1.0, 1.0]]


def _params(recipe, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    params = variant_init(recipe, 2, generator)
    for key in ("b_gate", "r_mag", "b_mag", "b_enc", "b_dec"):
        if key in params:
            params[key] = torch.randn(params[key].shape, generator=generator) * 0.3
    return params


def _handle(recipe, params) -> ToySaeHandle:
    identity = ModelIdentity(name=recipe.name, source="toy", weights_sha256=None, config_sha256=None)
    return ToySaeHandle(params, torch.randn(2, 5, generator=torch.Generator().manual_seed(9)), 0.025, identity,
                        SaeShape(recipe.n_inst, 2, recipe.d_sae), architecture=recipe.architecture)


@pytest.mark.parametrize("recipe", [GATED, JUMP], ids=["gated", "jumprelu"])
def test_training_forward_is_the_handles_forward(recipe) -> None:
    params = _params(recipe)
    h = torch.randn(64, recipe.n_inst, 2, generator=torch.Generator().manual_seed(1))
    _, rec, z = variant_losses(recipe, params, h)
    z_handle, h_hat = _handle(recipe, params).forward(h)
    assert torch.allclose(z, z_handle, atol=1e-6) and torch.allclose(rec, ((h_hat - h) ** 2).mean(-1), atol=1e-6)


def test_gated_architecture_and_loss() -> None:
    """SP64: z = 1[π_gate > 0] ⊙ ReLU(x̃ (e^{r_mag} ⊙ W_gate) + b_mag); L = L_rec + λ‖ReLU(π)‖₁ + L_aux, where
    L_aux reconstructs ReLU(π) through a detached W_dec and b_dec (so it sends W_dec no gradient)."""
    params = _params(GATED)
    h = torch.randn(32, GATED.n_inst, 2, generator=torch.Generator().manual_seed(2))
    x = h - params["b_dec"]
    gate = torch.einsum("bki,kis->bks", x, params["W_gate"]) + params["b_gate"]
    magnitude = torch.relu(torch.einsum("bki,kis->bks", x, params["W_gate"] * params["r_mag"].exp()[:, None, :]) + params["b_mag"])
    loss, rec, z = variant_losses(GATED, params, h)
    assert torch.allclose(z, (gate > 0).float() * magnitude)
    aux = ((torch.einsum("bks,ksi->bki", torch.relu(gate), params["W_dec"]) + params["b_dec"] - h) ** 2).sum(-1)
    assert torch.allclose(loss, rec + GATED.l1_coeff * torch.relu(gate).sum(-1) + aux, atol=1e-6)
    W_dec = params["W_dec"].clone().requires_grad_(True)
    loss, rec, _ = variant_losses(GATED, {**params, "W_dec": W_dec}, h)
    (loss - rec).sum().backward()  # λ‖ReLU(π)‖₁ + L_aux: neither reaches W_dec
    assert W_dec.grad is None or float(W_dec.grad.abs().max()) < 1e-6


def test_gated_with_tied_magnitudes_is_a_jumprelu() -> None:
    """SP65: with c = b_mag − e^r b_gate and z = e^r π + c, the Gated latent is JumpReLU_θ(z) with θ = max(c, 0)."""
    params = _params(GATED, seed=3)
    params["b_mag"] = torch.randn(params["b_mag"].shape, generator=torch.Generator().manual_seed(4))
    h = torch.randn(500, GATED.n_inst, 2, generator=torch.Generator().manual_seed(5))
    gate = torch.einsum("bki,kis->bks", h - params["b_dec"], params["W_gate"]) + params["b_gate"]
    scale = params["r_mag"].exp()
    c = params["b_mag"] - scale * params["b_gate"]
    pre = scale * gate + c
    theta = c.clamp_min(0.0)
    _, _, z = variant_losses(GATED, params, h)
    assert bool((c > 0).any()) and bool((c < 0).any())
    assert torch.allclose(z, pre * (pre > theta).float(), atol=1e-6)


def test_jumprelu_design() -> None:
    """SP71: log θ stored with θ₀ = 0.1; the L0 term counts H(a − θ) summed over d_sae; the decoder is W_encᵀ."""
    params = variant_init(JUMP, 2, torch.Generator().manual_seed(0))
    assert torch.allclose(params["log_theta"].exp(), torch.full((JUMP.n_inst, JUMP.d_sae), 0.1)) and "W_dec" not in params
    h = torch.randn(128, JUMP.n_inst, 2, generator=torch.Generator().manual_seed(1))
    loss, rec, z = variant_losses(JUMP, params, h)
    pre = torch.relu(torch.einsum("bki,kis->bks", h - params["b_dec"], params["W_enc"]) + params["b_enc"])
    assert torch.allclose(loss, rec + JUMP.l1_coeff * (pre > 0.1).float().sum(-1), atol=1e-6)
    h_hat = torch.einsum("bks,kis->bki", z, params["W_enc"]) + params["b_dec"]
    assert torch.allclose(rec, ((h_hat - h) ** 2).mean(-1), atol=1e-6)


@pytest.mark.parametrize("recipe", [GATED, JUMP], ids=["gated", "jumprelu"])
def test_variant_training_is_deterministic_and_tied_decoder_is_not_normalised(recipe) -> None:
    from safetensors.torch import load_file

    from fixtures.tms.train import weights_file
    from fixtures.tms.recipes import RECIPES

    W = load_file(str(weights_file(RECIPES["tms-5f2d-sae-base"], 0)))["W"][0]
    small = dataclasses.replace(recipe, n_inst=3, steps=40, batch_size=128, resample_every=20, window=10)
    first, second = train_sae(small, W, 0.025, 0), train_sae(small, W, 0.025, 0)
    assert all(torch.equal(first[k], second[k]) for k in first)
    if recipe.tied:
        assert float((first["W_enc"].norm(dim=1) - 1).abs().max()) > 1e-3
    else:
        assert torch.allclose(first["W_dec"].norm(dim=-1), torch.ones(3, 5), atol=1e-5)


@pytest.mark.parametrize("recipe", [GATED, JUMP], ids=["gated", "jumprelu"])
def test_variant_resample_resets_dead_latents_only(recipe) -> None:
    """Resampling draws a centred input row for each dead latent and resets its biases (Gated: b_mag, b_gate,
    r_mag; JumpReLU: b_enc and θ to θ₀); live latents are untouched."""
    params = _params(recipe)
    if recipe.architecture == "jumprelu":
        params["log_theta"] = params["log_theta"] + 1.0
    before = {k: v.clone() for k, v in params.items()}
    activity = torch.ones(10, recipe.n_inst, recipe.d_sae)
    activity[:, 0, 2] = 0.0
    h = torch.randn(256, recipe.n_inst, 2, generator=torch.Generator().manual_seed(1))
    variant_resample_advanced(recipe, params, activity, h, torch.Generator().manual_seed(0))
    encoder = "W_gate" if recipe.architecture == "gated" else "W_enc"
    changed = (params[encoder] != before[encoder]).any(dim=1)
    assert changed.nonzero().tolist() == [[0, 2]]
    if recipe.architecture == "gated":
        assert float(params["r_mag"][0, 2]) == 0.0 and float(params["b_gate"][0, 2]) == 0.0
        assert float(params["W_dec"][0, 2].norm()) == pytest.approx(1.0, abs=1e-5)
    else:
        assert float(params["log_theta"][0, 2]) == pytest.approx(math.log(0.1)) and float(params["b_enc"][0, 2]) == 0.0
        assert float(params["log_theta"][0, 1]) == pytest.approx(float(before["log_theta"][0, 1]))


def test_standard_recipe_hashes_did_not_move() -> None:
    """The variant fields are left out of a standard recipe's config: the committed SAEs keep their recipe hash."""
    import json

    from fixtures.tms.sae import SAE_MANIFEST

    rows = json.loads(SAE_MANIFEST.read_text())["models"]
    for row in rows.values():
        assert row["recipe_sha256"] == sae_recipe_sha256(SAE_RECIPES[row["recipe"]], row["seed"])
    assert "architecture" not in SAE_RECIPES["sae-5f2d"].training_config()
    assert GATED.training_config()["architecture"] == "gated"
