"""The toy SAE (ARENA 1.5.4, fixtures/tms/sae.py): architecture, normalisation, loss and resampling (SP50-SP53, SP57)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fixtures.tms.sae import SAE_RECIPES, base_hidden, normalised, resample_simple, sae_forward, sae_init, sae_losses

RECIPE = SAE_RECIPES["sae-5f2d"]


def params(seed: int = 0) -> dict[str, torch.Tensor]:
    return sae_init(RECIPE, 2, torch.Generator().manual_seed(seed))


def test_init_matches_kaiming_uniform_bound() -> None:
    """kaiming_uniform_ on [16, 2, 5] has fan_in 2·5 = 10, bound √2·√(3/10) = 0.775 (catalogue §1)."""
    p = params()
    assert float(p["W_enc"].abs().max()) <= 0.7746 and float(p["W_enc"].abs().max()) > 0.7
    assert float(p["b_enc"].abs().max()) == 0.0 and float(p["b_dec"].abs().max()) == 0.0


def test_forward_is_the_course_architecture() -> None:
    """SP50: z = ReLU((h − b_dec) W_enc + b_enc), h' = z Ŵ_dec + b_dec, losses of shape [batch, inst]."""
    p = params()
    p["b_dec"] = torch.randn(16, 2, generator=torch.Generator().manual_seed(1))
    h = torch.randn(7, 16, 2, generator=torch.Generator().manual_seed(2))
    z, h_hat = sae_forward(p, h)
    k = 3
    z_ref = torch.relu((h[:, k] - p["b_dec"][k]) @ p["W_enc"][k] + p["b_enc"][k])
    assert torch.allclose(z[:, k], z_ref, atol=1e-6)
    assert torch.allclose(h_hat[:, k], z_ref @ normalised(p["W_dec"])[k] + p["b_dec"][k], atol=1e-6)
    rec, sparsity, _ = sae_losses(p, h, RECIPE.l1_coeff)
    assert rec.shape == sparsity.shape == (7, 16)


def test_decoder_rows_unit_and_zero_row_stays_zero() -> None:
    """SP51: normalised W_dec has unit rows; a zero row stays (about) zero thanks to the eps."""
    W = torch.randn(16, 5, 2)
    W[0, 0] = 0.0
    rows = normalised(W).norm(dim=-1)
    assert float(rows[0, 0]) == 0.0 and torch.allclose(rows.flatten()[1:], torch.ones(79), atol=1e-6)


def test_without_normalisation_rescaling_would_cheat() -> None:
    """SP52: scaling W_enc, b_enc by 1/c and W_dec by c leaves h' unchanged and divides L_sparsity by c;
    with the normalised decoder the same rescaling changes h'."""
    p = params()
    h = base_hidden(torch.randn(2, 5, generator=torch.Generator().manual_seed(3)), 0.3, 16, 64, torch.Generator().manual_seed(4))
    z = torch.relu(torch.einsum("bki,kis->bks", h - p["b_dec"], p["W_enc"]) + p["b_enc"])
    raw = torch.einsum("bks,ksi->bki", z, p["W_dec"])
    c = 4.0
    z_c = torch.relu(torch.einsum("bki,kis->bks", h - p["b_dec"], p["W_enc"] / c) + p["b_enc"] / c)
    assert torch.allclose(torch.einsum("bks,ksi->bki", z_c, p["W_dec"] * c), raw, atol=1e-5)
    assert float(z_c.abs().sum()) == pytest.approx(float(z.abs().sum()) / c, rel=1e-5)
    scaled = dict(p, W_enc=p["W_enc"] / c, b_enc=p["b_enc"] / c, W_dec=p["W_dec"] * c)
    assert not torch.allclose(sae_forward(scaled, h)[1], sae_forward(p, h)[1], atol=1e-3)


def test_l1_summed_over_latents() -> None:
    """SP53: L_sparsity is summed over d_sae (each latent's sparsity gradient does not shrink as d_sae grows)
    and L_rec is averaged over d_in."""
    p = params()
    h = torch.rand(5, 16, 2)
    rec, sparsity, z = sae_losses(p, h, 0.2)
    assert torch.allclose(sparsity, z.abs().sum(-1)) and torch.allclose(rec, ((sae_forward(p, h)[1] - h) ** 2).mean(-1))


