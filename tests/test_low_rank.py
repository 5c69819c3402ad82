"""Achievable single-head rank accuracy: ground truths, the closed form, gradients, determinism.

Ground truths (exact, whatever the optimiser):
- ``W_U = W_E^T`` with unit-norm distinct rows: at rank d_model, ``A B = I`` gives
  ``M[i, j] = e_i . e_j < 1 = M[i, i]`` (Cauchy-Schwarz), so 100% top-1 is achievable; the fit
  must reach it.
- A rank-1 matrix ``p q^T`` has row argmax ``argmax q`` (p_i > 0) or ``argmin q`` (p_i < 0): at most
  2 of the V rows are correct, top-1 <= 2 / V.
- planted-split-copy (fixtures/planted.py): heads 0.0 and 0.1 copy half of the vocabulary each
  (rank 32 each, top-1 0.5 each, 1.0 together).  What one rank-32 matrix reaches is reported.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fixtures.planted import PLANTED_MODELS, build_split_copy_model
from harness.circuits import low_rank as lr
from harness.circuits.low_rank import fit_low_rank_copying
from harness.context import MetricContext
from harness.core.model_handle import ModelHandle, ModelIdentity
from harness.registry import get_metric
from harness.session import Session
from harness.testing import fast_settings

FAST = fast_settings(8)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # small problems run faster on one thread


def unit_rows(V: int, d: int, seed: int) -> np.ndarray:
    E = np.random.default_rng(seed).standard_normal((V, d))
    return E / np.linalg.norm(E, axis=1, keepdims=True)


def dense_top1(W_E: np.ndarray, A: np.ndarray, B: np.ndarray, W_U: np.ndarray) -> float:
    """Reference: form M in float64, a row is correct when its diagonal is its strict maximum."""
    M = W_E @ A @ B @ W_U
    diag = np.diag(M)
    above_or_tied = (M >= diag[:, None]).sum(1) - 1
    return float((above_or_tied == 0).mean())


# ------------------------------------------------------------------------------------------
# ground truths
# ------------------------------------------------------------------------------------------


def test_tied_unit_rows_full_rank_reaches_100_percent() -> None:
    E = unit_rows(V=300, d=12, seed=1)
    fit = fit_low_rank_copying(E, E.T, 12, seed=0, max_steps=400, max_seconds=None, batch_rows=128)
    assert fit.top1 == 1.0 and fit.top5 == 1.0
    assert dense_top1(E, fit.A, fit.B, E.T) == 1.0
    assert (E @ np.eye(12) @ E.T >= 1 - 1e-12).sum() == 300  # A B = I: the diagonal alone is 1


@given(V=st.integers(3, 60), d=st.integers(2, 6), seed=st.integers(0, 10_000))
@FAST
def test_rank_one_is_at_most_two_over_V(V: int, d: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    E, U = rng.standard_normal((V, d)), rng.standard_normal((d, V))
    fit = fit_low_rank_copying(E, U, 1, seed=seed, max_steps=60, max_seconds=None, batch_rows=16)
    assert np.isfinite(fit.A).all() and np.isfinite(fit.B).all()  # a NaN fit could meet both bounds below
    assert fit.top1 <= 2 / V + 1e-12
    assert fit.top1 == dense_top1(E, fit.A, fit.B, U)


def test_rank_one_reaches_two_over_V_on_the_identity() -> None:
    """With W_E = W_U = I the bound is attained: +argmax q and -argmin q rows (the fit finds it)."""
    I = np.eye(64)
    fit = fit_low_rank_copying(I, I, 1, seed=0, max_steps=2000, max_seconds=None, batch_rows=64)
    assert fit.top1 == pytest.approx(2 / 64)


def test_planted_split_copy_one_rank_32_matrix() -> None:
    """The report: one rank-32 matrix copies every token (top-1 1.0), as well as the two heads."""
    spec = PLANTED_MODELS["planted-split-copy"]
    model = build_split_copy_model(64)
    fit = fit_low_rank_copying(model.W_E.detach(), model.W_U.detach(), 32, seed=0, max_steps=2000,
                               max_seconds=None, batch_rows=64)
    print(f"planted-split-copy: one rank-32 matrix top-1 {fit.top1:.4f} top-5 {fit.top5:.4f} "
          f"({fit.steps} steps, {fit.stopped_by}); heads alone {spec.ground_truth['ov_top1']}")
    assert fit.top1 == 1.0 == spec.ground_truth["ov_top1"]["0.0+0.1"]
    assert fit.top1 > spec.ground_truth["ov_top1"]["0.0"]


# ------------------------------------------------------------------------------------------
# closed form, scale, gradients
# ------------------------------------------------------------------------------------------


@given(V=st.integers(8, 40), d=st.integers(2, 7), r=st.integers(1, 7), seed=st.integers(0, 10_000))
@FAST
def test_closed_form_is_the_least_squares_fit_of_the_identity(V: int, d: int, r: int, seed: int) -> None:
    """||W_E A B W_U - I||_F^2 = V - sum_{i<=r} cos^2(principal angle i) (Eckart-Young), and no
    random rank-r A B does better."""
    rng = np.random.default_rng(seed)
    E, U = rng.standard_normal((V, d)), rng.standard_normal((d, V))
    QE, _, TE_pinv = lr.orthonormal_factor(E)
    QU, _, TU_pinv = lr.orthonormal_factor(U.T)
    r = min(r, d)
    A0, B0 = lr.closed_form_init(QE.astype(np.float64).T @ QU.astype(np.float64), r)
    A, B = TE_pinv @ A0, B0 @ TU_pinv.T
    residual = np.linalg.norm(E @ A @ B @ U - np.eye(V)) ** 2
    cosines = np.linalg.svd(np.linalg.qr(E)[0].T @ np.linalg.qr(U.T)[0], compute_uv=False)
    assert residual == pytest.approx(V - (cosines[:r] ** 2).sum(), rel=1e-4, abs=1e-4)
    for _ in range(5):
        A1 = A + 0.1 * rng.standard_normal(A.shape)
        assert np.linalg.norm(E @ A1 @ B @ U - np.eye(V)) ** 2 >= residual - 1e-6


def test_rank_deficient_embeddings_are_handled() -> None:
    """A W_E of rank 3 in d = 6: the basis has 3 columns, the fit maps back exactly."""
    rng = np.random.default_rng(0)
    E = rng.standard_normal((40, 3)) @ rng.standard_normal((3, 6))
    U = rng.standard_normal((6, 40))
    Q, T, T_pinv = lr.orthonormal_factor(E)
    assert Q.shape == (40, 3)
    np.testing.assert_allclose(Q @ T, E, rtol=1e-4, atol=1e-4)
    fit = fit_low_rank_copying(E, U, 6, seed=0, max_steps=50, max_seconds=None, batch_rows=16)
    assert fit.effective_rank == 3 and fit.A.shape == (6, 3)
    assert fit.top1 == dense_top1(E, fit.A, fit.B, U)


def test_ce_scale_is_the_minimiser() -> None:
    rng = np.random.default_rng(3)
    t = np.arange(50) % 30
    L = rng.standard_normal((50, 30))
    L[np.arange(50), t] += 1.5  # mostly correct rows: the optimum is an interior scale
    a = lr.ce_optimal_scale(L, t)
    assert 0.1 < a < 100

    def ce(x: float) -> float:
        Z = x * L
        return float((np.log(np.exp(Z).sum(1)) - Z[np.arange(50), t]).mean())

    grid = np.linspace(a * 0.5, a * 1.5, 101)
    assert ce(a) <= min(ce(x) for x in grid) + 1e-9


@pytest.mark.parametrize("objective", ["ce", "margin"])
@pytest.mark.parametrize("backend", ["numpy", "torch"])
def test_gradients_match_autograd(objective: str, backend: str) -> None:
    rng = np.random.default_rng(5)
    V, k, r, b = 40, 6, 3, 7
    E, U = rng.standard_normal((V, k)), rng.standard_normal((k, V))
    A, B = rng.standard_normal((k, r)), rng.standard_normal((r, k))
    rows = rng.permutation(V)[:b]
    ops = lr._Numpy() if backend == "numpy" else lr._Torch("cpu")
    row_loss, rank, dA, dB = lr.loss_and_grads(ops, *(ops.asarray(x) for x in (E, U, A, B)), rows, objective)  # type: ignore[arg-type]

    At, Bt = (torch.tensor(x, requires_grad=True) for x in (A, B))
    L = torch.tensor(E[rows]) @ At @ Bt @ torch.tensor(U)
    diag = L[torch.arange(b), torch.tensor(rows)]
    if objective == "ce":
        per_row = torch.logsumexp(L, 1) - diag
    else:
        off = L.clone()
        off[torch.arange(b), torch.tensor(rows)] = -torch.inf
        per_row = torch.relu(1 - (diag - off.max(1).values))
    per_row.mean().backward()
    np.testing.assert_allclose(row_loss, per_row.detach().numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(ops.to_numpy(dA), At.grad.numpy(), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(ops.to_numpy(dB), Bt.grad.numpy(), rtol=1e-3, atol=1e-4)
    expected_rank = (L >= diag[:, None]).sum(1) - 1
    np.testing.assert_array_equal(np.asarray(rank), expected_rank.numpy())


# ------------------------------------------------------------------------------------------
# determinism, budget, trace
# ------------------------------------------------------------------------------------------


def _random_problem(V: int = 200, d: int = 10, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    E = rng.standard_normal((V, d)).astype(np.float32)
    return E, (E + 0.5 * rng.standard_normal((V, d)).astype(np.float32)).T


def test_same_seed_same_fit() -> None:
    E, U = _random_problem()
    fits = [fit_low_rank_copying(E, U, 4, seed=7, max_steps=120, max_seconds=None, batch_rows=32) for _ in range(2)]
    np.testing.assert_array_equal(fits[0].A, fits[1].A)
    np.testing.assert_array_equal(fits[0].B, fits[1].B)
    strip = lambda trace: [{k: v for k, v in p.items() if k != "seconds"} for p in trace]  # noqa: E731
    assert strip(fits[0].trace) == strip(fits[1].trace)
    assert (fits[0].top1, fits[0].top5, fits[0].steps) == (fits[1].top1, fits[1].top5, fits[1].steps)
    other = fit_low_rank_copying(E, U, 4, seed=8, max_steps=120, max_seconds=None, batch_rows=32)
    assert not np.array_equal(other.A, fits[0].A)


def test_budget_stops_and_says_so() -> None:
    E, U = _random_problem(V=400)
    fit = fit_low_rank_copying(E, U, 4, seed=0, max_seconds=0.2, batch_rows=16, patience=10**6)  # no step cap: only the budget stops it
    assert fit.stopped_by == "budget"
    assert fit.wall_seconds < 5
    steps = fit_low_rank_copying(E, U, 4, seed=0, max_steps=25, max_seconds=None, batch_rows=16, patience=10**6)
    assert steps.stopped_by == "steps" and steps.steps == 50  # 25 per phase
    assert [p["objective"] for p in steps.phases] == ["ce", "margin"]
    one = fit_low_rank_copying(E, U, 4, seed=0, max_steps=25, max_seconds=None, batch_rows=16, objective="ce")
    assert one.steps == 25 and len(one.phases) == 1


def test_progress_bar_counts_every_phase(capsys: pytest.CaptureFixture[str]) -> None:
    E, U = _random_problem(V=400)
    fit_low_rank_copying(E, U, 3, seed=0, max_steps=25, max_seconds=None, batch_rows=16, patience=10**6, progress=True)
    err = capsys.readouterr().err
    assert "rank-3 fit" in err and "50/50" in err  # 25 steps in each of the two phases
    fit_low_rank_copying(E, U, 3, seed=0, max_steps=25, max_seconds=None, batch_rows=16, patience=10**6)
    assert capsys.readouterr().err == ""


def test_trace_and_summary() -> None:
    E, U = _random_problem()
    fit = fit_low_rank_copying(E, U, 4, seed=0, max_steps=300, max_seconds=None, batch_rows=32, eval_every=10)
    assert fit.trace[0]["step"] == 0 and all(p["step"] % 10 == 0 for p in fit.trace)
    assert fit.stopped_by in ("converged", "steps")
    assert 0 <= fit.top5 - fit.top1 <= 1 and fit.top1 == dense_top1(E.astype(np.float64), fit.A, fit.B, U.astype(np.float64))
    summary = fit.summary()
    assert summary["settings"]["rank"] == 4 and "A" not in summary and math.isfinite(summary["loss"])
    best_monitor = max(p["monitor_top1"] for p in fit.trace)
    assert fit.top1 == pytest.approx(best_monitor, abs=1e-9)  # monitor = all 200 rows here


def test_margin_phase_never_loses_top1_and_init_continues_a_fit() -> None:
    """The hinge phase starts from the cross-entropy phase's best point and keeps its own best, so
    (monitor = every row here) the two-phase top-1 is at least the cross-entropy one."""
    rng = np.random.default_rng(2)
    E = rng.standard_normal((600, 16)).astype(np.float32)
    U = (0.5 * E + 0.866 * rng.standard_normal((600, 16)).astype(np.float32)).T
    kw = dict(seed=0, max_steps=400, max_seconds=None, batch_rows=128)
    ce = fit_low_rank_copying(E, U, 8, objective="ce", **kw)
    both = fit_low_rank_copying(E, U, 8, objective="ce+margin", **kw)
    assert both.top1 >= ce.top1
    assert [p["phase"] for p in both.trace if p["step"] == 0] == ["ce", "margin"]
    again = fit_low_rank_copying(E, U, 8, objective="margin", init=(ce.A, ce.B), **kw)
    assert again.trace[0]["monitor_top1"] == pytest.approx(ce.top1) and again.init_scale == 1.0
    assert again.top1 >= ce.top1


# ------------------------------------------------------------------------------------------
# metrics
# ------------------------------------------------------------------------------------------


def _planted(model_name: str) -> ModelHandle:
    identity = ModelIdentity(name=model_name, source="planted", weights_sha256=None, config_sha256=None)
    return ModelHandle(PLANTED_MODELS[model_name].build(), identity, bos_token_id=None)


def _measure(name: str, model_name: str, session: Session | None = None, handle: ModelHandle | None = None, **params: object):
    info = get_metric(name)
    context = MetricContext(handle or _planted(model_name), None, session or Session())
    return info.function(context, **dict(info.validate_params(params)))


def test_rank_curve_on_planted_split_copy() -> None:
    truth = PLANTED_MODELS["planted-split-copy"].ground_truth
    m = _measure("low_rank.rank_curve", "planted-split-copy", ranks=[1, 32], heads=[["0.0"], ["0.1"], ["0.0", "0.1"]],
                 max_steps=2000, device="cpu")
    points = {(p["kind"], p["rank"], tuple(p["heads"])): p for p in m.value}
    assert points[("trained", 1, ())]["top1"] <= 2 / 64
    assert points[("trained", 32, ())]["top1"] == 1.0
    for group, key in ((("0.0",), "0.0"), (("0.1",), "0.1"), (("0.0", "0.1"), "0.0+0.1")):
        (point,) = [p for p in m.value if tuple(p["heads"]) == group]
        assert point["kind"] == "head" and point["rank"] == truth["ov_rank"][key]
        assert point["top1"] == truth["ov_top1"][key] and point["top5"] == truth["ov_topk"][key]["5"]
    assert set(m.details["fits"]) == {"1", "32"}
    assert {p["kind"]: p.get("bound") for p in m.value} == {"trained": "lower", "head": None}
    assert m.select("rank=32/top1").bound == "lower" and m.select("0.0/top1").bound is None


def test_achievable_accuracy_metric_and_head_check() -> None:
    m = _measure("low_rank.achievable_accuracy", "planted-ov-rank", rank=16, max_steps=2000, device="cpu")
    assert m.value == {"top1": 1.0, "top5": 1.0}
    assert m.bound == "lower" and m.select("top1").bound == "lower"  # what some rank-16 matrix reaches
    assert m.details["steps"] > 0 and m.details["settings"]["rank"] == 16 and m.details["trace"]
    with pytest.raises(ValueError, match="not in the model"):
        _measure("low_rank.rank_curve", "planted-ov-rank", ranks=[], heads=[["0.7"]], device="cpu")


def test_a_curve_and_a_single_rank_claim_share_one_fit_per_session() -> None:
    session, handle = Session(), _planted("planted-split-copy")
    settings = dict(max_steps=300, device="cpu", seed=3)
    curve = _measure("low_rank.rank_curve", "planted-split-copy", session, handle, ranks=[2, 8], **settings)
    single = _measure("low_rank.achievable_accuracy", "planted-split-copy", session, handle, rank=8, **settings)
    assert single.details["wall_seconds"] == curve.details["fits"]["8"]["wall_seconds"]  # the same fit object
    other = _measure("low_rank.achievable_accuracy", "planted-split-copy", session, handle, rank=8, **{**settings, "seed": 4})
    assert other.details["settings"]["seed"] == 4 and other.details["wall_seconds"] != single.details["wall_seconds"]


# ------------------------------------------------------------------------------------------
# heavier: a curve on a medium problem, the GPU path
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_curve_is_monotone_and_beats_the_closed_form() -> None:
    """A rank-r matrix is also a rank-2r one: the trained curve may not fall (by more than the
    optimiser's slack), and training must improve on the least-squares start."""
    rng = np.random.default_rng(0)
    V, d = 2048, 32
    E = rng.standard_normal((V, d)).astype(np.float32)
    U = (0.5 * E + 0.866 * rng.standard_normal((V, d)).astype(np.float32)).T
    previous = 0.0
    for r in (1, 2, 4, 8, 16, 32):
        fit = fit_low_rank_copying(E, U, r, seed=0, max_steps=3000, max_seconds=60, batch_rows=512)
        print(f"rank {r}: top-1 {fit.top1:.4f} top-5 {fit.top5:.4f} ({fit.steps} steps, {fit.stopped_by}, "
              f"start {fit.trace[0]['monitor_top1']:.4f})")
        assert fit.top1 >= previous - 0.02
        assert fit.top1 >= fit.trace[0]["monitor_top1"] - 1e-9
        previous = max(previous, fit.top1)
    assert previous > 10 / V  # far above the rank-1 bound 2 / V


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_fit_matches_cpu() -> None:
    E, U = _random_problem(V=1000, d=16)
    cpu = fit_low_rank_copying(E, U, 8, seed=0, max_steps=200, max_seconds=None, batch_rows=256)
    gpu = fit_low_rank_copying(E, U, 8, seed=0, max_steps=200, max_seconds=None, batch_rows=256, device="cuda")
    assert gpu.settings.device == "cuda" and gpu.steps == cpu.steps
    assert abs(gpu.top1 - cpu.top1) <= 0.02  # the same algorithm; float32 kernels differ
    assert gpu.top1 == dense_top1(E.astype(np.float64), gpu.A, gpu.B, U.astype(np.float64))
