"""The full-OV top-k kernel with every step on a torch device (CUDA; ``cpu`` runs the same code).

The same arithmetic as the CPU kernel (:mod:`harness.circuits.ov_topk`, whose docstring states it):
float64 factors P = W_E[rows] @ left (n, r) and Q^T = (right @ W_U)^T (V, r); duplicated
unembedding columns share one row of Q^T (exact ties stay exact); the band half-width

    T_i = (gamma32_{r+2} + gamma64_r) ||P[i]|| (max_j ||Q[:, j]|| + ||Q[:, i]||) + 4 (r + 2) tiny32 (1 + ||P[i]|| + max_j ||Q[:, j]||)

bounds the float32 scan's error on S[i, j] - S[i, i]; a float32 scan in blocks of full rows counts
the entries above hi_i = fl_up(d_i + T_i) and keeps those in [lo_i, hi_i]; the band is rechecked in
float64.  Every tensor stays on the device: the products, the thresholds (rounded outwards with
``torch.nextafter``), the counts, the band's indices and its float64 recheck; the host reads the
per-row results once at the end (and one scalar for the range check before the scan).  A block's
band is found with ``torch.nonzero``, which waits for the device (a count, not a copy of data).

The float64 recheck sums P[i, k] Q[k, j] over k = 0, 1, ... in that order (one fused multiply-add
free loop of r element-wise steps), the same order for every pair, so equal columns give bit-equal
values.  The CPU kernel sums in numpy's order and gets its factors from numpy's BLAS: the counts of
the two agree exactly except for an entry within a float64 rounding of its diagonal without being
equal to it (different BLAS and summation orders may round such a pair apart); the tests compare
the two on data where that does not arise (exact ties, float32-band near-ties, random weights).

TF32 is switched off for the scan (T assumes IEEE float32 products).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_U32 = float(np.finfo(np.float32).eps) / 2
_U64 = float(np.finfo(np.float64).eps) / 2
_TINY32 = float(np.finfo(np.float32).smallest_normal)
_F32_SAFE_MAX = 1e37
_BLOCK_ENTRIES = 1 << 26  # default row block: 64 Mi float32 entries (256 MiB) per product


@dataclass(frozen=True)
class DeviceCounts:
    """Per-row results, as numpy arrays on the host (see :class:`harness.circuits.ov_topk.TopKResult`)."""

    above: np.ndarray
    ties: np.ndarray
    ties_below: np.ndarray
    margin: np.ndarray
    tolerance: np.ndarray
    n_rechecked: int


def device_topk(
    W_E: Any, left: Any, right: Any, W_U: Any, start: int, stop: int, *,
    device: Any, block_rows: int | None = None, recheck: bool = True, margins: bool = True,
) -> DeviceCounts:
    """Counts of rows ``start:stop`` of M = W_E left right W_U, computed on ``device``."""
    dev = torch.device(device)
    E, L, R, U = (torch.as_tensor(x).to(dev, torch.float64) for x in (W_E, left, right, W_U))
    V = E.shape[0]
    P64 = E[start:stop] @ L  # (n, r)
    Q64T = U.T @ R.T  # (V, r)
    _check_range(P64, Q64T)
    _share_duplicate_rows(U, Q64T)
    n = P64.shape[0]
    T = tolerance(P64, Q64T, start) if recheck else torch.zeros(n, dtype=torch.float64, device=dev)
    zero_rows = ~(P64 != 0).any(dim=1)
    T[zero_rows] = torch.nan
    bt = block_rows or max(1, _BLOCK_ENTRIES // max(V, 1))
    prev = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        chi, amb_i, amb_j, d32, best = _scan(P64.float(), Q64T.float(), T, start, bt)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev
    above = chi
    if recheck:
        d64 = fixed_order_dot(P64, Q64T[start:stop])
        m_amb = fixed_order_dot(P64[amb_i], Q64T[amb_j])
        is_above, is_tie = m_amb > d64[amb_i], m_amb == d64[amb_i]
        margin = d64 - _row_max(d32, best, T, amb_i, m_amb) if margins else torch.full_like(T, torch.nan)
    else:
        is_above = torch.zeros_like(amb_i, dtype=torch.bool)
        is_tie = torch.ones_like(amb_i, dtype=torch.bool)
        margin = d32.double() - best.double() if margins else torch.full_like(T, torch.nan)
    above = above + torch.bincount(amb_i[is_above], minlength=n)
    ties = torch.bincount(amb_i[is_tie], minlength=n)
    ties_below = torch.bincount(amb_i[is_tie & (amb_j < amb_i + start)], minlength=n)
    rows = torch.arange(start, stop, device=dev)
    ties = torch.where(zero_rows, V - 1, ties)
    ties_below = torch.where(zero_rows, rows, ties_below)
    T = torch.where(zero_rows, 0.0, T)
    host = [x.cpu().numpy() for x in (above, ties, ties_below, margin, T)]
    return DeviceCounts(*(h.astype(np.int32) for h in host[:3]), host[3], host[4],
                        int(amb_i.numel()) if recheck else 0)


def tolerance(P64: torch.Tensor, Q64T: torch.Tensor, start: int) -> torch.Tensor:
    """T_i of the module docstring (the CPU kernel's ``circuit_tolerance``), on the device."""
    r = P64.shape[1]
    gamma32 = (r + 2) * _U32 / (1 - (r + 2) * _U32)
    gamma64 = r * _U64 / (1 - r * _U64)
    pn = torch.linalg.vector_norm(P64, dim=1)
    qn = torch.linalg.vector_norm(Q64T, dim=1)
    qmax = qn.max() if qn.numel() else torch.zeros((), dtype=qn.dtype, device=qn.device)
    qdiag = qn[start : start + len(pn)]
    T = (gamma32 + gamma64) * pn * (qmax + qdiag) + 4 * (r + 2) * _TINY32 * (1 + pn + qmax)
    return T * (1 + 1e-6)


def fixed_order_dot(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """sum_k A[:, k] * B[:, k] in float64, k = 0, 1, ... in order: the same rounding for every row."""
    out = torch.zeros(A.shape[0], dtype=torch.float64, device=A.device)
    for k in range(A.shape[1]):
        out = out + A[:, k] * B[:, k]
    return out


def _check_range(P64: torch.Tensor, Q64T: torch.Tensor) -> None:
    """NaN/infinite weights and float32 overflow in the scan are refused (one host read)."""
    pmax = P64.abs().max() if P64.numel() else torch.zeros((), dtype=P64.dtype, device=P64.device)
    qmax = Q64T.abs().max() if Q64T.numel() else torch.zeros((), dtype=P64.dtype, device=P64.device)
    pm, qm = torch.stack([pmax, qmax]).tolist()
    if not (np.isfinite(pm) and np.isfinite(qm)):
        raise ValueError("weights contain NaN or infinity")
    if pm * qm * P64.shape[1] > _F32_SAFE_MAX:
        raise ValueError("circuit values too large for a float32 scan")


def _share_duplicate_rows(U: torch.Tensor, Q64T: torch.Tensor, key_rows: int = 32) -> None:
    """Row j of Q64T := row j' wherever W_U[:, j] == W_U[:, j'] exactly (the first of its group).

    Candidates share a hash of their first ``key_rows`` entries; each is then checked for exact
    equality over all d entries (as the CPU kernel's ``_share_duplicate_rows``).
    """
    g = torch.from_numpy(np.random.default_rng(0).standard_normal(min(key_rows, U.shape[0]))).to(U.device)
    h = (g[:, None] * U[: len(g)]).sum(dim=0)
    order = torch.sort(h, stable=True).indices
    hs = h[order]
    new_group = torch.ones(len(order), dtype=torch.bool, device=U.device)
    new_group[1:] = hs[1:] != hs[:-1]
    starts = torch.where(new_group, torch.arange(len(order), device=U.device), 0)
    first = order[torch.cummax(starts, dim=0).values]
    members = order[first != order]
    firsts = first[first != order]
    equal = (U[:, members] == U[:, firsts]).all(dim=0)
    Q64T[members[equal]] = Q64T[firsts[equal]]


def _round_f32(x: torch.Tensor, up: bool) -> torch.Tensor:
    """The float32 nearest float64 x in the given direction (x itself when representable)."""
    y = x.float()
    if up:
        return torch.where(y.double() < x, torch.nextafter(y, torch.full_like(y, torch.inf)), y)
    return torch.where(y.double() > x, torch.nextafter(y, torch.full_like(y, -torch.inf)), y)


def _thresholds(d32: torch.Tensor, T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 (hi, lo) column vectors: S > hi implies S - d > T, S < lo implies S - d < -T."""
    d = d32.double()
    return _round_f32(d + T, up=True)[:, None], _round_f32(d - T, up=False)[:, None]


def _scan(
    P32: torch.Tensor, QT32: torch.Tensor, T: torch.Tensor, start: int, bt: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The float32 pass in blocks of ``bt`` full rows: (chi, band rows, band columns, d32, row max).

    Band rows are local (0..n), columns global.
    """
    dev = P32.device
    n = P32.shape[0]
    Q = QT32.T
    chi = torch.zeros(n, dtype=torch.int64, device=dev)
    d32 = torch.empty(n, dtype=torch.float32, device=dev)
    best = torch.empty(n, dtype=torch.float32, device=dev)
    amb_i, amb_j = [], []
    for s in range(0, n, bt):
        nb = min(bt, n - s)
        S = P32[s : s + nb] @ Q
        ar = torch.arange(nb, device=dev)
        dcol = start + s + ar
        d = S[ar, dcol]
        d32[s : s + nb] = d
        S[ar, dcol] = -torch.inf
        hi, lo = _thresholds(d, T[s : s + nb])
        chi[s : s + nb] = (S > hi).sum(dim=1)
        ii, jj = torch.nonzero((S >= lo) & (S <= hi), as_tuple=True)
        amb_i.append(ii + s)
        amb_j.append(jj)
        best[s : s + nb] = S.amax(dim=1)
    empty = torch.zeros(0, dtype=torch.int64, device=dev)
    return chi, torch.cat(amb_i) if amb_i else empty, torch.cat(amb_j) if amb_j else empty, d32, best


def _row_max(
    d32: torch.Tensor, best32: torch.Tensor, T: torch.Tensor, rows: torch.Tensor, m_band: torch.Tensor
) -> torch.Tensor:
    """max_{j != i} M[i, j]: the float64 band max where the float32 row max lies in the band."""
    hi, lo = (x[:, 0].double() for x in _thresholds(d32, T))
    band_max = torch.full_like(T, -torch.inf).scatter_reduce(0, rows, m_band, reduce="amax")
    in_band = (best32 >= lo) & (best32 <= hi)
    return torch.where(in_band, band_max, best32.double())
