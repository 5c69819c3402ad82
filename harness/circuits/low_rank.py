"""Achievable copying accuracy of one rank-r matrix in the OV position.

Problem.  Given fixed ``W_E`` (V x d) and ``W_U`` (d x V) and a rank r, find ``A`` (d x r) and
``B`` (r x d) that maximise the top-1 copying accuracy of

    M = W_E A B W_U        (V x V; row i is correct when M[i, i] is the strict maximum of row i)

i.e. the best any single rank-r OV matrix ``A B`` (a head with d_head = r) could do through the
model's own embedding and unembedding.  This is the measurement behind ARENA 1.2's "rank 64 versus
128" question.  M is never formed.

Coordinates.  Write ``W_E = Q_E T_E`` and ``W_U^T = Q_U T_U`` with orthonormal ``Q_E`` (V x k_E),
``Q_U`` (V x k_U) and full-row-rank ``T`` (from the eigendecomposition of the d x d Gram matrices).
Then ``M = Q_E X Q_U^T`` with ``X = (T_E A)(B T_U^T) = A' B'``: the optimisation runs over
``A'`` (k_E x r), ``B'`` (r x k_U), which is the same set of circuits, better conditioned (Adam is
not invariant to a linear change of variables), and maps back exactly by ``A = T_E^+ A'``,
``B = B' (T_U^+)^T``.

Initialisation (closed form).  ``||Q_E X Q_U^T - I||_F^2 = ||X - C||_F^2 + const`` with
``C = Q_E^T Q_U``, so the rank-r least-squares fit of the identity is the truncated SVD
``X = U_r S_r V_r^T`` of the small (k_E x k_U) matrix C (Eckart-Young); ``A' = U_r S_r^(1/2)``,
``B' = S_r^(1/2) V_r^T``.  Its scale is then set to the one that minimises the softmax
cross-entropy (a convex function of a single logit scale, found by bisection on its derivative).

Objective.  ``"ce"``: mean over sampled rows i of ``logsumexp_j M[i, j] - M[i, i]`` over all V
columns, the standard smooth surrogate of top-1 (it bounds the 0/1 loss: log 2 per wrong row).
``"margin"``: the multiclass hinge ``max(0, 1 - (M[i, i] - max_{j != i} M[i, j]))``
(Crammer-Singer), which only looks at each row's strongest competitor, as top-1 does.
``"ce+margin"`` (default): cross-entropy until it stops, then the hinge from its best point (at
the scale the cross-entropy reached).  Cross-entropy moves fast from the least-squares start but
spends its effort on every competitor and on rows it cannot win; the hinge then trades top-5 for
top-1.  Measured (seeded random W_E, partly tied W_U, c = 0.5): V = 4096, d = 128, r = 32: CE 0.739,
hinge alone 0.735, CE then hinge 0.819 top-1; d = 64, r = 32: 0.380 / - / 0.420; on an easy
problem (V = 12,570, d = 256, r = 64) all reach 1.0.  Adam, learning rate relative to the
parameters' RMS, rows sampled without replacement (a permutation per epoch).

Cost per step with b rows: ``B' Q_U^T`` (r k V, formed as ``Q_U B'^T``, the same entries at half
the time: OpenBLAS packs the wide operand of the r x V form) is shared by the b rows, then
``(Q_E[rows] A') (B' Q_U^T)`` costs b r V; backward the same again: ``O(r k V + b r V)``, not b d V.

Restricted step (``negatives=K``, :mod:`harness.circuits.low_rank_sparse`). The full step makes
about eight passes over the b x V logits; the restricted one finds each row's K largest off-diagonal
entries in one compiled read pass fused with the logits product, tile by tile (the b x V logits are
never written whole), and computes the loss and its sparse gradient (one compiled pass) on those
K + 1 entries: the cross-entropy restricted to them, and the same hinge as the full step
(K = 1). Sampled bulk (``bulk=m``, ``bulk_weight=w``): where nearly every row is wrong (low ranks) the
columns outside the K hardest hold most of each row's softmax mass; m columns drawn uniformly per
step stand for them, each with logit ``L[i, s] + log(w (V - 1 - K) / m_i)`` (the log-Q correction of
sampled softmax; w = 1 estimates the full softmax, w < 1 leans towards the hardest columns).
Measured on SmolLM2 (V = 49,152, d = 576, seed 0, 50 steps per phase, monitored at each phase's
ends; ``benchmarks/bench_low_rank.py --curve``), exact top-1 tokens: K = 32 alone 328 / 28,336 /
49,132 at ranks 4 / 16 / 64 (the full step: 431 / 20,625 / 49,126): better at 16 and 64, worse at 4;
with a bulk of m = 2048 at w = 1: 460 / 20,594 / 49,127; w = 0.25: - / 21,872 / -; w = 0.1: 575 /
22,868 / 49,128, the SmolLM2 claim's settings (same or better than the full step at every rank).
CPU seconds of the four fits (user + system; ``bench_low_rank.py --curve 1,4,16,64 --method new``):
the full step 371.8 (two threads, 2026-12-07); the restricted step 174.5 (two threads, load 3-7),
224.4 and 215.1 in later runs (load 2-10); with the thread-invariant tiles and the compiled fold and
backward below 89.8, 112.3 and 119.8 in three runs (two threads, load 5-12; one of them at the same
time as the 215.1 run of the code before), the same exact counts; with the fold's vectorised threshold test and
the cross-entropy's row-wise passes on the threads 80.7 against 110.1 for the code before, interleaved
(two threads, load 4-5), the same fits bit for bit. A curve's fits share the
orthonormal bases (computed once per (W_E, W_U), found by the caller's ``weights_key``).

Rank 1 (``stop_at_bound``).  Any rank-1 map copies at most two rows (:func:`copy_bound`); a
rank-1 fit whose closed-form start already copies two, counted exactly, cannot improve and is
not trained (``stopped_by: "bound"``; SmolLM2's start does).

Stopping (each phase).  Every ``eval_every`` steps the top-1 count is measured on a fixed seeded subset of
``eval_rows`` rows against all V columns.  When it has not improved for ``patience`` evaluations
the learning rate is multiplied by ``lr_decay``; after ``max_decays`` such cuts without an
improvement the fit has ``"converged"``.  Otherwise it stops on ``max_steps`` (``"steps"``) or the
hard wall-clock ``max_seconds`` (``"budget"``, which reserves the time of the final evaluation).
A phase that starts where the previous one kept its best parameters reuses that point's counts.
The parameters with the best monitored top-1 are kept; the final top-1/top-5 are exact over the
whole V x V circuit (:func:`harness.circuits.ov_topk.full_circuit_topk`, pessimistic ties: a tie
with the diagonal counts as wrong).

Threads (CPU).  The set-up and the steps run on one BLAS thread: the logits tiles, the
``(B' Q_U^T)^T`` row blocks and the monitor's tiles are dealt to ``threads`` workers (torch's thread
count), each tile the same single-threaded product whatever the workers, so a fit is the same bit
for bit on one thread or several (before, two-threaded BLAS took other paths: 518 / 22,836 /
49,130 against one thread's 575 / 22,868 / 49,128 on SmolLM2, and spent up to twice the CPU
spinning).  The row-wise passes of the cross-entropy step (the bulk's logits and the softmax) run in
row blocks on the workers, and the largest backward product beside the others, with the same
numbers.  The exact count runs the OV kernel's own workers (its counts never depend on them), or
``threads`` of them when given.  Because of this invariance a rank curve
(:func:`harness.metrics.low_rank.rank_curve`) runs its fits side by side, one thread each: one
fit's serial parts (the step's small products, Adam, the exact count's set-up) then overlap another's work.

Determinism.  Given the seed, the sequence of batches, updates and evaluations is fixed (CPU
float32 kernels, any thread count; on CUDA up to its matmul determinism); only where a
``max_seconds`` budget cuts the run depends on the machine, and other BLAS kernels (another CPU,
``OPENBLAS_CORETYPE``) round differently and take another path.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal

import numpy as np

from harness.circuits.factored import as_numpy
from harness.circuits.low_rank_sparse import (
    backward_products, bulk_logits, hard_negatives_compiled, hard_negatives_torch, hardest_from_factors,
    products_beside_columns, restricted_grads, sparse_backward, with_bulk,
)
from harness.circuits.ov_tiles import map_blocks, single_threaded_blas
from harness.circuits.ov_topk import full_circuit_topk

PhaseObjective = Literal["ce", "margin"]
Objective = Literal["ce", "margin", "ce+margin"]
PHASES: dict[str, tuple[PhaseObjective, ...]] = {"ce": ("ce",), "margin": ("margin",), "ce+margin": ("ce", "margin")}
StoppedBy = Literal["converged", "budget", "steps", "bound"]

EIG_RTOL = 1e-10  # eigenvalues of a Gram matrix below rtol * max are treated as 0 (sigma: 1e-5)
MAX_INIT_SPREAD = 40.0  # the init scale never makes a row's logit spread exceed this
CHUNK_FLOATS = 1 << 18  # row blocks of 1 MiB (the L2 cache of a core here) for the fused passes
SCALE_ROWS = 128  # rows (of the monitor subset) that set the init scale
TOP_K = 5  # the largest k reported (top-1 and top-5): the exact count may settle a row at TOP_K entries above
FACTOR_ROWS = 4096  # rows of Q_U per block of the (B' Q_U^T)^T product
SETTLE_BELOW = 0.5  # ... which pays where more than half the monitored rows are wrong at top-5


@dataclass(frozen=True)
class FitSettings:
    """Everything that determines a fit (reported with it)."""

    rank: int
    seed: int
    objective: Objective
    batch_rows: int
    lr: float
    margin_lr: float
    lr_decay: float
    max_decays: int
    patience: int
    eval_every: int
    eval_rows: int
    max_steps: int | None
    max_seconds: float | None
    adam_betas: tuple[float, float]
    device: str
    threads: int | None
    negatives: int | None = None
    bulk: int | None = None
    bulk_weight: float = 1.0
    stop_at_bound: bool = False


@dataclass
class LowRankFit:
    """A fitted rank-r circuit ``W_E A B W_U`` and how it was found.

    ``top1``/``top5``: exact full-vocabulary accuracies, pessimistic ties; ``tie_rows``: rows whose
    top-1 answer a tie decides.  ``trace``: one point per monitor evaluation (``phase``, ``step``
    within it, ``seconds`` since the call, ``lr``, ``loss`` and ``batch_top1`` averaged over the
    steps since the last point, ``monitor_top1``/``monitor_top5`` on the fixed row subset).
    ``loss``: the last phase's mean training loss over its last ``eval_every`` steps.  ``phases``:
    per phase, its objective, steps, stopping reason and best monitored top-1.  ``steps``: all
    phases together; ``stopped_by``: the last phase's reason.
    """

    A: np.ndarray
    B: np.ndarray
    top1: float
    top5: float
    tie_rows: int
    loss: float
    steps: int
    stopped_by: StoppedBy
    settings: FitSettings
    effective_rank: int
    init_scale: float
    phases: list[dict[str, Any]] = field(default_factory=list)
    trace: list[dict[str, Any]] = field(default_factory=list)
    setup_seconds: float = 0.0
    train_seconds: float = 0.0
    eval_seconds: float = 0.0
    wall_seconds: float = 0.0
    seconds_per_step: float = float("nan")

    def summary(self) -> dict[str, Any]:
        """Everything but the factors, as plain data (for a Measurement's details)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("A", "B", "settings")}
        out["settings"] = asdict(self.settings)
        return out


# ------------------------------------------------------------------------------------------
# Closed form
# ------------------------------------------------------------------------------------------


def orthonormal_factor(W: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``W`` (V x d) = ``Q T`` with ``Q`` (V x k) orthonormal columns, ``T`` (k x d) full row rank.

    From the float64 Gram ``W^T W = V S^2 V^T`` (one V d^2 product: a Householder QR of a
    50k x 768 matrix takes minutes here): ``Q = W V_k S_k^-1``, ``T = S_k V_k^T``, k = the numerical
    rank.  Returns ``(Q float32, T float64, T^+ = V_k S_k^-1 float64)``; Q is orthonormal to
    float32 accuracy (it only sets the coordinates of the optimisation; results use W itself).
    """
    W64 = W.astype(np.float64)
    lam, vecs = np.linalg.eigh(W64.T @ W64)
    del W64
    keep = lam > EIG_RTOL * max(float(lam[-1]), 0.0)
    if not keep.any():
        raise ValueError("the matrix is zero: no copying circuit can go through it")
    s = np.sqrt(lam[keep])[::-1]  # decreasing
    Vk = vecs[:, keep][:, ::-1]
    pinv = Vk / s  # d x k
    Q = W.astype(np.float32) @ pinv.astype(np.float32)  # float32: a basis to train in, not a result
    return Q, (Vk * s).T, pinv


def closed_form_init(C: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Rank-r least-squares fit of the identity in orthonormal coordinates: ``A' B' = C_r``.

    ``C = Q_E^T Q_U`` (k_E x k_U); truncated SVD ``U_r S_r V_r^T``; returns ``A' = U_r S_r^(1/2)``
    (k_E x r), ``B' = S_r^(1/2) V_r^T`` (r x k_U).
    """
    U, s, Vt = np.linalg.svd(C, full_matrices=False)
    root = np.sqrt(s[:rank])
    return U[:, :rank] * root, root[:, None] * Vt[:rank]


def ce_optimal_scale(logits: np.ndarray, targets: np.ndarray) -> float:
    """The scale a >= 0 minimising ``mean_i logsumexp(a L[i]) - a L[i, t_i]`` (convex in a).

    Bisection on the sign of the derivative ``E_softmax(aL)[L] - L[t]`` in log a; capped so that
    a row's logit spread stays <= MAX_INIT_SPREAD (a separable problem has no finite optimum).
    """
    L = logits.astype(np.float64)
    spread = float((L.max(1) - L.min(1)).max())
    if spread <= 0:
        return 1.0
    diag = L[np.arange(len(L)), targets]

    def slope(a: float) -> float:
        Z = a * (L - L.max(1, keepdims=True))
        p = np.exp(Z)
        p /= p.sum(1, keepdims=True)
        return float(((p * L).sum(1) - diag).mean())

    lo, hi = math.log(1e-6 / spread), math.log(MAX_INIT_SPREAD / spread)
    if slope(math.exp(hi)) < 0:
        return math.exp(hi)
    for _ in range(40):
        mid = (lo + hi) / 2
        if slope(math.exp(mid)) < 0:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


# ------------------------------------------------------------------------------------------
# Array backends: numpy (CPU: its BLAS and ufuncs were 2-8x faster than this torch build on the
# step's shapes) and torch (CUDA).
# ------------------------------------------------------------------------------------------


_POOLS: dict[int, ThreadPoolExecutor] = {}


def _pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide pool of ``threads`` workers (created once)."""
    if threads not in _POOLS:
        _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="low-rank")
    return _POOLS[threads]


class _Numpy:
    """float32 numpy kernels with preallocated buffers."""

    def __init__(self, threads: int | None = None) -> None:
        self.L = np.empty((0, 0), np.float32)  # the b x V logits buffer, reused
        self.threads = max(1, threads or _threads() or 1)

    def asarray(self, x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(x, dtype=np.float32)

    def index(self, n: np.ndarray) -> np.ndarray:
        return n

    def logits(self, P: np.ndarray, Qm: np.ndarray) -> np.ndarray:
        n, V = P.shape[0], Qm.shape[1]
        if self.L.shape[0] < n or self.L.shape[1] != V:
            self.L = np.empty((n, V), np.float32)
        return np.matmul(P, Qm, out=self.L[:n])

    def rank_of_diag(self, L: np.ndarray, diag: np.ndarray) -> np.ndarray:
        """Per row: #{j : L[i, j] >= diag[i]} - 1 (pessimistic ties)."""
        rank = np.empty(len(L), np.int64)

        def work(lo: int, hi: int) -> None:
            rank[lo:hi] = np.count_nonzero(L[lo:hi] >= diag[lo:hi, None], axis=1) - 1

        self._chunked(len(L), L.shape[1], work)
        return rank

    def ce_rows_(self, L: np.ndarray, diag: np.ndarray, scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Diagonal ranks and logsumexp per row; in place ``L <- scale * softmax(L)``."""
        rank = np.empty(len(L), np.int64)
        lse = np.empty(len(L), np.float32)

        def work(lo: int, hi: int) -> None:
            c, d = L[lo:hi], diag[lo:hi, None]
            rank[lo:hi] = np.count_nonzero(c >= d, axis=1) - 1
            m = c.max(1, keepdims=True)
            c -= m
            np.maximum(c, -87.0, out=c)  # numpy's exp is ~10x slower where it underflows
            np.exp(c, out=c)
            total = c.sum(1, keepdims=True)
            c *= scale / total
            lse[lo:hi] = (m + np.log(total))[:, 0]

        self._chunked(len(L), L.shape[1], work)
        return rank, lse

    def _chunked(self, n: int, width: int, work: Any) -> None:
        """Run ``work(lo, hi)`` over cache-sized row blocks, on the threads (numpy ufuncs release
        the GIL and run on one core each; fused per block they were 4x faster than whole-matrix passes)."""
        rows = max(1, CHUNK_FLOATS // max(width, 1))
        blocks = [(lo, min(lo + rows, n)) for lo in range(0, n, rows)]
        if self.threads < 2 or len(blocks) < 2:
            for lo, hi in blocks:
                work(lo, hi)
            return
        per = -(-len(blocks) // self.threads)
        groups = [blocks[i : i + per] for i in range(0, len(blocks), per)]
        list(_pool(self.threads).map(lambda group: [work(lo, hi) for lo, hi in group], groups))

    def rowmax_offdiag(self, L: np.ndarray, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ar = np.arange(L.shape[0])
        keep = L[ar, cols].copy()
        L[ar, cols] = -np.inf
        j = L.argmax(1)
        best = L[ar, j].copy()
        L[ar, cols] = keep
        return best, j

    def zeros_like(self, x: np.ndarray) -> np.ndarray:
        return np.zeros_like(x)

    def to_numpy(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x)

    # the restricted step's kernels (harness/circuits/low_rank_sparse.py)
    def hardest(self, P: np.ndarray, Qm: np.ndarray, cols: np.ndarray, K: int) -> tuple[np.ndarray, ...]:
        """Own entries and the K hardest columns of ``L = P Qm``: tile by tile (compiled), else from L."""
        tiled = hardest_from_factors(P, Qm, cols, K, self.threads)
        if tiled is not None:
            return tiled
        L = self.logits(P, Qm)
        diag = L[np.arange(len(cols)), cols]  # a copy
        return (diag, *hard_negatives_compiled(L, cols, K, self._chunked))

    def factor_rows(self, QU: np.ndarray, B: np.ndarray) -> np.ndarray:
        """``Q_U B'^T`` (V x r, row-major), row blocks on the threads (one BLAS thread each): the
        entries of ``B' Q_U^T`` bit for bit (same dot products), at half its time here (OpenBLAS
        packs the wide operand of the r x V form)."""
        out = np.empty((QU.shape[0], B.shape[0]), np.float32)
        Bt = B.T

        def work(starts: list[int]) -> None:
            for lo in starts:
                np.matmul(QU[lo : lo + FACTOR_ROWS], Bt, out=out[lo : lo + FACTOR_ROWS])

        map_blocks(work, list(range(0, QU.shape[0], FACTOR_ROWS)), self.threads)
        return out

    def sparse_backward(self, G: np.ndarray, C: np.ndarray, P: np.ndarray, QmT: np.ndarray, inverse: np.ndarray,
                        n_unique: int) -> tuple[np.ndarray, np.ndarray]:
        return sparse_backward(G, C, P, QmT, inverse, n_unique)

    def backward_products(self, Er: np.ndarray, dP: np.ndarray, H: np.ndarray, QU: np.ndarray, uniq: np.ndarray,
                          Gs: np.ndarray | None, QmT: np.ndarray, S: np.ndarray | None,
                          P: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The restricted step's dense products (:func:`backward_products`), the largest of them,
        ``H^T Q_U[uniq]`` (a gather of the batch's distinct columns, ~21,000 of Q_U's rows at rank 64,
        and an r x n_u x k_U product: ~40 ms a cross-entropy step there), on a second thread beside
        the others: the same products in the same order of additions, so the same numbers."""
        if self.threads < 2:
            return backward_products(Er, dP, H, QU, uniq, Gs, QmT, S, P)
        columns = _pool(self.threads).submit(lambda: H.T @ QU[uniq])
        try:
            dA, bulk_dB = products_beside_columns(Er, dP, Gs, QmT, S, P, QU)
        finally:
            dB = columns.result()
        return dA, with_bulk(dB, bulk_dB)

    def cat(self, parts: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(parts, axis=1)

    def softmax_rows(self, S: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row: logsumexp and the softmax."""
        m = S.max(1, keepdims=True)
        e = np.exp(S - m)
        Z = e.sum(1, keepdims=True)
        return (m + np.log(Z))[:, 0], e / Z

    def ce_softmax(self, diag: np.ndarray, vals: np.ndarray, P: np.ndarray, Qm: np.ndarray, S: np.ndarray | None,
                   idx: np.ndarray, V: int, weight: float) -> tuple[np.ndarray, np.ndarray]:
        """The restricted cross-entropy's logsumexp and softmax per row over ``[d_i, vals_i, bulk_i]``
        (b x (1 + K + m); :func:`harness.circuits.low_rank_sparse.bulk_logits` for the bulk), in
        cache-sized row blocks on the threads.  The bulk's product ``Ls = P Qm[:, S]`` (b x r x m) is
        formed whole, as before, on the calling thread; the rest is row by row (mask, log-weight,
        max, exp, sum), so the numbers are those of the whole-matrix passes, which ran on one thread
        and, with numpy's exp about 9x slower where it returns subnormals (the bulk's far columns at
        high rank), cost about 60 ms a step at rank 64.  (A row block's product is not always the
        whole product's rows bit for bit: OpenBLAS computes a block of 1-5 rows by another kernel,
        e.g. at r = 64, so the product is not split.)"""
        Ls = None if S is None else P @ Qm[:, S]  # b x m, one product: the bits of the passes before
        n, K = vals.shape
        width = 1 + K + (0 if S is None else len(S))
        lse = np.empty(n, np.float32)
        G = np.empty((n, width), np.float32)

        def work(lo: int, hi: int) -> None:
            parts = [diag[lo:hi, None], vals[lo:hi]]
            if Ls is not None:
                parts.append(bulk_logits(self, Ls[lo:hi], S, idx[lo:hi], vals[lo:hi], V, weight))
            lse[lo:hi], G[lo:hi] = self.softmax_rows(np.concatenate(parts, axis=1))

        self._chunked(n, width, work)
        return lse, G

    def positive(self, x: np.ndarray) -> np.ndarray:
        return (x > 0).astype(x.dtype)

    def unique(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return np.unique(x, return_inverse=True)

    def float_(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, np.float32)

    def clip_min(self, x: np.ndarray, low: float) -> np.ndarray:
        return np.maximum(x, np.float32(low))

    def log(self, x: np.ndarray) -> np.ndarray:
        return np.log(x)

    def sqrt(self, x: np.ndarray) -> np.ndarray:
        return np.sqrt(x)

    def relu(self, x: np.ndarray) -> np.ndarray:
        return np.maximum(x, 0)


class _Torch:
    """The same kernels with torch on a device (CUDA)."""

    def __init__(self, device: str) -> None:
        import torch

        self.t = torch
        self.device = torch.device(device)

    def asarray(self, x: np.ndarray) -> Any:
        return self.t.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=self.device)

    def index(self, n: np.ndarray) -> Any:
        return self.t.as_tensor(n, device=self.device)

    def logits(self, P: Any, Qm: Any) -> Any:
        return P @ Qm

    def rank_of_diag(self, L: Any, diag: Any) -> np.ndarray:
        return ((L >= diag[:, None]).sum(1) - 1).cpu().numpy()

    def ce_rows_(self, L: Any, diag: Any, scale: float) -> tuple[np.ndarray, Any]:
        rank = self.rank_of_diag(L, diag)
        lse = self.t.logsumexp(L, 1)
        L.sub_(lse[:, None]).exp_().mul_(scale)
        return rank, lse

    def rowmax_offdiag(self, L: Any, cols: Any) -> tuple[Any, Any]:
        ar = self.t.arange(L.shape[0], device=self.device)
        keep = L[ar, cols].clone()
        L[ar, cols] = -self.t.inf
        best, j = L.max(1)
        L[ar, cols] = keep
        return best, j

    def zeros_like(self, x: Any) -> Any:
        return self.t.zeros_like(x)

    def to_numpy(self, x: Any) -> np.ndarray:
        return x.detach().cpu().numpy()

    # the restricted step's kernels (harness/circuits/low_rank_sparse.py)
    def hardest(self, P: Any, Qm: Any, cols: Any, K: int) -> tuple[Any, ...]:
        L = P @ Qm
        diag = L[self.t.arange(len(cols), device=self.device), cols].clone()
        return (diag, *hard_negatives_torch(L, cols, K))

    def factor_rows(self, QU: Any, B: Any) -> Any:
        return (QU @ B.T).contiguous()

    def backward_products(self, Er: Any, dP: Any, H: Any, QU: Any, uniq: Any, Gs: Any, QmT: Any, S: Any,
                          P: Any) -> tuple[Any, Any]:
        return backward_products(Er, dP, H, QU, uniq, Gs, QmT, S, P)

    def sparse_backward(self, G: Any, C: Any, P: Any, QmT: Any, inverse: Any, n_unique: int) -> tuple[Any, Any]:
        H = self.scatter_rows(n_unique, inverse, (G[:, :, None] * P[:, None, :]).reshape(-1, P.shape[1]))
        return (G[:, :, None] * QmT[C]).sum(1), H

    def cat(self, parts: list[Any]) -> Any:
        return self.t.cat(parts, dim=1)

    def softmax_rows(self, S: Any) -> tuple[Any, Any]:
        return self.t.logsumexp(S, 1), self.t.softmax(S, 1)

    def ce_softmax(self, diag: Any, vals: Any, P: Any, Qm: Any, S: Any, idx: Any, V: int,
                   weight: float) -> tuple[Any, Any]:
        parts = [diag[:, None], vals]
        if S is not None:
            parts.append(bulk_logits(self, P @ Qm[:, S], S, idx, vals, V, weight))
        return self.softmax_rows(self.cat(parts))

    def positive(self, x: Any) -> Any:
        return (x > 0).to(x.dtype)

    def unique(self, x: Any) -> tuple[Any, Any]:
        return self.t.unique(x, return_inverse=True)

    def float_(self, x: Any) -> Any:
        return x.to(self.t.float32)

    def clip_min(self, x: Any, low: float) -> Any:
        return self.t.clamp(x, min=low)

    def log(self, x: Any) -> Any:
        return self.t.log(x)

    def scatter_rows(self, n: int, index: Any, values: Any) -> Any:
        return self.t.zeros((n, values.shape[1]), dtype=values.dtype, device=values.device).index_add_(0, index, values)

    def sqrt(self, x: Any) -> Any:
        return self.t.sqrt(x)

    def relu(self, x: Any) -> Any:
        return self.t.relu(x)


# ------------------------------------------------------------------------------------------
# One step
# ------------------------------------------------------------------------------------------


def loss_and_grads(
    ops: Any, E: Any, U: Any, A: Any, B: Any, rows: np.ndarray, objective: PhaseObjective
) -> tuple[np.ndarray, np.ndarray, Any, Any]:
    """Per-row losses and diagonal ranks on ``rows``, gradients of the mean loss in A', B'.

    E: Q_E (V x k_E); U: Q_U^T (k_U x V); A' (k_E x r); B' (r x k_U).  Logits
    ``L = (E[rows] A')(B' U)`` (b x V, the r x V product shared by the b rows); with ``G`` the
    gradient of the mean loss in L (b x V): ``dA' = E[rows]^T (G (B'U)^T)``,
    ``dB' = ((E[rows] A')^T G) U^T``.  Rank: #{j != i : L[i, j] >= L[i, i]} (ties count against).
    """
    idx = ops.index(rows)
    Er = E[idx]  # b x k_E
    Qm = B @ U  # r x V
    P = Er @ A  # b x r
    L = ops.logits(P, Qm)  # b x V
    ar = ops.index(np.arange(len(rows)))
    diag = L[ar, idx] * 1.0  # a copy
    b = len(rows)
    if objective == "ce":
        rank, lse = ops.ce_rows_(L, diag, 1.0 / b)  # L is now softmax(L) / b
        row_loss = lse - diag
        L[ar, idx] -= 1.0 / b
    elif objective == "margin":
        rank = ops.rank_of_diag(L, diag)
        best, j = ops.rowmax_offdiag(L, idx)
        row_loss = ops.relu(1.0 - (diag - best))
        weight = (row_loss > 0) * (1.0 / b)
        L *= 0.0
        L[ar, j] += weight
        L[ar, idx] -= weight
    else:
        raise ValueError(f"unknown objective {objective!r}: 'ce' or 'margin'")
    dA = Er.T @ (L @ Qm.T)
    dB = (U @ (P.T @ L).T).T  # as (k x V)(V x r): OpenBLAS took 16x longer for (r x V)(V x k)
    return ops.to_numpy(row_loss), rank, dA, dB


class Adam:
    """Adam on a list of arrays (numpy or torch), written with operators only."""

    def __init__(self, ops: Any, params: list[Any], lr: float, betas: tuple[float, float], eps: float) -> None:
        self.ops, self.params, self.lr, self.betas, self.eps = ops, params, lr, betas, eps
        self.m = [ops.zeros_like(p) for p in params]
        self.v = [ops.zeros_like(p) for p in params]
        self.t = 0

    def step(self, grads: list[Any]) -> None:
        b1, b2 = self.betas
        self.t += 1
        c1, c2 = 1 - b1**self.t, 1 - b2**self.t
        for p, g, m, v in zip(self.params, grads, self.m, self.v):
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * (g * g)
            p -= (self.lr / c1) * m / (self.ops.sqrt(v / c2) + self.eps)


class RowSampler:
    """Batches of b rows: consecutive slices of seeded permutations of the V rows (each row once
    per epoch).  Measured on a 12,570 x 256, r = 64 problem: drawing rows by their last-seen loss
    (with or without unbiasing weights) needed more steps to 99% top-1 than permutations."""

    def __init__(self, V: int, batch: int, rng: np.random.Generator) -> None:
        self.V, self.batch, self.rng = V, batch, rng
        self.perm, self.pos, self.epochs = rng.permutation(V), 0, 0

    def next(self) -> np.ndarray:
        if self.pos + self.batch > self.V:
            self.perm, self.pos, self.epochs = self.rng.permutation(self.V), 0, self.epochs + 1
        rows = self.perm[self.pos : self.pos + self.batch]
        self.pos += self.batch
        return rows


# ------------------------------------------------------------------------------------------
# The fit
# ------------------------------------------------------------------------------------------


@dataclass
class Plateau:
    """The stopping rule on the monitored (top-1, top-5) counts.

    ``update`` returns whether the point is the best so far (lexicographic (top-1, top-5): keep its
    parameters) and the action: "go on", "decay" (no top-1 gain in ``patience`` evaluations: cut
    the learning rate) or "converged" (still no gain after ``max_decays`` cuts).
    """

    patience: int
    max_decays: int
    best: tuple[int, int]
    stale: int = 0
    decays: int = 0

    def update(self, top1: int, top5: int) -> tuple[bool, Literal["go on", "decay", "converged"]]:
        is_best = (top1, top5) >= self.best
        self.stale = 0 if top1 > self.best[0] else self.stale + 1
        self.best = max(self.best, (top1, top5))
        if self.stale < self.patience:
            return is_best, "go on"
        if self.decays >= self.max_decays:
            return is_best, "converged"
        self.decays, self.stale = self.decays + 1, 0
        return is_best, "decay"


def monitor_topk(ops: Any, E: Any, QU: Any, A: Any, B: Any, rows: np.ndarray, block: int) -> tuple[int, int]:
    """(#top-1, #top-5) over ``rows`` against all V columns (float32, pessimistic ties), from each
    row's own entry and its TOP_K largest others (:meth:`_Numpy.hardest`): a row is right at
    top-k when its k-th largest other entry is below its own (no other entry >= it)."""
    Qm = ops.factor_rows(QU, B).T  # r x V
    k5 = min(TOP_K, Qm.shape[1] - 1)
    n1 = n5 = 0
    for s in range(0, len(rows), block):
        idx = ops.index(rows[s : s + block])
        diag, vals, _ = ops.hardest(E[idx] @ A, Qm, idx, TOP_K)
        n1 += int((vals[:, 0] < diag).sum()) if k5 >= 1 else len(idx)
        n5 += int((vals[:, k5 - 1] < diag).sum()) if k5 >= TOP_K else len(idx)
    return n1, n5


@dataclass
class _Start:
    """The problem in orthonormal coordinates and the closed-form start (see the module doc)."""

    QE: np.ndarray  # V x k_E, float32
    QU: np.ndarray  # V x k_U, float32
    TE_pinv: np.ndarray  # d x k_E: A = TE_pinv A'
    TU_pinv: np.ndarray  # d x k_U: B = B' TU_pinv^T
    A0: np.ndarray  # k_E x r
    B0: np.ndarray  # r x k_U
    scale: float


_BASES: dict[str, tuple[np.ndarray, ...]] = {}
_BASES_LOCK = threading.Lock()


def _bases(W_E: np.ndarray, W_U: np.ndarray, weights_key: str | None = None,
           threads: int | None = None) -> tuple[np.ndarray, ...]:
    """``orthonormal_factor`` of W_E and of W_U^T, kept for the last (W_E, W_U) seen: the fits of
    a rank curve share them (two float64 eigendecompositions of d x d Gram matrices, each a V d^2
    product, per fit otherwise).  Known by ``weights_key`` where the caller has one that names
    these exact weights (a model's identity: its weights' sha256 and processing), else by the
    sha256 of their bytes (about 0.35 s on SmolLM2's).  The two factorisations run side by side on
    two of ``threads`` (default torch's) threads (each a V d^2 Gram product and an eigendecomposition
    on one BLAS thread: the same numbers as one after the other).  Fits running side by side wait
    for one computation (a lock)."""
    if weights_key is not None:
        key = f"given:{weights_key}"
    else:
        digest = hashlib.sha256()
        for W in (W_E, W_U):
            digest.update(repr((W.dtype.str, W.shape)).encode())
            digest.update(np.ascontiguousarray(W).data)
        key = digest.hexdigest()
    with _BASES_LOCK:
        if key not in _BASES:
            _BASES.clear()
            # W_E's and W_U's factors in two threads (each the same single-threaded calls: the same bits)
            parts = map_blocks(lambda Ws: [orthonormal_factor(W) for W in Ws], [W_E, W_U.T], threads or _threads() or 1)
            E, U = [factors for part in parts for factors in part]
            _BASES[key] = (*E, *U)
        return _BASES[key]


def prepare_bases(W_E: Any, W_U: Any, weights_key: str | None = None) -> None:
    """Compute and keep the orthonormal bases that the fits through these W_E, W_U share
    (:func:`_bases`, on torch's threads, one BLAS thread each), before fits run side by side."""
    E_np, U_np = _finite_numpy(W_E), _finite_numpy(W_U)
    with single_threaded_blas():
        _bases(E_np, U_np, weights_key)


def closed_form_start(
    W_E: np.ndarray, W_U: np.ndarray, rank: int, scale_rows: np.ndarray,
    init: tuple[np.ndarray, np.ndarray] | None = None, weights_key: str | None = None, threads: int | None = None,
) -> _Start:
    """Orthonormal bases, the rank-r least-squares fit of I, scaled to minimise the CE on rows.

    ``init = (A, B)`` (d x r, r x d; e.g. an earlier fit's) replaces the closed form: it starts from
    ``A' = T_E A``, ``B' = B T_U^T`` at its own scale (``scale`` 1).  ``weights_key``, ``threads``: see :func:`_bases`.
    """
    QE, TE, TE_pinv, QU, TU, TU_pinv = _bases(W_E, W_U, weights_key, threads)
    if init is not None:
        A, B = (np.asarray(x, dtype=np.float64) for x in init)
        if A.shape[0] != W_E.shape[1] or B.shape[1] != W_E.shape[1] or A.shape[1] != B.shape[0]:
            raise ValueError(f"init shapes {A.shape}, {B.shape} do not fit d_model {W_E.shape[1]}")
        return _Start(QE, QU, TE_pinv, TU_pinv, TE @ A, B @ TU.T, 1.0)
    C = (QE.T @ QU).astype(np.float64)  # k_E x k_U
    A0, B0 = closed_form_init(C, min(rank, *C.shape))
    L0 = (QE[scale_rows] @ A0.astype(np.float32)) @ (B0.astype(np.float32) @ QU.T)
    alpha = ce_optimal_scale(L0, scale_rows)
    return _Start(QE, QU, TE_pinv, TU_pinv, A0 * math.sqrt(alpha), B0 * math.sqrt(alpha), alpha)


@dataclass
class _Phase:
    """One training phase: its best parameters (by the monitor), trace and how it stopped."""

    best: tuple[np.ndarray, np.ndarray]
    trace: list[dict[str, Any]]
    steps: int
    stopped_by: StoppedBy


def _train_phase(
    ops: Any, E: Any, U: Any, params: tuple[np.ndarray, np.ndarray], sampler: RowSampler,
    monitor_rows: np.ndarray, objective: PhaseObjective, lr: float, settings: FitSettings,
    deadline: float | None, t0: float, bar: Any, QU: Any = None, bulk_rng: np.random.Generator | None = None,
    start_counts: tuple[int, int] | None = None,
) -> _Phase:
    """Adam on ``objective`` from ``params`` (A', B') until the plateau rule, ``settings.max_steps``
    or the ``deadline`` (perf_counter seconds); returns the best monitored parameters.  With
    ``settings.negatives`` each step is the restricted one (:mod:`low_rank_sparse`; ``QU``: Q_U),
    with ``settings.bulk`` columns drawn from ``bulk_rng`` per cross-entropy step.  ``start_counts``:
    the monitor's counts of ``params`` when already known (the previous phase's best point)."""
    A, B = ops.asarray(params[0]), ops.asarray(params[1])
    rms = _rms(*params)
    opt = Adam(ops, [A, B], lr * rms, settings.adam_betas, eps=1e-12 * rms)
    n_mon = len(monitor_rows)
    monitor = lambda: monitor_topk(ops, E, QU, A, B, monitor_rows, settings.batch_rows)  # noqa: E731
    n1, n5 = monitor() if start_counts is None else start_counts
    point = lambda step, losses, top1s: {  # noqa: E731
        "phase": objective, "step": step, "seconds": round(time.perf_counter() - t0, 3), "lr": opt.lr / rms,
        "loss": float(np.mean(losses)) if losses else None,
        "batch_top1": float(np.mean(top1s)) if top1s else None,
        "monitor_top1": n1 / n_mon, "monitor_top5": n5 / n_mon,
    }
    trace = [point(0, [], [])]
    plateau = Plateau(settings.patience, settings.max_decays, best=(n1, n5))
    best = (ops.to_numpy(A).copy(), ops.to_numpy(B).copy())
    step, losses, top1s = 0, [], []
    while True:
        stopped: StoppedBy | None = None
        if settings.max_steps is not None and step >= settings.max_steps:
            stopped = "steps"
        elif deadline is not None and time.perf_counter() >= deadline:
            stopped = "budget"
        if stopped is None:
            rows = sampler.next()
            if settings.negatives is None:
                row_loss, rank_b, dA, dB = loss_and_grads(ops, E, U, A, B, rows, objective)
            else:
                bulk = None if bulk_rng is None else np.sort(bulk_rng.choice(sampler.V, settings.bulk, replace=False))
                row_loss, rank_b, dA, dB = restricted_grads(ops, E, QU, A, B, rows, objective, settings.negatives,
                                                            bulk, settings.bulk_weight)
            opt.step([dA, dB])
            step += 1
            losses.append(float(row_loss.mean()))
            top1s.append(float((rank_b < 1).mean()))
            _advance(bar, settings.max_steps, time.perf_counter() - t0)
            if step % settings.eval_every:
                continue
        if not losses:
            break
        n1, n5 = monitor()
        trace.append(point(step, losses, top1s))
        losses, top1s = [], []
        if bar is not None:
            bar.set_postfix(phase=objective, loss=f"{trace[-1]['loss']:.4f}", top1=f"{n1 / n_mon:.4f}")
        is_best, action = plateau.update(n1, n5)
        if is_best:
            best = (ops.to_numpy(A).copy(), ops.to_numpy(B).copy())
        if action == "decay":
            opt.lr *= settings.lr_decay
        if stopped is not None or action == "converged":
            return _Phase(best, trace, step, stopped or "converged")
    return _Phase(best, trace, step, stopped or "steps")


def _best_counts(phase: _Phase, n_monitor: int) -> tuple[int, int]:
    """The monitor's (top-1, top-5) counts of a phase's kept parameters (its best point)."""
    best = max(phase.trace, key=lambda p: (p["monitor_top1"], p["monitor_top5"]))
    return round(best["monitor_top1"] * n_monitor), round(best["monitor_top5"] * n_monitor)


def fit_low_rank_copying(
    W_E: Any,
    W_U: Any,
    rank: int,
    *,
    seed: int = 0,
    max_steps: int | None = None,
    max_seconds: float | None = 300.0,
    batch_rows: int = 2048,
    lr: float = 0.05,
    margin_lr: float = 0.01,
    lr_decay: float = 0.5,
    max_decays: int = 4,
    patience: int = 3,
    eval_every: int | None = None,
    eval_rows: int = 8192,
    objective: Objective = "ce+margin",
    adam_betas: tuple[float, float] = (0.9, 0.99),
    device: str | None = None,
    progress: bool = False,
    init: tuple[np.ndarray, np.ndarray] | None = None,
    negatives: int | None = None,
    bulk: int | None = None,
    bulk_weight: float = 1.0,
    stop_at_bound: bool = False,
    weights_key: str | None = None,
    threads: int | None = None,
) -> LowRankFit:
    """Find ``A`` (d x r), ``B`` (r x d) maximising the top-1 copying accuracy of ``W_E A B W_U``.

    W_E: (V, d); W_U: (d, V); numpy arrays or torch tensors.  See the module docstring for the
    coordinates, the closed-form start, the objectives and the stopping rule.  Learning rates are
    relative: Adam's step size is ``lr`` (cross-entropy) or ``margin_lr`` (margin) times the RMS
    entry of the phase's starting factors.  ``max_steps`` bounds each phase; ``max_seconds`` the
    whole call, final evaluation included.  ``eval_every`` defaults to half an epoch (at least 10
    steps).  ``device``: None/"cpu" (numpy) or a torch device ("cuda").  ``init``: start from these
    factors (A d x r, B r x d) instead of the closed form.  ``negatives``: K, each step's loss over
    each row's K hardest columns only (:mod:`harness.circuits.low_rank_sparse`; the margin phase
    is the same loss either way); None, over all V columns.  ``bulk``: m, with ``negatives``, the
    cross-entropy's softmax also holds m uniformly sampled columns standing for the rest of the row
    (:func:`harness.circuits.low_rank_sparse.bulk_logits`; a fresh sample per step, seeded).
    ``stop_at_bound``: a rank-1 fit whose closed-form start already reaches the most any rank-1
    matrix can (:func:`copy_bound`, counted exactly) is not trained (``stopped_by: "bound"``).
    ``weights_key``: a string naming exactly these W_E and W_U (a model's identity key), under
    which the orthonormal bases are kept between fits instead of hashing the weights' bytes.
    ``threads``: worker threads for the fit's tiles and its exact count (default: torch's thread
    count for the tiles, the OV kernel's own workers for the count); the fit is the same on any
    number, so several fits can run side by side on one thread each (:func:`harness.metrics.low_rank.rank_curve`).
    """
    t0 = time.perf_counter()
    E_np, U_np = _finite_numpy(W_E), _finite_numpy(W_U)
    V, d = E_np.shape
    if U_np.shape != (d, V):
        raise ValueError(f"shape mismatch: W_E {E_np.shape}, W_U {U_np.shape}")
    if rank < 1:
        raise ValueError(f"rank must be >= 1, got {rank}")
    if max_steps is None and max_seconds is None:
        raise ValueError("give max_steps or max_seconds (or both)")
    if objective not in PHASES:
        raise ValueError(f"unknown objective {objective!r}: one of {', '.join(PHASES)}")
    if negatives is not None and negatives < 1:
        raise ValueError(f"negatives must be >= 1 (or None for every column), got {negatives}")
    if bulk is not None and (negatives is None or bulk < 1):
        raise ValueError(f"bulk needs negatives and must be >= 1, got bulk={bulk}, negatives={negatives}")
    batch = min(batch_rows, V)
    settings = FitSettings(
        rank, seed, objective, batch, lr, margin_lr, lr_decay, max_decays, patience,
        eval_every or max(10, math.ceil(V / batch / 2)), min(eval_rows, V), max_steps, max_seconds, adam_betas,
        device or "cpu", threads or _threads(), negatives, None if bulk is None else min(bulk, V), bulk_weight,
        stop_at_bound,
    )
    rng = np.random.default_rng(seed)
    monitor_rows = np.sort(rng.permutation(V)[: settings.eval_rows])
    with single_threaded_blas():  # set-up and steps: the same numbers on any number of threads
        start = closed_form_start(E_np, U_np, rank, monitor_rows[: min(SCALE_ROWS, len(monitor_rows))], init,
                                  weights_key, threads)
        if stop_at_bound:
            reached = _at_bound(E_np, U_np, start, device, threads)
            if reached is not None:  # the exact count was the set-up: no training, no second count
                now = time.perf_counter()
                return _fit_result(start, reached, settings, [], [], 0, t0, now, now, "bound")
        run = _train(start, settings, rng, monitor_rows, t0, progress)
    train_end = time.perf_counter()
    mostly_wrong = max(p["monitor_top5"] for p in run.trace) < SETTLE_BELOW
    exact = _exact_count(E_np, U_np, start, run.params, device, settle=mostly_wrong, workers=threads)
    return _fit_result(start, exact, settings, run.phases, run.trace, run.steps, t0, run.setup_end, train_end,
                       run.phases[-1]["stopped_by"])


@dataclass
class _Run:
    """What the phases found: the kept parameters (A', B'), per-phase records, the trace, the steps."""

    params: tuple[np.ndarray, np.ndarray]
    phases: list[dict[str, Any]]
    trace: list[dict[str, Any]]
    steps: int
    setup_end: float


def _train(start: _Start, settings: FitSettings, rng: np.random.Generator, monitor_rows: np.ndarray, t0: float,
           progress: bool) -> _Run:
    """Every phase of ``settings.objective`` from the start, each from the previous one's best point."""
    device, V, batch = settings.device, start.QE.shape[0], settings.batch_rows
    ops: Any = _Numpy(settings.threads) if device in (None, "cpu") else _Torch(device)
    E, QU = ops.asarray(start.QE), ops.asarray(start.QU)
    U = ops.asarray(start.QU.T) if settings.negatives is None else None  # Q_U^T: the full step's products
    sampler = RowSampler(V, batch, rng)
    bulk_rng = None if settings.bulk is None else np.random.default_rng([settings.seed, 1])  # its own stream
    setup_end = time.perf_counter()
    deadline = None
    if settings.max_seconds is not None:
        t_probe = time.perf_counter()
        monitor_topk(ops, E, QU, ops.asarray(start.A0), ops.asarray(start.B0), monitor_rows[:batch], batch)
        probe = (time.perf_counter() - t_probe) * len(monitor_rows) / min(batch, len(monitor_rows))
        reserve = probe * (1 + 1.5 * V / len(monitor_rows))  # a last monitor pass + the exact pass
        deadline = t0 + settings.max_seconds - reserve
    max_steps = settings.max_steps
    bar = _progress_bar(progress, settings.rank, None if max_steps is None else max_steps * len(PHASES[settings.objective]),
                        settings.max_seconds)
    params, trace, steps, phases, known = (start.A0, start.B0), [], 0, [], None
    for phase_objective in PHASES[settings.objective]:
        phase = _train_phase(ops, E, U, params, sampler, monitor_rows, phase_objective,
                             settings.lr if phase_objective == "ce" else settings.margin_lr, settings, deadline, t0, bar,
                             QU, bulk_rng, known)
        known = _best_counts(phase, len(monitor_rows))  # the next phase starts there: not counted again
        params, steps = phase.best, steps + phase.steps
        trace += phase.trace
        phases.append({"objective": phase_objective, "steps": phase.steps, "stopped_by": phase.stopped_by,
                       "monitor_top1": max(p["monitor_top1"] for p in phase.trace)})
        if phase.stopped_by == "budget":
            break
    if bar is not None:
        bar.close()
    return _Run(params, phases, trace, steps, setup_end)


def copy_bound(rank: int, V: int) -> int:
    """The most rows (of V) that any rank-``rank`` matrix ``M = W_E A B W_U`` can copy (strict top-1).

    Rank 1: ``M[i, j] = u_i w_j`` (u = W_E A, w = B W_U), so row i is right only when u_i > 0 and
    w_i is the strict maximum of w, or u_i < 0 and w_i is its strict minimum: at most one row
    each, so ``min(2, V)``.  No bound below V is used for higher ranks.
    """
    return min(2, V) if rank == 1 else V


_Exact = tuple[np.ndarray, np.ndarray, Any]  # A (d x r), B (r x d), the OV kernel's count


def _exact_count(E_np: np.ndarray, U_np: np.ndarray, start: _Start, params: tuple[np.ndarray, np.ndarray],
                 device: str | None, settle: bool, workers: int | None = None) -> _Exact:
    """The fitted map back in the model's coordinates (float64) and its exact full-vocabulary count.

    Counts only (``margins=False``: the row-max pass is not needed).  ``settle`` (CPU): a row is
    settled once TOP_K entries are surely above its diagonal (the OV kernel's ``k_max``): top-1,
    top-5 and the tie rows are exactly the full scan's, and where most rows are wrong most rows
    stop early (measured on SmolLM2's rank-1 and rank-4 maps: 4-14x less CPU; on its rank-64 map,
    where nearly every row is right, 1.3x more, hence only where the monitor saw most rows wrong).
    ``workers``: the kernel's threads (None: its own choice; the counts never depend on them).
    """
    A_fit = start.TE_pinv @ params[0].astype(np.float64)  # d x r
    B_fit = params[1].astype(np.float64) @ start.TU_pinv.T  # r x d
    on_cpu = device in (None, "cpu")
    result = full_circuit_topk(E_np, A_fit, B_fit, U_np, device=None if on_cpu else device, margins=False,
                               k_max=TOP_K if settle and on_cpu else None, workers=workers if on_cpu else None)
    return A_fit, B_fit, result


def _at_bound(E_np: np.ndarray, U_np: np.ndarray, start: _Start, device: str | None,
              workers: int | None = None) -> _Exact | None:
    """The start's exact count when it already reaches :func:`copy_bound` (only rank 1 has one
    below V), else None (then nothing was counted)."""
    rank, V = start.A0.shape[1], E_np.shape[0]
    if copy_bound(rank, V) >= V:
        return None
    exact = _exact_count(E_np, U_np, start, (start.A0, start.B0), device, settle=True,  # rank 1: nearly all wrong
                         workers=workers)
    top1_rows = round(exact[2].accuracy(1, "pessimistic") * V)
    return exact if top1_rows >= copy_bound(rank, V) else None


def _fit_result(start: _Start, exact: _Exact, settings: FitSettings, phases: list[dict[str, Any]],
                trace: list[dict[str, Any]], steps: int, t0: float, setup_end: float, train_end: float,
                stopped_by: StoppedBy) -> LowRankFit:
    """The fit's record from its exact count and timings (perf_counter seconds)."""
    A_fit, B_fit, result = exact
    losses = [p["loss"] for p in trace if p["loss"] is not None]
    now = time.perf_counter()
    train_seconds = train_end - setup_end
    return LowRankFit(
        A=A_fit,
        B=B_fit,
        top1=result.accuracy(1, "pessimistic"),
        top5=result.accuracy(5, "pessimistic"),
        tie_rows=result.n_tie_rows(1),
        loss=losses[-1] if losses else float("nan"),
        steps=steps,
        stopped_by=stopped_by,
        settings=settings,
        effective_rank=start.A0.shape[1],
        init_scale=start.scale,
        phases=phases,
        trace=trace,
        setup_seconds=setup_end - t0,
        train_seconds=train_seconds,
        eval_seconds=now - train_end,
        wall_seconds=now - t0,
        seconds_per_step=train_seconds / steps if steps else float("nan"),
    )


def _rms(*arrays: np.ndarray) -> float:
    """Root mean square of all entries."""
    return math.sqrt(sum(float((a**2).sum()) for a in arrays) / sum(a.size for a in arrays))


def _advance(bar: Any, max_steps: int | None, elapsed: float) -> None:
    """Move the progress bar by a step (step budget) or to the elapsed second (time budget)."""
    if bar is not None:
        bar.update(1 if max_steps is not None else min(round(elapsed), bar.total) - bar.n)


def _progress_bar(progress: bool, rank: int, total_steps: int | None, max_seconds: float | None) -> Any:
    """A bar over every phase's step budget, else over the time budget, else none."""
    if not progress or (total_steps is None and max_seconds is None):
        return None
    from tqdm.auto import tqdm

    if total_steps is not None:
        return tqdm(total=total_steps, unit="step", desc=f"rank-{rank} fit", leave=False)
    return tqdm(total=round(max_seconds or 0), unit="s", desc=f"rank-{rank} fit", leave=False)


def _threads() -> int | None:
    try:
        import torch

        return int(torch.get_num_threads())
    except Exception:  # pragma: no cover
        return None


def _finite_numpy(x: Any) -> np.ndarray:
    """``as_numpy(x)``, refusing NaN or infinity."""
    array = as_numpy(x)
    if not np.isfinite(array).all():
        raise ValueError("weights contain NaN or infinity")
    return array
