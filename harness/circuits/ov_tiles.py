"""Shared pieces of the OV kernel's float32 scans: band thresholds and counting in mask byte lanes.

Used by the one-pass scan (:mod:`harness.circuits.ov_topk`) and the pruned scan
(:mod:`harness.circuits.ov_prune`).  A float32 entry S of row i is surely above the diagonal when
``S > hi_i``, surely below when ``S < lo_i``, in the rounding band otherwise, with
``hi_i = d_i + T_i`` rounded up and ``lo_i = d_i - T_i`` rounded down to float32.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

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


@contextmanager
def _single_threaded_blas() -> Iterator[None]:
    """One BLAS thread per call while the worker threads share the cores (needs threadpoolctl)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # still correct; BLAS's own threads then compete with the workers
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield
