"""The rank fit's restricted step: each row's loss over its hardest columns only.

Why.  A step of :func:`harness.circuits.low_rank.loss_and_grads` makes about eight passes over the
b x V logits (rank count, max, exp, sum, scale, and two backward products that read the whole
dense gradient).  Top-1 copying only depends on each row's strongest competitors, so the
restricted step keeps one product that forms the logits and one blocked max pass, and does the
rest on b x (K + 1) entries:

- ``L = (E[rows] A')(B' U)`` (b x V), ``d_i = L[i, t_i]`` (t_i: the row's own token);
- ``N_i`` = the K largest off-diagonal columns of row i (:func:`hard_negatives_numpy`: block
  maxima over blocks of ``BLOCK`` columns, the K best blocks, then the K best entries among their
  columns: exact, since the blocks holding a row's top-K entries are among its K best blocks; on a
  torch device ``torch.topk``);
- ``"ce"``: the softmax cross-entropy restricted to ``S_i = {t_i} u N_i``:
  ``loss_i = logsumexp_{j in S_i} L[i, j] - d_i`` (the full softmax's gradient with the columns
  outside ``S_i`` left out; they are the ones whose softmax weight is smallest);
  ``"margin"``: the hinge against the strongest competitor, ``max(0, 1 - (d_i - max_j L[i, j]))``:
  the same loss as the full step (K = 1), with its two-entries-per-row gradient kept sparse.
- With ``G`` the gradient of the mean loss in L, nonzero on ``S_i`` only (column index ``C``,
  b x m): ``dA' = E[rows]^T sum_m G[:, m] (B'U)[:, C[:, m]]^T`` and
  ``dB' = sum_{i, m} G[i, m] P_i^T U[:, C[i, m]]^T`` (``P = E[rows] A'``), summed per distinct
  column: O(b m r + n_cols r k) instead of O(b V r).

The batch's top-1 (``d_i`` above every other entry; ties count against) is read from ``N_i``'s
largest entry, without a counting pass.  Exactness of the fitted map's accuracy is not this
module's concern: the fit ends with the exact full-vocabulary count of the OV kernel.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

BLOCK = 64  # columns per block of the blocked max pass

PhaseObjective = Literal["ce", "margin"]


def hard_negatives_numpy(L: np.ndarray, cols: np.ndarray, K: int, chunked: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``L`` (b x V, float32, row-major; overwritten at ``(i, cols[i])``): the values
    and columns (b x K, descending) of the K largest entries other than ``L[i, cols[i]]``.

    Blocks are strided so that the block maxima are elementwise maxima of BLOCK contiguous slices
    (one vectorised pass): with ``n = V // BLOCK``, block c holds columns ``c + n t``
    (t < BLOCK), and the last ``V - n BLOCK`` columns form one more block.  ``chunked(n, width,
    work)`` runs ``work(lo, hi)`` over row blocks (the backend's threads).
    """
    b, V = L.shape
    K = min(K, V - 1)
    L[np.arange(b), cols] = -np.inf
    n = V // BLOCK
    tail = V - n * BLOCK
    members = (np.arange(n)[:, None] + n * np.arange(BLOCK)).tolist()  # block c's columns
    if tail:
        members.append(list(range(n * BLOCK, V)) + [V - 1] * (BLOCK - tail))  # padded, masked below
    members_arr = np.asarray(members, np.int64)  # n_blocks x BLOCK
    maxima = np.empty((b, len(members)), np.float32)

    def work(lo: int, hi: int) -> None:
        rows = L[lo:hi]
        if n:
            strided = np.lib.stride_tricks.as_strided(rows, shape=(hi - lo, BLOCK, n), strides=(rows.strides[0], n * 4, 4))
            strided.max(axis=1, out=maxima[lo:hi, :n])
        if tail:
            maxima[lo:hi, n] = rows[:, n * BLOCK :].max(axis=1)

    chunked(b, V, work)
    n_blocks = len(members)
    kb = min(K, n_blocks)
    best_blocks = np.argpartition(-maxima, kb - 1, axis=1)[:, :kb] if kb < n_blocks else np.tile(np.arange(n_blocks), (b, 1))
    cand = members_arr[best_blocks].reshape(b, -1)  # b x kb*BLOCK
    vals = np.take_along_axis(L, cand, 1)
    if tail:
        vals[(best_blocks == n)[:, :, None].repeat(BLOCK, 2).reshape(b, -1) & (np.arange(kb * BLOCK) % BLOCK >= tail)] = -np.inf
    top = np.argpartition(-vals, K - 1, axis=1)[:, :K] if K < vals.shape[1] else np.argsort(-vals, 1)[:, :K]
    top_vals = np.take_along_axis(vals, top, 1)
    order = np.argsort(-top_vals, axis=1, kind="stable")
    return np.take_along_axis(top_vals, order, 1), np.take_along_axis(np.take_along_axis(cand, top, 1), order, 1)


def hard_negatives_torch(L: Any, cols: Any, K: int) -> tuple[Any, Any]:
    """:func:`hard_negatives_numpy` for a torch tensor on any device (``torch.topk``)."""
    import torch

    K = min(K, L.shape[1] - 1)
    L[torch.arange(L.shape[0], device=L.device), cols] = -torch.inf
    return torch.topk(L, K, dim=1)


def restricted_grads(
    ops: Any, E: Any, U: Any, QU: Any, A: Any, B: Any, rows: np.ndarray, objective: PhaseObjective, negatives: int
) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    """Per-row losses, per-row top-1 flags (0 = correct) and the gradients of the restricted step.

    E: Q_E (V x k_E); U: Q_U^T (k_U x V); QU: Q_U (V x k_U, the same numbers, row-major);
    A' (k_E x r); B' (r x k_U).  Returns ``(row_loss, rank, dA', dB')`` like
    ``loss_and_grads``, except that ``rank`` is 0 for a correct row and 1 otherwise (only top-1 is
    known without a counting pass).
    """
    idx = ops.index(rows)
    b = len(rows)
    Er = E[idx]  # b x k_E
    Qm = B @ U  # r x V
    P = Er @ A  # b x r
    L = ops.logits(P, Qm)  # b x V
    ar = ops.index(np.arange(b))
    diag = L[ar, idx] * 1.0
    vals, cols = ops.hard_negatives(L, idx, 1 if objective == "margin" else negatives)
    best = vals[:, 0]
    wrong = ops.to_numpy(best >= diag).astype(np.int64)
    if objective == "ce":
        lse, G = ops.softmax_rows(ops.cat([diag[:, None], vals]))  # over S_i: b x (K+1)
        row_loss = lse - diag
        G /= b
        G[:, 0] -= 1.0 / b
        C = ops.cat([idx[:, None], cols])
    elif objective == "margin":
        row_loss = ops.relu(1.0 - (diag - best))
        w = ops.positive(row_loss) / b
        G = ops.cat([-w[:, None], w[:, None]])
        C = ops.cat([idx[:, None], cols[:, :1]])
    else:
        raise ValueError(f"unknown objective {objective!r}: 'ce' or 'margin'")
    QmT = Qm.T  # V x r (a view)
    dP = (G[:, :, None] * QmT[C]).sum(1)  # b x r
    dA = Er.T @ dP
    flat = C.reshape(-1)
    uniq, inverse = ops.unique(flat)
    H = ops.scatter_rows(len(uniq), inverse, (G[:, :, None] * P[:, None, :]).reshape(-1, P.shape[1]))  # n_u x r
    dB = H.T @ QU[uniq]  # r x k_U
    return ops.to_numpy(row_loss), wrong, dA, dB
