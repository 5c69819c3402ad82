"""Exact pruning for the full-OV top-k kernel: key tiles a row cannot need, rows settled early.

The question per row i of M = P Q (P = W_E left, Q = right W_U, rows a_i = P[i], keys
b_j = Q[:, j]) is how many entries beat the diagonal.  Two things settle it without the whole row.

Key tiles a row cannot need (``prune=True``).  The keys are put in an order that groups similar
ones (a principal-direction split: each set is cut at the median of its first principal component,
recursively, into tiles of ``w`` keys) and every tile t gets a ball: centre c_t (the tile's mean
key) and radius rho_t = max_{j in t} ||b_j - c_t||.  Then for every key j of tile t, by
Cauchy-Schwarz on b_j - c_t,

    a_i . b_j = a_i . c_t + a_i . (b_j - c_t) <= a_i . c_t + ||a_i|| rho_t               (1a)

and, splitting both vectors along the unit centre direction e_t = c_t / ||c_t|| (a_i = alpha e_t +
a_perp, b_j = beta_j e_t + b_perp, with beta_j in [beta_lo, beta_hi] and ||b_perp|| <= sigma_t
over the tile), by Cauchy-Schwarz on the perpendicular parts

    a_i . b_j = alpha beta_j + a_perp . b_perp <= max(alpha beta_lo, alpha beta_hi) + ||a_perp|| sigma_t  (1b)

UB(i, t) is the smaller of (1a) and (1b) (the cylinder (1b) is the tighter one when a tile's keys
spread along their centre, as keys of similar norm do).

The float32 scan's entry S[i, j] is within T_i of the exact a_i . b_j (T_i is the kernel's band
half-width, :func:`harness.circuits.ov_topk.circuit_tolerance`, which bounds the float32 error of
every entry and of the diagonal together), so if

    UB(i, t) + eps(i, t) + T_i < lo_i                                                   (2)

(lo_i: the float32 threshold below which the one-pass scan calls an entry "surely below the
diagonal"; eps: the float64 rounding of UB itself, 4 (r + 4) u64 (||a_i|| (||c_t|| + rho_t) +
|UB|)), every entry of tile t in row i would be classed "surely below" by the one-pass scan: it
adds nothing to ``above``, ``ties`` or the band, so skipping the tile leaves the counts exactly
those of the full scan.  Where the diagonal stands well clear of a tile's ball (strong copying:
a planted copier, a trained copying head), most tiles are skipped; where it does not (a random
model, a head that does not copy), (1) decides nothing and the products are all done.

Rows settled early (``k_max``).  Top-k accuracy for k <= k_max needs only to know whether
rank_i < k.  Once k_max entries of row i are *surely* above the diagonal (S > hi_i), rank_i >=
k_max under every tie rule, so the row fails top-k for every k <= k_max whatever the rest of the
row holds: its scan stops.  Such a row's ``above`` is >= k_max (not its full count) and its ties
are partial; every accuracy and tie-row count for k <= k_max is exactly the full scan's.  Tiles
are visited in decreasing order of their bound over the row block, so rows that do not copy meet
their k_max entries in the first tile or two.  A random model (no copying: a diagonal entry beats
about half its row) settles almost every row in the first tile; a strong copier (rank 0) never
settles, and gains only from (2).

The diagonal d_i is computed on its own in float32 (any summation order is within T_i, as for
every entry) and the entry (i, i) is masked out of whichever tile holds it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.circuits.ov_tiles import _CHUNK, _cat, _thresholds, count_tile, fused_counting, map_blocks, single_threaded_blas

_U64 = float(np.finfo(np.float64).eps) / 2
_SAMPLE = 4096  # keys per principal-direction estimate


@dataclass(frozen=True)
class KeyTiles:
    """Keys in tile order: tile t holds columns ``perm[t * width : (t + 1) * width]``.

    ``pos`` is the inverse permutation (``pos[perm[k]] == k``); ``centre`` (n_tiles, r) and
    ``radius`` (n_tiles,) are the tiles' balls; ``axis`` (n_tiles, r) the unit centre directions,
    ``beta_lo``/``beta_hi`` the range of the keys' components along them and ``sigma`` the largest
    perpendicular norm (1b).  Radii and sigma are inflated for their own float64 rounding, the
    beta range widened likewise.
    """

    perm: np.ndarray
    pos: np.ndarray
    width: int
    centre: np.ndarray
    radius: np.ndarray
    axis: np.ndarray
    beta_lo: np.ndarray
    beta_hi: np.ndarray
    sigma: np.ndarray

    @property
    def n_tiles(self) -> int:
        return len(self.radius)


def key_tiles(Q64T: np.ndarray, width: int) -> KeyTiles:
    """:func:`_key_tiles` with single-threaded BLAS (its r x r problems are too small for threads:
    a threaded OpenBLAS spent 0.1-0.6 s per split waiting on a loaded machine)."""
    with single_threaded_blas():
        return _key_tiles(Q64T, width)


def _key_tiles(Q64T: np.ndarray, width: int) -> KeyTiles:
    """Group the keys (rows of Q64T, (V, r)) into tiles of ``width`` by principal-direction splits.

    Each set is cut at a multiple of ``width`` near its median along its first principal direction
    (estimated on at most 4096 of its keys), until a set fits one tile; only the last tile may be
    short.  Deterministic for given keys.
    """
    V, r = Q64T.shape
    leaves: list[np.ndarray] = []
    stack = [np.arange(V)]
    while stack:
        idx = stack.pop()
        if len(idx) <= width:
            leaves.append(idx)
            continue
        X = Q64T[idx]
        X = X - X.mean(axis=0)
        sample = X[:: max(1, len(idx) // _SAMPLE)]
        direction = np.linalg.eigh(sample.T @ sample)[1][:, -1]  # r x r: cheaper than an SVD
        order = np.argsort(X @ direction, kind="stable")
        cut = max(width, (len(idx) // 2 // width) * width)
        stack.append(idx[order[cut:]])  # popped after the first half: the short tile comes last
        stack.append(idx[order[:cut]])
    perm = np.concatenate(leaves)
    pos = np.empty(V, np.int64)
    pos[perm] = np.arange(V)
    centre = np.stack([Q64T[t].mean(axis=0) for t in leaves])
    radius = np.array([np.linalg.norm(Q64T[t] - c, axis=1).max() for t, c in zip(leaves, centre)])
    cn = np.linalg.norm(centre, axis=1, keepdims=True)
    axis = np.divide(centre, cn, out=np.zeros_like(centre), where=cn > 0)
    beta_lo, beta_hi, sigma = (np.empty(len(leaves)) for _ in range(3))
    for k, t in enumerate(leaves):
        keys = Q64T[t]
        beta = keys @ axis[k]
        kn2 = np.einsum("ij,ij->i", keys, keys)
        slack = 4 * (r + 4) * _U64 * kn2.max()  # rounding of beta^2 and of ||b||^2 - beta^2
        margin = 4 * (r + 4) * _U64 * np.sqrt(kn2.max())
        beta_lo[k], beta_hi[k] = beta.min() - margin, beta.max() + margin
        sigma[k] = np.sqrt(np.maximum(kn2 - beta**2 + 2 * slack, 0).max())
    inflate = 1 + 4 * (r + 4) * _U64
    return KeyTiles(perm, pos, width, centre, radius * inflate, axis, beta_lo, beta_hi, sigma * inflate)


def tile_bounds(P64: np.ndarray, tiles: KeyTiles) -> np.ndarray:
    """UB(i, t) + eps(i, t) of (1)-(2): above every float64 a_i . b_j, j in tile t.  (n, n_tiles)."""
    r = P64.shape[1]
    an = np.linalg.norm(P64, axis=1)[:, None]
    ball = P64 @ tiles.centre.T + an * tiles.radius[None, :]
    cn = np.linalg.norm(tiles.centre, axis=1)[None, :]
    eps_ball = 4 * (r + 4) * _U64 * (an * (cn + tiles.radius[None, :]) + np.abs(ball))
    alpha = P64 @ tiles.axis.T  # (n, n_tiles); |error| <= gamma_r ||a_i|| (unit axis)
    a_perp = np.sqrt(np.maximum(an**2 - alpha**2 + 8 * (r + 4) * _U64 * an**2, 0))
    along = np.maximum(alpha * tiles.beta_lo[None, :], alpha * tiles.beta_hi[None, :])
    beta_max = np.maximum(np.abs(tiles.beta_lo), np.abs(tiles.beta_hi))[None, :]
    cyl = along + a_perp * tiles.sigma[None, :]
    eps_cyl = 4 * (r + 4) * _U64 * (an * beta_max + a_perp * tiles.sigma[None, :] + np.abs(cyl))
    return np.minimum(ball + eps_ball, cyl + eps_cyl) + 1e-300


def diagonal32(P32: np.ndarray, QT32: np.ndarray, start: int) -> np.ndarray:
    """d_i = P32[i] . QT32[start + i] in float32 (within T_i of the float64 diagonal, as every entry)."""
    return np.einsum("ij,ij->i", P32, QT32[start : start + len(P32)])


def pruned_scan(
    P32: np.ndarray,
    QT32: np.ndarray,
    P64: np.ndarray,
    T: np.ndarray,
    start: int,
    tiles: KeyTiles,
    bt: int,
    workers: int,
    *,
    prune: bool,
    k_max: int | None,
    fused: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """The one-pass scan's counts with the tiles of (2) skipped and rows settled at ``k_max``.

    P32 (n, r), QT32 (V, r) in natural column order; T (n,) the band half-widths (NaN: a row
    with nothing to count).  Returns (chi, band rows, band columns, d32): chi[i] counts the
    entries surely above the diagonal (S > hi_i) in the tiles scanned for row i; the band pairs
    are global (row, column) indices, as in the one-pass scan; the last item is the number of
    entries whose products were computed (the full scan computes n * V).
    """
    n, V = P32.shape[0], QT32.shape[0]
    w = -(-tiles.width // _CHUNK) * _CHUNK
    fused = fused and fused_counting()
    QTp = QT32[tiles.perm]
    d32 = diagonal32(P32, QT32, start)
    hi, lo = _thresholds(d32, T)
    with single_threaded_blas():  # an (n, r) x (r, n_tiles) product: threads only wait
        ub = tile_bounds(P64, tiles)
    with np.errstate(invalid="ignore"):
        need = ub + T[:, None] >= lo.astype(np.float64)  # not (2); NaN T: never needed
    if not prune:
        need = np.broadcast_to(np.isfinite(T)[:, None], need.shape)
    chi = np.zeros(n, np.int64)
    row_order = np.argsort(tiles.pos[start : start + n], kind="stable")  # rows grouped like their keys
    blocks = [row_order[s : s + bt] for s in range(0, n, bt)]
    ub_need = np.where(need, ub, -np.inf)

    def work(my_blocks: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray], int]:
        S = np.empty((bt, w), np.float32)
        masks = (np.zeros((bt, w), bool), np.zeros((bt, w), bool)) if not fused else None
        amb_i: list[np.ndarray] = []
        amb_j: list[np.ndarray] = []
        computed = 0
        for blk in my_blocks:
            act = blk[need[blk].any(axis=1)]
            for t in np.argsort(-ub_need[blk].max(axis=0), kind="stable"):
                sel = act[need[act, t]]
                if sel.size == 0:
                    continue
                m, c0 = len(sel), t * tiles.width
                cw = min(tiles.width, V - c0)
                np.matmul(P32[sel], QTp[c0 : c0 + cw].T, out=S[:m, :cw])
                computed += m * cw
                dcol = tiles.pos[start + sel] - c0
                hit = np.flatnonzero((dcol >= 0) & (dcol < cw))
                S[hit, dcol[hit]] = -np.inf  # the diagonal is neither above nor in the band
                above, bi, bj = count_tile(S, m, cw, hi[sel], lo[sel], masks, fused)
                chi[sel] += above
                if bi.size:
                    amb_i.append(start + sel[bi])
                    amb_j.append(tiles.perm[c0 + bj])
                if k_max is not None:
                    act = act[chi[act] < k_max]
                    if act.size == 0:
                        break
        return amb_i, amb_j, computed

    parts = map_blocks(work, blocks, workers)
    amb_i = _cat([x for p in parts for x in p[0]])
    amb_j = _cat([x for p in parts for x in p[1]])
    return chi, amb_i, amb_j, d32, sum(p[2] for p in parts)


def tile_width(block_cols: int, V: int) -> int:
    """Key tile width: the kernel's column tile, no wider than the keys rounded up to a chunk."""
    return max(1, min(block_cols, math.ceil(V / _CHUNK) * _CHUNK))
