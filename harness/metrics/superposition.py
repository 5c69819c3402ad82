"""Toy models of superposition (ARENA 1.5.4): feature norms, interference, dimensionality, geometry, neurons.

These metrics read a :class:`~harness.core.toy_handle.ToyModelHandle` (a ``toy`` model), never a
transformer. ``instance`` picks one of the model's ``n_inst`` instances; the ``*_by_instance``
metrics compare all of them (a curve labelled ``i0``, ``i1``...). The maths, with its definitions,
is in :mod:`harness.circuits.superposition`; a feature is "represented" when ‖W_i‖ > ``threshold``
(0.5 by default; the course sets none).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from harness.circuits import superposition as sp
from harness.context import MetricContext
from harness.core.details import DimensionalityPoints, FeatureDirections
from harness.core.measurement import Measurement
from harness.core.toy_handle import ToyModelHandle
from harness.core.value_shape import Curve, Scalar, Table, names, numbered
from harness.registry import metric
from fixtures.tms.recipes import RECIPES
from fixtures.tms.train import generate_batch, instance_losses

FEATURES = numbered("f")
INSTANCES = numbered("i")
Instance = Annotated[int, Field(ge=0)]
Threshold = Annotated[float, Field(gt=0)]
Condition = Literal["regular_pentagon", "within_pair_antipodal", "within_pair_orthogonal", "within_pair_collapsed",
                    "all_neurons_polysemantic"]


def toy_model(ctx: MetricContext) -> ToyModelHandle:
    """The claim's model as a toy model, or ``ValueError`` for a transformer."""
    if not isinstance(ctx.model, ToyModelHandle):
        raise ValueError(f"model {ctx.model.identity.name!r} is not a toy model of superposition (superposition.* metrics read W [n_inst, d_hidden, n_features])")
    return ctx.model


def _W(ctx: MetricContext, instance: int) -> tuple[ToyModelHandle, Tensor]:
    model = toy_model(ctx)
    return model, model.W[model.check_instance(instance)]


def _per_feature(values: Tensor) -> dict[str, float]:
    return {f"f{i}": float(v) for i, v in enumerate(values)}


def _directions(model: ToyModelHandle, instance: int, W: Tensor) -> dict:
    return {"instance": instance, "directions": [[float(v) for v in W[:, i]] for i in range(W.shape[1])],
            "importance": [float(v) for v in model.importance], "p": float(model.feature_probability[instance, 0])}


@metric("superposition.feature_norms", value=Table(FEATURES), details=(FeatureDirections,))
def feature_norms(ctx: MetricContext, *, instance: Instance = 0) -> Measurement:
    """‖W_i‖ of each feature f0, f1... of one instance (the length of its direction in hidden space)."""
    model, W = _W(ctx, instance)
    return Measurement(_per_feature(sp.feature_norms(W)), details=_directions(model, instance, W))


@metric("superposition.interference", value=Table(FEATURES))
def interference(ctx: MetricContext, *, instance: Instance = 0) -> Measurement:
    """Σ_{j≠i} (Ŵ_i·W_j)² per feature: 0 when W_i is orthogonal to every other feature."""
    _, W = _W(ctx, instance)
    return Measurement(_per_feature(sp.interference(W)))


@metric("superposition.dimensionality", value=Table(FEATURES))
def dimensionality(ctx: MetricContext, *, instance: Instance = 0) -> Measurement:
    """D_i = ‖W_i‖² / Σ_j (Ŵ_i·W_j)² per feature: the share of a hidden dimension feature i has (0 if not represented)."""
    _, W = _W(ctx, instance)
    return Measurement(_per_feature(sp.dimensionality(W)))


SUMMARY = ("represented", "fraction_represented", "frobenius_sq", "dims_per_feature", "sum_dimensionality",
           "median_dimensionality_represented", "max_interference_represented", "orthogonal_represented")


