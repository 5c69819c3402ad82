"""Deep double descent on a toy model (ARENA 1.5.4's E9, the cut-down sweep of :mod:`fixtures.tms.ddd_recipe`).

These metrics read a :class:`~harness.core.toy_ddd_handle.DoubleDescentHandle`. Per training-set size b they
take the instance with the lowest training loss (the course's choice) and measure:

- ``train_loss``: its loss on its training set; ``test_loss``: on a fresh seeded batch of unit-norm points
  from the same distribution (the course never computes one; its ``EVAL_N_DATAPOINTS`` is commented out);
- the dimensionality D_i = ‖v_i‖² / Σ_j (v̂_i·v_j)² (j = i included; 0 for a zero vector) of the features
  (v_i = column i of W, [n_features]) and of the training points' hidden vectors (v_b = W x_b, [b]);
  ``data_dim_min_scaled`` = the smallest data-point D · b / d_hidden, which is 1 when the b points share the
  d_hidden dimensions equally (the course's reference line D = d_hidden / b; the *mean* data D is about
  d_hidden / b for any generic W, trained or not, since Σ_b D_b is at most d_hidden and usually near it);
- ``features_above``: how many features have D > ``above`` (0.3: features with a share of their own);
- ``data_norm_median`` and ``feature_norm_max``: the median ‖W x_b‖ over training points and the largest ‖W_i‖
  (a memorising model gives the points, not the features, large hidden vectors).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from harness.context import MetricContext
from harness.core.measurement import Measurement
from harness.core.toy_ddd_handle import DoubleDescentHandle
from harness.core.value_shape import Curve, Table, names, numbered
from harness.registry import metric
from fixtures.tms.ddd import unit_batch
from fixtures.tms.ddd_recipe import DDD_RECIPES

SIZES = numbered("b")
CURVE = ("size", "best_instance", "train_loss", "test_loss", "feature_dim_median", "features_above", "feature_norm_max",
         "data_dim_mean", "data_dim_median", "data_dim_min_scaled", "data_norm_median")
TestBatch = Annotated[int, Field(ge=100, le=50_000)]


def sweep(ctx: MetricContext) -> DoubleDescentHandle:
    if not isinstance(ctx.model, DoubleDescentHandle):
        raise ValueError(f"model {ctx.model.identity.name!r} is not a double descent sweep (superposition.ddd_* metrics read one)")
    return ctx.model


def dimensionality_rows(vectors: Tensor) -> Tensor:
    """D_i [n] of the rows v_i of ``vectors`` [n, d]: ‖v_i‖² / Σ_j (v̂_i·v_j)², 0 for a zero row."""
    norms = vectors.norm(dim=1)
    unit = vectors / norms.clamp_min(1e-12)[:, None]
    denominator = ((unit @ vectors.T) ** 2).sum(dim=1)
    return torch.where(norms > 1e-8, norms ** 2 / denominator.clamp_min(1e-30), torch.zeros_like(norms))


def _point(model: DoubleDescentHandle, index: int, test: Tensor, above: float) -> dict[str, float]:
    size = model.sizes[index]
    k = model.best_instance(index)
    W = model.W[index][k]                                         # [d_hidden, n_features]
    x_test = test.expand(test.shape[0], model.n_inst, test.shape[-1])
    feature_dims = dimensionality_rows(W.T)
    hidden = model.train[index][:, k] @ W.T                       # the training points' hidden vectors [b, d_hidden]
    data_dims = dimensionality_rows(hidden)
    return {"label": f"b{size}", "size": float(size), "best_instance": float(k),
            "train_loss": float(model.losses(index, model.train[index])[k]), "test_loss": float(model.losses(index, x_test)[k]),
            "feature_dim_median": float(feature_dims.median()), "features_above": float((feature_dims > above).sum()),
            "feature_norm_max": float(W.norm(dim=0).max()),
            "data_dim_mean": float(data_dims.mean()), "data_dim_median": float(data_dims.median()),
            "data_dim_min_scaled": float(data_dims.min()) * size / model.shape.d_hidden,
            "data_norm_median": float(hidden.norm(dim=1).median())}


def _curve(model: DoubleDescentHandle, batch: int, seed: int, above: float) -> list[dict[str, float]]:
    """The curve's points, computed once per sweep and arguments (both metrics read it; the sweep's weights are
    fixed once loaded, so the memo cannot go stale)."""
    key = (batch, seed, above)
    if key not in model.curve_memo:
        test = unit_batch(DDD_RECIPES[model.recipe], batch, 1, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            model.curve_memo[key] = [_point(model, i, test, above) for i in range(len(model.sizes))]
    return [dict(point) for point in model.curve_memo[key]]


@metric("superposition.ddd_curve", value=Curve(SIZES, CURVE))
def ddd_curve(ctx: MetricContext, *, batch: TestBatch = 2000, seed: int = 0,
              above: Annotated[float, Field(gt=0, lt=1)] = 0.3) -> Measurement:
    """Per training-set size (labels b5, b10...): the best instance, its training and test loss, the median
    feature dimensionality, how many features have D > ``above``, the largest feature norm, the mean, median
    and smallest (scaled by b / d_hidden) data-point dimensionality, the median hidden norm of the training
    points (module docstring)."""
    model = sweep(ctx)
    return Measurement(_curve(model, batch, seed, above), details={"batch": batch, "seed": seed, "above": above})


PEAK = ("peak_size", "peak_test_loss", "peak_over_smallest", "peak_over_largest", "interior_peak")


@metric("superposition.ddd_peak", value=Table(names(*PEAK)))
def ddd_peak(ctx: MetricContext, *, batch: TestBatch = 2000, seed: int = 0) -> Measurement:
    """Where the test loss peaks over the sweep: the size, its test loss, its ratio to the test loss at the
    smallest and at the largest size, and 1 if the peak is at neither end (a double descent), else 0."""
    model = sweep(ctx)
    points = _curve(model, batch, seed, 0.3)
    losses = [p["test_loss"] for p in points]
    top = max(range(len(losses)), key=losses.__getitem__)
    return Measurement({"peak_size": points[top]["size"], "peak_test_loss": losses[top],
                        "peak_over_smallest": losses[top] / max(losses[0], 1e-30), "peak_over_largest": losses[top] / max(losses[-1], 1e-30),
                        "interior_peak": float(0 < top < len(losses) - 1)},
                       details={"test_loss": {p["label"]: p["test_loss"] for p in points}, "batch": batch, "seed": seed})
