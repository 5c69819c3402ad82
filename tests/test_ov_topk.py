"""The full-OV-circuit top-k kernel against dense, obviously correct references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.circuits.ov_topk import TopKResult, effective_factors, full_circuit_topk
from harness.testing import fast_settings

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is 5-10x cheaper in CPU time

POLICIES = ("pessimistic", "optimistic", "argmax")


def fixed_order_product(A: np.ndarray, B: np.ndarray) -> np.ndarray:
    """A @ B in float64, every entry summed over k in the same order (k = 0, 1, ...).

    BLAS may round equal columns differently by position; this keeps exact ties exact.
    """
    out = np.zeros((A.shape[0], B.shape[1]))
    for k in range(A.shape[1]):
        out += A[:, k, None] * B[None, k, :]
    return out


def dense_reference(E, L, R, U) -> dict[str, np.ndarray]:
    """Form M = (E L)(R U) in float64 and count by definition, every row at once: row i's entries
    above its diagonal entry m = M[i, i], the other entries equal to m, those of them left of the
    diagonal, and the margin m - max(the other entries)."""
    E, L, R, U = (np.asarray(x, np.float64) for x in (E, L, R, U))
    M = fixed_order_product(fixed_order_product(E, L), fixed_order_product(R, U))
    V = M.shape[0]
    m = np.diag(M)[:, None]
    off_diagonal = ~np.eye(V, dtype=bool)
    tie = (M == m) & off_diagonal
    others = np.where(off_diagonal, M, -np.inf)
    margin = m[:, 0] - others.max(axis=1) if V > 1 else np.full(V, np.inf)
    return {"M": M, "above": (M > m).sum(axis=1), "ties": tie.sum(axis=1),
            "ties_below": np.tril(tie, -1).sum(axis=1), "margin": margin}


def reference_ranks(M: np.ndarray, policy: str) -> np.ndarray:
    """The diagonal's 0-based rank in each row of M under a tie rule (every row at once)."""
    m = np.diag(M)[:, None]
    if policy == "pessimistic":
        return (M >= m).sum(axis=1) - 1
    if policy == "optimistic":
        return (M > m).sum(axis=1)
    # a stable descending sort puts the lower index first among equals: the diagonal's place in it
    order = np.argsort(-M, axis=1, kind="stable")
    return np.argmax(order == np.arange(len(M))[:, None], axis=1)


def assert_matches(res: TopKResult, ref: dict[str, np.ndarray], rows: slice = slice(None)) -> None:
    for name in ("above", "ties", "ties_below"):
        np.testing.assert_array_equal(getattr(res, name), ref[name][rows], err_msg=name)
    want = ref["margin"][rows]
    assert np.array_equal(np.sign(res.margin), np.sign(want)), "margin sign"
    finite = np.isfinite(want)
    assert np.all(np.abs(res.margin[finite] - want[finite]) <= 2 * res.tolerance[finite] + 1e-12)


