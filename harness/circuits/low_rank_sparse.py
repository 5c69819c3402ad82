"""The rank fit's restricted step: each row's loss over its hardest columns only.

Why.  A step of :func:`harness.circuits.low_rank.loss_and_grads` makes about eight passes over the
b x V logits (rank count, max, exp, sum, scale, and two backward products that read the whole
dense gradient).  Top-1 copying only depends on each row's strongest competitors, so the
restricted step keeps one product that forms the logits and one blocked max pass, and does the
rest on b x (K + 1) entries:

- ``L = (E[rows] A')(B' U)`` (b x V), ``d_i = L[i, t_i]`` (t_i: the row's own token);
- ``N_i`` = the K largest off-diagonal columns of row i (:func:`hardest_from_factors` /
  :func:`hard_negatives_compiled`: one compiled read pass keeping a running top-K list, tile by
  tile with the logits product; without numba :func:`hard_negatives_numpy`: block
  maxima over blocks of ``BLOCK`` columns, the K best blocks, then the K best entries among their
  columns: exact, since the blocks holding a row's top-K entries are among its K best blocks; on a
  torch device ``torch.topk``);
- ``"ce"``: the softmax cross-entropy restricted to ``S_i = {t_i} u N_i``:
  ``loss_i = logsumexp_{j in S_i} L[i, j] - d_i`` (the full softmax's gradient with the columns
  outside ``S_i`` left out; they are the ones whose softmax weight is smallest), optionally with
  a uniformly sampled bulk standing for those columns (:func:`bulk_logits`);
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

import functools
import importlib
import math
from typing import Any, Callable, Literal

import numpy as np

from harness.circuits.ov_tiles import map_blocks

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


def _topk_tile(T: np.ndarray, nrows: int, width: int, row0: int, col0: int, cols: np.ndarray, K: int,
               out_vals: np.ndarray, out_cols: np.ndarray, diag: np.ndarray) -> None:
    """Fold a tile ``T[:nrows, :width]`` (rows ``row0 + ii``, columns ``col0 + jj`` of the logits)
    into each row's running list of its K largest entries other than its own column ``cols[i]``
    (``out_vals``/``out_cols``, descending; start them at -inf / -1), and write the own column's
    entry to ``diag[i]`` when the tile holds it (compiled by numba).  An entry enters the list only
    when it beats the list's smallest, which nearly never happens after the first columns: each
    chunk of FOLD_CHUNK entries is first only tested against that threshold (``hit |= x > t`` over
    a slice of the row: a boolean or-reduction, which the compiler vectorises; an integer count of
    the comparisons indexed in the 2-D tile ran about 4 entries per vector, with a horizontal sum per
    chunk), and scanned entry by entry, in column order, only where some entry beats it or the chunk
    holds the own column: the lists are those of the plain entry-by-entry scan.  Measured on
    SmolLM2's tiles (one thread, load ~4.4): 0.13-0.17 ns per entry at K = 1 and 0.17-0.31 at K = 5,
    against 0.60-1.07 for the integer count over chunks of 32; 0.43-0.60 at K = 32 (about 210
    entries of a 49,152-column row enter its list) against 0.92-1.0.  Ties keep the earlier column."""
    for ii in range(nrows):
        i = row0 + ii
        c = cols[i] - col0
        thresh = out_vals[i, K - 1]
        row = T[ii, :width]
        for lo in range(0, width, FOLD_CHUNK):
            seg = row[lo : lo + FOLD_CHUNK]
            n = seg.shape[0]
            if c < lo or c >= lo + n:
                hit = False
                for jj in range(n):
                    hit |= seg[jj] > thresh
                if not hit:
                    continue
            for jj in range(n):
                x = seg[jj]
                if lo + jj == c:
                    diag[i] = x
                elif x > thresh:
                    p = K - 1
                    while p > 0 and out_vals[i, p - 1] < x:
                        out_vals[i, p] = out_vals[i, p - 1]
                        out_cols[i, p] = out_cols[i, p - 1]
                        p -= 1
                    out_vals[i, p] = x
                    out_cols[i, p] = col0 + lo + jj
                    thresh = out_vals[i, K - 1]


FOLD_CHUNK = 64  # entries tested against a row's threshold before any is looked at one by one


@functools.lru_cache(maxsize=1)
def _compiled_topk() -> Callable[..., None] | None:
    """:func:`_topk_tile` compiled by numba (cached on disk), or None without numba (imported on
    first use: its import costs about half a second)."""
    try:
        numba = importlib.import_module("numba")
    except ImportError:
        return None
    return numba.njit(nogil=True, cache=True)(_topk_tile)


def _topk_state(b: int, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.full((b, K), -np.inf, np.float32), np.full((b, K), -1, np.int64), np.empty(b, np.float32)


def hard_negatives_compiled(L: np.ndarray, cols: np.ndarray, K: int, chunked: Any) -> tuple[np.ndarray, np.ndarray]:
    """:func:`hard_negatives_numpy`'s result (values equal; among tied values the earlier
    columns) from the compiled one-pass loop, ``L`` left unchanged; the blocked numpy pass
    without numba."""
    loop = _compiled_topk()
    if loop is None:
        return hard_negatives_numpy(L, cols, K, chunked)
    b, V = L.shape
    K = min(K, V - 1)
    vals, out_cols, diag = _topk_state(b, K)
    cols = np.ascontiguousarray(cols, dtype=np.int64)
    chunked(b, V, lambda lo, hi: loop(L[lo:hi], hi - lo, V, lo, 0, cols, K, vals, out_cols, diag))
    return vals, out_cols


TILE_ENTRIES = 1 << 18  # a 1 MiB tile of logits (the L2 cache of a core here): formed and folded while in cache


def tile_shape(rank: int) -> tuple[int, int]:
    """Rows x columns of a logits tile at this rank: 1 MiB, wide at small rank (the product writes
    the tile and is cheap), squarer at larger rank (the product packs each column tile once per row
    tile).  Measured on SmolLM2's shapes, one thread, b = 2,048: rank 4 64 x 4096 best; ranks 16 and
    64 256-512 rows 10-35% faster than 64 x 4096 (rank 64: 0.24 s against 0.36 s for the whole
    product and one pass over it)."""
    rows = 64 if rank <= 8 else 256 if rank <= 32 else 512
    return rows, TILE_ENTRIES // rows


def hardest_from_factors(P: np.ndarray, Qm: np.ndarray, cols: np.ndarray, K: int,
                         workers: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Own entries and the K hardest columns of ``L = P Qm`` (b x r times r x V, any layout)
    without forming L: tiles of :func:`tile_shape` logits, each folded into the rows' running
    lists while in cache (writing and re-reading 4 b V bytes cost more than folding in cache).
    Returns ``(diag, vals, cols)`` (b; b x K; b x K), None without numba.  Row blocks are dealt to
    ``workers`` threads with one BLAS thread each (:func:`harness.circuits.ov_tiles.map_blocks`);
    every tile's product is the same single-threaded call whatever the number of workers, and each
    row's columns are folded in increasing order: the result does not depend on the workers.  The
    entries are the whole product's up to rounding (bitwise where the BLAS blocks a tile as it
    blocks the whole, as on this project's CPU, not under every kernel: checked in the tests)."""
    loop = _compiled_topk()
    if loop is None:
        return None
    b, r = P.shape
    V = Qm.shape[1]
    K = min(K, V - 1)
    vals, out_cols, diag = _topk_state(b, K)
    cols = np.ascontiguousarray(cols, dtype=np.int64)
    tile_rows, tile_cols = tile_shape(r)

    def work(starts: list[int]) -> None:
        tile = np.empty((tile_rows, tile_cols), np.float32)
        for r0 in starts:
            r1 = min(r0 + tile_rows, b)
            for c0 in range(0, V, tile_cols):
                c1 = min(c0 + tile_cols, V)
                out = tile[: r1 - r0, : c1 - c0]
                np.matmul(P[r0:r1], Qm[:, c0:c1], out=out)
                loop(out, r1 - r0, c1 - c0, r0, c0, cols, K, vals, out_cols, diag)

    map_blocks(work, list(range(0, b, tile_rows)), workers)
    return diag, vals, out_cols


