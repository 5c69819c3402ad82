"""Feature geometry of toy models with any hidden dimension (ARENA 1.5.4's 200 features in 20 dimensions):
antipodal partners, dropped features, and the fractions D clusters at, per instance and across instances.

The maths is in :mod:`harness.circuits.feature_geometry`. A feature is "represented" when ‖W_i‖ >
``threshold`` (0.5), "dropped" when ‖W_i‖ < ``drop_below`` (0.15), "paired" when it is represented and some
other represented feature has cos < ``cos_below`` (−0.99) with it; its D is "at" a fraction of
:data:`~harness.circuits.feature_geometry.FRACTIONS` when within ``tolerance`` (0.03) of it (the nearest).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from harness.circuits import feature_geometry as fg
from harness.circuits import superposition as sp
from harness.circuits.feature_geometry import FRACTIONS
from harness.circuits.superposition import ANTIPODAL_COS
from harness.context import MetricContext
from harness.core.details import DimensionalityPoints
from harness.core.measurement import Measurement
from harness.core.value_shape import Curve, Scalar, Table, names, numbered
from harness.metrics.superposition import Instance, Threshold, toy_model
from harness.registry import metric

INSTANCES = numbered("i")
AT_FRACTION = tuple(f"at_{name}" for name, _ in FRACTIONS)
GEOMETRY = ("represented", "dropped", "between", "paired", "unpaired_represented", "dropped_or_paired", "antipodal_pairs",
            "paired_share", "frobenius_sq", "frobenius_gap", "dims_per_feature", "max_norm", "d_q10", "d_q90",
            "median_dimensionality_represented", "clustered", "clustered_share", "top_fraction", "top_share", *AT_FRACTION)
Field_ = Literal[GEOMETRY]  # type: ignore[valid-type]
CosBelow = Annotated[float, Field(ge=-1, lt=0)]
Tolerance = Annotated[float, Field(gt=0, le=0.1)]


def _geometry(W: Tensor, threshold: float, drop_below: float, cos_below: float, tolerance: float) -> dict[str, float]:
    """The :data:`GEOMETRY` fields of one instance's W [d_hidden, n_features]."""
    norms, dims = sp.feature_norms(W), sp.dimensionality(W)
    represented = norms > threshold
    count, n = int(represented.sum()), W.shape[1]
    dropped = int((norms < drop_below).sum())
    partners = fg.antipodal_partners(W, represented, cos_below)  # the cosine matrix, built once
    paired = int((partners > 0).sum())
    clusters = fg.fraction_clusters(W, represented, tolerance, dims)
    top_fraction, top_count = clusters.top()
    frobenius = float((W ** 2).sum())
    q10, q90 = torch.quantile(dims.double(), torch.tensor([0.1, 0.9], dtype=torch.float64)).tolist()
    return {
        "represented": float(count), "dropped": float(dropped), "between": float(n - count - dropped),
        "paired": float(paired), "unpaired_represented": float(count - paired), "dropped_or_paired": float(dropped + paired),
        "antipodal_pairs": float(fg.antipodal_pair_count(W, represented, cos_below, partners)),
        "paired_share": paired / count if count else 0.0,
        "frobenius_sq": frobenius, "frobenius_gap": abs(frobenius - count) / max(count, 1),
        "dims_per_feature": sp.dimensions_per_feature(W), "max_norm": float(norms.max()), "d_q10": q10, "d_q90": q90,
        "median_dimensionality_represented": float(dims[represented].median()) if count else 0.0,
        "clustered": float(clusters.clustered), "clustered_share": clusters.clustered_share,
        "top_fraction": top_fraction, "top_share": top_count / count if count else 0.0,
        **{f"at_{name}": float(k) for name, k in clusters.counts.items()},
    }