@st.composite
def circuits(draw):
    """Small random circuits; integer and dyadic values are exact in float64 and tie often."""
    V = draw(st.integers(2, 200))
    d = draw(st.integers(1, 32))
    r = draw(st.integers(1, 16))
    kind = draw(st.sampled_from(["int", "dyadic", "normal"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def sample(shape):
        if kind == "int":
            return rng.integers(-3, 4, shape).astype(np.float32)
        if kind == "dyadic":  # multiples of 1/8: exact in float64, rounded in the float32 scan
            return (rng.integers(-32, 33, shape) / 8).astype(np.float32)
        return rng.standard_normal(shape).astype(np.float32)

    E, L, R, U = sample((V, d)), sample((d, r)), sample((r, d)), sample((d, V))
    if draw(st.booleans()):  # duplicated output columns: exact ties whatever the values
        src = rng.integers(0, V, V // 3 + 1)
        dst = rng.integers(0, V, V // 3 + 1)
        U[:, dst] = U[:, src]
    if draw(st.booleans()):  # zero output columns tie with each other
        U[:, rng.integers(0, V, V // 4 + 1)] = 0
    if draw(st.booleans()):  # duplicated token embeddings
        E[rng.integers(0, V, V // 4 + 1)] = E[rng.integers(0, V, 1)]
    if draw(st.booleans()):  # zero embeddings: all-zero rows of M, ties everywhere
        E[rng.integers(0, V, V // 5 + 1)] = 0
    if draw(st.integers(0, 9)) == 0:  # a zero OV matrix: M == 0
        L[:] = 0
    start = draw(st.integers(0, V - 1))
    stop = draw(st.integers(start + 1, V))
    return E, L, R, U, slice(start, stop)


FAST = fast_settings(150)


@FAST
@given(circuits(), st.integers(1, 64), st.integers(1, 256))
def test_counts_match_dense_reference(circuit, block_rows, block_cols):
    E, L, R, U, rows = circuit
    ref = dense_reference(E, L, R, U)
    res = full_circuit_topk(E, L, R, U, block_rows=block_rows, block_cols=block_cols, rows=rows)
    assert res.n_rows == rows.stop - rows.start and res.row_start == rows.start
    assert_matches(res, ref, rows)


@FAST
@given(circuits())
def test_accuracy_every_k_and_policy(circuit):
    E, L, R, U, _ = circuit
    ref = dense_reference(E, L, R, U)
    res = full_circuit_topk(E, L, R, U, block_rows=16, block_cols=48)
    V = len(E)
    ranks = {policy: reference_ranks(ref["M"], policy) for policy in POLICIES}
    for k in sorted({1, 2, 3, 5, 10, V - 1, V} - {0}):
        for policy in POLICIES:
            assert res.accuracy(k, policy) == np.mean(ranks[policy] < k), (k, policy)
        pess = (ref["above"] + ref["ties"]) < k
        opt = ref["above"] < k
        assert res.n_tie_rows(k) == int(np.sum(opt & ~pess))


@settings(max_examples=40, deadline=None)
@given(circuits())
def test_torch_scan_matches_numpy_scan(circuit):
    E, L, R, U, rows = circuit
    a = full_circuit_topk(E, L, R, U, rows=rows, block_rows=7, block_cols=40)
    b = full_circuit_topk(torch.from_numpy(E), torch.from_numpy(L), torch.from_numpy(R),
                          torch.from_numpy(U), rows=rows, block_rows=33, device="cpu")
    for name in ("above", "ties", "ties_below"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert np.array_equal(np.sign(a.margin), np.sign(b.margin))
    finite = np.isfinite(a.margin)  # outside the band the margin is the float32 one
    assert np.all(np.abs(a.margin - b.margin)[finite] <= 4 * a.tolerance[finite])


@settings(max_examples=40, deadline=None)
@given(st.integers(2, 120), st.integers(1, 16), st.integers(1, 8), st.integers(0, 2**32 - 1))
def test_float32_only_scan_is_exact_on_small_integers(V, d, r, seed):
    """recheck=False counts the float32 product; small integers make that product exact."""
    rng = np.random.default_rng(seed)
    E, L, R, U = (rng.integers(-3, 4, s).astype(np.float32) for s in [(V, d), (d, r), (r, d), (d, V)])
    ref = dense_reference(E, L, R, U)
    res = full_circuit_topk(E, L, R, U, recheck=False, block_rows=8, block_cols=16)
    for name in ("above", "ties", "ties_below"):
        np.testing.assert_array_equal(getattr(res, name), ref[name], err_msg=name)
    assert np.array_equal(res.margin, ref["margin"])


def test_margins_off_keeps_counts():
    rng = np.random.default_rng(2)
    E, L, R, U = (rng.standard_normal(s).astype(np.float32) for s in [(300, 9), (9, 4), (4, 9), (9, 300)])
    a, b = full_circuit_topk(E, L, R, U), full_circuit_topk(E, L, R, U, margins=False)
    for name in ("above", "ties", "ties_below"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert np.isnan(b.margin).all() and np.isfinite(a.margin).all()


def test_argmax_policy_is_torch_argmax():
    """The course's top_1_acc: argmax over the output dimension, compared with the row index."""
    rng = np.random.default_rng(1)
    V, d = 150, 8
    E = rng.integers(-2, 3, (V, d)).astype(np.float32)
    E[V // 2 :] = E[: V // 2]  # M = E E^T: tokens i and i + V/2 tie in every row
    eye = np.eye(d, dtype=np.float32)
    M = torch.from_numpy(dense_reference(E, eye, eye, E.T)["M"])
    res = full_circuit_topk(E, eye, eye, E.T)
    assert res.n_tie_rows(1) > 0  # the example does exercise ties at the top
    course = (M.argmax(dim=1) == torch.arange(V)).double().mean().item()
    assert res.accuracy(1, "argmax") == course
    assert res.accuracy(1, "pessimistic") < course < res.accuracy(1, "optimistic")


def test_effective_circuit_is_the_sum_of_heads():
    """Concatenating W_V along the rank dimension and W_O likewise sums the heads' OV matrices."""
    g = torch.Generator().manual_seed(0)
    V, d, dh, h = 97, 24, 6, 3
    W_E, W_U = torch.randn(V, d, generator=g), torch.randn(d, V, generator=g)
    W_V, W_O = torch.randn(h, d, dh, generator=g), torch.randn(h, dh, d, generator=g)
    left, right = effective_factors(W_V, W_O)
    assert left.shape == (d, h * dh) and right.shape == (h * dh, d)
    ov_sum = sum(W_V[i].double() @ W_O[i].double() for i in range(h)).numpy()
    np.testing.assert_allclose(left.astype(np.float64) @ right, ov_sum, rtol=1e-12, atol=1e-12)
    res = full_circuit_topk(W_E, left, right, W_U)
    M = W_E.double().numpy() @ ov_sum @ W_U.double().numpy()
    above = (M > np.diag(M)[:, None]).sum(1)
    np.testing.assert_array_equal(res.above, above)
    assert res.accuracy(1) == np.mean(M.argmax(1) == np.arange(V))


def test_single_head_factors_and_identity_circuit():
    """A copying circuit W_E W_U = I: every diagonal is the strict maximum, top-1 = 100%."""
    V = 40
    E = np.eye(V, dtype=np.float32)
    res = full_circuit_topk(E, np.eye(V, 5, dtype=np.float32), np.eye(5, V, dtype=np.float32), E)
    assert res.accuracy(1, "argmax") == pytest.approx(5 / V)  # rows >= 5 are all-zero rows
    assert res.above[:5].tolist() == [0] * 5 and res.ties[:5].tolist() == [0] * 5
    assert res.ties[5:].tolist() == [V - 1] * (V - 5)  # an all-zero row ties everywhere
    assert res.accuracy(V, "pessimistic") == 1.0 and res.accuracy(1, "optimistic") == 1.0


def test_rejects_bad_input():
    E = np.zeros((5, 3), np.float32)
    with pytest.raises(ValueError, match="shape"):
        full_circuit_topk(E, np.zeros((3, 2)), np.zeros((2, 3)), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="NaN"):
        full_circuit_topk(E, np.full((3, 2), np.nan), np.zeros((2, 3)), np.zeros((3, 5)))
    with pytest.raises(ValueError, match="contiguous"):
        full_circuit_topk(E, np.zeros((3, 2)), np.zeros((2, 3)), np.zeros((3, 5)), rows=slice(0, 5, 2))
    with pytest.raises(ValueError):
        full_circuit_topk(E, np.zeros((3, 2)), np.zeros((2, 3)), np.zeros((3, 5))).accuracy(0)


def course_weights(seed: int = 0, V: int = 50278, d: int = 768, r: int = 64):
    """Seeded random weights of the course model's shapes (fp32)."""
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(V, d, generator=g) * 0.1, torch.randn(d, r, generator=g) / d**0.5,
            torch.randn(r, d, generator=g) / r**0.5, torch.randn(d, V, generator=g) / d**0.5)


@pytest.mark.slow
def test_course_shape_equals_float64_row_block_reference():
    """V = 50,278, d = 768, r = 64: the fast counts equal float64 row blocks counted directly."""
    E, L, R, U = (x.double().numpy() for x in course_weights())
    res = full_circuit_topk(*course_weights())
    P, Q = E @ L, R @ U
    for s in range(0, len(E), 2048):
        Mb = P[s : s + 2048] @ Q
        ar = np.arange(len(Mb))
        dg = Mb[ar, s + ar][:, None]
        np.testing.assert_array_equal(res.above[s : s + 2048], (Mb > dg).sum(1))
        np.testing.assert_array_equal(res.ties[s : s + 2048], (Mb == dg).sum(1) - 1)
    assert res.n_rechecked > 0  # the band was exercised
