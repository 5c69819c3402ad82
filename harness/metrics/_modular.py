"""Shared maths of the modular-addition metrics: Fourier bases over Z_p and the model's activations on all pairs.

Fourier basis (the course's ``make_fourier_basis``): the p x p matrix F whose rows are, in order,
``const, cos 1, sin 1, ..., cos K, sin K`` (K = (p - 1) / 2 = 56 for p = 113), row i sampled at
x = 0..p-1 (``cos k`` is ``cos(2 pi k x / p)``) and scaled to unit norm. F is orthogonal
(F F^T = I), so ``F v`` are the coordinates of v in it and ``F^T (F v) = v``.

2-D: for a grid ``G[x, y, ...]`` the coefficients are ``F G F^T`` (``einsum("xy...,ix,jy->ij...")``);
entry ``[i, j]`` is the coefficient of ``row_i(x) row_j(y)``.

All-pairs runs: every (x, y) in row-major order (x = n // p, y = n % p), tokens ``[x, y, =]``;
``number_logits`` are the "=" position's logits over the p numbers (the "=" logit dropped).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from fixtures.modular_task import P, all_data, train_mask
from harness.core.model_handle import ModelHandle


def fourier_basis(p: int = P, dtype: torch.dtype = torch.float64) -> Tensor:
    """F (p, p): orthonormal rows const, cos 1, sin 1, ..., cos K, sin K over Z_p (p odd)."""
    if p % 2 == 0 or p < 3:
        raise ValueError(f"the Fourier basis here needs an odd p >= 3, got {p}")
    x = torch.arange(p, dtype=dtype)
    rows = [torch.ones(p, dtype=dtype)]
    for k in range(1, p // 2 + 1):
        rows += [torch.cos(2 * math.pi * k * x / p), torch.sin(2 * math.pi * k * x / p)]
    basis = torch.stack(rows)
    return basis / basis.norm(dim=1, keepdim=True)


def basis_names(p: int = P) -> list[str]:
    """``["const", "cos1", "sin1", ..., "cosK", "sinK"]``."""
    return ["const"] + [f"{trig}{k}" for k in range(1, p // 2 + 1) for trig in ("cos", "sin")]


def fourier_2d(grid: Tensor, basis: Tensor) -> Tensor:
    """``F G F^T`` over the first two axes of ``grid`` (p, p, ...)."""
    return torch.einsum("xy...,ix,jy->ij...", grid, basis, basis)


def frequency_energy(coords: Tensor) -> Tensor:
    """(K + 1,) energy per frequency of 1-D Fourier coordinates (p, ...): k = 0 the constant, else cos_k^2 + sin_k^2, summed over the other axes."""
    sq = coords.pow(2).reshape(coords.shape[0], -1).sum(1)
    return torch.cat([sq[:1], sq[1::2] + sq[2::2]])


def trig_sum_directions(k: int, p: int = P, dtype: torch.dtype = torch.float64) -> Tensor:
    """(2, p * p): unit vectors cos(w_k (x + y)) and sin(w_k (x + y)) over the row-major (x, y) grid, w_k = 2 pi k / p."""
    x = torch.arange(p, dtype=dtype)
    s = (x[:, None] + x[None, :]).flatten() * (2 * math.pi * k / p)
    out = torch.stack([torch.cos(s), torch.sin(s)])
    return out / out.norm(dim=1, keepdim=True)


@functools.lru_cache(maxsize=2)
def all_trig_sum_directions(p: int = P) -> Tensor:
    """(2 K, p * p), K = (p - 1) / 2: rows c_1, s_1, ..., c_K, s_K of :func:`trig_sum_directions` (row 2 k - 2 is c_k)."""
    return torch.cat([trig_sum_directions(k, p) for k in range(1, p // 2 + 1)])


def trig_sum_rows(frequencies: list[int]) -> list[int]:
    """The rows of :func:`all_trig_sum_directions` holding c_k and s_k of each frequency, in order."""
    return [row for k in frequencies for row in (2 * k - 2, 2 * k - 1)]


def trig_sum_coords(logits: Tensor, p: int = P) -> Tensor:
    """(2 K, p): the coordinates ``D L`` of each logit column (p^2, p) along every c_k and s_k (D of :func:`all_trig_sum_directions`)."""
    return all_trig_sum_directions(p) @ logits


def restricted_from_coords(coords: Tensor, column_mean: Tensor, frequencies: list[int], bias_correction: bool, p: int = P) -> Tensor:
    """(p^2, p): the logits L kept along c_k, s_k of ``frequencies`` only, from ``coords`` = D L (2 K, p) and ``column_mean`` (p,) of L.

    ``kept = D_S^T (D_S L)`` with D_S the rows of the chosen frequencies; with ``bias_correction``
    plus the grid mean of what was removed, ``mean(L) - mean(kept)`` per column (the course's
    correction). Needs only D L and mean(L), so a run's logits can be dropped once those are kept.
    """
    rows = trig_sum_rows(frequencies)
    kept = all_trig_sum_directions(p)[rows].T @ coords[rows]
    if bias_correction:
        kept = kept + (column_mean - kept.mean(0, keepdim=True))
    return kept


def trig_energy(tensor: Tensor, p: int = P) -> tuple[Tensor, Tensor]:
    """(energy (K, n), variance (n,)) of each column of a grid tensor (p^2, n), centred over the grid:
    ``energy[k - 1]`` = (c_k . t)^2 + (s_k . t)^2 of the centred column t, ``variance`` = ||t||^2."""
    centred = tensor - tensor.mean(0, keepdim=True)
    coords = all_trig_sum_directions(p) @ centred
    return coords[0::2].pow(2) + coords[1::2].pow(2), centred.pow(2).sum(0)


def trig_ratio(energy: Tensor, variance: Tensor, frequencies: list[int]) -> float:
    """The course's ``tensor_trig_ratio``: the mean over columns of the share of a column's centred
    variance along cos/sin(w_k (x + y)) of ``frequencies``; constant columns (variance 0, e.g. dead
    neurons, whose share is 0 / 0) are left out of the mean."""
    live = variance > 0
    if not bool(live.any()):
        raise ValueError("every column is constant on the grid: no variance to explain")
    explained = energy[[k - 1 for k in frequencies]].sum(0)
    return float((explained[live] / variance[live]).mean())


@dataclass(frozen=True)
class AllPairs:
    """One run of the model on all p^2 pairs, kept in the run's own dtype (float32: half the memory of
    float64) and read as float64 (an exact conversion, so every reader sees what a float64 copy made at
    run time would hold): number logits (p^2, p), post-ReLU neurons (p^2, d_mlp), "=" attention
    (p^2, h, 3), and where asked the pre-ReLU neurons (p^2, d_mlp)."""

    kept_logits: Tensor
    kept_neurons: Tensor
    kept_attention: Tensor
    kept_neurons_pre: Tensor | None = None

    @property
    def logits(self) -> Tensor:
        return self.kept_logits.to(torch.float64)

    @property
    def neurons(self) -> Tensor:
        return self.kept_neurons.to(torch.float64)

    @property
    def attention(self) -> Tensor:
        return self.kept_attention.to(torch.float64)

    @property
    def neurons_pre(self) -> Tensor | None:
        return None if self.kept_neurons_pre is None else self.kept_neurons_pre.to(torch.float64)


def run_all_pairs(model: ModelHandle, p: int = P, *, pre: bool = False) -> AllPairs:
    """Logits, neuron activations (with ``pre`` the pre-ReLU ones too) and attention of the "=" position on every (x, y), from one forward pass
    (each a copy of its slice: the whole activations are not kept)."""
    data = all_data(p)
    forward = model.run_with_cache(data.tokens)
    hooks = [model.hook_name("post", 0), model.hook_name("pattern", 0)] + ([model.hook_name("pre", 0)] if pre else [])
    forward.prefetch(hooks, logits=True)
    logits = forward.logits[:, -1, :p].detach().clone()
    neurons = forward.activations[("post", 0)][:, -1].detach().clone()
    attention = forward.activations[("pattern", 0)][:, :, -1, :].detach().clone()
    neurons_pre = forward.activations[("pre", 0)][:, -1].detach().clone() if pre else None
    return AllPairs(logits, neurons, attention, neurons_pre)


def cross_entropy(logits: Tensor, labels: Tensor) -> float:
    """Mean float64 cross-entropy of (batch, p) logits."""
    logprobs = logits.to(torch.float64).log_softmax(dim=-1)
    return float(-logprobs.gather(1, labels[:, None]).mean())


def labels_all(p: int = P) -> Tensor:
    """(p^2,) (x + y) mod p over the row-major grid."""
    return all_data(p).labels


def split_loss(logits: Tensor, split: str, p: int = P) -> float:
    """Float64 loss of all-pairs logits (p^2, p) on ``all``, ``train`` or ``test`` pairs (the paper's split)."""
    labels = labels_all(p)
    if split == "all":
        return cross_entropy(logits, labels)
    mask = train_mask(p)
    chosen = mask if split == "train" else ~mask
    return cross_entropy(logits[chosen], labels[chosen])


def project_onto(logits: Tensor, directions: Tensor) -> Tensor:
    """The projection of each logit column (p^2, p) onto the span of orthonormal ``directions`` (n, p^2)."""
    return directions.T @ (directions @ logits)


def neuron_frequencies(neurons: Tensor, k_max: int, p: int = P) -> tuple[Tensor, Tensor]:
    """(frequency, fraction explained) of each neuron, frequencies 1..k_max.

    The post-ReLU activations on the (x, y) grid are centred (mean over the grid removed, i.e.
    the 2-D const-const coefficient zeroed) and taken to the 2-D Fourier basis; for each k, the
    share of the neuron's energy in the 3 x 3 block of rows {const, cos k, sin k} (const, linear
    and quadratic terms of k); the neuron's frequency is the k with the largest share. A neuron
    that is constant on the grid has share 0 for every k.
    """
    grid = neurons.reshape(p, p, -1)
    coeffs = fourier_2d(grid - grid.mean(dim=(0, 1)), fourier_basis(p))
    total = coeffs.pow(2).sum((0, 1))
    total = torch.where(total > 0, total, torch.ones_like(total))  # a constant neuron (dead, or always on) is explained by nothing: share 0
    shares = []
    for k in range(1, k_max + 1):
        idx = torch.tensor([0, 2 * k - 1, 2 * k])
        shares.append(coeffs[idx][:, idx].pow(2).sum((0, 1)) / total)
    stacked = torch.stack(shares)  # (k_max, d_mlp)
    frac, arg = stacked.max(0)
    return arg + 1, frac


K_RANGES = {"full": P // 2, "course": P // 2 - 1}  # the course's arrange_by_2d_freqs loops range(1, p // 2): k = 1..55


def relu_quadratic_fit(k: int, p: int = P) -> dict[str, float]:
    """Least squares of ReLU(A + c(x) + c(y)) on unit-norm grid vectors {const, c(x), c(y), c(x) c(y)}.

    c is the unit-norm ``cos k`` row of F, A = 1 / (2 sqrt(p)); regressors are the 2-D basis
    products const x const, cos k x const, const x cos k, cos k x cos k (unit norm on the p x p
    grid). Returns the four coefficients, r^2 with and without the quadratic term.
    """
    basis = fourier_basis(p)
    const, c = basis[0], basis[2 * k - 1]
    target = torch.relu(1 / (2 * math.sqrt(p)) + c[:, None] + c[None, :]).flatten()
    cols = torch.stack([torch.outer(a, b).flatten() for a, b in ((const, const), (c, const), (const, c), (c, c))], 1)

    def fit(design: Tensor) -> tuple[Tensor, float]:
        sol = torch.linalg.lstsq(design, target[:, None]).solution[:, 0]
        resid = target - design @ sol
        return sol, float(1 - resid.pow(2).sum() / (target - target.mean()).pow(2).sum())

    full, r2 = fit(cols)
    _, r2_linear = fit(cols[:, :3])
    return {"const": float(full[0]), "cos_x": float(full[1]), "cos_y": float(full[2]), "cos_x_cos_y": float(full[3]),
            "r2": r2, "r2_without_quadratic": r2_linear}