@metric("superposition.geometry_nd", value=Table(names(*GEOMETRY)))
def geometry_nd(ctx: MetricContext, *, instance: Instance = 0, threshold: Threshold = 0.5, drop_below: Threshold = 0.15,
                cos_below: CosBelow = ANTIPODAL_COS, tolerance: Tolerance = 0.03) -> Measurement:
    """One instance's feature geometry in any hidden dimension: features ``represented`` (‖W_i‖ > threshold),
    ``dropped`` (‖W_i‖ < drop_below) and ``between``; ``paired`` (represented, with an antipodal partner: cos <
    cos_below), ``unpaired_represented``, ``dropped_or_paired``, ``antipodal_pairs`` (unordered), ``paired_share``
    of the represented; ‖W‖_F², ``frobenius_gap`` = |‖W‖_F² − represented| / max(represented, 1), d_hidden/‖W‖_F²;
    the largest norm; the 10% and 90% quantiles of D over all features and the median D of the represented;
    the represented features whose D is within ``tolerance`` of a fraction (``clustered``, ``clustered_share``),
    the fraction holding most of them (``top_fraction``, 0 if none) and its share, and the count at each
    fraction (``at_1``, ``at_3_4``, ``at_2_3``, ``at_1_2``, ``at_2_5``, ``at_3_8``, ``at_1_3``, ``at_3_20``)."""
    model = toy_model(ctx)
    W = model.W[model.check_instance(instance)]
    return Measurement(_geometry(W, threshold, drop_below, cos_below, tolerance),
                       details={"threshold": threshold, "drop_below": drop_below, "cos_below": cos_below, "tolerance": tolerance})


def _by_instance(ctx: MetricContext, threshold: float, drop_below: float, cos_below: float, tolerance: float) -> list[dict]:
    model = toy_model(ctx)
    return [{"label": f"i{k}", "p": float(model.feature_probability[k, 0]),
             **_geometry(model.W[k], threshold, drop_below, cos_below, tolerance)} for k in range(model.n_inst)]


@metric("superposition.geometry_nd_by_instance", value=Curve(INSTANCES, ("p", *GEOMETRY)), details=(DimensionalityPoints,))
def geometry_nd_by_instance(ctx: MetricContext, *, threshold: Threshold = 0.5, drop_below: Threshold = 0.15,
                            cos_below: CosBelow = ANTIPODAL_COS, tolerance: Tolerance = 0.03) -> Measurement:
    """:func:`geometry_nd` of every instance with its feature probability ``p``: a curve labelled i0, i1...

    Details: every feature's dimensionality per instance (the dimensionality figure)."""
    model = toy_model(ctx)
    points = _by_instance(ctx, threshold, drop_below, cos_below, tolerance)
    return Measurement(points, details={"p": [point["p"] for point in points],
                                        "dims": [[float(v) for v in sp.dimensionality(model.W[k])] for k in range(model.n_inst)],
                                        "d_hidden": model.shape.d_hidden, "threshold": threshold})


@metric("superposition.plateau", value=Scalar())
def plateau(ctx: MetricContext, *, field: Field_ = "dims_per_feature", target: float, tolerance: Annotated[float, Field(ge=0)],
            threshold: Threshold = 0.5) -> Measurement:
    """The longest run of consecutive instances (in instance order, i.e. of the recipe's feature
    probability schedule) whose :func:`geometry_nd` ``field`` is within ``tolerance`` of ``target``:
    how "sticky" a curve across instances is at a value (0 when no instance is)."""
    points = _by_instance(ctx, threshold, 0.15, ANTIPODAL_COS, 0.03)
    length, start = fg.longest_run([abs(point[field] - target) <= tolerance for point in points])
    run = list(range(start, start + length))
    return Measurement(float(length), details={"instances": run, "values": [points[k][field] for k in run],
                                               "p": [points[k]["p"] for k in run], "field": field, "target": target})


@metric("superposition.share_of_instances", value=Scalar())
def share_of_instances(ctx: MetricContext, *, field: Field_, at_least: float | None = None, at_most: float | None = None,
                       p_min: Annotated[float, Field(ge=0, le=1)] = 0.0, p_max: Annotated[float, Field(ge=0, le=1)] = 1.0,
                       threshold: Threshold = 0.5, drop_below: Threshold = 0.15, cos_below: CosBelow = ANTIPODAL_COS,
                       tolerance: Tolerance = 0.03) -> Measurement:
    """The share of the instances whose feature probability p lies in [p_min, p_max] whose :func:`geometry_nd`
    ``field`` is >= ``at_least`` and/or <= ``at_most`` (at least one bound)."""
    if at_least is None and at_most is None:
        raise ValueError("superposition.share_of_instances needs at_least, at_most or both")
    points = [point for point in _by_instance(ctx, threshold, drop_below, cos_below, tolerance) if p_min <= point["p"] <= p_max]
    if not points:
        raise ValueError(f"no instance has a feature probability in [{p_min}, {p_max}]")
    met = [point["label"] for point in points
           if (at_least is None or point[field] >= at_least) and (at_most is None or point[field] <= at_most)]
    return Measurement(len(met) / len(points), details={"instances": [point["label"] for point in points], "met": met,
                                                        "values": [point[field] for point in points]})