def _summary(W: Tensor, threshold: float) -> dict[str, float]:
    norms, dims, inter = sp.feature_norms(W), sp.dimensionality(W), sp.interference(W)
    represented = norms > threshold
    count = int(represented.sum())
    return {
        "represented": float(count),
        "fraction_represented": count / W.shape[1],
        "frobenius_sq": float((W ** 2).sum()),
        "dims_per_feature": sp.dimensions_per_feature(W),
        "sum_dimensionality": float(dims.sum()),
        "median_dimensionality_represented": float(dims[represented].median()) if count else 0.0,
        "max_interference_represented": float(inter[represented].max()) if count else 0.0,
        "orthogonal_represented": float(((inter < sp.ORTHOGONAL_ABS_COS ** 2) & represented).sum()),
    }


@metric("superposition.summary", value=Table(names(*SUMMARY)))
def summary(ctx: MetricContext, *, instance: Instance = 0, threshold: Threshold = 0.5) -> Measurement:
    """One instance in numbers: features represented (‖W_i‖ > threshold) and their fraction, ‖W‖_F²,
    d_hidden/‖W‖_F², Σ_i D_i, the median D and the largest interference of the represented features, and
    how many represented features are orthogonal to all others (interference < 0.01)."""
    _, W = _W(ctx, instance)
    return Measurement(_summary(W, threshold), details={"threshold": threshold})


BY_INSTANCE = ("p", *SUMMARY)


@metric("superposition.by_instance", value=Curve(INSTANCES, BY_INSTANCE), details=(DimensionalityPoints,))
def by_instance(ctx: MetricContext, *, threshold: Threshold = 0.5) -> Measurement:
    """:func:`summary` of every instance, with its feature probability ``p``: a curve labelled i0, i1...

    Details: every feature's dimensionality per instance (the dimensionality figure)."""
    model = toy_model(ctx)
    points, dims = [], []
    for k in range(model.n_inst):
        W = model.W[k]
        points.append({"label": f"i{k}", "p": float(model.feature_probability[k, 0]), **_summary(W, threshold)})
        dims.append([float(v) for v in sp.dimensionality(W)])
    return Measurement(points, details={"p": [point["p"] for point in points], "dims": dims,
                                        "d_hidden": model.shape.d_hidden, "threshold": threshold})


GEOMETRY = ("represented", "polygon", "gap_deviation_deg", "min_gap_deg", "antipodal_pairs", "orthogonal_pairs",
            "min_norm_represented", "max_norm_represented")


def _geometry(W: Tensor, threshold: float, tolerance_deg: float) -> dict[str, float]:
    norms = sp.feature_norms(W)
    represented = norms > threshold
    plane = sp.plane_geometry(W, represented)
    return {
        "represented": float(plane.count),
        "polygon": float(plane.regular_polygon(tolerance_deg)),
        "gap_deviation_deg": plane.gap_deviation_deg(),
        "min_gap_deg": min(plane.gaps_deg) if plane.gaps_deg else 360.0,
        "antipodal_pairs": float(plane.antipodal_pairs),
        "orthogonal_pairs": float(plane.orthogonal_pairs),
        "min_norm_represented": float(norms[represented].min()) if plane.count else 0.0,
        "max_norm_represented": float(norms[represented].max()) if plane.count else 0.0,
    }


@metric("superposition.geometry_2d", value=Table(names(*GEOMETRY)), details=(FeatureDirections,))
def geometry_2d(ctx: MetricContext, *, instance: Instance = 0, threshold: Threshold = 0.5,
                tolerance_deg: Annotated[float, Field(gt=0, le=90)] = 10.0) -> Measurement:
    """The represented features of a 2-D instance: how many; ``polygon`` k if they are a regular k-gon
    (every gap between neighbouring directions 360/k ± tolerance_deg), else 0; the largest gap's
    deviation from 360/k; the smallest gap; antipodal (cos < −0.99) and orthogonal (|cos| < 0.1) pairs;
    the smallest and largest norm among them."""
    model, W = _W(ctx, instance)
    return Measurement(_geometry(W, threshold, tolerance_deg), details=_directions(model, instance, W))