def _sparse_backward(G: np.ndarray, C: np.ndarray, P: np.ndarray, QmT: np.ndarray, inverse: np.ndarray,
                     dP: np.ndarray, H: np.ndarray) -> None:
    """The restricted step's two sparse products in one pass (compiled by numba):
    ``dP[i] = sum_m G[i, m] QmT[C[i, m]]`` (b x r) and ``H[inverse[i m']] += G[i, m] P[i]``
    (n_u x r, zeroed by the caller; ``m' = i M + m``).  Sums in increasing m and t = i M + m, the
    order of numpy's ``(G[:, :, None] * QmT[C]).sum(1)`` and ``np.add.at``; products rounded to
    float32 before each add, as there (no fused multiply-add): bitwise their results (tested)."""
    b, M = G.shape
    r = P.shape[1]
    for i in range(b):
        for m in range(M):
            g = G[i, m]
            q = C[i, m]
            u = inverse[i * M + m]
            if m == 0:
                for c in range(r):
                    dP[i, c] = g * QmT[q, c]
            else:
                for c in range(r):
                    dP[i, c] += g * QmT[q, c]
            for c in range(r):
                H[u, c] += g * P[i, c]


@functools.lru_cache(maxsize=1)
def _compiled_backward() -> Callable[..., None] | None:
    """:func:`_sparse_backward` compiled by numba (cached on disk), or None without numba."""
    try:
        numba = importlib.import_module("numba")
    except ImportError:
        return None
    return numba.njit(nogil=True, cache=True)(_sparse_backward)


