"""Metrics of ARENA 1.5.2 about effective weights, the embedding's SVD and the logit directions (G10, G11, G21).

All float64, on the token axis ``t = 0..p-1`` (the "=" token dropped) or the row-major (x, y) grid of
:mod:`harness.metrics._modular`; F is the orthonormal 1-D Fourier basis (rows const, cos 1, sin 1, ...).

- ``modular.effective_weight_fourier_share`` / ``modular.effective_weight_key_frequencies`` (G10):
  the course's effective weights (layer 0, attention biases ignored as the course does)
  ``W_neur[h] = W_E[:p] W_V[h] W_O[h] W_in`` (h, p, d_mlp) and
  ``W_attn[h] = (W_E[=] + W_pos[2]) W_Q[h] W_K[h]^T W_E[:p]^T / sqrt(d_head)`` (h, p), taken to the
  Fourier basis along the token axis (``F W``); the energy per frequency (k = 0 the const row,
  else cos k^2 + sin k^2) summed over the other axes. ``share``: the share of the non-constant
  energy in the given ``frequencies``; ``constant_share``: the const row's share of all of it.
  The key frequencies: those k >= 1 with at least ``rel_threshold`` of the largest k's energy.
- ``modular.embed_svd_fourier_alignment`` (G11): ``W_E[:p] = U S V^T``; with r = 2 x the number
  of ``frequencies``, ``sigma_share`` = sum of the top r sigma^2 / sum of all (S sparse: rank r
  holds the embedding), ``subspace_share`` = ||F_K U_r||^2 / r (the share of the top r left
  singular directions lying in the span of the frequencies' cos/sin rows F_K), and per top
  singular vector u_i its ``purity``: the largest share of ||F u_i||^2 = 1 in one frequency's
  cos/sin pair (``min_purity``, ``mean_purity``). W_E = F^T S V^T exactly gives 1, 1, 1, 1.
- ``modular.logit_direction_fourier`` (G21): ``US = W_logit F^T`` (d_mlp, p), ``W_logit = W_out W_U[:, :p]``
  (b_out ignored, as the course); for each frequency k, the grids ``g_cos = N US[:, cos k]`` and
  ``g_sin = N US[:, sin k]`` (N the post-ReLU neurons on all pairs, (p^2, d_mlp)). The course's
  prediction: ``g_cos = C_k cos(w_k (x + y))``, ``g_sin = C_k sin(w_k (x + y))``. ``k=K``: the
  smaller of the two grids' shares of their centred energy along c_k resp. s_k (1 exactly when the
  prediction holds up to a constant); in the 2-D basis (``G = F g F^T``) the prediction is
  ``G[cos, cos] = -G[sin, sin]`` and ``G[cos, sin] = G[sin, cos]`` (both ``C_k / sqrt 2``):
  ``sign_pattern`` is the fraction of the 2 x n sign checks that hold, ``max_magnitude_gap`` the
  largest ``||a| - |b|| / (|a| + |b|)`` over those pairs. A coefficient within ``SIGN_FLOOR_ULPS``
  units of rounding of the grid's largest is zero and has no sign: a check with it fails (the
  prediction has both at ``C_k / sqrt 2 != 0``), so no verdict rests on the sign of rounding noise.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from fixtures.modular_task import P
from harness.context import MetricContext
from harness.core.measurement import Measurement
from harness.core.model_handle import ModelHandle
from harness.core.value_shape import NameSet, Table, either, labelled, names
from harness.metrics._modular import fourier_2d, fourier_basis, frequency_energy, trig_sum_directions
from harness.metrics.modular import _check_vocab, all_pairs, key_frequency_list
from harness.metrics.modular_logits import Frequency, check_frequencies
from harness.registry import metric

Matrix = Literal["neur", "attn"]
Fraction = Annotated[float, Field(gt=0.0, le=1.0)]


def _param(model: ModelHandle, name: str) -> Tensor:
    return dict(model.named_parameters())[name].to(torch.float64)


def effective_weights(model: ModelHandle) -> dict[str, Tensor]:
    """``{"neur": W_neur (h, p, d_mlp), "attn": W_attn (h, p)}`` of layer 0, float64 (the course's formulas)."""
    _check_vocab(model)
    w_e = model.W_E.to(torch.float64)
    w_v, w_o = model.W_V[0].to(torch.float64), model.W_O[0].to(torch.float64)  # (h, d_model, d_head), (h, d_head, d_model)
    w_q, w_k = model.W_Q[0].to(torch.float64), model.W_K[0].to(torch.float64)
    w_in = _param(model, "blocks.0.mlp.W_in")  # (d_model, d_mlp)
    neur = w_e[:P] @ (w_v @ w_o) @ w_in
    final = w_e[P] + model.W_pos.to(torch.float64)[2]
    query = torch.einsum("m,hmd->hd", final, w_q)  # (h, d_head)
    keys = torch.einsum("tm,hmd->htd", w_e[:P], w_k)  # (h, p, d_head)
    attn = torch.einsum("hd,htd->ht", query, keys) / math.sqrt(model.shape.d_head)
    return {"neur": neur, "attn": attn}


def token_axis_energy(matrix: Tensor) -> Tensor:
    """(K + 1,) energy per frequency of ``F M`` along the token axis (axis 1 of (h, p, ...)), summed over the rest."""
    coords = torch.einsum("it,ht...->ih...", fourier_basis(matrix.shape[1]), matrix)
    return frequency_energy(coords)


@metric("modular.effective_weight_fourier_share", value=Table(names("share", "constant_share")))
def effective_weight_fourier_share(ctx: MetricContext, *, matrix: Matrix, frequencies: list[Frequency]) -> Measurement:
    """Share of W_neur's or W_attn's non-constant Fourier energy (token axis) in ``frequencies``, and the const row's share of the whole."""
    check_frequencies(frequencies)
    energy = token_axis_energy(effective_weights(ctx.model)[matrix])
    trig = float(energy[1:].sum())
    if trig <= 0:
        raise ValueError(f"W_{matrix} has no non-constant energy along the token axis")
    share = float(energy[list(frequencies)].sum()) / trig
    return Measurement({"share": share, "constant_share": float(energy[0] / energy.sum())}, None,
                       {"matrix": matrix, "frequencies": list(frequencies),
                        "energy_share_by_k": {f"k={k}": float(energy[k] / energy.sum()) for k in range(len(energy))}})


@metric("modular.effective_weight_key_frequencies", value=NameSet(labelled("k")))
def effective_weight_key_frequencies(ctx: MetricContext, *, matrix: Matrix, rel_threshold: Fraction = 0.05) -> Measurement:
    """The frequencies k >= 1 whose W_neur / W_attn energy (token axis) is >= ``rel_threshold`` x the largest k >= 1's."""
    energy = token_axis_energy(effective_weights(ctx.model)[matrix])
    keys = key_frequency_list(energy, rel_threshold)
    return Measurement([f"k={k}" for k in keys], None, {"matrix": matrix, "share": float(energy[keys].sum() / energy[1:].sum())})


def svd_fourier_alignment(w_e: Tensor, frequencies: list[int]) -> dict[str, float]:
    """G11's numbers for an embedding ``w_e`` (p, d_model) and the ``frequencies`` (see the module docstring)."""
    check_frequencies(frequencies)
    u, s, _vh = torch.linalg.svd(w_e.to(torch.float64), full_matrices=False)
    r = 2 * len(frequencies)
    if r > s.numel():
        raise ValueError(f"{len(frequencies)} frequencies need rank {r}, but W_E has only {s.numel()} singular values")
    coords = fourier_basis(w_e.shape[0]) @ u[:, :r]  # (p, r): each top singular vector in the Fourier basis
    rows = [row for k in frequencies for row in (2 * k - 1, 2 * k)]
    per_vector = torch.stack([frequency_energy(coords[:, i:i + 1])[1:] for i in range(r)])  # (r, K): unit vectors
    purity = per_vector.max(1).values
    return {"sigma_share": float(s[:r].pow(2).sum() / s.pow(2).sum()), "subspace_share": float(coords[rows].pow(2).sum() / r),
            "min_purity": float(purity.min()), "mean_purity": float(purity.mean())}


@metric("modular.embed_svd_fourier_alignment", value=Table(names("sigma_share", "subspace_share", "min_purity", "mean_purity")))
def embed_svd_fourier_alignment(ctx: MetricContext, *, frequencies: list[Frequency]) -> Measurement:
    """How close W_E[:p] is to F^T S V^T with S nonzero only in the cos/sin rows of ``frequencies`` (rank 2 n)."""
    _check_vocab(ctx.model)
    value = svd_fourier_alignment(ctx.model.W_E[:P], list(frequencies))
    return Measurement(value, None, {"frequencies": list(frequencies), "rank": 2 * len(frequencies)})


SIGN_FLOOR_ULPS = 1e3
"""A 2-D coefficient at most this many machine epsilons of the grid's largest counts as zero (no sign)."""


def logit_direction_checks(neurons: Tensor, us: Tensor, frequencies: list[int], p: int = P) -> tuple[dict[str, float], dict[str, object]]:
    """G21 on neurons (p^2, d_mlp) and ``US = W_logit F^T`` (d_mlp, p): ({"k=K": share, ...}, details); see the module docstring."""
    check_frequencies(frequencies)
    basis = fourier_basis(p)
    value: dict[str, float] = {}
    signs, gaps, coeffs = [], [], {}
    for k in frequencies:
        shares = []
        cos_direction, sin_direction = trig_sum_directions(k, p)
        for col, direction in ((2 * k - 1, cos_direction), (2 * k, sin_direction)):
            g = neurons @ us[:, col]
            centred = g - g.mean()
            total = float(centred.pow(2).sum())
            shares.append(float((direction @ centred) ** 2) / total if total > 0 else 0.0)
            grid = fourier_2d(g.reshape(p, p), basis)
            c, s = 2 * k - 1, 2 * k
            a, b = (float(grid[c, c]), float(grid[s, s])) if col == c else (float(grid[c, s]), float(grid[s, c]))
            floor = SIGN_FLOOR_ULPS * torch.finfo(grid.dtype).eps * float(grid.abs().max())
            signs.append(min(abs(a), abs(b)) > floor and (a * b < 0 if col == c else a * b > 0))
            gaps.append(abs(abs(a) - abs(b)) / (abs(a) + abs(b)) if abs(a) + abs(b) > 0 else 1.0)
            coeffs[f"k={k} {'cos' if col == c else 'sin'}"] = [a, b]
        value[f"k={k}"] = min(shares)
    value.update(min_share=min(value.values()), sign_pattern=sum(signs) / len(signs), max_magnitude_gap=max(gaps))
    return value, {"coefficients": coeffs}


@metric("modular.logit_direction_fourier", value=Table(either(labelled("k"), names("min_share", "sign_pattern", "max_magnitude_gap"))))
def logit_direction_fourier(ctx: MetricContext, *, frequencies: list[Frequency]) -> Measurement:
    """G21: how closely sigma u of each frequency's cos and sin columns of W_logit F^T is C_k cos / sin(w_k (x + y)) over the grid."""
    _check_vocab(ctx.model)
    w_logit = _param(ctx.model, "blocks.0.mlp.W_out") @ ctx.model.W_U.to(torch.float64)[:, :P]
    value, details = logit_direction_checks(all_pairs(ctx.model).neurons, w_logit @ fourier_basis().T, list(frequencies))
    details["frequencies"] = list(frequencies)
    return Measurement(value, None, details)
