"""The pruned OV kernel (tile bounds, rows settled at k_max) against the full one-pass scan, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from harness.circuits.ov_prune import key_tiles, tile_bounds
from harness.circuits.ov_topk import TopKResult, full_circuit_topk
from harness.testing import fast_settings
from tests.test_ov_topk import POLICIES, circuits, dense_reference

pytestmark = pytest.mark.usefixtures("one_torch_thread")

COUNTS = ("above", "ties", "ties_below")


def assert_same_answers(full: TopKResult, pruned: TopKResult, k_max: int | None) -> None:
    """Counts equal where the full row ranks below k_max; every accuracy and tie count for k <= k_max equal."""
    if k_max is None:
        for name in COUNTS:
            np.testing.assert_array_equal(getattr(pruned, name), getattr(full, name), err_msg=name)
        assert (pruned.n_rows, pruned.row_start, pruned.k_max) == (full.n_rows, full.row_start, None)
        # every answer for every k is a function of the counts just found equal: a few k exercise it
        # (every k up to n_rows + 1 cost 18,000 calls on a 3,000-row circuit, for the same result)
        ks = sorted({1, 2, 3, 5, 10, full.n_rows, full.n_rows + 1})
    else:
        open_rows = full.above < k_max
        for name in COUNTS:
            np.testing.assert_array_equal(getattr(pruned, name)[open_rows], getattr(full, name)[open_rows], err_msg=name)
        assert np.all(pruned.above[~open_rows] >= k_max)
        assert np.all(pruned.above <= full.above)
        ks = range(1, k_max + 1)
    for k in ks:
        for policy in POLICIES:
            assert pruned.accuracy(k, policy) == full.accuracy(k, policy), (k, policy)
            np.testing.assert_array_equal(pruned.correct(k, policy), full.correct(k, policy))
        assert pruned.n_tie_rows(k) == full.n_tie_rows(k)


@st.composite
def near_tie_circuits(draw):
    """Circuits whose off-diagonal entries sit at the diagonal's float32 rounding band.

    Output columns are copies of other columns nudged by a few float32 ulps, and some embeddings
    copy the unembedding (a planted copier): entries then differ from the diagonal by about the
    float32 error of the scan, which the float64 recheck must decide.
    """
    E, L, R, U, rows = draw(circuits())
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    V = len(E)
    src, dst = rng.integers(0, V, V // 2 + 1), rng.integers(0, V, V // 2 + 1)
    ulps = rng.integers(-4, 5, (U.shape[0], len(dst))).astype(np.float32)
    U[:, dst] = U[:, src] + ulps * np.spacing(np.abs(U[:, src]).astype(np.float32))
    if draw(st.booleans()):
        L[:] = np.eye(*L.shape, dtype=np.float32)
        R[:] = L.T
        E[:] = U.T
    return E, L, R, U, rows


def planted_copier(V: int, d: int, noise: float, seed: int, clusters: int = 40) -> tuple[np.ndarray, ...]:
    """M = (W_U^T + noise) W_U with identity OV: every token copies itself.

    The unembeddings are unit vectors in ``clusters`` groups (a centre plus a smaller spread), as
    token embeddings group; isotropic Gaussian keys in d dimensions leave no tile far from any row (the ball bound is
    then about Cauchy-Schwarz itself, which the diagonal of a copier only reaches).
    """
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, d))
    keys = 2 * centres[rng.integers(0, clusters, V)] + rng.standard_normal((V, d))
    U = (keys / np.linalg.norm(keys, axis=1, keepdims=True)).T.astype(np.float32)
    E = (U.T + noise * rng.standard_normal((V, d))).astype(np.float32)
    eye = np.eye(d, dtype=np.float32)
    return E, eye, eye, U


FAST = fast_settings(120)


@FAST
@given(circuits(), st.sampled_from([None, 1, 2, 5]), st.booleans(), st.integers(1, 64), st.integers(1, 96),
       st.booleans())
def test_pruned_equals_full_scan(circuit, k_max, prune, block_rows, block_cols, fused):
    E, L, R, U, rows = circuit
    full = full_circuit_topk(E, L, R, U, rows=rows, block_rows=7, block_cols=40)
    pruned = full_circuit_topk(E, L, R, U, rows=rows, block_rows=block_rows, block_cols=block_cols,
                               prune=prune, k_max=k_max, fused=fused)
    assert_same_answers(full, pruned, k_max)


@FAST
@given(near_tie_circuits(), st.sampled_from([None, 1, 3]), st.integers(1, 64))
def test_pruned_equals_dense_reference_at_near_ties(circuit, k_max, block_cols):
    E, L, R, U, rows = circuit
    ref = dense_reference(E, L, R, U)
    full = full_circuit_topk(E, L, R, U, rows=rows, block_rows=16, block_cols=48)
    for name in COUNTS:  # the full scan itself is the float64 truth
        np.testing.assert_array_equal(getattr(full, name), ref[name][rows], err_msg=name)
    pruned = full_circuit_topk(E, L, R, U, rows=rows, block_rows=5, block_cols=block_cols, prune=True, k_max=k_max)
    assert_same_answers(full, pruned, k_max)


@pytest.fixture(scope="module")
def copier_and_full_scan() -> tuple[tuple[np.ndarray, ...], TopKResult]:
    """The planted copier of the test below and its full scan (read by each number of workers)."""
    E, L, R, U = planted_copier(V=3000, d=48, noise=0.02, seed=0)
    return (E, L, R, U), full_circuit_topk(E, L, R, U)


@pytest.mark.parametrize("workers", [1, 3])
def test_planted_copier_skips_tiles_and_keeps_counts(workers, copier_and_full_scan):
    """A strong copier: the bound skips most tiles; the answers are the full scan's."""
    (E, L, R, U), full = copier_and_full_scan
    pruned = full_circuit_topk(E, L, R, U, prune=True, block_cols=64, block_rows=32, workers=workers)
    assert full.accuracy(1) > 0.9  # it does copy
    assert pruned.scanned < 0.5, pruned.scanned  # and the bound does decide
    assert_same_answers(full, pruned, None)