PAIRS = ("within_cos_min", "within_cos_max", "within_abs_cos_max", "within_antipodal", "cross_antipodal",
         "cross_cos_max", "min_norm")


def _pairs(W: Tensor, n_pairs: int) -> dict[str, float]:
    within, cross = sp.pair_cosines(W, n_pairs)
    return {
        "within_cos_min": float(within.min()), "within_cos_max": float(within.max()),
        "within_abs_cos_max": float(within.abs().max()),
        "within_antipodal": float((within < sp.ANTIPODAL_COS).sum()),
        "cross_antipodal": float((cross < sp.ANTIPODAL_COS).sum()),
        "cross_cos_max": float(cross.max()) if cross.numel() else 0.0,
        "min_norm": float(sp.feature_norms(W[:, : 2 * n_pairs]).min()),
    }


@metric("superposition.pairs", value=Table(names(*PAIRS)))
def pairs(ctx: MetricContext, *, instance: Instance = 0, n_pairs: Annotated[int, Field(ge=1)] = 2) -> Measurement:
    """Paired features (f0, f1), (f2, f3)...: the cosines within pairs (min, max, largest |cos|), how many
    pairs are antipodal (cos < −0.99) within and across pairs, the largest cross-pair cos, the smallest norm."""
    _, W = _W(ctx, instance)
    if 2 * n_pairs > W.shape[1]:
        raise ValueError(f"{n_pairs} pairs need {2 * n_pairs} features; the model has {W.shape[1]}")
    return Measurement(_pairs(W, n_pairs))


NEURONS = ("monosemantic", "polysemantic", "dead", "mean_features_per_neuron", "max_features_per_neuron",
           "max_monosemanticity")


def _neurons(W: Tensor, threshold: float, share: float) -> dict[str, float]:
    mono = sp.monosemanticity(W)
    alive = W.norm(dim=1) > 1e-3
    per_neuron = sp.features_per_neuron(W, share).float()
    return {
        "monosemantic": float(((mono > threshold) & alive).sum()),
        "polysemantic": float(((mono <= threshold) & alive).sum()),
        "dead": float((~alive).sum()),
        "mean_features_per_neuron": float(per_neuron[alive].mean()) if bool(alive.any()) else 0.0,
        "max_features_per_neuron": float(per_neuron.max()),
        "max_monosemanticity": float(mono.max()),
    }


Share = Annotated[float, Field(gt=0, le=1)]


@metric("superposition.neurons", value=Table(names(*NEURONS)))
def neurons(ctx: MetricContext, *, instance: Instance = 0, threshold: Annotated[float, Field(gt=0, le=1)] = 0.99,
            share: Share = 0.1) -> Measurement:
    """The hidden neurons (rows of W) of one instance: monosemantic (m_n > threshold, the course's 0.99),
    polysemantic, dead (‖row‖ < 1e-3); features per neuron (weights carrying ≥ share of the row's squared norm),
    mean over live neurons and max; the largest m_n."""
    _, W = _W(ctx, instance)
    return Measurement(_neurons(W, threshold, share))


@metric("superposition.neurons_by_instance", value=Curve(INSTANCES, ("p", *NEURONS)))
def neurons_by_instance(ctx: MetricContext, *, threshold: Annotated[float, Field(gt=0, le=1)] = 0.99,
                        share: Share = 0.1) -> Measurement:
    """:func:`neurons` of every instance with its feature probability ``p``."""
    model = toy_model(ctx)
    return Measurement([{"label": f"i{k}", "p": float(model.feature_probability[k, 0]), **_neurons(model.W[k], threshold, share)}
                        for k in range(model.n_inst)])


