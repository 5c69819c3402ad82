"""Shared pieces of the OV kernel's float32 scans: band thresholds and counting in mask byte lanes.

Used by the one-pass scan (:mod:`harness.circuits.ov_topk`) and the pruned scan
(:mod:`harness.circuits.ov_prune`).  A float32 entry S of row i is surely above the diagonal when
``S > hi_i``, surely below when ``S < lo_i``, in the rounding band otherwise, with
``hi_i = d_i + T_i`` rounded up and ``lo_i = d_i - T_i`` rounded down to float32.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import TypeVar

import numpy as np


def _round_f32(x: np.ndarray, up: bool) -> np.ndarray:
    """The float32 nearest x in the given direction (x itself when representable)."""
    y = x.astype(np.float32)
    if up:
        bump = y.astype(np.float64) < x
        return np.where(bump, np.nextafter(y, np.float32(np.inf)), y)
    bump = y.astype(np.float64) > x
    return np.where(bump, np.nextafter(y, np.float32(-np.inf)), y)


def _thresholds(d32: np.ndarray, T: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 (hi, lo), column vectors: S > hi implies S - d > T, S < lo implies S - d < -T."""
    d = d32.astype(np.float64)
    return _round_f32(d + T, up=True)[:, None], _round_f32(d - T, up=False)[:, None]


Scan = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]


_CHUNK = 1024  # columns per counting chunk: 128 words of 8 mask bytes, so byte lanes stay <= 128