def test_random_model_settles_rows_early():
    """No copying: about half of each row beats its diagonal; k_max = 5 settles rows in a tile or two."""
    rng = np.random.default_rng(3)
    E, L, R, U = (rng.standard_normal(s).astype(np.float32) for s in [(4000, 32), (32, 16), (16, 32), (32, 4000)])
    full = full_circuit_topk(E, L, R, U)
    pruned = full_circuit_topk(E, L, R, U, k_max=5, block_cols=1024)
    assert pruned.scanned < 0.35, pruned.scanned
    assert_same_answers(full, pruned, 5)
    with pytest.raises(ValueError, match="k_max"):
        pruned.accuracy(6)
    assert np.isnan(pruned.margin).all()


def test_bound_is_above_every_entry():
    """UB(i, t) >= a_i . b_j for every key j of tile t (float64, exact inputs)."""
    rng = np.random.default_rng(4)
    P, QT = rng.standard_normal((300, 12)), rng.standard_normal((700, 12)) * rng.uniform(0.1, 3, (700, 1))
    tiles = key_tiles(QT, 64)
    assert sorted(tiles.perm.tolist()) == list(range(700)) and np.all(tiles.perm[tiles.pos] == np.arange(700))
    ub = tile_bounds(P, tiles)
    M = P @ QT[tiles.perm].T
    for t in range(tiles.n_tiles):
        block = M[:, t * 64 : (t + 1) * 64]
        assert np.all(block.max(axis=1) <= ub[:, t])


def test_bad_pruning_options():
    E = np.ones((5, 3), np.float32)
    with pytest.raises(ValueError, match="k_max"):
        full_circuit_topk(E, np.ones((3, 2)), np.ones((2, 3)), np.ones((3, 5)), k_max=0)
    with pytest.raises(ValueError, match="CPU"):
        full_circuit_topk(E, np.ones((3, 2)), np.ones((2, 3)), np.ones((3, 5)), prune=True, device="cpu")