def _holds(condition: str, W: Tensor, n_pairs: int) -> bool:
    if condition == "regular_pentagon":
        geometry = _geometry(W, 0.5, 10.0)
        return geometry["polygon"] == 5.0 and 0.9 <= geometry["min_norm_represented"] and geometry["max_norm_represented"] <= 1.3
    if condition == "within_pair_antipodal":
        return _pairs(W, n_pairs)["within_antipodal"] >= 1
    if condition == "within_pair_orthogonal":
        found = _pairs(W, n_pairs)
        return found["within_abs_cos_max"] < sp.ORTHOGONAL_ABS_COS and found["min_norm"] > 0.9
    if condition == "within_pair_collapsed":
        return _pairs(W, n_pairs)["within_cos_max"] > 0.99
    return _neurons(W, 0.9, 0.1)["monosemantic"] == 0


@metric("superposition.count_instances", value=Scalar())
def count_instances(ctx: MetricContext, *, condition: Condition, instances: list[Instance] | None = None,
                    n_pairs: Annotated[int, Field(ge=1)] = 2) -> Measurement:
    """How many of ``instances`` (default: all) meet ``condition``:

    - ``regular_pentagon``: 5 represented features (‖W_i‖ > 0.5) at 72 ± 10° gaps, norms in [0.9, 1.3];
    - ``within_pair_antipodal``: some pair (f0, f1), (f2, f3)... has cos < −0.99;
    - ``within_pair_orthogonal``: every pair has |cos| < 0.1 and every paired feature norm > 0.9;
    - ``within_pair_collapsed``: some pair has cos > 0.99 (both features along one direction);
    - ``all_neurons_polysemantic``: no neuron has m_n > 0.9."""
    model = toy_model(ctx)
    chosen = list(range(model.n_inst)) if instances is None else [model.check_instance(k) for k in instances]
    met = [k for k in chosen if _holds(condition, model.W[k], n_pairs)]
    return Measurement(float(len(met)), details={"instances": chosen, "met": met})


@metric("superposition.basis_dependence", value=Scalar())
def basis_dependence(ctx: MetricContext, *, instance: Instance = 0, transform: Literal["rotation", "permutation"] = "rotation",
                     batch: Annotated[int, Field(ge=1, le=100_000)] = 2000, seed: int = 0) -> Measurement:
    """How much a change of hidden basis W → Q W changes the outputs: mean |x'(QW) − x'(W)| / mean |x'(W)|
    on a seeded batch drawn with the instance's feature probability (independent features, U[0,1]
    magnitudes). Q is a seeded random rotation (Haar, det +1) or a random permutation of the hidden units.
    0 when the model has no privileged basis (ReLU only at the output); > 0 for a rotation when a
    ReLU acts on the hidden units."""
    model, W = _W(ctx, instance)
    generator = torch.Generator().manual_seed(seed)
    d = W.shape[0]
    if transform == "rotation":
        Q, R = torch.linalg.qr(torch.randn(d, d, generator=generator, dtype=torch.float64))
        Q = (Q * torch.sign(torch.diagonal(R))).float()
        if torch.det(Q) < 0:
            Q[:, 0] = -Q[:, 0]
    else:
        Q = torch.eye(d)[torch.randperm(d, generator=generator)]
    p = model.feature_probability[instance]
    x = torch.rand(batch, W.shape[1], generator=generator) * (torch.rand(batch, W.shape[1], generator=generator) <= p)
    b = model.b_final[instance]

    def out(weights: Tensor) -> Tensor:
        h = x @ weights.T
        if model.shape.kind == "relu_hidden":
            h = torch.relu(h)
        return torch.relu(h @ weights + b)

    base = out(W)
    change = (out(Q @ W) - base).abs().mean() / base.abs().mean().clamp_min(1e-12)
    return Measurement(float(change), details={"transform": transform, "batch": batch, "seed": seed})