def sparse_backward(G: np.ndarray, C: np.ndarray, P: np.ndarray, QmT: np.ndarray, inverse: np.ndarray,
                    n_unique: int) -> tuple[np.ndarray, np.ndarray]:
    """``(dP, H)`` of :func:`_sparse_backward` (compiled; numpy's gathers and ``np.add.at``
    without numba, the same numbers)."""
    b, M = G.shape
    r = P.shape[1]
    H = np.zeros((n_unique, r), np.float32)
    loop = _compiled_backward()
    if loop is None:
        np.add.at(H, inverse, (G[:, :, None] * P[:, None, :]).reshape(-1, r))
        return (G[:, :, None] * QmT[C]).sum(1), H
    dP = np.empty((b, r), np.float32)
    loop(np.ascontiguousarray(G), np.ascontiguousarray(C), np.ascontiguousarray(P), QmT,
         np.ascontiguousarray(inverse), dP, H)
    return dP, H


def hard_negatives_torch(L: Any, cols: Any, K: int) -> tuple[Any, Any]:
    """:func:`hard_negatives_numpy` for a torch tensor on any device (``torch.topk``)."""
    import torch

    K = min(K, L.shape[1] - 1)
    L[torch.arange(L.shape[0], device=L.device), cols] = -torch.inf
    return torch.topk(L, K, dim=1)


