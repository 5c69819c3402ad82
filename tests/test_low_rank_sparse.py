"""The rank fit's restricted step (harness/circuits/low_rank_sparse.py) and fits that use it.

- the blocked top-K equals a brute-force top-K of the off-diagonal entries (any V, K, blocks);
- the restricted losses and gradients equal autograd's on the restricted loss (numpy and torch);
- a fit with ``negatives`` is still evaluated exactly: its top-1 equals a dense float64 count and
  the OV kernel's count of the same map; a planted rank-r copier is fitted to top-1 1; a seed
  gives the same fit twice.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from harness.circuits import low_rank as lr
from harness.circuits import low_rank_sparse as ls
from harness.circuits.low_rank import fit_low_rank_copying
from harness.circuits.ov_topk import full_circuit_topk
from harness.testing import fast_settings
from tests.low_rank_support import (assert_hardest_columns, autograd_rows, coupled_problem, logit_rows,
                                   rank_curve_on_split_copier)

FAST = fast_settings(20)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small problems run faster on one thread


def dense_top1(W_E: np.ndarray, A: np.ndarray, B: np.ndarray, W_U: np.ndarray) -> float:
    """Reference: M in float64; a row is correct when its diagonal is its strict maximum."""
    M = W_E.astype(np.float64) @ A @ B @ W_U.astype(np.float64)
    return float((((M >= np.diag(M)[:, None]).sum(1) - 1) == 0).mean())


@given(b=st.integers(1, 6), V=st.integers(2, 300), K=st.integers(1, 80), seed=st.integers(0, 10_000),
       ties=st.booleans())
@FAST
def test_blocked_top_k_is_the_brute_force_top_k(b: int, V: int, K: int, seed: int, ties: bool) -> None:
    L, cols, off = logit_rows(b, V, seed, ties)
    vals, found = ls.hard_negatives_numpy(L.copy(), cols, K, lr._Numpy(1)._chunked)
    assert_hardest_columns(off, cols, K, vals, found)
    t_vals, t_found = ls.hard_negatives_torch(torch.tensor(L), torch.tensor(cols), K)
    np.testing.assert_array_equal(t_vals.numpy(), vals)


@pytest.mark.parametrize("objective", ["ce", "margin"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_restricted_gradients_match_autograd(objective: str, backend: str) -> None:
    rng = np.random.default_rng(5)
    V, k, r, b, K = 300, 6, 3, 7, 5
    E, U = rng.standard_normal((V, k)), rng.standard_normal((k, V))
    A, B = rng.standard_normal((k, r)), rng.standard_normal((r, k))
    rows = rng.permutation(V)[:b]
    ops = lr._Numpy(1) if backend == "numpy" else lr._Torch("cpu")
    loss, wrong, dA, dB = ls.restricted_grads(ops, *(ops.asarray(x) for x in (E, U.T, A, B)), rows, objective, K)

    ref = autograd_rows(E, U, A, B, rows)
    At, Bt, L, own, diag, off = (ref[key] for key in ("A", "B", "L", "own", "diag", "off"))
    hardest = torch.topk(off, K if objective == "ce" else 1, 1).indices
    S = torch.cat([diag[:, None], L.gather(1, hardest)], 1)
    per_row = torch.logsumexp(S, 1) - diag if objective == "ce" else torch.relu(1 - (diag - S[:, 1]))
    per_row.mean().backward()
    np.testing.assert_allclose(loss, per_row.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ops.to_numpy(dA), At.grad.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(ops.to_numpy(dB), Bt.grad.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_array_equal(wrong, (off.max(1).values >= diag).numpy().astype(np.int64))


def test_restricted_fit_is_evaluated_exactly() -> None:
    E, U = coupled_problem(600, 16, 2)
    fit = fit_low_rank_copying(E, U, 6, seed=0, max_steps=150, max_seconds=None, batch_rows=128, negatives=8)
    assert fit.settings.negatives == 8 and fit.steps == 300
    assert fit.top1 == dense_top1(E, fit.A, fit.B, U)
    kernel = full_circuit_topk(E, fit.A, fit.B, U)
    assert fit.top1 == kernel.accuracy(1, "pessimistic") and fit.top5 == kernel.accuracy(5, "pessimistic")
    assert fit.top1 > fit.trace[0]["monitor_top1"]  # training moved it from the least-squares start


def test_planted_rank_r_copier_is_fitted_to_top1_one() -> None:
    """W_E = [F | G], W_U = [F | H]^T with F's rows distinct unit vectors in r dimensions: the
    projection onto the first r coordinates (rank r) gives M = F F^T, whose diagonal 1 is each
    row's strict maximum; the restricted fit must find a rank-r map that copies every token."""
    rng = np.random.default_rng(0)
    V, r, extra = 400, 8, 8
    F = rng.standard_normal((V, r))
    F /= np.linalg.norm(F, axis=1, keepdims=True)
    E = np.hstack([F, rng.standard_normal((V, extra))]).astype(np.float32)
    U = np.hstack([F, rng.standard_normal((V, extra))]).T.astype(np.float32)
    P = np.diag([1.0] * r + [0.0] * extra)
    assert dense_top1(E, P[:, :r], P[:r], U) == 1.0  # the planted copier exists at rank r
    fit = fit_low_rank_copying(E, U, r, seed=0, max_steps=400, max_seconds=None, batch_rows=128, negatives=16)
    assert fit.top1 == 1.0 and dense_top1(E, fit.A, fit.B, U) == 1.0


def test_same_seed_same_restricted_fit() -> None:
    E, U = coupled_problem(300, 16, 2)
    kw = dict(max_steps=60, max_seconds=None, batch_rows=64, negatives=8)
    fits = [fit_low_rank_copying(E, U, 4, seed=7, **kw) for _ in range(2)]
    np.testing.assert_array_equal(fits[0].A, fits[1].A)
    np.testing.assert_array_equal(fits[0].B, fits[1].B)
    strip = lambda trace: [{k: v for k, v in p.items() if k != "seconds"} for p in trace]  # noqa: E731
    assert strip(fits[0].trace) == strip(fits[1].trace)
    other = fit_low_rank_copying(E, U, 4, seed=8, **kw)
    assert not np.array_equal(other.A, fits[0].A)


def test_negatives_must_be_positive() -> None:
    E, U = coupled_problem(50, 16, 2)
    with pytest.raises(ValueError, match="negatives must be >= 1"):
        fit_low_rank_copying(E, U, 2, max_steps=1, max_seconds=None, negatives=0)


def test_metrics_pass_negatives_to_the_fit() -> None:
    m = rank_curve_on_split_copier(ranks=[32], max_steps=300, device="cpu", negatives=8, eval_every=150)
    assert m.details["fits"]["32"]["settings"]["negatives"] == 8
    assert [p["step"] for p in m.details["fits"]["32"]["trace"]] == [0, 150, 300, 0, 150, 300]
    assert m.select("rank=32/top1").value == 1.0
