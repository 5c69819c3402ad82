"""Toy SAEs (ARENA 1.5.4): dead latents, L0, reconstruction, latent-to-feature matches, shrinkage.

These metrics read a :class:`~harness.core.toy_sae_handle.ToySaeHandle`. They evaluate the SAE on a
fresh seeded batch of the base model's hidden vectors h = W x (each feature present with the base
model's probability p, magnitude U[0, 1]) rather than on the training log:

- a latent is **dead** when it is never active (z > 1e-8) on the batch (the course: inactive at every
  step of the last 500; a 20,000-sample batch holds each feature about 500 times at p = 0.025);
- **L0**: the mean number of active latents per sample;
- **FVU** = mean_b mean_{d_in} (h' − h)² / mean_b (‖h‖² / d_in) (the catalogue's form);
- a feature is **matched** when some latent's decoder direction has cos > 0.95 with W_f; an instance is
  **fully monosemantic** when every feature is matched;
- **shrinkage** c = (h'·h) / ‖h‖² on single-feature inputs h = a W_f, a in {0.1, ..., 1.0}, median over
  features and magnitudes (< 1: the reconstructions are shrunk).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from harness.context import MetricContext
from harness.core.details import LatentFeatureCosines
from harness.core.measurement import Measurement
from harness.core.toy_sae_handle import ToySaeHandle
from harness.core.value_shape import Scalar, Table, names
from harness.registry import metric

MATCH_COS = 0.95
SaeInstance = Annotated[int, Field(ge=0)]
EvalBatch = Annotated[int, Field(ge=100, le=200_000)]
SaeCondition = Literal["fully_monosemantic", "has_dead_latent", "no_shrinkage"]
NO_SHRINKAGE = (0.9, 1.1)
"""The median shrinkage ratio c of an instance without shrinkage (the catalogue's sharp form of Fig 15b)."""
SUMMARY = ("dead", "l0", "fvu", "matched_features", "fully_monosemantic", "shrinkage_median")


def toy_sae(ctx: MetricContext) -> ToySaeHandle:
    if not isinstance(ctx.model, ToySaeHandle):
        raise ValueError(f"model {ctx.model.identity.name!r} is not a toy SAE (toy_sae.* metrics read an SAE on a toy model)")
    return ctx.model


def evaluation_batch(sae: ToySaeHandle, batch: int, seed: int) -> Tensor:
    """h [batch, n_inst, d_in] from the base model's distribution."""
    generator = torch.Generator().manual_seed(seed)
    n_features = sae.base_W.shape[1]
    magnitude = torch.rand(batch, n_features, generator=generator)
    present = torch.rand(batch, n_features, generator=generator) <= sae.p
    h = torch.where(present, magnitude, 0.0) @ sae.base_W.T
    return h[:, None, :].expand(batch, sae.n_inst, h.shape[-1])


def latent_feature_cosines(sae: ToySaeHandle) -> Tensor:
    """cos(Ŵ_dec[j], W_f) [n_inst, d_sae, n_features]."""
    features = sae.base_W / sae.base_W.norm(dim=0, keepdim=True).clamp_min(1e-8)
    return torch.einsum("ksi,if->ksf", sae.decoder_directions(), features)


def matched_features(sae: ToySaeHandle) -> Tensor:
    """Matched features per instance [n_inst]: max_j cos(Ŵ_dec[j], W_f) > 0.95."""
    return (latent_feature_cosines(sae).max(dim=1).values > MATCH_COS).sum(dim=1)


def shrinkage(sae: ToySaeHandle) -> Tensor:
    """Median over features and magnitudes of (h'·h)/‖h‖², per instance [n_inst]."""
    magnitudes = torch.linspace(0.1, 1.0, 10)
    h = (magnitudes[:, None, None] * sae.base_W.T[None]).reshape(-1, sae.base_W.shape[0])  # [10·n_features, d_in]
    h = h[:, None, :].expand(h.shape[0], sae.n_inst, h.shape[-1])
    _, h_hat = sae.forward(h)
    ratio = (h_hat * h).sum(-1) / (h * h).sum(-1)
    return ratio.median(dim=0).values


def summaries(sae: ToySaeHandle, batch: int, seed: int) -> dict[str, Tensor]:
    """Every SUMMARY figure per instance [n_inst]."""
    with torch.no_grad():
        h = evaluation_batch(sae, batch, seed)
        z, h_hat = sae.forward(h)
        active = z > 1e-8
        matched = matched_features(sae)
        return {
            "dead": (~active.any(dim=0)).sum(dim=-1).float(),
            "l0": active.float().sum(-1).mean(0),
            "fvu": ((h_hat - h) ** 2).mean(-1).mean(0) / (h ** 2).mean(-1).mean(0).clamp_min(1e-12),
            "matched_features": matched.float(),
            "fully_monosemantic": (matched == sae.base_W.shape[1]).float(),
            "shrinkage_median": shrinkage(sae),
        }


@metric("toy_sae.summary", value=Table(names(*SUMMARY)), details=(LatentFeatureCosines,))
def summary(ctx: MetricContext, *, instance: SaeInstance = 0, batch: EvalBatch = 20_000, seed: int = 0) -> Measurement:
    """One SAE instance on a fresh seeded batch: dead latents, L0, FVU, matched features (cos > 0.95),
    fully monosemantic (1/0), median shrinkage on single-feature inputs. Details: every latent's cosine with
    every true feature (the latent-to-feature matches figure)."""
    sae = toy_sae(ctx)
    sae.check_instance(instance)
    cosines = latent_feature_cosines(sae)[instance]
    return Measurement({k: float(v[instance]) for k, v in summaries(sae, batch, seed).items()},
                       details={"batch": batch, "seed": seed, "instance": instance, "threshold": MATCH_COS,
                                "cosines": [[float(c) for c in row] for row in cosines]})


@metric("toy_sae.count_instances", value=Scalar())
def count_instances(ctx: MetricContext, *, condition: SaeCondition, batch: EvalBatch = 20_000, seed: int = 0) -> Measurement:
    """How many SAE instances are fully monosemantic (every feature matched by a latent), have a dead latent, or
    show no shrinkage (median c = (h'·h)/‖h‖² on single-feature inputs within [0.9, 1.1])."""
    sae = toy_sae(ctx)
    figures = summaries(sae, batch, seed)
    if condition == "fully_monosemantic":
        met = figures["fully_monosemantic"] > 0
    elif condition == "has_dead_latent":
        met = figures["dead"] > 0
    else:
        met = (figures["shrinkage_median"] >= NO_SHRINKAGE[0]) & (figures["shrinkage_median"] <= NO_SHRINKAGE[1])
    return Measurement(float(met.sum()), details={"met": [int(k) for k in torch.nonzero(met).flatten()],
                                                  "dead": [float(v) for v in figures["dead"]],
                                                  "matched": [float(v) for v in figures["matched_features"]],
                                                  "shrinkage": [round(float(v), 4) for v in figures["shrinkage_median"]]})


@metric("toy_sae.small_inputs_zeroed", value=Table(names("zero_fraction_small", "zero_fraction_large")))
def small_inputs_zeroed(ctx: MetricContext, *, instance: SaeInstance = 0, small: Annotated[float, Field(gt=0, lt=1)] = 0.2,
                        large: Annotated[float, Field(gt=0, lt=1)] = 0.6) -> Measurement:
    """On single-feature inputs h = a W_f (a on a grid of 100 steps in (0, 1], every feature): the fraction
    whose latents are all zero (no latent above 1e-8), among a < ``small`` and among a > ``large``."""
    sae = toy_sae(ctx)
    sae.check_instance(instance)
    magnitudes = torch.arange(1, 101) / 100.0
    h = (magnitudes[:, None, None] * sae.base_W.T[None]).reshape(-1, sae.base_W.shape[0])
    a = magnitudes.repeat_interleave(sae.base_W.shape[1])
    with torch.no_grad():
        z, _ = sae.forward(h[:, None, :].expand(h.shape[0], sae.n_inst, h.shape[-1]))
    zero = ~(z[:, instance] > 1e-8).any(dim=-1)
    return Measurement({"zero_fraction_small": float(zero[a < small].float().mean()),
                        "zero_fraction_large": float(zero[a > large].float().mean())}, details={"small": small, "large": large})


GROUPS = ("dead", "above_target", "near_target", "other")


@metric("toy_sae.activity_groups", value=Table(names(*GROUPS)))
def activity_groups(ctx: MetricContext, *, target: Annotated[float, Field(gt=0, lt=1)] = 0.025) -> Measurement:
    """The course's three groups of latents by their firing rate over the last steps of training (the
    saved window, 500 steps of batch 1024), counted over all instances: ``dead`` (never fired in the
    window), ``above_target`` (rate > 1.2·target), ``near_target`` (0.5·target <= rate <= 1.2·target),
    ``other`` (fired, but below half the target). The target is the base model's feature probability."""
    sae = toy_sae(ctx)
    if sae.training_activity is None:
        raise ValueError(f"SAE {sae.identity.name!r} has no training log (an untrained SAE)")
    activity = sae.training_activity
    dead = (activity < 1e-8).all(dim=0)
    rate = activity.mean(dim=0)
    above = ~dead & (rate > 1.2 * target)
    near = ~dead & (rate >= 0.5 * target) & (rate <= 1.2 * target)
    return Measurement({"dead": float(dead.sum()), "above_target": float(above.sum()), "near_target": float(near.sum()),
                        "other": float((~dead & ~above & ~near).sum())}, details={"target": target, "window": int(activity.shape[0])})


@metric("toy_sae.l0_history", value=Table(names("max_l0_before", "final_l0", "excess")))
def l0_history(ctx: MetricContext, *, instance: SaeInstance = 0, before_step: Annotated[int, Field(ge=1)] = 10_000,
               from_step: Annotated[int, Field(ge=0)] = 1000) -> Measurement:
    """From the training log of L0 (mean active latents on the training batch every 100 steps): the largest
    L0 logged at steps ``from_step`` to ``before_step``, the final L0, and ``excess`` = max − final (> 0: the
    SAE passed through a less sparse solution before its last one)."""
    sae = toy_sae(ctx)
    sae.check_instance(instance)
    if sae.l0_log is None:
        raise ValueError(f"SAE {sae.identity.name!r} has no L0 log")
    steps = torch.arange(sae.l0_log.shape[0]) * sae.log_every
    window = (steps >= from_step) & (steps <= before_step)
    if not bool(window.any()):
        raise ValueError(f"no L0 logged between steps {from_step} and {before_step}")
    top = float(sae.l0_log[window, instance].max())
    final = float(sae.l0_log[-1, instance])
    return Measurement({"max_l0_before": top, "final_l0": final, "excess": top - final},
                       details={"from_step": from_step, "before_step": before_step})