def restricted_grads(
    ops: Any, E: Any, QU: Any, A: Any, B: Any, rows: np.ndarray, objective: PhaseObjective, negatives: int,
    bulk: np.ndarray | None = None, bulk_weight: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    """Per-row losses, per-row top-1 flags (0 = correct) and the gradients of the restricted step.

    E: Q_E (V x k_E); QU: Q_U (V x k_U, row-major);
    A' (k_E x r); B' (r x k_U).  Returns ``(row_loss, rank, dA', dB')`` like
    ``loss_and_grads``, except that ``rank`` is 0 for a correct row and 1 otherwise (only top-1 is
    known without a counting pass).  ``bulk`` (``"ce"`` only): columns drawn uniformly without
    replacement that stand for the rest of each row's softmax (:func:`bulk_logits`).
    """
    idx = ops.index(rows)
    b = len(rows)
    Er = E[idx]  # b x k_E
    QmT = ops.factor_rows(QU, B)  # V x r, row-major: (B' U)^T, bitwise B' U's entries
    Qm = QmT.T  # r x V
    P = Er @ A  # b x r
    diag, vals, cols = ops.hardest(P, Qm, idx, 1 if objective == "margin" else negatives)
    V = Qm.shape[1]
    best = vals[:, 0]
    wrong = ops.to_numpy(best >= diag).astype(np.int64)
    S = Gs = None
    if objective == "ce":
        S = None if bulk is None else ops.index(bulk)
        lse, G = ops.ce_softmax(diag, vals, P, Qm, S, idx, V, bulk_weight)  # over S_i (and the bulk): b x (K+1+m)
        row_loss = lse - diag
        G /= b
        G[:, 0] -= 1.0 / b
        if S is not None:
            G, Gs = G[:, : vals.shape[1] + 1], G[:, vals.shape[1] + 1 :]
        C = ops.cat([idx[:, None], cols])
    elif objective == "margin":
        row_loss = ops.relu(1.0 - (diag - best))
        w = ops.positive(row_loss) / b
        G = ops.cat([-w[:, None], w[:, None]])
        C = ops.cat([idx[:, None], cols[:, :1]])
    else:
        raise ValueError(f"unknown objective {objective!r}: 'ce' or 'margin'")
    uniq, inverse = ops.unique(C.reshape(-1))
    dP, H = ops.sparse_backward(G, C, P, QmT, inverse, len(uniq))  # b x r; n_u x r
    dA, dB = ops.backward_products(Er, dP, H, QU, uniq, Gs, QmT, S, P)
    return ops.to_numpy(row_loss), wrong, dA, dB


def backward_products(Er: Any, dP: Any, H: Any, QU: Any, uniq: Any, Gs: Any, QmT: Any, S: Any,
                      P: Any) -> tuple[Any, Any]:
    """``dA' = E[rows]^T dP`` and ``dB' = H^T Q_U[uniq]`` (r x k_U), plus, with a sampled bulk ``S``
    (b x m gradients ``Gs``), its dense part (:func:`products_beside_columns`)."""
    dA, bulk_dB = products_beside_columns(Er, dP, Gs, QmT, S, P, QU)
    return dA, with_bulk(H.T @ QU[uniq], bulk_dB)


def products_beside_columns(Er: Any, dP: Any, Gs: Any, QmT: Any, S: Any, P: Any, QU: Any) -> tuple[Any, Any]:
    """Every backward product but ``H^T Q_U[uniq]``: ``dA' = E[rows]^T dP``, plus, with a sampled
    bulk ``S``, ``E[rows]^T (Gs (B'U)^T[S])``; and the bulk's part of dB', ``(Gs^T P)^T Q_U[S]``
    (None without a bulk)."""
    dA = Er.T @ dP
    if S is None:
        return dA, None
    return dA + Er.T @ (Gs @ QmT[S]), (Gs.T @ P).T @ QU[S]  # the sampled bulk's dense part: b x m gradients


def with_bulk(dB: Any, bulk_dB: Any) -> Any:
    """``dB' = H^T Q_U[uniq]`` plus the bulk's part where there is one."""
    return dB if bulk_dB is None else dB + bulk_dB


def bulk_logits(ops: Any, Ls: Any, S: Any, idx: Any, vals: Any, V: int, weight: float = 1.0) -> Any:
    """The sampled bulk's logits, b x m: ``L[i, s] + log w_i`` for the sampled columns s outside
    ``S_i`` (those in it, i.e. the row's own token or at least its K-th largest entry, get -inf).
    ``Ls = L[:, S]`` (b x m; formed as ``P (B'U)[:, S]``, a small product, not gathered from the
    b x V logits, whose scattered reads cost more).

    The restricted cross-entropy leaves out the ``V - 1 - K`` columns outside ``S_i``; where
    nearly every row is wrong (low ranks) their softmax mass is most of the row's and their
    gradient matters.  A uniform sample of m columns estimates that mass without bias: each of
    row i's ``m_i`` unmasked samples stands for ``w_i = (V - 1 - K) / m_i`` columns, i.e. enters
    the softmax with logit ``L[i, s] + log w_i`` (the log-Q correction of sampled softmax), and
    its gradient is that softmax weight.
    """
    K = vals.shape[1]
    mask = (Ls >= vals[:, K - 1 :]) | (S[None, :] == idx[:, None])
    Ls[mask] = -math.inf
    kept = ops.clip_min(ops.float_(len(S) - mask.sum(1)), 1.0)
    return Ls + (math.log(weight * max(V - 1 - K, 1)) - ops.log(kept))[:, None]