def _lane_sums(mask: np.ndarray) -> np.ndarray:
    """Per row and chunk of 1024 columns, the 8 byte-lane sums of a boolean mask: (rows, chunks, 8).

    The mask's bytes are 0 or 1; adding 128 uint64 words never carries between byte lanes, so one
    integer reduction counts 8 entries per add.  The chunk's count is the sum of its 8 lanes.
    """
    rows = mask.shape[0]
    words = mask.view(np.uint64).reshape(rows, -1, _CHUNK // 8)
    return np.add.reduce(words, axis=2).view(np.uint8).reshape(rows, -1, 8)


def _chunks(mask: np.ndarray, rows: np.ndarray, chunks: np.ndarray) -> np.ndarray:
    """The mask bytes of the given (row, chunk) pairs, (len(rows), _CHUNK)."""
    return mask.reshape(mask.shape[0], -1, _CHUNK)[rows, chunks]


def _cat(xs: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(xs) if xs else np.zeros(0, np.int64)


@functools.lru_cache(maxsize=1)
def _blas_controller() -> object | None:
    """threadpoolctl's view of the loaded BLAS libraries, found once (about 2 ms a time), or None."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    return ThreadpoolController()


@contextmanager
def single_threaded_blas() -> Iterator[None]:
    """One BLAS thread per call while the worker threads share the cores (needs threadpoolctl)."""
    controller = _blas_controller()
    if controller is None:  # still correct; BLAS's own threads then compete with the workers
        yield
        return
    with controller.limit(limits=1, user_api="blas"):  # type: ignore[attr-defined]
        yield


_Block = TypeVar("_Block")
_Part = TypeVar("_Part")


def map_blocks(work: Callable[[list[_Block]], _Part], blocks: list[_Block], workers: int) -> list[_Part]:
    """``work`` over ``blocks`` dealt round-robin to at most ``workers`` threads (block k to thread
    k mod workers, so neighbouring blocks of similar cost spread out), one BLAS thread each; one
    result per thread, in thread order. One worker or one block runs in the calling thread; one
    block with one BLAS thread too when more workers were asked for (a tile-sized product: waking
    BLAS's threads for it took ~45 ms on the loaded 2-core machine, the toy's whole kernel 0.15-0.2 s
    of wall for 0.03 s of CPU)."""
    wanted, workers = workers, max(1, min(workers, len(blocks)))
    if workers == 1 and wanted > 1:
        with single_threaded_blas():
            return [work(blocks)]
    if workers == 1:
        return [work(blocks)]
    with single_threaded_blas(), ThreadPoolExecutor(workers) as pool:
        return list(pool.map(work, [blocks[k::workers] for k in range(workers)]))


def _count_rows(
    S: np.ndarray, Si: np.ndarray, nb: int, cw: int, hi: np.ndarray, lo: np.ndarray, want_max: bool,
    above: np.ndarray, best_bits: np.ndarray, band_r: np.ndarray, band_c: np.ndarray,
) -> int:
    """Count a tile's rows in one pass each while the tile is in cache (compiled by numba).

    Per row i < nb of S[:, :cw]: above[i] = #{S > hi[i]}, counted in a float32 accumulator
    (adding 0.0s and 1.0s is exact in any order while cw <= 2^24, which :func:`count_tile`
    guarantees by counting wider tiles in pieces of :data:`FUSED_MAX_COLUMNS`; so the compiler may
    reorder the sum: ``fastmath={"reassoc"}``, which lets it vectorise; no other fast-math flag, so every
    comparison keeps its IEEE meaning).  With ``want_max``, best_bits[i] = the bits of the row's
    largest entry, from integer max and min of the entries' bits (``Si``: S viewed as int32):
    non-negative floats order as their bits do, negative ones in reverse, so the largest entry is
    the largest bit pattern if that is >= 0 (some entry >= +0.0), else the smallest (integer max
    and min vectorise where a float max with IEEE NaN rules does not; S holds no NaN).  Rows where
    #{S >= lo} differs from above hold band entries (lo <= S <= hi): they are scanned again and
    their (row, column) written to band_r/band_c; returns the number of band entries (those past
    the buffers' length are counted, not written: the caller retries with larger buffers).
    Measured on one core (a 256 x 1024 tile in cache, counts and max): 0.17 ns per entry under
    AVX-512/AVX2 code, 0.24-0.27 under AVX/SSE4.2, 0.45 as plain x86-64, against 0.53, 0.66,
    0.9-1.0 and 1.5 with int64 counters and an order-key max.
    """
    cap = len(band_r)
    n_band = 0
    for i in range(nb):
        h = hi[i]
        lw = lo[i]
        c = np.float32(0.0)
        g = np.float32(0.0)
        if want_max:
            mx = np.int32(-2147483648)
            mn = np.int32(2147483647)
            for j in range(cw):
                v = S[i, j]
                c += np.float32(v > h)
                g += np.float32(v >= lw)
                b = Si[i, j]
                mx = max(mx, b)
                mn = min(mn, b)
            best_bits[i] = mx if mx >= 0 else mn
        else:
            for j in range(cw):
                v = S[i, j]
                c += np.float32(v > h)
                g += np.float32(v >= lw)
        above[i] = np.int64(c)
        if g != c:
            for j in range(cw):
                v = S[i, j]
                if v >= lw and v <= h:
                    if n_band < cap:
                        band_r[n_band] = i
                        band_c[n_band] = j
                    n_band += 1
    return n_band


@functools.lru_cache(maxsize=1)
def _fused_loop() -> Callable[..., None] | None:
    """:func:`_count_rows` compiled by numba (cached on disk), or None without numba.

    Imported on first use, not with this module: numba's import costs about half a second,
    which processes that never count (most claims runs) should not pay.
    """
    try:
        numba = importlib.import_module("numba")
    except ImportError:
        return None
    return numba.njit(nogil=True, cache=True, fastmath={"reassoc"})(_count_rows)


def fused_counting() -> bool:
    """Whether the compiled counting loop is in use (numba importable)."""
    return _fused_loop() is not None


def count_tile(
    S: np.ndarray, nb: int, cw: int, hi: np.ndarray, lo: np.ndarray, masks: tuple[np.ndarray, np.ndarray] | None,
    fused: bool = True, best: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Count a tile S[:nb, :cw] (S C-contiguous float32, ``hi``/``lo`` (nb, 1) float32 thresholds).

    Returns (above (nb,) int64: entries > hi, band rows, band columns (local indices): the entries
    with lo <= S <= hi).  ``best`` (nb,) float32, if given, is raised to each row's max.  Fused
    (numba, :func:`_count_rows`): one pass per row.  Otherwise numpy: two boolean masks
    (``masks``, each at least (nb, S.shape[1]) bytes, S.shape[1] a multiple of _CHUNK) counted in
    byte lanes; the band is found in the chunks where the two lane sums differ; numpy's row max.
    """
    loop = _fused_loop() if fused else None
    if loop is not None and cw > FUSED_MAX_COLUMNS:
        return _count_in_pieces(S, nb, cw, hi, lo, best)
    if loop is not None:
        above = np.empty(nb, np.int64)
        bits = np.empty(nb, np.int32)
        band_r = np.empty(_BAND_BUFFER, np.int64)
        band_c = np.empty(_BAND_BUFFER, np.int64)
        want_max = best is not None
        args = (S, S.view(np.int32), nb, cw, hi.ravel(), lo.ravel(), want_max, above, bits)
        n_band = loop(*args, band_r, band_c)
        if n_band > _BAND_BUFFER:  # rare: a tile with many near-ties; count again into larger buffers
            band_r, band_c = np.empty(n_band, np.int64), np.empty(n_band, np.int64)
            loop(*args, band_r, band_c)
        if want_max:
            np.maximum(best, bits.view(np.float32), out=best)
        return above, band_r[:n_band], band_c[:n_band]
    if masks is None:
        raise ValueError("count_tile: the numpy path needs its two mask buffers")
    am, gm = masks[0][:nb], masks[1][:nb]
    am[:, cw:] = False  # padding columns count as neither
    gm[:, cw:] = False
    np.greater(S[:nb, :cw], hi, out=am[:, :cw])
    np.greater_equal(S[:nb, :cw], lo, out=gm[:, :cw])
    above_lanes, ge_lanes = _lane_sums(am), _lane_sums(gm)
    above = np.add.reduce(above_lanes.reshape(nb, -1), axis=1, dtype=np.int64)
    if best is not None:
        np.maximum(best, S[:nb, :cw].max(axis=1), out=best)
    br, bc = np.nonzero((ge_lanes != above_lanes).any(axis=2))
    if br.size == 0:
        return above, br, bc
    idx = np.flatnonzero(_chunks(gm, br, bc) != _chunks(am, br, bc))
    k = idx // _CHUNK
    return above, br[k], bc[k] * _CHUNK + idx % _CHUNK


_BAND_BUFFER = 4096  # band entries written per tile before a recount into larger buffers
FUSED_MAX_COLUMNS = 1 << 24
"""The widest row the compiled loop counts at once: its float32 counters hold every integer up to
2^24 (2^24 + 1 rounds to 2^24), so a wider tile is counted in pieces of at most this width."""


def _count_in_pieces(
    S: np.ndarray, nb: int, cw: int, hi: np.ndarray, lo: np.ndarray, best: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`count_tile` (fused) of S[:nb, :cw] in column pieces of ``FUSED_MAX_COLUMNS``: the
    counts summed in int64, the band columns made the tile's own, the row max over every piece."""
    above = np.zeros(nb, np.int64)
    band_r: list[np.ndarray] = []
    band_c: list[np.ndarray] = []
    for c0 in range(0, cw, FUSED_MAX_COLUMNS):
        width = min(FUSED_MAX_COLUMNS, cw - c0)
        part, r, c = count_tile(S[:, c0 : c0 + width], nb, width, hi, lo, None, True, best)
        above += part
        band_r.append(r)
        band_c.append(c0 + c)
    return above, _cat(band_r), _cat(band_c)
