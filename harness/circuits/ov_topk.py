"""Exact top-k accuracy of a full OV circuit, without forming the V x V matrix.

The full OV circuit of a set of heads is

    M = W_E @ left @ right @ W_U                      (V x V)

with ``left = [W_V[h1] | W_V[h2] | ...]`` (d x r) and ``right = [W_O[h1]; W_O[h2]; ...]`` (r x d),
so that ``left @ right = sum_h W_V[h] @ W_O[h]`` (the effective circuit of several heads).
Row i is a source token, column j an output logit; the diagonal M[i, i] is "copy token i".

For every row the kernel counts, in one pass over the row's entries,

    above[i] = #{j : M[i, j] > M[i, i]}
    ties[i]  = #{j != i : M[i, j] == M[i, i]}
    ties_below[i] = #{j < i : M[i, j] == M[i, i]}

which gives the top-k accuracy for every k at once: row i is in the top k iff
``above[i] + ties[i] < k`` (pessimistic ties), ``above[i] < k`` (optimistic) or
``above[i] + ties_below[i] < k`` (the first-index rule of ``torch.argmax``).

Arithmetic.  The reference value of M[i, j] is the float64 evaluation of P[i] . Q[:, j] with the
float64 factors P = W_E @ left (V x r) and Q = right @ W_U (r x V), every entry summed in the same
order (equal unembedding columns give bit-equal columns of Q and so exact ties; an all-zero row
of P ties everywhere).  The scan runs in float32
(P and Q rounded to float32, row blocks S = P[b] @ Q, the diagonal taken from the same block
product).  Every float32 entry is within

    T_i = gamma_{r+2} * ||P[i]|| * (max_j ||Q[:, j]|| + ||Q[:, i]||)   (gamma_n = n u / (1 - n u))

of its float64 counterpart's difference with the diagonal (any summation order, FMA or not), so an
entry with S[i, j] > d_i + T_i is certainly above, one with S[i, j] < d_i - T_i certainly below.
Only the few entries inside the band are recomputed in float64 (``recheck=True``), which makes the
counts exactly those of the float64 matrix.  With ``recheck=False`` the counts are those of the
float32 block product itself (T = 0: the band is the float32 ties).

Speed (CPU, measured; benchmarks/bench_ov_topk.py).  Products: numpy's BLAS into a preallocated
tile (torch's matmul was slower on these shapes).  Counting: one loop per tile row compiled by
numba while the tile is in cache (:func:`harness.circuits.ov_tiles.count_tile`: the counts, the
row max and the band's indices in one pass, 0.17 ns per entry in cache on AVX-512 against 1.0-1.2 for numpy's mask
passes; without numba, with a warning, numpy comparisons into boolean masks counted by adding
mask bytes as uint64 words; torch's boolean sums were about 10x slower).  Worker threads with
single-threaded BLAS keep every core busy in the counting too.  Course-shaped model on 2 shared
AVX-512 cores: the kernel's CPU time is 1.75-1.8x the bare products', 1.4-1.5x without margins
(the float64 factors alone are about 0.13x); exact pruning (:mod:`harness.circuits.ov_prune`)
brings a top-k question to 0.4x where rows do not copy.  Workers: one per usable CPU.  Tiles:
sized for the CPU's L2 cache and the worker count (:mod:`harness.circuits.cpu_layout`: 256 x 1024
on a core with 2 MiB of L2), or, for scans of at least 2^30 entries, the tile the kernel's own scan
ran fastest with on this CPU (:mod:`harness.circuits.kernel_calibration`, measured once per CPU
signature and stored).  benchmarks/bench_ov_topk.py --cpu-configs measures kernel / bare under
emulated x86 instruction sets (AVX-512 down to plain x86-64) on 1 and 2 CPUs.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from harness.circuits.cpu_layout import KernelPlan, cpu_layout, kernel_plan
from harness.core.cpu_identity import cpu_share
from harness.circuits.factored import FactoredCircuit, as_numpy
from harness.circuits.kernel_calibration import (
    CAL_KEYS,
    CAL_ROWS,
    MIN_CALIBRATED_ENTRIES,
    Measure,
    calibrated_tiles,
    cpu_seconds,
    mode,
    rank_bucket,
    signature,
)
from harness.circuits.ov_prune import key_tiles, pruned_scan, tile_width
from harness.circuits.ov_topk_device import device_topk
from harness.circuits.ov_tiles import (  # noqa: F401  (_CHUNK, _lane_sums: part of this module's interface)
    _CHUNK,
    Scan,
    _blas_controller,
    _cat,
    _lane_sums,
    _thresholds,
    count_tile,
    fused_counting,
    map_blocks,
    single_threaded_blas,
)

TiePolicy = Literal["argmax", "pessimistic", "optimistic"]
"""How a tie with the diagonal counts: as ``torch.argmax`` breaks it (the first index wins: the
course's ``top_1_acc``), against the diagonal (``pessimistic``) or for it (``optimistic``)."""

_U32 = float(np.finfo(np.float32).eps) / 2  # unit roundoff of float32, 2**-24
_U64 = float(np.finfo(np.float64).eps) / 2
_TINY32 = float(np.finfo(np.float32).smallest_normal)
_F32_SAFE_MAX = 1e37  # float32 entries stay well below overflow (3.4e38)


@dataclass(frozen=True)
class TopKResult:
    """Per-row rank counts of the diagonal of a V x V circuit, for rows ``row_start .. + n_rows``.

    ``above[i]`` counts entries strictly larger than the diagonal, ``ties[i]`` entries equal to it
    (the diagonal itself excluded), ``ties_below[i]`` those of the ties at a lower column index.
    ``margin[i] = M[i, i] - max_{j != i} M[i, j]``: its sign is exact (positive iff the diagonal
    is the strict maximum); its value is within ``2 * tolerance[i]`` of the float64 one.
    ``k_max`` (a pruned scan): a row with ``above >= k_max`` was settled early; its counts are
    lower bounds, exact for every question about k <= k_max.  ``scanned``: the fraction of the
    n_rows x V entries whose products were computed (1.0 without pruning).
    """

    n_rows: int
    above: np.ndarray
    ties: np.ndarray
    ties_below: np.ndarray
    margin: np.ndarray
    row_start: int = 0
    tolerance: np.ndarray = field(default_factory=lambda: np.zeros(0))
    n_rechecked: int = 0
    k_max: int | None = None
    scanned: float = 1.0

    def _check_k(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if self.k_max is not None and k > self.k_max:
            raise ValueError(f"k = {k} above k_max = {self.k_max}: rows were settled at k_max (pruned scan)")

    def _rank(self, ties: TiePolicy) -> np.ndarray:
        """Rank (0 = first) of the diagonal in its row under a tie policy."""
        if ties == "pessimistic":
            return self.above.astype(np.int64) + self.ties
        if ties == "optimistic":
            return self.above.astype(np.int64)
        if ties == "argmax":
            return self.above.astype(np.int64) + self.ties_below
        raise ValueError(f"unknown tie policy {ties!r}: pessimistic, optimistic or argmax")

    def correct(self, k: int, ties: TiePolicy = "pessimistic") -> np.ndarray:
        """Boolean per row: the diagonal is among the k largest entries of its row."""
        self._check_k(k)
        return self._rank(ties) < k

    def accuracy(self, k: int, ties: TiePolicy = "pessimistic") -> float:
        """Top-k accuracy: the fraction of rows whose diagonal is among the k largest entries."""
        if self.n_rows == 0:
            return float("nan")
        return float(np.count_nonzero(self.correct(k, ties))) / self.n_rows

    def n_tie_rows(self, k: int) -> int:
        """Rows whose top-k answer depends on the tie policy: above < k <= above + ties."""
        changed = self.correct(k, "optimistic") & ~self.correct(k, "pessimistic")
        return int(np.count_nonzero(changed))


def full_circuit_topk(
    W_E: Any,
    left: Any,
    right: Any,
    W_U: Any,
    *,
    block_rows: int | None = None,
    block_cols: int | None = None,
    recheck: bool = True,
    rows: slice | None = None,
    device: Any = None,
    workers: int | None = None,
    margins: bool = True,
    prune: bool = False,
    k_max: int | None = None,
    fused: bool = True,
) -> TopKResult:
    """Count, per row i of M = W_E @ left @ right @ W_U, the entries above and equal to M[i, i].

    Shapes: W_E (V, d), left (d, r), right (r, d), W_U (d, V); torch tensors or numpy arrays.
    ``rows`` restricts the scan to a contiguous range of source rows (step 1).  The CPU path
    works on tiles of ``block_rows x block_cols`` float32 entries, numpy/BLAS for the products and
    the counting, in ``workers`` threads (default: one per usable CPU when threadpoolctl can make
    BLAS single-threaded; else 1, with a one-time :class:`KernelFallbackWarning` naming the cause);
    tiles left ``None`` come from :func:`cpu_plan` (this CPU's L2 cache and the worker count; for
    large scans, tiles calibrated on this CPU); the counts never depend on the tiles.  A
    ``device`` ("cuda", or "cpu" to test it) runs the whole computation with torch there
    (:mod:`harness.circuits.ov_topk_device`: factors, scan in blocks of ``block_rows`` full rows,
    default 64 Mi entries per block, float64 recheck), reading the results back once.
    Extra memory: the float64 and float32 factors (24 * (n_rows + V) * r bytes) plus, per worker,
    one tile and two boolean masks (6 bytes per tile entry).  ``margins=False`` skips the row-max
    pass (about a fifth of the counting work on the CPU) and leaves ``margin`` NaN.

    Exact pruning (CPU, :mod:`harness.circuits.ov_prune`): ``prune=True`` skips the key tiles
    that a norm bound proves cannot reach a row's rounding band; ``k_max`` stops a row once k_max
    entries are surely above its diagonal (its accuracy for every k <= k_max is then decided;
    :meth:`TopKResult.accuracy` refuses larger k).  Counts (below k_max) and accuracies equal the
    full scan's exactly; ``margin`` is NaN (the row max needs the skipped entries).
    ``fused=False`` counts with numpy's mask passes instead of the compiled loop (same counts).
    """
    E, L, R, U = (tuple(x.shape) for x in (W_E, left, right, W_U))  # shapes; the arrays below
    V, d = E
    if L[0] != d or R[1] != d or L[1] != R[0] or U != (d, V):
        raise ValueError(f"shape mismatch: W_E {E}, left {L}, right {R}, W_U {U}")
    start, stop, step = (rows or slice(None)).indices(V)
    if step != 1:
        raise ValueError("rows must be a contiguous slice (step 1)")
    stop = max(stop, start)
    n = stop - start
    if n == 0:
        empty = np.zeros(0, np.int32)
        return TopKResult(0, empty, empty, empty, np.zeros(0), start, np.zeros(0))

    if k_max is not None and k_max < 1:
        raise ValueError(f"k_max must be >= 1, got {k_max}")
    pruning = prune or k_max is not None
    if pruning and device is not None:
        raise ValueError("prune and k_max run on the CPU kernel only (device=None)")
    if device is not None:
        out = device_topk(W_E, left, right, W_U, start, stop, device=device, block_rows=block_rows,
                          recheck=recheck, margins=margins)
        return TopKResult(n, out.above, out.ties, out.ties_below, out.margin, start, out.tolerance, out.n_rechecked)
    E, L, R, U = (as_numpy(x) for x in (W_E, left, right, W_U))
    tiles_given = block_rows is not None and block_cols is not None
    plan = cpu_plan(workers) if tiles_given else cpu_plan(workers, r=L.shape[1], entries=n * V, fused=fused)
    P64 = _matmul64_rows(E[start:stop], L, workers=plan.workers)  # (n, r)
    Q64T = _matmul64_rows(U.T, R.T, workers=plan.workers)  # (V, r): row j is column j of Q = right @ W_U
    _check_finite_and_range(P64, Q64T)
    _share_duplicate_rows(U, Q64T)
    T = circuit_tolerance(P64, Q64T, start) if recheck else np.zeros(n)
    zero_rows = ~P64.any(axis=1)  # M[i] == 0 exactly: every other entry ties with the diagonal
    T[zero_rows] = np.nan  # NaN thresholds: the scan counts nothing in these rows
    P32, QT32 = P64.astype(np.float32), Q64T.astype(np.float32)

    if pruning:
        tiles = key_tiles(Q64T, tile_width(block_cols or plan.block_cols, V))
        chi, amb_i, amb_j, d32, computed = pruned_scan(
            P32, QT32, P64, T, start, tiles, block_rows or plan.block_rows, plan.workers, prune=prune, k_max=k_max,
            fused=fused,
        )
        scan = chi, amb_i, amb_j, d32, np.full(n, np.nan, np.float32)
        margins = False
    else:
        scan = _scan_numpy(P32, QT32, T, start, block_rows or plan.block_rows, block_cols or plan.block_cols, plan.workers, margins, fused)
    chi, amb_i, amb_j, d32, best32 = scan

    above = chi.astype(np.int64)
    local = amb_i - start
    if recheck:
        d64 = (P64 * Q64T[start:stop]).sum(axis=1)  # the same summation as _dot64's
        m_amb = _dot64(P64, Q64T, local, amb_j)
        is_above = m_amb > d64[local]
        is_tie = m_amb == d64[local]
        margin = d64 - _row_max(d32, best32, T, local, m_amb) if margins else np.full(n, np.nan)
    else:
        is_above = np.zeros(len(local), bool)
        is_tie = np.ones(len(local), bool)  # T = 0: the band holds exactly the float32 ties
        margin = d32.astype(np.float64) - best32 if margins else np.full(n, np.nan)
    above += np.bincount(local[is_above], minlength=n)
    ties = np.bincount(local[is_tie], minlength=n)
    ties_below = np.bincount(local[is_tie & (amb_j < amb_i)], minlength=n)
    ties[zero_rows] = V - 1
    ties_below[zero_rows] = np.flatnonzero(zero_rows) + start
    T[zero_rows] = 0.0
    return TopKResult(
        n_rows=n,
        above=above.astype(np.int32),
        ties=ties.astype(np.int32),
        ties_below=ties_below.astype(np.int32),
        margin=margin,
        row_start=start,
        tolerance=T,
        n_rechecked=int(len(local)) if recheck else 0,
        k_max=k_max,
        scanned=computed / (n * V) if pruning else 1.0,
    )


def effective_factors(W_V: Any, W_O: Any) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate heads: W_V (h, d, dh) -> left (d, h*dh), W_O (h, dh, d) -> right (h*dh, d).

    ``left @ right == sum_h W_V[h] @ W_O[h]``, the OV matrix of the heads' effective circuit
    (:meth:`FactoredCircuit.ov_of_stacked_heads`), as numpy arrays.
    """
    circuit = FactoredCircuit.ov_of_stacked_heads(torch.from_numpy(as_numpy(W_V)), torch.from_numpy(as_numpy(W_O)))
    return circuit.left.numpy(), circuit.right.numpy()


def circuit_tolerance(P64: np.ndarray, Q64T: np.ndarray, start: int = 0) -> np.ndarray:
    """T_i bounding |(S[i,j] - S[i,i]) - (M[i,j] - M[i,i])| for the float32 scan, per row.

    P64 is (rows, r), Q64T = (right @ W_U).T is (V, r).  Each float32 entry
    S = fl32(fl32(P) @ fl32(Q)) differs from the exact P . Q by at most
    gamma_{r+2} sum_k |P_ik||Q_kj| <= gamma_{r+2} ||P_i|| ||Q_j|| (Cauchy-Schwarz), and the float64
    evaluation by gamma^{64}_r of the same; an absolute term covers float32 underflow.
    """
    r = P64.shape[1]
    gamma32 = (r + 2) * _U32 / (1 - (r + 2) * _U32)
    gamma64 = r * _U64 / (1 - r * _U64)
    pn = np.linalg.norm(P64, axis=1)
    qn = np.linalg.norm(Q64T, axis=1)
    qmax = float(qn.max()) if qn.size else 0.0
    qdiag = qn[start : start + len(pn)]
    T = (gamma32 + gamma64) * pn * (qmax + qdiag) + 4 * (r + 2) * _TINY32 * (1 + pn + qmax)
    return T * (1 + 1e-6)  # slack for the float64 rounding of T itself


def _matmul64_rows(A: np.ndarray, B: np.ndarray, chunk: int = 4096, workers: int = 1) -> np.ndarray:
    """A @ B in float64, converting A a chunk of rows at a time (bounded extra memory).

    ``workers`` > 1: the chunks dealt to that many threads with single-threaded BLAS by
    :func:`harness.circuits.ov_tiles.map_blocks`, as the scan (a
    threaded BLAS on a loaded machine spent about 0.6 s of CPU on the course model's two factors
    against 0.45 s this way).
    """
    B64 = B.astype(np.float64)
    out = np.empty((A.shape[0], B.shape[1]))

    def job(starts: list[int]) -> None:
        for s in starts:
            np.matmul(A[s : s + chunk].astype(np.float64), B64, out=out[s : s + chunk])

    map_blocks(job, list(range(0, A.shape[0], chunk)), workers)
    return out


def _check_finite_and_range(P64: np.ndarray, Q64T: np.ndarray) -> None:
    """Refuse NaN or infinite weights (they reach the factors) and float32 overflow in the scan."""
    pmax = float(np.abs(P64).max()) if P64.size else 0.0
    qmax = float(np.abs(Q64T).max()) if Q64T.size else 0.0
    if not (np.isfinite(pmax) and np.isfinite(qmax)):
        raise ValueError("weights contain NaN or infinity")
    if pmax * qmax * P64.shape[1] > _F32_SAFE_MAX:  # |S| <= r max|P| max|Q|, also for float32 P, Q
        raise ValueError("circuit values too large for a float32 scan")


def _share_duplicate_rows(U: np.ndarray, Q64T: np.ndarray, key_rows: int = 32) -> None:
    """Copy row j of Q64T from row j' wherever W_U[:, j] == W_U[:, j'] exactly.

    BLAS may round equal columns differently depending on where they sit (edge kernels), which
    would split an exact tie between duplicated unembeddings.  Candidates share a hash of their
    first ``key_rows`` entries (summed row by row: the same order for every token); each candidate
    is then checked for exact equality over all d entries.
    """
    g = np.random.default_rng(0).standard_normal(min(key_rows, U.shape[0]))
    h = (g[:, None] * U[: len(g)]).sum(axis=0)
    order = np.argsort(h, kind="stable")
    same = h[order[1:]] == h[order[:-1]]
    if not same.any():
        return
    starts = np.where(np.concatenate([[True], ~same]), np.arange(len(order)), 0)
    first = order[np.maximum.accumulate(starts)]
    dup = np.flatnonzero(first != order)
    members, firsts = order[dup], first[dup]
    equal = (U[:, members] == U[:, firsts]).all(axis=0)
    Q64T[members[equal]] = Q64T[firsts[equal]]


def _scan_numpy(
    P32: np.ndarray,
    QT32: np.ndarray,
    T: np.ndarray,
    start: int,
    bt: int,
    w: int,
    workers: int,
    row_max: bool = True,
    fused: bool = True,
) -> Scan:
    """One float32 pass over M's rows in tiles of bt x w entries (numpy + BLAS).

    Returns, per row: the count of entries surely above the diagonal (S > d + T), the band
    entries (|S - d| <= T, j != i) as global (row, column) pairs, the float32 diagonal d, and the
    float32 max over j != i.  Row blocks are aligned so that a block's diagonal lies in a single
    column tile, processed first: the diagonal comes from the same product as its row.
    ``workers`` threads take interleaved row blocks, each with single-threaded BLAS (numpy
    releases the GIL in its loops), so that the counting passes use every core too.
    ``row_max=False`` skips the max (left at -inf).  Counting: :func:`ov_tiles.count_tile`, fused
    (numba) where available and ``fused``, else numpy's mask passes.
    """
    fused = fused and fused_counting()
    n, V = P32.shape[0], QT32.shape[0]
    bt = max(1, min(bt, V))
    unit = bt * _CHUNK // math.gcd(bt, _CHUNK)  # tiles align with row blocks and count chunks
    w = -(-min(w, V) // unit) * unit
    if w >= V:  # one column tile holds every diagonal: only the count chunks need aligning
        w = -(-V // _CHUNK) * _CHUNK  # (the lcm made 150-row blocks 76,800 columns wide)
    chi = np.zeros(n, np.int64)
    d32 = np.empty(n, np.float32)
    best = np.full(n, -np.inf, np.float32)
    edges = [start] + list(range((start // bt + 1) * bt, start + n, bt)) + [start + n]
    blocks = list(zip(edges[:-1], edges[1:]))

    def work(my_blocks: list[tuple[int, int]]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        S = np.empty((bt, w), np.float32)
        above_m = np.zeros((bt, w) if not fused else (0, w), bool)
        ge_m = np.zeros((bt, w) if not fused else (0, w), bool)
        amb_i: list[np.ndarray] = []
        amb_j: list[np.ndarray] = []
        for g0, g1 in my_blocks:
            nb, r0 = g1 - g0, g0 - start
            ar = np.arange(nb)
            c_diag = (g0 // w) * w
            for c0 in [c_diag] + [c for c in range(0, V, w) if c != c_diag]:
                cw = min(w, V - c0)
                np.matmul(P32[r0 : r0 + nb], QT32[c0 : c0 + cw].T, out=S[:nb, :cw])
                if c0 == c_diag:
                    dcol = g0 - c0 + ar
                    d32[r0 : r0 + nb] = S[ar, dcol]
                    S[ar, dcol] = -np.inf  # the diagonal is neither above nor in the band
                    hi, lo = _thresholds(d32[r0 : r0 + nb], T[r0 : r0 + nb])
                rs = slice(r0, r0 + nb)
                above, bi, bj = count_tile(S, nb, cw, hi, lo, (above_m, ge_m), fused, best[rs] if row_max else None)
                chi[rs] += above
                if bi.size:
                    amb_i.append(g0 + bi)
                    amb_j.append(c0 + bj)
        return amb_i, amb_j

    parts = map_blocks(work, blocks, workers)
    amb_i = [x for p in parts for x in p[0]]
    amb_j = [x for p in parts for x in p[1]]
    return chi, _cat(amb_i), _cat(amb_j), d32, best


class KernelFallbackWarning(RuntimeWarning):
    """The kernel runs on fewer worker threads than the CPU offers (a missing dependency)."""


_fallback_warned = False


def cpu_plan(workers: int | None = None, r: int | None = None, entries: int = 0, fused: bool = True) -> KernelPlan:
    """The CPU kernel's tiles and workers on this machine (``workers`` given: tiles for that many).

    Workers: one per usable CPU (:func:`_auto_workers`).  Tiles: the L2 rule
    (:func:`harness.circuits.cpu_layout.kernel_plan`), or, for a scan of rank ``r`` over at least
    ``MIN_CALIBRATED_ENTRIES`` entries, the tile measured fastest on this CPU
    (:mod:`harness.circuits.kernel_calibration`: once per CPU signature, then read from disk).
    """
    layout = cpu_layout()
    rule = kernel_plan(layout, workers or _auto_workers())
    if r is None or entries < MIN_CALIBRATED_ENTRIES or mode() == "rule":
        return rule
    fused = fused and fused_counting()
    sig = signature(rule.workers, r, fused, layout.describe())
    found = calibrated_tiles(sig, _calibration_scan(rank_bucket(r), rule.workers, fused), (rule.block_rows, rule.block_cols))
    return KernelPlan(found.block_rows, found.block_cols, rule.workers,
                      f"{layout.describe()}; {rule.workers} worker(s); tiles {found.block_rows} x {found.block_cols} "
                      f"({found.describe()}; the L2 rule's: {rule.block_rows} x {rule.block_cols})")


def _calibration_scan(r: int, workers: int, fused: bool) -> Measure:
    """CPU seconds of the kernel's scan (row max included) of a seeded normal problem of rank ``r``:
    ``CAL_ROWS`` rows per worker x ``CAL_KEYS`` keys, ``workers`` threads, with a given tile.  One
    worker scans in the calling thread on one BLAS thread and is timed by that thread's clock
    (a rank curve's fits calibrate in threads side by side: the process clock would add theirs)."""
    rng = np.random.default_rng(0)
    P32 = (rng.standard_normal((CAL_ROWS * workers, r)) / math.sqrt(r)).astype(np.float32)
    QT32 = rng.standard_normal((CAL_KEYS, r)).astype(np.float32)
    T = np.full(len(P32), 1e-5)  # a band as thin as a real one: a few entries per row block

    own_thread = workers == 1 and _blas_controller() is not None  # else BLAS may work in its own threads

    def measure(block_rows: int, block_cols: int) -> float:
        def scan() -> None:
            _scan_numpy(P32, QT32, T, 0, block_rows, block_cols, workers, True, fused)

        if not own_thread:
            return cpu_seconds(scan)
        with single_threaded_blas():
            return cpu_seconds(scan, own_thread=True)

    return measure


def _auto_workers() -> int:
    """One worker per core this process may keep busy (:func:`harness.core.cpu_identity.cpu_share`:
    the usable CPUs, or a pytest-xdist worker's share of them) if BLAS can be made single-threaded, else 1.

    Without threadpoolctl the workers' BLAS calls would each start their own threads and fight
    over the cores, so the kernel keeps to one worker: correct, but the counting passes then use
    one core.  That fallback is announced once per process (:class:`KernelFallbackWarning`).
    """
    cores = cpu_share()
    if not fused_counting():
        _warn_once("numba is not installed, so the OV kernel counts with numpy's mask passes "
                   "(about 1.6x the time of the compiled loop); install the declared dependency: pip install numba")
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        if cores > 1:
            _warn_fallback(cores)
        return 1
    return cores


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(f"full_circuit_topk: {message}", KernelFallbackWarning, stacklevel=4)


def _warn_fallback(cores: int) -> None:
    global _fallback_warned
    if _fallback_warned:
        return
    _fallback_warned = True
    warnings.warn(
        f"full_circuit_topk: threadpoolctl is not installed, so the OV kernel runs 1 worker thread "
        f"instead of {cores} on this {cores}-core CPU (about half the speed on 2 cores); "
        "install the declared dependency: pip install threadpoolctl",
        KernelFallbackWarning, stacklevel=3,
    )


def _row_max(
    d32: np.ndarray, best32: np.ndarray, T: np.ndarray, rows: np.ndarray, m_band: np.ndarray
) -> np.ndarray:
    """max_{j != i} M[i, j] with an exact sign relative to M[i, i], within 2 T_i in value.

    If the float32 row max lies in the band, the max is the float64 max over the band (the entries
    below the band are below M[i, i]); otherwise the float32 max is already on the right side.
    """
    hi, lo = (x[:, 0].astype(np.float64) for x in _thresholds(d32, T))
    band_max = np.full(len(d32), -np.inf)
    np.maximum.at(band_max, rows, m_band)
    in_band = (best32 >= lo) & (best32 <= hi)
    return np.where(in_band, band_max, best32.astype(np.float64))


def _dot64(
    P64: np.ndarray, Q64T: np.ndarray, i: np.ndarray, j: np.ndarray, chunk: int = 1 << 16
) -> np.ndarray:
    """float64 P64[i[t]] . Q64T[j[t]] for each t, with one fixed summation order for every pair.

    The same order for all pairs makes equal factors give bit-equal values (exact ties stay ties).
    """
    out = np.empty(len(i))
    for s in range(0, len(i), chunk):
        prod = P64[i[s : s + chunk]] * Q64T[j[s : s + chunk]]
        out[s : s + chunk] = prod.sum(axis=1)
    return out
