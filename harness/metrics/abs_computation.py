"""Computation in superposition (ARENA 1.5.4, the course's NeuronComputationModel computing |x|).

These metrics read an ``abs_computation`` :class:`~harness.core.toy_handle.ToyModelHandle` (W = the
course's W1 [n_inst, d_hidden, n_features], W2 [n_inst, n_features, d_hidden]); the maths and its
definitions (monosemanticity m_n, a neuron's feature and exposure, its gain, the asymmetric motif) are in
:mod:`harness.circuits.abs_computation`. ``superposition.neuron_trend``, ``superposition.neuron_reorder``
and ``superposition.importance_decay`` read any toy model.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from harness.circuits import abs_computation as ac
from harness.circuits.superposition import monosemanticity
from harness.context import MetricContext
from harness.core.measurement import Measurement
from harness.core.toy_handle import ToyModelHandle
from harness.core.value_shape import Curve, Scalar, Table, names, numbered
from harness.metrics.superposition import Instance, toy_model
from harness.registry import metric
from fixtures.tms.recipes import RECIPES
from fixtures.tms.train import generate_batch, instance_losses

INSTANCES = numbered("i")
Fraction = Annotated[float, Field(gt=0, le=1)]
Ratio = Annotated[float, Field(ge=1)]
Weight = Annotated[float, Field(ge=0)]
ABS_NEURONS = ("monosemantic", "positive_w2", "features", "both_signs_features", "both_signs_fraction", "pair_features",
               "min_gain", "max_gain", "motif_neurons")


def abs_model(ctx: MetricContext) -> ToyModelHandle:
    """The claim's model as an ``abs_computation`` toy model, or ``ValueError``."""
    model = toy_model(ctx)
    if model.W2 is None:
        raise ValueError(f"model {model.identity.name!r} is a {model.shape.kind} toy model; superposition.abs_* metrics "
                         "read an abs_computation model (untied W1, W2)")
    return model


def _abs_row(model: ToyModelHandle, k: int, threshold: float, ratio: float, min_weight: float) -> dict[str, float]:
    found = ac.abs_neurons(model.W[k], model.W2[k], threshold=threshold, ratio=ratio, min_weight=min_weight)
    return {"monosemantic": float(found.monosemantic), "positive_w2": float(found.positive_w2), "features": float(found.features),
            "both_signs_features": float(found.both_signs_features), "both_signs_fraction": found.both_signs_fraction,
            "pair_features": float(found.pair_features), "min_gain": found.min_gain, "max_gain": found.max_gain,
            "motif_neurons": float(found.motif_neurons)}


@metric("superposition.abs_neurons", value=Table(names(*ABS_NEURONS)))
def abs_neurons(ctx: MetricContext, *, instance: Instance = 0, threshold: Fraction = 0.9, ratio: Ratio = 3.0,
                min_weight: Weight = 0.5) -> Measurement:
    """The neurons of one instance of an abs model: how many are monosemantic (m_n > threshold) and how many
    of those write positively to their own feature (W2[f(n), n] > 0); the features they serve, those with
    neurons of both exposures (ReLU(x_f) and ReLU(−x_f)) and their fraction, those with such a pair both
    writing positively; the smallest and largest gain |W1[n,f]|·W2[f,n] of the neurons in such pairs; neurons with
    the asymmetric motif."""
    model = abs_model(ctx)
    model.check_instance(instance)
    return Measurement(_abs_row(model, instance, threshold, ratio, min_weight),
                       details={"threshold": threshold, "ratio": ratio, "min_weight": min_weight})


@metric("superposition.abs_neurons_by_instance", value=Curve(INSTANCES, ("p", *ABS_NEURONS)))
def abs_neurons_by_instance(ctx: MetricContext, *, threshold: Fraction = 0.9, ratio: Ratio = 3.0,
                            min_weight: Weight = 0.5) -> Measurement:
    """:func:`abs_neurons` of every instance with its feature probability ``p``."""
    model = abs_model(ctx)
    return Measurement([{"label": f"i{k}", "p": float(model.feature_probability[k, 0]),
                         **_abs_row(model, k, threshold, ratio, min_weight)} for k in range(model.n_inst)])


SUMMARY = ("instances", "all_monosemantic_instances", "min_monosemantic", "positive_w2_fraction", "min_pair_features",
           "min_gain", "max_gain", "motif_instances")


