"""Metrics of ARENA 1.5.2 about paths and weights: the neuron path alone, attention's 2-D Fourier
sparsity, and where the neurons write in the Fourier basis of the logits.

All on the p^2 pairs of the row-major (x, y) grid (:mod:`harness.metrics._modular`), float64.

- ``modular.neuron_path_loss`` (G6): the "=" logits are ``resid_mid W_U + mlp_out W_U`` (one
  layer, no LayerNorm, b_U zero in these models); with the first term (the direct and attention
  paths that bypass the neurons) zero-ablated (``ablation: zero``) or replaced by its mean over the
  grid (``mean``), the loss on ``split`` against the original.
- ``modular.fourier_2d_shares`` (G8, G19): per channel of a grid over (x, y) (the attention from
  "=" to position 0 per head, each neuron, each answer's logit), centred, in the 2-D Fourier
  basis: ``top_share`` the share of its energy in its ``top`` largest coefficients,
  ``linear_share`` the share in the terms of x alone or y alone (row or column 0 of the 2-D
  transform), ``quadratic_share`` the rest; the means over channels.
- ``modular.logit_weight_fourier_share`` (G20): ``W_logit = W_out W_U[:, :p]`` (d_mlp, p) in the
  Fourier basis over the answer z, ``W_logit F^T`` (column j is basis function j); ``key_share``
  the share of its squared norm in the cos/sin columns of ``frequencies``; ``own_cluster_share``
  the smallest, over those frequencies k, share of columns k's squared norm written by the neurons
  whose frequency is k (:func:`~harness.metrics._modular.neuron_frequencies`, explained > 0.85).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field

from fixtures.modular_task import P
from harness.context import MetricContext
from harness.core.measurement import Measurement
from harness.core.model_handle import ModelHandle
from harness.core.value_shape import Table, names
from harness.metrics._modular import fourier_2d, fourier_basis, split_loss
from harness.metrics.modular import _check_vocab, all_pairs, clusters
from harness.metrics.modular_logits import Frequency, Split
from harness.registry import metric


def _weights(model: ModelHandle) -> dict[str, torch.Tensor]:
    """Layer 0's MLP output weights and the unembedding, float64."""
    params = dict(model.named_parameters())
    return {k: params[name].detach().to(torch.float64) for k, name in
            (("W_out", "blocks.0.mlp.W_out"), ("b_out", "blocks.0.mlp.b_out"), ("W_U", "unembed.W_U"))}


@metric("modular.neuron_path_loss", value=Table(names("original", "ablated", "ratio")))
def neuron_path_loss(ctx: MetricContext, *, ablation: Literal["zero", "mean"] = "mean", split: Split = "all") -> Measurement:
    """Loss with the logits' non-neuron part (resid_mid W_U) zero- or mean-ablated: only ``mlp_out W_U`` (+ the mean) is kept."""
    _check_vocab(ctx.model)
    run = all_pairs(ctx.model)
    w = _weights(ctx.model)
    logits = run.logits  # (p^2, p) float64: converted once, read three times
    neuron_logits = (run.neurons @ w["W_out"] + w["b_out"]) @ w["W_U"][:, :P]  # (p^2, p)
    rest = logits - neuron_logits  # resid_mid W_U (+ b_U, zero here)
    ablated = neuron_logits + (rest.mean(0, keepdim=True) if ablation == "mean" else 0.0)
    original, after = split_loss(logits, split), split_loss(ablated, split)
    return Measurement({"original": original, "ablated": after, "ratio": after / original}, None,
                       {"ablation": ablation, "split": split, "rest_norm_share": float(rest.norm() / logits.norm())}, unit="nats")


def grid_fourier_shares(grid: torch.Tensor, top: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per channel of a (p, p, c) grid: share of its centred 2-D Fourier energy in its ``top`` largest terms, and in linear terms.

    Centred: the grid mean (the const x const term) is removed first. Linear terms are the
    coefficients ``[0, j]`` and ``[i, 0]`` (functions of y alone or x alone). A constant channel has shares 0.
    """
    coeffs = fourier_2d(grid - grid.mean((0, 1)), fourier_basis(grid.shape[0])).pow(2)  # (p, p, c)
    total = coeffs.sum((0, 1))
    total = torch.where(total > 0, total, torch.full_like(total, float("inf")))
    # topk returns the sort's first ``top`` values in the same (descending) order: the same sum, without
    # sorting all p^2 terms of every channel (512 neurons: 0.1 s of CPU instead of 1.4 s)
    top_share = coeffs.reshape(-1, coeffs.shape[-1]).topk(top, dim=0).values.sum(0) / total
    linear_share = (coeffs[0].sum(0) + coeffs[:, 0].sum(0)) / total
    return top_share, linear_share


def column_shares(coords: torch.Tensor, frequencies: list[int], members: dict[int, torch.Tensor]) -> tuple[float, dict[str, float]]:
    """Share of ``coords`` (rows, p; column j = basis function j) squared norm in the cos/sin columns of ``frequencies``,
    and for each k the share of its columns' energy in the rows ``members[k]`` (bool, rows)."""
    energy = coords.pow(2)
    columns = {k: [2 * k - 1, 2 * k] for k in frequencies}
    key_share = float(sum(energy[:, c].sum() for c in columns.values()) / energy.sum())
    own = {}
    for k, c in columns.items():
        col_energy = energy[:, c].sum(1)
        total = float(col_energy.sum())
        own[f"k={k}"] = float(col_energy[members[k]].sum()) / total if total > 0 else 0.0
    return key_share, own


@metric("modular.fourier_2d_shares", value=Table(names("top_share", "linear_share", "quadratic_share")))
def fourier_2d_shares(ctx: MetricContext, *, of: Literal["attention", "neurons", "logits"],
                      top: Annotated[int, Field(ge=1, le=12769)] = 8) -> Measurement:  # le: p^2
    """Mean over channels of the share of a centred (x, y) grid's 2-D Fourier energy in its ``top`` largest terms, its linear and its quadratic terms.

    Channels: ``attention`` from "=" to position 0 per head, ``neurons`` post-ReLU per neuron,
    ``logits`` per answer z. ``quadratic_share`` = 1 - ``linear_share`` (the const x const term is
    removed by centring).
    """
    _check_vocab(ctx.model)
    run = all_pairs(ctx.model)
    flat = {"attention": run.attention[:, :, 0], "neurons": run.neurons, "logits": run.logits}[of]
    top_share, linear_share = grid_fourier_shares(flat.reshape(P, P, -1), top)
    live = top_share > 0  # a constant channel (dead neuron) has no centred energy: left out of the means
    if not bool(live.any()):
        raise ValueError(f"every {of} channel is constant on the grid: no 2-D spectrum to share out")
    value = {"top_share": float(top_share[live].mean()), "linear_share": float(linear_share[live].mean()),
             "quadratic_share": float(1 - linear_share[live].mean())}
    details = {"of": of, "top": top, "channels": int(live.sum()), "constant_channels": int((~live).sum())}
    if of == "attention":
        details.update(per_head_top_share=[round(float(v), 4) for v in top_share],
                       per_head_linear_share=[round(float(v), 4) for v in linear_share])
    return Measurement(value, None, details)


@metric("modular.logit_weight_fourier_share", value=Table(names("key_share", "own_cluster_share")))
def logit_weight_fourier_share(ctx: MetricContext, *, frequencies: list[Frequency]) -> Measurement:
    """Share of ``W_logit F^T``'s squared norm in the ``frequencies``' cos/sin columns, and the least share of a frequency's columns that its own cluster writes."""
    _check_vocab(ctx.model)
    w = _weights(ctx.model)
    coords = (w["W_out"] @ w["W_U"][:, :P]) @ fourier_basis().T  # (d_mlp, p): column j = basis function j
    freqs, frac, _sizes = clusters(ctx.model, "full", 0.85)
    key_share, own = column_shares(coords, list(frequencies), {k: (freqs == k) & (frac > 0.85) for k in frequencies})
    return Measurement({"key_share": key_share, "own_cluster_share": min(own.values())}, None,
                       {"own_cluster_share_by_k": own, "frequencies": list(frequencies)})
