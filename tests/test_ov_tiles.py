"""The fused (numba) tile count against numpy's mask passes, and the kernel with either."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.circuits import ov_tiles
from harness.circuits.ov_tiles import _CHUNK, count_tile, fused_counting
from harness.circuits.ov_topk import full_circuit_topk
from harness.testing import fast_settings
from tests.test_ov_topk import circuits

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_fused_counting_is_installed():
    """numba is a declared dependency: the compiled loop must be the one in use."""
    assert fused_counting()


@fast_settings(60)
@given(st.integers(1, 40), st.integers(1, 2 * _CHUNK), st.integers(0, 2**32 - 1), st.sampled_from([2, 4096]))
def test_fused_tile_count_equals_numpy(nb, cw, seed, buffer):
    rng = np.random.default_rng(seed)
    w = -(-cw // _CHUNK) * _CHUNK
    S = np.full((nb + 3, w), np.nan, np.float32)  # rows and columns past (nb, cw) must be ignored
    S[:nb, :cw] = rng.integers(-4, 5, (nb, cw)).astype(np.float32) / 4  # many exact hits of the thresholds
    S[:nb, :cw][rng.random((nb, cw)) < 0.05] = -np.inf
    S[:nb, :cw][rng.random((nb, cw)) < 0.05] = -0.0
    d = rng.integers(-4, 5, nb).astype(np.float32) / 4
    hi, lo = (d + 0.25 * rng.integers(0, 2, nb))[:, None], (d - 0.25 * rng.integers(0, 2, nb))[:, None]
    hi, lo = hi.astype(np.float32), lo.astype(np.float32)
    masks = (np.zeros((nb + 3, w), bool), np.zeros((nb + 3, w), bool))
    best_a, best_b = np.full(nb, -np.inf, np.float32), np.full(nb, -np.inf, np.float32)
    with pytest.MonkeyPatch.context() as mp:  # a small band buffer exercises the recount
        mp.setattr(ov_tiles, "_BAND_BUFFER", buffer)
        a = count_tile(S, nb, cw, hi, lo, None, fused=True, best=best_a)
    b = count_tile(S, nb, cw, hi, lo, masks, fused=False, best=best_b)
    np.testing.assert_array_equal(best_a, S[:nb, :cw].max(axis=1))
    np.testing.assert_array_equal(best_a, best_b)
    np.testing.assert_array_equal(a[0], (S[:nb, :cw] > hi).sum(1))
    np.testing.assert_array_equal(a[0], b[0])
    band = lambda x: sorted(zip(x[1].tolist(), x[2].tolist()))  # noqa: E731
    want = np.nonzero((S[:nb, :cw] >= lo) & (S[:nb, :cw] <= hi))
    assert band(a) == band(b) == sorted(zip(want[0].tolist(), want[1].tolist()))


@fast_settings(60)
@given(circuits(), st.integers(1, 64), st.integers(1, 256))
def test_kernel_counts_fused_or_not(circuit, block_rows, block_cols):
    E, L, R, U, rows = circuit
    a = full_circuit_topk(E, L, R, U, rows=rows, block_rows=block_rows, block_cols=block_cols)
    b = full_circuit_topk(E, L, R, U, rows=rows, block_rows=block_rows, block_cols=block_cols, fused=False)
    for name in ("above", "ties", "ties_below", "margin", "tolerance"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.n_rechecked == b.n_rechecked


def test_fused_max_of_negative_rows_and_full_counts():
    """The bit-pattern max (integer max, or min where every entry is negative) and the float32
    counters on the widest tile: all-negative rows, a row of -inf and -0.0, a row wholly above."""
    w = 8 * _CHUNK
    rng = np.random.default_rng(1)
    S = -np.abs(rng.standard_normal((4, w))).astype(np.float32) - 1e-3  # every entry negative
    S[1] = -np.inf
    S[1, 17] = -0.0
    S[2] = 1.0 + rng.random(w).astype(np.float32)  # all 8192 above hi
    S[3, 5] = 0.0
    hi, lo = np.full((4, 1), 0.5, np.float32), np.full((4, 1), 0.5, np.float32)
    best = np.full(4, -np.inf, np.float32)
    above, _, _ = count_tile(S, 4, w, hi, lo, None, fused=True, best=best)
    np.testing.assert_array_equal(best, S.max(axis=1))
    assert np.signbit(best[1]) and best[1] == 0.0 and best[3] == 0.0 and not np.signbit(best[3])
    np.testing.assert_array_equal(above, [0, 0, w, 0])


def test_fused_counts_stay_exact_past_float32_integers():
    """A tile row wider than 2^24 columns: the float32 counters cannot hold an odd count above 2^24
    (2^24 + 1 rounds to 2^24), so such a tile is counted in column pieces of at most 2^24."""
    w = (1 << 24) + 3  # 2^24 + 1 entries above: odd, so no float32 holds the count
    S = np.ones((1, w), np.float32)
    S[0, 7] = 0.5  # one band entry (lo <= S <= hi), far below the piece boundary
    S[0, w - 1] = 0.5  # and one in the last piece, whose column must come back global
    hi, lo = np.full((1, 1), 0.75, np.float32), np.full((1, 1), 0.25, np.float32)
    best = np.full(1, -np.inf, np.float32)
    above, band_r, band_c = count_tile(S, 1, w, hi, lo, None, fused=True, best=best)
    assert above.tolist() == [w - 2]
    assert band_r.tolist() == [0, 0] and band_c.tolist() == [7, w - 1]
    assert best.tolist() == [1.0]