@metric("superposition.abs_summary", value=Table(names(*SUMMARY)))
def abs_summary(ctx: MetricContext, *, threshold: Fraction = 0.9, ratio: Ratio = 3.0, min_weight: Weight = 0.5) -> Measurement:
    """All instances of an abs model at once (:func:`abs_neurons` per instance): how many instances; how many
    have every neuron monosemantic (m_n > threshold); the fewest monosemantic neurons in an instance; the
    fraction of all monosemantic neurons that write positively to their own feature; the fewest abs-pair
    features in an instance; the smallest and largest gain of a neuron in an abs pair; how many instances have a
    neuron with the asymmetric motif (reads mostly feature i with |W1[n,i]| ≥ min_weight and ≥ ratio·|W1[n,j]|
    > 0.1, writes mostly feature j with |W2[j,n]| ≥ min_weight and ≥ ratio·|W2[i,n]|)."""
    model = abs_model(ctx)
    rows = [ac.abs_neurons(model.W[k], model.W2[k], threshold=threshold, ratio=ratio, min_weight=min_weight)
            for k in range(model.n_inst)]
    mono = [r for r in rows if r.pair_features]
    monosemantic = sum(r.monosemantic for r in rows)
    return Measurement({
        "instances": float(len(rows)),
        "all_monosemantic_instances": float(sum(r.monosemantic == model.shape.d_hidden for r in rows)),
        "min_monosemantic": float(min(r.monosemantic for r in rows)),
        "positive_w2_fraction": sum(r.positive_w2 for r in rows) / monosemantic if monosemantic else 0.0,
        "min_pair_features": float(min(r.pair_features for r in rows)),
        "min_gain": min(r.min_gain for r in mono) if mono else 0.0,
        "max_gain": max(r.max_gain for r in mono) if mono else 0.0,
        "motif_instances": float(sum(r.motif_neurons > 0 for r in rows)),
    }, details={"motif_neurons": [r.motif_neurons for r in rows], "pair_features": [r.pair_features for r in rows],
                "monosemantic": [r.monosemantic for r in rows], "threshold": threshold, "ratio": ratio, "min_weight": min_weight})


@metric("superposition.neuron_trend", value=Table(names("first", "last", "rises", "largest_rise")))
def neuron_trend(ctx: MetricContext, *, threshold: Fraction = 0.99) -> Measurement:
    """The count of monosemantic neurons (m_n > threshold, live) instance by instance (in the recipe's order of
    falling p): the first and last counts, how many times the count rises from one instance to the next, and the
    largest rise (0 when the count never rises)."""
    model = toy_model(ctx)
    counts = [int(((monosemanticity(W) > threshold) & (W.norm(dim=1) > ac.ALIVE_NORM)).sum()) for W in model.W]
    steps = [b - a for a, b in zip(counts, counts[1:])]
    return Measurement({"first": float(counts[0]), "last": float(counts[-1]), "rises": float(sum(s > 0 for s in steps)),
                        "largest_rise": float(max([0, *steps]))}, details={"counts": counts})


@metric("superposition.neuron_reorder", value=Table(names("loss", "w1_only_ratio", "consistent_ratio")))
def neuron_reorder(ctx: MetricContext, *, batch: Annotated[int, Field(ge=1, le=100_000)] = 10_000, seed: int = 0) -> Measurement:
    """What the course's ``plot_features_in_Nd`` does to a model when it sorts neurons by monosemanticity in
    place (on CPU ``.detach().cpu()`` shares storage): the summed loss over instances on a seeded batch from the
    recipe, and the loss ratio after reordering the neurons of W alone (W2, if any, left as it is: the plot's
    side effect on the abs model's W1) and of W and W2 together (a true relabelling of the neurons, which
    changes nothing). A tied model has one W, so both ratios are 1."""
    model = toy_model(ctx)
    if model.recipe is None or model.recipe not in RECIPES:
        raise ValueError(f"model {model.identity.name!r} has no recipe to draw data from")
    recipe = RECIPES[model.recipe]
    x = generate_batch(recipe, model.feature_probability, batch, torch.Generator().manual_seed(seed))
    order = [ac.monosemanticity_order(W_k) for W_k in model.W]
    W_sorted = torch.stack([W_k[o] for W_k, o in zip(model.W, order)])
    W2_sorted = None if model.W2 is None else torch.stack([W2_k[:, o] for W2_k, o in zip(model.W2, order)])

    def total(W: Tensor, W2: Tensor | None) -> float:
        with torch.no_grad():
            return float(instance_losses(recipe, W, model.b_final, x, model.importance, W2).sum())

    base = total(model.W, model.W2)
    return Measurement({"loss": base, "w1_only_ratio": total(W_sorted, model.W2) / base,
                        "consistent_ratio": total(W_sorted, W2_sorted) / base}, details={"batch": batch, "seed": seed})


@metric("superposition.importance_decay", value=Scalar())
def importance_decay(ctx: MetricContext) -> Measurement:
    """The recipe's importance ratio I_{i+1} / I_i, when it is one number (a geometric schedule), else ``ValueError``."""
    model = toy_model(ctx)
    importance = model.importance.double()
    ratios = importance[1:] / importance[:-1]
    if ratios.numel() == 0 or float((ratios - ratios[0]).abs().max()) > 1e-4:
        raise ValueError(f"model {model.identity.name!r}: importance is not geometric (ratios {ratios.min():.4g} to {ratios.max():.4g})")
    return Measurement(float(ratios[0]), details={"first": float(importance[0]), "n": int(importance.numel())})