def test_resample_simple_reinitialises_only_dead_latents() -> None:
    """SP57: a latent inactive at every step of the window gets W_dec v̂, W_enc scale·v̂, b_enc 0; live latents are
    untouched; no dead latent is not an error."""
    p = {k: v.clone() for k, v in params().items()}
    p["b_enc"] += 0.3
    before = {k: v.clone() for k, v in p.items()}
    activity = torch.ones(500, 16, 5)
    activity[:, 2, 4] = 0.0
    activity[-1, 3, 1] = 0.0  # inactive at one step only: alive
    resample_simple(p, activity, 0.5, torch.Generator().manual_seed(0))
    v = p["W_dec"][2, 4]
    assert float(v.norm()) == pytest.approx(1.0, abs=1e-6)
    assert torch.allclose(p["W_enc"][2, :, 4], 0.5 * v) and float(p["b_enc"][2, 4]) == 0.0
    changed = (p["W_dec"] != before["W_dec"]).any(-1)
    assert changed.sum() == 1 and bool(changed[2, 4])
    resample_simple(p, torch.ones(500, 16, 5), 0.5, torch.Generator().manual_seed(0))


def test_sae_recipes_read_the_base_model_distribution() -> None:
    assert dataclasses.asdict(SAE_RECIPES["sae-5f2d-resampled"])["resample"] == "simple"
    h = base_hidden(torch.eye(2, 5), 0.025, 16, 4000, torch.Generator().manual_seed(0))
    assert h.shape == (4000, 16, 2) and 0.02 < float((h[..., 0] > 0).float().mean()) < 0.03


def test_training_runs_deterministically_and_resamples() -> None:
    from fixtures.tms.sae import train_sae

    recipe = dataclasses.replace(SAE_RECIPES["sae-5f2d-resampled"], n_inst=2, steps=30, batch_size=64, resample_every=10, window=5)
    W = torch.tensor([[1.0, 0.3, -0.8, -0.8, 0.3], [0.0, 0.95, 0.59, -0.59, -0.95]])
    first, second = train_sae(recipe, W, 0.025, 0), train_sae(recipe, W, 0.025, 0)
    assert torch.equal(first["W_enc"], second["W_enc"]) and first["frac_active_window"].shape == (5, 2, 5)
    assert torch.allclose(first["W_dec"].norm(dim=-1), torch.ones(2, 5), atol=1e-5)


def _handle(W_dec: torch.Tensor, W_enc: torch.Tensor, b_enc: torch.Tensor):
    import math

    from harness.core.model_identity import ModelIdentity
    from harness.core.toy_sae_handle import ToySaeHandle
    from harness.core.toy_shape import SaeShape

    angles = torch.arange(5) * 2 * math.pi / 5
    base = torch.stack([angles.cos(), angles.sin()])
    params = {"W_enc": W_enc[None], "W_dec": W_dec[None], "b_enc": b_enc[None], "b_dec": torch.zeros(1, 2)}
    identity = ModelIdentity(name="t-sae", source="toy", weights_sha256=None, config_sha256=None)
    return ToySaeHandle(params, base, 0.025, identity, SaeShape(1, 2, 5)), base


def test_sae_metrics_on_an_ideal_and_a_broken_sae() -> None:
    """An SAE whose latents are the pentagon's features (encoder = decoder, bias -cos 72°·a little) matches every
    feature and reconstructs single features exactly up to its threshold; one with a latent that never fires is dead."""
    from harness.context import MetricContext
    from harness.metrics.toy_sae import matched_features, summaries
    from harness.session import Session

    _, base = _handle(torch.zeros(5, 2), torch.zeros(2, 5), torch.zeros(5))
    ideal, _ = _handle(base.T.clone(), base.clone(), torch.full((5,), -0.35))
    assert matched_features(ideal).tolist() == [5]
    figures = summaries(ideal, 5000, 0)
    assert figures["fully_monosemantic"].tolist() == [1.0] and figures["dead"].tolist() == [0.0]
    assert float(figures["shrinkage_median"][0]) == pytest.approx(0.3, abs=1e-5)  # (a − 0.35)/a at a = 0.5, the lower median
    broken_enc = base.clone()
    broken_enc[:, 4] = 0.0
    broken, _ = _handle(base.T.clone(), broken_enc, torch.full((5,), -0.35))
    assert summaries(broken, 5000, 0)["dead"].tolist() == [1.0]
    ctx = MetricContext(broken, None, Session())
    from harness.metrics.toy_sae import count_instances

    assert count_instances(ctx, condition="has_dead_latent", batch=5000, seed=0).value == 1.0


def test_small_inputs_zeroed_on_a_thresholding_sae() -> None:
    """With encoder = decoder = the pentagon and bias -0.35, single-feature inputs below 0.35 give no latent."""
    from harness.context import MetricContext
    from harness.metrics.toy_sae import small_inputs_zeroed
    from harness.session import Session

    _, base = _handle(torch.zeros(5, 2), torch.zeros(2, 5), torch.zeros(5))
    ideal, _ = _handle(base.T.clone(), base.clone(), torch.full((5,), -0.35))
    value = small_inputs_zeroed(MetricContext(ideal, None, Session()), instance=0, small=0.2, large=0.6).value
    assert value == {"zero_fraction_small": 1.0, "zero_fraction_large": 0.0}


def test_activity_groups_from_the_training_window() -> None:
    from harness.context import MetricContext
    from harness.core.model_identity import ModelIdentity
    from harness.core.toy_sae_handle import ToySaeHandle
    from harness.core.toy_shape import SaeShape
    from harness.metrics.toy_sae import activity_groups
    from harness.session import Session

    activity = torch.zeros(500, 1, 5)
    activity[:, 0, 1] = 0.10  # above 3%
    activity[:, 0, 2] = 0.025  # at the target
    activity[:, 0, 3] = 0.005  # fires, below half the target
    activity[-1, 0, 4] = 0.5  # fired once in the window: alive; mean 0.001
    params = {"W_enc": torch.zeros(1, 2, 5), "W_dec": torch.ones(1, 5, 2), "b_enc": torch.zeros(1, 5), "b_dec": torch.zeros(1, 2)}
    identity = ModelIdentity(name="t-sae", source="toy", weights_sha256=None, config_sha256=None)
    sae = ToySaeHandle(params, torch.eye(2, 5), 0.025, identity, SaeShape(1, 2, 5), training_activity=activity)
    value = activity_groups(MetricContext(sae, None, Session()), target=0.025).value
    assert value == {"dead": 1.0, "above_target": 1.0, "near_target": 1.0, "other": 2.0}


def test_resample_advanced_as_coded() -> None:
    """SP62: dead latents take the direction of h − b_dec of a badly reconstructed row (one row dominates the
    L_rec² weights here), W_enc that direction times scale times the live columns' mean norm, b_enc 0; live
    latents are untouched; an instance reconstructed to within 1e-6 is skipped."""
    from fixtures.tms.sae import resample_advanced

    p = {k: v.clone() for k, v in params().items()}
    p["W_enc"][:] = 0.0  # every latent silent: the SAE reconstructs h as b_dec = 0
    p["W_enc"][0, :, 0] = torch.tensor([3.0, 4.0])  # a live latent of norm 5 in instance 0
    h = torch.zeros(8, 16, 2)
    h[3, 0] = torch.tensor([0.0, 2.0])  # the only badly reconstructed row of instance 0
    activity = torch.ones(500, 16, 5)
    activity[:, 0, 4] = 0.0
    activity[:, 1, 2] = 0.0  # dead in instance 1, whose h is all zero: reconstructed exactly, skipped
    before = {k: v.clone() for k, v in p.items()}
    resample_advanced(p, activity, h, 0.5, torch.Generator().manual_seed(0))
    assert torch.allclose(p["W_dec"][0, 4], torch.tensor([0.0, 1.0]))
    assert torch.allclose(p["W_enc"][0, :, 4], torch.tensor([0.0, 0.5 * 5.0 / 4]))  # live columns: norms 5, 0, 0, 0
    assert float(p["b_enc"][0, 4]) == 0.0
    assert torch.equal(p["W_dec"][1], before["W_dec"][1]) and torch.equal(p["W_dec"][0, :4], before["W_dec"][0, :4])