@metric("superposition.loss", value=Table(INSTANCES))
def loss(ctx: MetricContext, *, batch: Annotated[int, Field(ge=1, le=100_000)] = 10_000, seed: int = 0) -> Measurement:
    """Each instance's training loss, mean over a seeded batch and the features of I_i (x − x')², on
    fresh data from the recipe's own generator (its feature probabilities and correlations)."""
    model = toy_model(ctx)
    if model.recipe is None or model.recipe not in RECIPES:
        raise ValueError(f"model {model.identity.name!r} has no recipe to draw data from")
    recipe = RECIPES[model.recipe]
    x = generate_batch(recipe, model.feature_probability, batch, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        values = instance_losses(recipe, model.W, model.b_final, x, model.importance)
    return Measurement({f"i{k}": float(v) for k, v in enumerate(values)}, details={"batch": batch, "seed": seed})


@metric("superposition.feature_projection", value=Table(names("on_positive_fraction", "off_mean", "on_mean")))
def feature_projection(ctx: MetricContext, *, instance: Instance = 0, feature: Annotated[int, Field(ge=0)] = 1,
                       batch: Annotated[int, Field(ge=1, le=100_000)] = 10_000, seed: int = 0) -> Measurement:
    """Hidden vectors h = W x projected on a feature's direction, h·W_f, over a seeded batch from the recipe's
    generator, keeping the samples with at least one feature present (the course's Fig 15a, S:1669-1766):
    the fraction of samples with feature f present (x_f > 1e-4) whose projection is positive, and the mean
    projection with f present and with f absent."""
    model = toy_model(ctx)
    model.check_instance(instance)
    if model.recipe is None or model.recipe not in RECIPES:
        raise ValueError(f"model {model.identity.name!r} has no recipe to draw data from")
    if feature >= model.shape.n_features:
        raise ValueError(f"feature {feature} is outside model {model.identity.name!r} (features 0 to {model.shape.n_features - 1})")
    x = generate_batch(RECIPES[model.recipe], model.feature_probability, batch, torch.Generator().manual_seed(seed))[:, instance]
    x = x[(x > 0).any(dim=1)]
    W = model.W[instance]
    projection = (x @ W.T) @ W[:, feature]
    on = x[:, feature] > 1e-4
    if not bool(on.any()) or bool(on.all()):
        raise ValueError(f"feature {feature} is present in {int(on.sum())} of {len(on)} samples: no on/off comparison")
    return Measurement({"on_positive_fraction": float((projection[on] > 0).float().mean()),
                        "off_mean": float(projection[~on].mean()), "on_mean": float(projection[on].mean())},
                       details={"samples": int(len(on)), "on": int(on.sum()), "batch": batch, "seed": seed})


@metric("superposition.active_features", value=Table(names("at_most_fraction", "mean_active")))
def active_features(ctx: MetricContext, *, instance: Instance = 0, at_most: Annotated[int, Field(ge=0)] = 1,
                    batch: Annotated[int, Field(ge=1, le=100_000)] = 10_000, seed: int = 0) -> Measurement:
    """On a seeded batch from the recipe's generator for one instance: the fraction of samples with at most
    ``at_most`` features present, and the mean number present. With independent features at probability p,
    P(at most 1 of n) = (1 − p)^n + n p (1 − p)^(n − 1)."""
    model = toy_model(ctx)
    model.check_instance(instance)
    if model.recipe is None or model.recipe not in RECIPES:
        raise ValueError(f"model {model.identity.name!r} has no recipe to draw data from")
    x = generate_batch(RECIPES[model.recipe], model.feature_probability, batch, torch.Generator().manual_seed(seed))[:, instance]
    present = (x > 0).sum(dim=1)
    return Measurement({"at_most_fraction": float((present <= at_most).float().mean()), "mean_active": float(present.float().mean())},
                       details={"batch": batch, "seed": seed, "at_most": at_most})


@metric("superposition.cosines", value=Table(names()))
def cosines(ctx: MetricContext, *, instance: Instance = 0) -> Measurement:
    """cos(W_i, W_j) of every pair of features i < j of one instance, keyed ``fI-fJ`` (``f1-f2``)."""
    _, W = _W(ctx, instance)
    cos = sp.cosines(W)
    n = W.shape[1]
    return Measurement({f"f{i}-f{j}": float(cos[i, j]) for i in range(n) for j in range(i + 1, n)})
