"""Metrics of ARENA 1.5.2 about the logits: trig-only ("restricted") and excluded loss, and the ReLU fit.

On all p^2 pairs the "=" logits form a (p^2, p) matrix L (row-major (x, y) grid, one column per
answer z). For a frequency k, ``c_k`` and ``s_k`` are the unit vectors cos(w_k (x + y)) and
sin(w_k (x + y)) over the grid, w_k = 2 pi k / p (:func:`~harness.metrics._modular.trig_sum_directions`).

- ``modular.restricted_loss``: L projected onto the span of {c_k, s_k} for the given
  frequencies, plus (``bias_correction``) the grid mean of what the projection removed, per
  column (the course's bias correction); float64 loss on ``split``. The chapter: keeping only these
  directions keeps (even lowers) the loss of a grokked model (G18); during training it falls
  before the test loss (G27).
- ``modular.excluded_loss``: L minus its projection onto {c_k, s_k}, one frequency at a time, no
  bias correction, loss on the train split (G22).
- ``modular.relu_quadratic_fit``: G12's least squares, which needs no model (the claim's model is
  not read).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from fixtures.modular_task import P
from harness.context import MetricContext
from harness.core.measurement import Measurement
from harness.core.value_shape import Table, either, labelled, names
from harness.metrics._modular import (
    project_onto, relu_quadratic_fit as fit_relu, restricted_from_coords, split_loss, trig_sum_coords, trig_sum_directions,
)
from harness.metrics.modular import all_pairs, _check_vocab
from harness.registry import metric

Frequency = Annotated[int, Field(ge=1, le=56)]  # 1..(p - 1) / 2 for p = 113
Split = Literal["all", "train", "test"]


def check_frequencies(frequencies: list[int]) -> None:
    """Refuse an empty list or a repeated frequency (the directions would not be orthonormal)."""
    if len(set(frequencies)) != len(frequencies) or not frequencies:
        raise ValueError(f"give distinct frequencies, got {frequencies}")


def trig_directions(frequencies: list[int]) -> torch.Tensor:
    """(2 n, p^2): c_k and s_k of each frequency (orthonormal for distinct k in 1..(p-1)/2)."""
    check_frequencies(frequencies)
    return torch.cat([trig_sum_directions(k) for k in frequencies])


def restricted_logits(logits: torch.Tensor, frequencies: list[int], bias_correction: bool) -> torch.Tensor:
    """L projected onto the trig directions (+ the per-column grid mean of the removed part); see
    :func:`~harness.metrics._modular.restricted_from_coords`, which a run's snapshots share (it needs only D L and mean(L))."""
    check_frequencies(frequencies)
    return restricted_from_coords(trig_sum_coords(logits), logits.mean(0), frequencies, bias_correction)


@metric("modular.restricted_loss", value=Table(names("original", "restricted", "ratio")))
def restricted_loss(ctx: MetricContext, *, frequencies: list[Frequency], split: Split = "all", bias_correction: bool = True) -> Measurement:
    """Loss of the logits kept only along cos/sin(w_k (x + y)) of ``frequencies``, against the original; ``ratio`` = restricted / original."""
    _check_vocab(ctx.model)
    logits = all_pairs(ctx.model).logits
    original = split_loss(logits, split)
    restricted = split_loss(restricted_logits(logits, frequencies, bias_correction), split)
    return Measurement({"original": original, "restricted": restricted, "ratio": restricted / original}, None,
                       {"frequencies": list(frequencies), "split": split}, unit="nats")


@metric("modular.excluded_loss", value=Table(either(labelled("k"), names("original", "max_ratio"))))
def excluded_loss(ctx: MetricContext, *, frequencies: list[Frequency], split: Split = "train") -> Measurement:
    """Loss with cos/sin(w_k (x + y)) deleted from the logits, per k (no bias correction); ``max_ratio`` the largest k's loss / original."""
    _check_vocab(ctx.model)
    logits = all_pairs(ctx.model).logits
    original = split_loss(logits, split)
    value = {"original": original}
    for k in frequencies:
        value[f"k={k}"] = split_loss(logits - project_onto(logits, trig_directions([k])), split)
    value["max_ratio"] = max(value[f"k={k}"] for k in frequencies) / original
    return Measurement(value, None, {"split": split}, unit="nats")


@metric("modular.relu_quadratic_fit", value=Table(names("const", "cos_x", "cos_y", "cos_x_cos_y", "r2", "r2_without_quadratic")))
def relu_quadratic_fit(ctx: MetricContext, *, k: Frequency = 42) -> Measurement:
    """G12: ReLU(A + c(x) + c(y)) fitted on {const, cos x, cos y, cos x cos y} (unit-norm grid vectors); the model is not read."""
    return Measurement(fit_relu(k), None, {"k": k, "p": P, "A": "1 / (2 sqrt(p))"})
