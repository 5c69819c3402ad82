"""The rank fit's cheaper pieces: the compiled top-K pass, the sampled bulk of the restricted
cross-entropy, and the rank-1 bound stop (harness/circuits/low_rank.py, low_rank_sparse.py).

- the compiled one-pass top-K equals a brute-force top-K (values; its columns hold them; never the
  row's own column), ties included, and leaves the logits unchanged;
- the sampled bulk is what it says: with every column sampled and weight 1 the restricted step's
  loss and gradients are the full softmax's (those of ``loss_and_grads``); its gradients are
  autograd's on the sampled loss; a weight w adds log w to the bulk's logits;
- the bound stop never stops early wrongly: a fit it stops is at the proven rank-1 bound (two rows,
  counted exactly), untrained; a fit whose start is below the bound is trained exactly as without
  the flag; ranks above 1 are never stopped by it;
- a fit with the bulk is the same for the same seed; the metrics pass the new settings on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.circuits import low_rank as lr
from harness.circuits import low_rank_sparse as ls
from harness.circuits.low_rank import copy_bound, fit_low_rank_copying
from harness.circuits.ov_tiles import single_threaded_blas
from harness.testing import fast_settings
from tests.low_rank_support import (assert_hardest_columns, autograd_rows, coupled_problem, logit_rows,
                                   rank_curve_on_split_copier)

FAST = fast_settings(20)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@given(b=st.integers(1, 6), V=st.integers(2, 300), K=st.integers(1, 80), seed=st.integers(0, 10_000),
       ties=st.booleans())
@FAST
def test_compiled_top_k_is_the_brute_force_top_k(b: int, V: int, K: int, seed: int, ties: bool) -> None:
    L, cols, off = logit_rows(b, V, seed, ties)
    before = L.copy()
    vals, found = ls.hard_negatives_compiled(L, cols, K, lr._Numpy(2)._chunked)
    assert_hardest_columns(off, cols, K, vals, found)
    np.testing.assert_array_equal(L, before)  # read only


def _factors(V: int = 300, k: int = 6, r: int = 3, seed: int = 5) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((V, k)), rng.standard_normal((k, V)), rng.standard_normal((k, r)), rng.standard_normal((r, k))


@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_a_bulk_of_every_column_is_the_full_softmax(backend: str) -> None:
    E, U, A, B = _factors()
    V, b, K = E.shape[0], 9, 5
    rows = np.random.default_rng(1).permutation(V)[:b]
    ops = lr._Numpy(1) if backend == "numpy" else lr._Torch("cpu")
    args = [ops.asarray(x) for x in (E, U.T, A, B)]
    loss, _, dA, dB = ls.restricted_grads(ops, *args, rows, "ce", K, np.arange(V))
    full_loss, _, full_dA, full_dB = lr.loss_and_grads(ops, args[0], ops.asarray(U), args[2], args[3], rows, "ce")
    np.testing.assert_allclose(loss, full_loss, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ops.to_numpy(dA), ops.to_numpy(full_dA), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(ops.to_numpy(dB), ops.to_numpy(full_dB), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("weight", [1.0, 0.25])
def test_bulk_gradients_match_autograd(weight: float) -> None:
    E, U, A, B = _factors()
    V, b, K, m = E.shape[0], 7, 5, 40
    rng = np.random.default_rng(3)
    rows, S = rng.permutation(V)[:b], np.sort(rng.choice(V, m, replace=False))
    ops = lr._Numpy(1)
    loss, _, dA, dB = ls.restricted_grads(ops, *(ops.asarray(x) for x in (E, U.T, A, B)), rows, "ce", K, S, weight)

    ref = autograd_rows(E, U, A, B, rows)
    At, Bt, L, own, diag, off = (ref[key] for key in ("A", "B", "L", "own", "diag", "off"))
    top = torch.topk(off, K, 1)
    Ls = L[:, torch.tensor(S)]
    mask = (Ls.detach() >= top.values[:, -1:]) | (torch.tensor(S)[None, :] == own[:, None])
    kept = (~mask).sum(1).clamp(min=1).double()
    bulk = torch.where(mask, -torch.inf, Ls + torch.log(weight * (V - 1 - K) / kept)[:, None])
    per_row = torch.logsumexp(torch.cat([diag[:, None], L.gather(1, top.indices), bulk], 1), 1) - diag
    per_row.mean().backward()
    np.testing.assert_allclose(loss, per_row.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(dA, At.grad.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(dB, Bt.grad.numpy(), rtol=1e-3, atol=1e-4)


def test_copy_bound() -> None:
    assert copy_bound(1, 1000) == 2 and copy_bound(1, 1) == 1 and copy_bound(2, 1000) == 1000


@given(V=st.integers(3, 120), d=st.integers(1, 6), seed=st.integers(0, 10_000))
@fast_settings(12)
def test_bound_stop_never_stops_early_wrongly(V: int, d: int, seed: int) -> None:
    E, U = coupled_problem(V, d, seed)
    kw = dict(seed=0, max_steps=6, max_seconds=None, batch_rows=32, eval_every=3)
    fit = fit_low_rank_copying(E, U, 1, stop_at_bound=True, **kw)
    if fit.stopped_by == "bound":  # untrained, and exactly at the most any rank-1 matrix reaches
        assert fit.steps == 0 and fit.trace == [] and round(fit.top1 * V) == copy_bound(1, V) == 2
    else:  # below the bound at the start: trained exactly as without the flag
        plain = fit_low_rank_copying(E, U, 1, **kw)
        np.testing.assert_array_equal(fit.A, plain.A)
        assert fit.top1 == plain.top1 and fit.steps == plain.steps > 0
    two = fit_low_rank_copying(E, U, 2, stop_at_bound=True, **kw)  # rank 2 has no bound below V ...
    assert (two.stopped_by == "bound") == (d == 1 and fit.stopped_by == "bound")  # ... unless d = 1 makes it rank 1


def test_bound_stop_happens() -> None:
    """The stop is not vacuous: on small coupled problems the rank-1 least-squares start often
    reaches the bound (as on SmolLM2), and each stopped fit is exactly at it, untrained."""
    stopped = []
    for seed in range(12):
        E, U = coupled_problem(60, 4, seed)
        fit = fit_low_rank_copying(E, U, 1, seed=0, max_steps=5, max_seconds=None, batch_rows=16, stop_at_bound=True)
        if fit.stopped_by == "bound":
            assert fit.steps == 0 and round(fit.top1 * 60) == 2
            stopped.append(seed)
    assert stopped


def test_same_seed_same_fit_with_a_bulk() -> None:
    E, U = coupled_problem(300, 8, 2)
    kw = dict(max_steps=40, max_seconds=None, batch_rows=64, negatives=8, bulk=50, bulk_weight=0.5)
    fits = [fit_low_rank_copying(E, U, 4, seed=7, **kw) for _ in range(2)]
    np.testing.assert_array_equal(fits[0].A, fits[1].A)
    assert fits[0].settings.bulk == 50 and fits[0].settings.bulk_weight == 0.5
    assert not np.array_equal(fit_low_rank_copying(E, U, 4, seed=8, **kw).A, fits[0].A)
    with pytest.raises(ValueError, match="bulk needs negatives"):
        fit_low_rank_copying(E, U, 2, max_steps=1, max_seconds=None, bulk=5)


def test_metrics_pass_the_bulk_and_the_bound_stop() -> None:
    m = rank_curve_on_split_copier(ranks=[1, 32], max_steps=300, device="cpu", negatives=8, eval_every=150,
                                   bulk=64, bulk_weight=0.5, stop_at_bound=True)
    settings = m.details["fits"]["32"]["settings"]
    assert (settings["bulk"], settings["bulk_weight"], settings["stop_at_bound"]) == (64, 0.5, True)
    assert m.select("rank=32/top1").value == 1.0
    assert m.details["fits"]["1"]["stopped_by"] in ("bound", "steps", "converged")


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("r", [5, 16, 64])
def test_tiled_hardest_columns_equal_the_whole_product(workers: int, r: int) -> None:
    """More rows and columns than one tile (and ragged last tiles): the tiled pass gives its tiles'
    own entries and top-K values bit for bit (each tile one single-threaded product, whatever the
    workers), its columns those of a one-pass scan of that matrix (ties: earlier column); the
    entries are the whole product's up to rounding (bitwise where the BLAS blocks a tile as it
    blocks the whole, as on this project's CPU; not under OPENBLAS_CORETYPE=Haswell)."""
    rng = np.random.default_rng(4)
    rows, width = ls.tile_shape(r)
    b, V, K = rows + 7, width + 901, 16
    P, Qm = rng.standard_normal((b, r), dtype=np.float32), rng.standard_normal((r, V), dtype=np.float32)
    cols = rng.choice(V, b, replace=False)
    tiled = ls.hardest_from_factors(P, Qm, cols, K, workers)
    assert tiled is not None
    diag, vals, found = tiled
    L = np.empty((b, V), np.float32)
    with single_threaded_blas():
        for r0 in range(0, b, rows):
            for c0 in range(0, V, width):
                np.matmul(P[r0:r0 + rows], Qm[:, c0:c0 + width], out=L[r0:r0 + rows, c0:c0 + width])
        np.testing.assert_allclose(L, P @ Qm, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(diag, L[np.arange(b), cols])
    whole_vals, whole_cols = ls.hard_negatives_compiled(L.copy(), cols, K, _serial)
    np.testing.assert_array_equal(vals, whole_vals)
    np.testing.assert_array_equal(found, whole_cols)
    off = L.astype(np.float64)
    off[np.arange(b), cols] = -np.inf
    np.testing.assert_array_equal(vals, -np.sort(-off, axis=1)[:, :K])
    assert not (found == cols[:, None]).any()
    other = ls.hardest_from_factors(P, Qm, cols, K, 3 - workers)  # the other worker count: bitwise
    assert other is not None and all(np.array_equal(x, y) for x, y in zip(tiled, other))
    again = ls.hardest_from_factors(P, np.asfortranarray(Qm), cols, K, workers)  # the other layout: rounding apart
    assert again is not None
    np.testing.assert_allclose(again[0], diag, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(again[1], vals, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(again[2], found)


def _serial(n: int, width: int, work: Any) -> None:
    work(0, n)


def test_sparse_backward_is_numpys_gathers_and_add_at() -> None:
    """The compiled pass gives numpy's ``(G[:, :, None] * QmT[C]).sum(1)`` and ``np.add.at``, bit for bit."""
    rng = np.random.default_rng(5)
    b, M, V, r = 300, 9, 500, 7
    G, P = rng.standard_normal((b, M), dtype=np.float32), rng.standard_normal((b, r), dtype=np.float32)
    C, QmT = rng.integers(0, V, (b, M)), rng.standard_normal((V, r), dtype=np.float32)
    uniq, inverse = np.unique(C.reshape(-1), return_inverse=True)
    dP, H = ls.sparse_backward(G, C, P, QmT, inverse, len(uniq))
    H0 = np.zeros_like(H)
    np.add.at(H0, inverse, (G[:, :, None] * P[:, None, :]).reshape(-1, r))
    np.testing.assert_array_equal(dP, (G[:, :, None] * QmT[C]).sum(1))
    np.testing.assert_array_equal(H, H0)


def test_factor_rows_is_the_r_by_V_product() -> None:
    """``Q_U B'^T`` by row blocks: the same bits on one and two threads, ``B' Q_U^T``'s entries up to
    rounding (bitwise where the BLAS blocks both alike, as on this project's CPU)."""
    rng = np.random.default_rng(6)
    QU, B = rng.standard_normal((lr.FACTOR_ROWS + 333, 40), dtype=np.float32), rng.standard_normal((6, 40), dtype=np.float32)
    with single_threaded_blas():
        whole = B @ np.ascontiguousarray(QU.T)
    two = lr._Numpy(2).factor_rows(QU, B)
    np.testing.assert_array_equal(two, lr._Numpy(1).factor_rows(QU, B))
    np.testing.assert_allclose(two.T, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("bulk", [True, False])
def test_ce_softmax_in_row_blocks_is_the_whole_matrix_pass(bulk: bool) -> None:
    """The restricted cross-entropy's softmax over ``[d, vals, bulk]`` in row blocks on one or two
    threads: the bits of the whole-matrix passes (the bulk's product formed whole, the rest row by row)."""
    rng = np.random.default_rng(9)
    b, V, r, K, m = 700, 3000, 5, 6, 400  # 700 rows x 407 columns: two cache-sized row blocks (644 + 56 rows)
    P, Qm = rng.standard_normal((b, r), dtype=np.float32), rng.standard_normal((r, V), dtype=np.float32)
    idx = rng.permutation(V)[:b]
    vals = -np.sort(-rng.standard_normal((b, K), dtype=np.float32) * 3, axis=1)
    diag = rng.standard_normal(b, dtype=np.float32)
    S = np.sort(rng.choice(V, m, replace=False)) if bulk else None
    ops = lr._Numpy(1)
    with single_threaded_blas():
        parts = [diag[:, None], vals] + ([ls.bulk_logits(ops, P @ Qm[:, S], S, idx, vals, V, 0.1)] if bulk else [])
        whole = ops.softmax_rows(np.concatenate(parts, axis=1))
        for threads in (1, 2):
            lse, G = lr._Numpy(threads).ce_softmax(diag, vals, P, Qm, S, idx, V, 0.1)
            np.testing.assert_array_equal(lse, whole[0])
            np.testing.assert_array_equal(G, whole[1])


def test_ce_softmax_with_a_short_last_row_block_is_the_whole_matrix_pass() -> None:
    """At rank 64 with a bulk, 2048 rows of width 1 + 32 + 351 = 384 fall into row blocks of 682, 682,
    682 and 2 rows: the softmax is still the whole-matrix pass's bit for bit (a 2-row block's
    product by OpenBLAS is not always the whole product's rows, so the product must not be split)."""
    rng = np.random.default_rng(9)
    b, V, r, K, m = 2048, 3000, 64, 32, 351
    assert b % (lr.CHUNK_FLOATS // (1 + K + m)) == 2
    P, Qm = rng.standard_normal((b, r), dtype=np.float32), rng.standard_normal((r, V), dtype=np.float32)
    idx = rng.integers(0, V, b)
    vals = -np.sort(-rng.standard_normal((b, K), dtype=np.float32) * 3, axis=1)
    diag = rng.standard_normal(b, dtype=np.float32)
    S = np.sort(rng.choice(V, m, replace=False))
    ops = lr._Numpy(1)
    with single_threaded_blas():
        bulk = ls.bulk_logits(ops, P @ Qm[:, S], S, idx, vals, V, 0.1)
        whole = ops.softmax_rows(np.concatenate([diag[:, None], vals, bulk], axis=1))
        for threads in (1, 2):
            lse, G = lr._Numpy(threads).ce_softmax(diag, vals, P, Qm, S, idx, V, 0.1)
            np.testing.assert_array_equal(lse, whole[0])
            np.testing.assert_array_equal(G, whole[1])


def test_the_fit_is_the_same_on_one_and_two_threads() -> None:
    """Set-up and steps run on one BLAS thread, the tiles dealt to the workers: the same fit bit for bit."""
    E, U = coupled_problem(700, 24, 7)
    kw = dict(seed=3, max_steps=8, max_seconds=None, batch_rows=128, eval_every=4, negatives=8, bulk=64, bulk_weight=0.1)
    fits = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        fits.append(fit_low_rank_copying(E, U, 6, **kw))
    assert fits[0].settings.threads == 1 and fits[1].settings.threads == 2
    np.testing.assert_array_equal(fits[0].A, fits[1].A)
    np.testing.assert_array_equal(fits[0].B, fits[1].B)
    assert len(fits[0].trace) == len(fits[1].trace)  # zip below would drop a longer second trace's tail
    assert fits[0].trace == [dict(p, seconds=q["seconds"]) for p, q in zip(fits[1].trace, fits[0].trace)]


def test_a_curve_side_by_side_is_the_curve_in_turn() -> None:
    """On two torch threads a step-budgeted curve runs its fits and head points side by side, one
    thread each: the same points and the same fits (traces included) as one after the other."""
    params = dict(ranks=[1, 2, 8], heads=[["0.0"], ["0.1"], ["0.0", "0.1"]], max_steps=12, max_seconds_per_rank=None,
                  device="cpu", negatives=4, bulk=16, bulk_weight=0.1, eval_every=6, stop_at_bound=True)
    curves = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            curves.append(rank_curve_on_split_copier(**params))
    finally:
        torch.set_num_threads(1)
    in_turn, side_by_side = curves
    assert side_by_side.value == in_turn.value
    timing = {"setup_seconds", "train_seconds", "eval_seconds", "wall_seconds", "seconds_per_step"}

    def comparable(fit: dict[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in fit.items() if k not in timing}
        out["trace"] = [{k: v for k, v in point.items() if k != "seconds"} for point in fit["trace"]]
        out["settings"] = {k: v for k, v in fit["settings"].items() if k != "threads"}
        return out

    for rank, fit in in_turn.details["fits"].items():
        assert fit["settings"]["threads"] == 1 and side_by_side.details["fits"][rank]["settings"]["threads"] == 1
        assert comparable(side_by_side.details["fits"][rank]) == comparable(fit)


def test_bases_kept_under_the_given_weights_key() -> None:
    """A key naming the weights replaces the hash of their bytes: the same fit, the bases found by the key."""
    E, U = coupled_problem(300, 16, 8)
    kw = dict(seed=0, max_steps=4, max_seconds=None, batch_rows=64, eval_every=2, negatives=4)
    hashed = fit_low_rank_copying(E, U, 3, **kw)
    keyed = fit_low_rank_copying(E, U, 3, weights_key="model-x", **kw)
    np.testing.assert_array_equal(hashed.A, keyed.A)
    assert lr._bases(np.zeros_like(E), np.zeros_like(U), "model-x")[0] is lr._bases(E, U, "model-x")[0]
