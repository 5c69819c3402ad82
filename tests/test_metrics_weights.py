"""Weight metrics (qk, composition, copying): dense references, properties, planted ground truth.

Each metric is checked three ways: against a dense, obviously-correct reference written here with
loops and plain torch (full d_model x d_model and d_vocab x d_vocab matrices, float64), on random
small models drawn by Hypothesis; against the ground truth of the planted models (read from
``PLANTED_MODELS[...].ground_truth``, never restated); and, for the random composition baseline,
against the course's published number.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
from hypothesis import given, settings, strategies as st
from pydantic import ValidationError

from fixtures.planted import PLANTED_MODELS
from fixtures.random_models import random_scaled
from harness.core.heads import Head, head_names
from harness.metrics import composition as comp_module
from harness.core.model_handle import ModelHandle, ModelIdentity
from harness.registry import get_metric
from harness.session import Session
from harness.testing import ad_hoc_handle, measure_metric

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is 5-10x cheaper in CPU time

ATTN, RANDOM = "planted-attn-2l", "planted-attn-2l-random"
COURSE_BASELINE_MEAN = 0.03609  # arena-claims.md 1.2.comp.baseline (IMG plot data, 300 samples)
COURSE_BASELINE_SAMPLES = 300
SETTINGS = settings(max_examples=15, deadline=None)


# ------------------------------------------------------------------------------------------------
# models and references
# ------------------------------------------------------------------------------------------------


def truth(name: str) -> dict[str, Any]:
    return PLANTED_MODELS[name].ground_truth


def random_model(
    seed: int, *, n_layers: int = 2, n_heads: int = 2, d_model: int = 8, d_head: int = 3, d_vocab: int = 12,
    n_ctx: int = 8, biases: bool = False, positional: str = "shortformer", normalization: str | None = None,
) -> ModelHandle:
    """A small attention-only model at a trained model's scale (:func:`fixtures.random_models.fill_scaled_`)."""
    hooked = random_scaled(seed, biases="random" if biases else None, n_layers=n_layers, n_heads=n_heads, d_model=d_model,
                           d_head=d_head, d_vocab=d_vocab, n_ctx=n_ctx, positional=positional, normalization=normalization)
    return ad_hoc_handle(hooked, f"random-{seed}")


shapes = st.fixed_dictionaries({
    "seed": st.integers(0, 2**31 - 1),
    "n_heads": st.integers(1, 3),
    "d_head": st.integers(1, 5),
    "d_model": st.integers(5, 12),
    "d_vocab": st.integers(2, 20),
    "n_ctx": st.integers(2, 10),
})


def dense_comp_score(W_A: torch.Tensor, W_B: torch.Tensor) -> float:
    """The course's get_comp_score: ||W_A W_B||_F / (||W_A||_F ||W_B||_F), formed densely."""
    return float(torch.linalg.norm(W_A @ W_B) / (torch.linalg.norm(W_A) * torch.linalg.norm(W_B)))


def dense_composition(model: ModelHandle, kind: str, layer_pairs: list[tuple[int, int]]) -> dict[str, float]:
    """Every pair's score from the dense d_model x d_model W_OV and W_QK, in loops (float64)."""
    W_Q, W_K, W_V, W_O = (w.double() for w in (model.W_Q, model.W_K, model.W_V, model.W_O))
    table: dict[str, float] = {}
    for a, b in layer_pairs:
        for i in range(model.shape.n_heads):
            for j in range(model.shape.n_heads):
                W_OV_A = W_V[a, i] @ W_O[a, i]
                W_QK_B = W_Q[b, j] @ W_K[b, j].T
                W_B = {"q": W_QK_B, "k": W_QK_B.T, "v": W_V[b, j] @ W_O[b, j]}[kind]
                table[f"{a}.{i}->{b}.{j}"] = dense_comp_score(W_OV_A, W_B)
    return table


def dense_positional_pattern(model: ModelHandle, head: Head, n: int, biases: bool) -> torch.Tensor:
    """softmax over keys j <= i of (W_pos[i] W_Q + b_Q)(W_pos[j] W_K + b_K) / sqrt(d_head), loops."""
    W_pos = model.W_pos.double()
    W_Q, W_K = model.W_Q[head].double(), model.W_K[head].double()
    b_Q = model.b_Q[head].double() if biases else torch.zeros(W_Q.shape[1], dtype=torch.float64)
    b_K = model.b_K[head].double() if biases else torch.zeros(W_K.shape[1], dtype=torch.float64)
    pattern = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        logits = [float((W_pos[i] @ W_Q + b_Q) @ (W_pos[j] @ W_K + b_K)) / math.sqrt(W_Q.shape[1]) for j in range(i + 1)]
        top = max(logits)
        weights = [math.exp(x - top) for x in logits]
        for j in range(i + 1):
            pattern[i, j] = weights[j] / sum(weights)
    return pattern


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


# ------------------------------------------------------------------------------------------------
# qk.positional_pattern
# ------------------------------------------------------------------------------------------------


@SETTINGS
@given(shapes, st.booleans(), st.sampled_from(["course", "clean"]), st.sampled_from(["standard", "shortformer"]))
def test_positional_pattern_matches_dense(shape: dict, biases: bool, variant: str, positional: str) -> None:
    model = random_model(**shape, biases=biases, positional=positional)
    head = Head(shape["seed"] % 2, shape["seed"] % shape["n_heads"])
    n = model.shape.n_ctx
    A = dense_positional_pattern(model, head, n, biases)
    start = 1 if variant == "clean" else 0
    expected = {
        "prev_diag_mean": mean([float(A[i, i - 1]) for i in range(1, n)]),
        "diag_mean": mean([float(A[i, i]) for i in range(start, n)]),
        "first_col_mean": mean([float(A[i, 0]) for i in range(start, n)]),
    }
    got = measure_metric(model, "qk.positional_pattern", head=str(head), include_biases=biases, variant=variant).value
    assert got == pytest.approx(expected, abs=1e-5)


def test_positional_pattern_n_positions_and_default_context() -> None:
    model = random_model(3, n_ctx=10)
    full = measure_metric(model, "qk.positional_pattern", head="1.1")
    assert full.details["n_positions"] == 10  # the course's default: the whole context
    A = dense_positional_pattern(model, Head(1, 1), 6, False)
    part = measure_metric(model, "qk.positional_pattern", head="1.1", n_positions=6).value
    assert part["prev_diag_mean"] == pytest.approx(mean([float(A[i, i - 1]) for i in range(1, 6)]), abs=1e-6)
    with pytest.raises(ValueError, match="n_ctx"):
        measure_metric(model, "qk.positional_pattern", head="1.1", n_positions=11)


def test_positional_pattern_ignores_biases_by_default_as_the_course() -> None:
    model = random_model(4, biases=True)
    plain = measure_metric(model, "qk.positional_pattern", head="0.1").value
    with_biases = measure_metric(model, "qk.positional_pattern", head="0.1", include_biases=True).value
    assert plain != with_biases
    A = dense_positional_pattern(model, Head(0, 1), model.shape.n_ctx, False)
    assert plain["prev_diag_mean"] == pytest.approx(mean([float(A[i, i - 1]) for i in range(1, model.shape.n_ctx)]), abs=1e-6)


def test_positional_pattern_rejects_rotary() -> None:
    model = random_model(0, d_head=4, positional="rotary")
    with pytest.raises(ValueError, match="rotary"):
        measure_metric(model, "qk.positional_pattern", head="0.0")


def test_planted_positional_heads(registry_model: Callable[[str], ModelHandle]) -> None:
    """Every head the ground truth calls positionally previous / current / first has that stripe at 1."""
    key = {"previous": "prev_diag_mean", "current": "diag_mean", "first": "first_col_mean"}
    model = registry_model(ATTN)
    for head, kind in truth(ATTN)["positional_qk"].items():
        value = measure_metric(model, "qk.positional_pattern", head=head).value
        assert value[key[kind]] == pytest.approx(1.0, abs=1e-6), (head, value)
        others = [name for name in key.values() if name != key[kind]]
        assert all(value[name] < 0.05 for name in others), (head, value)


def test_random_control_has_no_positional_previous_head(registry_model: Callable[[str], ModelHandle]) -> None:
    model = registry_model(RANDOM)
    for head in head_names(2, 4):
        assert measure_metric(model, "qk.positional_pattern", head=head).value["prev_diag_mean"] < 0.2


# ------------------------------------------------------------------------------------------------
# qk.attention_decomposition
# ------------------------------------------------------------------------------------------------


def dense_decomposition_stds(model: ModelHandle, tokens: torch.Tensor, head: Head, scale: bool) -> dict[str, float]:
    """Per (query comp, key comp): std over all position pairs, per sequence, mean over the batch.

    Components from TransformerLens's own per-head ``result`` (use_attn_result on a copy of the run).
    """
    hooked = model._hooked
    hooked.set_use_attn_result(True)
    try:
        _, cache = hooked.run_with_cache(tokens)
    finally:
        hooked.set_use_attn_result(False)
    components = {"embed": cache["embed"].double(), "pos": cache["pos_embed"].double().expand_as(cache["embed"])}
    for layer in range(head.layer):
        for h in range(model.shape.n_heads):
            components[f"{layer}.{h}"] = cache["result", layer][:, :, h].double()
    W_Q, W_K = model.W_Q[head].double(), model.W_K[head].double()
    table: dict[str, float] = {}
    for q_name, y_q in components.items():
        for k_name, y_k in components.items():
            stds = []
            for b in range(tokens.shape[0]):
                scores = (y_q[b] @ W_Q) @ (y_k[b] @ W_K).T
                if scale:
                    scores = scores / math.sqrt(model.shape.d_head)
                stds.append(float(scores.flatten().std()))
            table[f"{q_name}|{k_name}"] = mean(stds)
    return table


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 2**31 - 1), st.booleans(), st.sampled_from(["0.0", "1.1", "2.0"]))
def test_attention_decomposition_matches_dense(seed: int, scale: bool, head: str) -> None:
    model = random_model(seed, n_layers=3, n_ctx=12)
    inputs = {"repeated_random": {"seq_len": 4, "batch": 2, "seed": seed % 1000}}
    got = measure_metric(model, "qk.attention_decomposition", inputs=inputs, head=head, scale=scale)
    tokens = Session().inputs(model, inputs).tokens
    expected = dense_decomposition_stds(model, tokens, Head.parse(head), scale)
    assert set(got.value) == set(expected)
    assert got.value == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_attention_decomposition_sums_to_the_attention_scores() -> None:
    from harness.metrics.qk import decompose_scores, qk_components

    model = random_model(7, n_layers=2, n_heads=3, n_ctx=12)
    tokens = Session().inputs(model, {"repeated_random": {"seq_len": 5, "batch": 2}}).tokens
    forward = model.run_with_cache(tokens)
    names, components = qk_components(model, forward.activations, 1)
    assert names == ["embed", "pos", "0.0", "0.1", "0.2"]
    scores = decompose_scores(components.double(), model.W_Q[1, 2].double(), model.W_K[1, 2].double(), True).sum((0, 1))
    actual = forward.activations["attn_scores", 1][:, 2].double()  # [batch, q, k], -inf above the diagonal
    causal = torch.ones_like(actual, dtype=torch.bool).tril()
    torch.testing.assert_close(scores[causal], actual[causal], rtol=1e-5, atol=1e-5)


def test_attention_decomposition_planted_induction_reads_embed_and_prev_token_head(registry_model: Callable[[str], ModelHandle]) -> None:
    """Head 1.0's score comes only from (query = token embedding, key = output of the K-composing head)."""
    gt = truth(ATTN)
    (writer, reader), = gt["k_composition"]
    got = measure_metric(registry_model(ATTN), "qk.attention_decomposition", inputs={"repeated_random": {"seq_len": 10, "batch": 2}}, head=reader)
    pair = f"embed|{writer}"
    assert max(got.value, key=got.value.get) == pair
    assert got.value[pair] > 1.0
    assert all(value == 0.0 for key, value in got.value.items() if key != pair)
    unscaled = measure_metric(registry_model(ATTN), "qk.attention_decomposition", inputs={"repeated_random": {"seq_len": 10, "batch": 2}}, head=reader, scale=False)
    assert unscaled.value[pair] == pytest.approx(got.value[pair] * math.sqrt(128), rel=1e-9)


def test_attention_decomposition_needs_a_linear_model() -> None:
    model = random_model(1, normalization="LN")
    with pytest.raises(ValueError, match="normalization"):
        measure_metric(model, "qk.attention_decomposition", inputs={"repeated_random": {"seq_len": 3}}, head="1.0")


# ------------------------------------------------------------------------------------------------
# composition.scores
# ------------------------------------------------------------------------------------------------


@SETTINGS
@given(shapes, st.sampled_from(["q", "k", "v"]))
def test_composition_scores_match_dense(shape: dict, kind: str) -> None:
    model = random_model(**shape)
    got = measure_metric(model, "composition.scores", kind=kind)
    expected = dense_composition(model, kind, [(0, 1)])
    assert got.value == pytest.approx(expected, abs=1e-9, rel=1e-9)
    assert got.details["undefined"] == []


def test_composition_pairs_all_covers_every_earlier_layer() -> None:
    model = random_model(5, n_layers=3)
    consecutive = measure_metric(model, "composition.scores", kind="k").value
    every = measure_metric(model, "composition.scores", kind="k", pairs="all").value
    assert consecutive == pytest.approx(dense_composition(model, "k", [(0, 1), (1, 2)]), abs=1e-9)
    assert every == pytest.approx(dense_composition(model, "k", [(0, 1), (0, 2), (1, 2)]), abs=1e-9)


@SETTINGS
@given(st.integers(1, 6), st.integers(1, 4), st.integers(0, 2**31 - 1))
def test_comp_score_properties(d: int, r: int, seed: int) -> None:
    """Scale invariance, 0 <= score <= 1, and the rank-1 identity |v_A . u_B| (1.2.fm.frob_singular)."""
    generator = torch.Generator().manual_seed(seed)
    L_A, R_A, L_B, R_B = (torch.randn(shape, generator=generator, dtype=torch.float64) for shape in ((1, d + r, r), (1, r, d + r), (1, d + r, r), (1, r, d + r)))
    score = float(comp_module.composition_matrix(L_A, R_A, L_B, R_B)[0, 0])
    assert 0.0 <= score <= 1.0 + 1e-12
    assert score == pytest.approx(float(comp_module.composition_matrix(3.0 * L_A, R_A, L_B, 0.5 * R_B)[0, 0]), rel=1e-9)
    u, v = L_A[0, :, :1], R_A[0, :1]  # rank 1: W_A = u v, W_B = u' v'
    u2, v2 = L_B[0, :, :1], R_B[0, :1]
    rank1 = float(comp_module.composition_matrix(u[None], v[None], u2[None], v2[None])[0, 0])
    assert rank1 == pytest.approx(abs(float(v @ u2)) / (float(v.norm()) * float(u2.norm())), rel=1e-9)


def test_planted_k_composition_matches_ground_truth(registry_model: Callable[[str], ModelHandle]) -> None:
    gt = truth(ATTN)
    model = registry_model(ATTN)
    k = measure_metric(model, "composition.scores", kind="k")
    for name, score in gt["k_composition_score"].items():  # same definition: ARENA's K-composition
        assert k.value[name] == pytest.approx(score, abs=1e-12)
    strongest = max(k.value, key=k.value.get)
    assert [strongest.split("->")] == gt["k_composition"]
    assert all(value == 0.0 for name, value in k.value.items() if name not in gt["k_composition_score"])
    for kind in ("q", "v"):
        assert gt[f"{kind}_composition"] == []
        assert all(value == 0.0 for value in measure_metric(model, "composition.scores", kind=kind).value.values())


def test_planted_undefined_pairs_are_the_all_zero_circuits(registry_model: Callable[[str], ModelHandle]) -> None:
    """0/0 pairs: A's W_OV is zero, or B's W_QK (inert heads) / W_OV is zero; listed, never in the table."""
    gt = truth(ATTN)
    model = registry_model(ATTN)
    zero_ov = set(gt["zero_ov_heads"])
    zero_qk = set(gt["inert_heads"])
    for kind in ("q", "k", "v"):
        got = measure_metric(model, "composition.scores", kind=kind)
        zero_b = zero_ov if kind == "v" else zero_qk
        expected = {f"{a}->{b}" for a in head_names(1, 4) for b in head_names(2, 4)[4:] if a in zero_ov or b in zero_b}
        assert set(got.details["undefined"]) == expected
        assert not expected & set(got.value)


def test_random_control_composition_sits_at_the_baseline(registry_model: Callable[[str], ModelHandle]) -> None:
    """Every Q/K/V score of the random control is within 6 std of the random baseline of its shapes,
    and the planted K-composition is far above it."""
    baseline = measure_metric(registry_model(RANDOM), "composition.baseline", n_samples=50, seed=1)
    mean_, std = baseline.value["mean"], baseline.value["std"]
    for kind in ("q", "k", "v"):
        for name, value in measure_metric(registry_model(RANDOM), "composition.scores", kind=kind).value.items():
            assert abs(value - mean_) < 6 * std, (kind, name, value, mean_, std)
    for name, score in truth(ATTN)["k_composition_score"].items():
        assert score > mean_ + 20 * std


# ------------------------------------------------------------------------------------------------
# composition.baseline
# ------------------------------------------------------------------------------------------------


def dense_course_baseline(n_samples: int, d_model: int, d_head: int, seed: int) -> list[float]:
    """The course's generate_single_random_comp_score, with one seeded generator, d x d matrices formed."""
    generator = torch.Generator().manual_seed(seed)
    scores = []
    for _ in range(n_samples):
        A_left, B_left, A_right, B_right = (torch.empty(d_model, d_head) for _ in range(4))
        for W in (A_left, B_left, A_right, B_right):
            torch.nn.init.kaiming_uniform_(W, a=math.sqrt(5), generator=generator)
        scores.append(dense_comp_score((A_left @ A_right.T).double(), (B_left @ B_right.T).double()))
    return scores


@SETTINGS
@given(st.integers(2, 12), st.integers(1, 4), st.integers(2, 20), st.integers(0, 2**31 - 1))
def test_baseline_matches_the_course_loop(registry_model: Callable[[str], ModelHandle], d_model: int, d_head: int, n_samples: int, seed: int) -> None:
    d_head = min(d_head, d_model)
    got = measure_metric(registry_model(ATTN), "composition.baseline", n_samples=n_samples, seed=seed, d_model=d_model, d_head=d_head)
    expected = torch.tensor(dense_course_baseline(n_samples, d_model, d_head, seed), dtype=torch.float64)
    assert got.value["mean"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert got.value["std"] == pytest.approx(float(expected.std(unbiased=False)), abs=1e-6)
    assert got.uncertainty["mean"] == pytest.approx(float(expected.std()) / math.sqrt(n_samples), abs=1e-6)


def test_baseline_course_shapes_give_the_course_mean(registry_model: Callable[[str], ModelHandle]) -> None:
    """d_model 768, d_head 64, 300 samples: the published mean 0.03609 is itself a 300-sample mean, so
    the two estimates differ by sqrt(2) standard errors of one; allow 4 of those."""
    got = measure_metric(registry_model(ATTN), "composition.baseline", n_samples=COURSE_BASELINE_SAMPLES, d_model=768, d_head=64)
    tolerance = 4 * math.sqrt(2) * got.uncertainty["mean"]
    assert abs(got.value["mean"] - COURSE_BASELINE_MEAN) < tolerance, (got.value, tolerance)
    assert 1e-4 < got.value["std"] < 1e-3  # the course's samples span about 0.0347-0.0374


# ------------------------------------------------------------------------------------------------
# composition.kcomp_full_circuit_top1
# ------------------------------------------------------------------------------------------------


def dense_kcomp_top1(model: ModelHandle, prev: Head, ind: Head) -> tuple[float, float]:
    """Row and column top-1 of the dense d_vocab x d_vocab W_E W_Q (W_E W_V W_O W_K)^T (float64)."""
    W_E = model.W_E.double()
    M = (W_E @ model.W_Q[ind].double()) @ (W_E @ model.W_V[prev].double() @ model.W_O[prev].double() @ model.W_K[ind].double()).T
    index = torch.arange(M.shape[0])
    return float((M.argmax(1) == index).double().mean()), float((M.T.argmax(1) == index).double().mean())


@SETTINGS
@given(shapes)
def test_kcomp_top1_matches_dense(shape: dict) -> None:
    model = random_model(**shape)
    prev, ind = Head(0, shape["seed"] % shape["n_heads"]), Head(1, (shape["seed"] // 7) % shape["n_heads"])
    rows, columns = dense_kcomp_top1(model, prev, ind)
    for orientation, expected in (("rows", rows), ("columns", columns)):
        got = measure_metric(model, "composition.kcomp_full_circuit_top1", prev_head=str(prev), ind_head=str(ind), orientation=orientation)
        assert got.value == pytest.approx(expected, abs=1e-12)


def test_kcomp_top1_orientation_is_required_and_layers_ordered(registry_model: Callable[[str], ModelHandle]) -> None:
    info = get_metric("composition.kcomp_full_circuit_top1")
    with pytest.raises(ValidationError, match="orientation"):
        info.validate_params({"prev_head": "0.0", "ind_head": "1.0"})
    with pytest.raises(ValueError, match="earlier layer"):
        measure_metric(registry_model(ATTN), "composition.kcomp_full_circuit_top1", prev_head="1.0", ind_head="0.0", orientation="rows")


def test_planted_kcomp_full_circuit_is_identity_like(registry_model: Callable[[str], ModelHandle]) -> None:
    """The planted induction circuit scores 1600 [tok(q) == tok(k-1)]: top-1 is exact both ways; the
    random control is at chance."""
    for prev, ind in truth(ATTN)["k_composition"]:
        for orientation in ("rows", "columns"):
            got = measure_metric(registry_model(ATTN), "composition.kcomp_full_circuit_top1", prev_head=prev, ind_head=ind, orientation=orientation)
            assert got.value == 1.0 and got.details["tied_rows"] == 0
            control = measure_metric(registry_model(RANDOM), "composition.kcomp_full_circuit_top1", prev_head=prev, ind_head=ind, orientation=orientation)
            assert control.value < 0.2


# ------------------------------------------------------------------------------------------------
# copying.eigenvalue_score and copying.ov_rank
# ------------------------------------------------------------------------------------------------


def dense_copying_score(model: ModelHandle, head: Head) -> float:
    """sum(lambda) / sum(|lambda|) over the eigenvalues of the dense d_vocab x d_vocab W_E W_V W_O W_U."""
    M = model.W_E.double() @ model.W_V[head].double() @ model.W_O[head].double() @ model.W_U.double()
    eigenvalues = torch.linalg.eigvals(M)
    return float(eigenvalues.sum().real / eigenvalues.abs().sum())


@SETTINGS
@given(shapes)
def test_eigenvalue_score_matches_dense(shape: dict) -> None:
    model = random_model(**shape)
    got = measure_metric(model, "copying.eigenvalue_score")
    assert set(got.value) == set(head_names(2, shape["n_heads"]))
    for name, value in got.value.items():
        assert -1.0 - 1e-9 <= value <= 1.0 + 1e-9
        assert value == pytest.approx(dense_copying_score(model, Head.parse(name)), abs=1e-5)
    subset = measure_metric(model, "copying.eigenvalue_score", heads=["1.0", "0.0"])
    assert list(subset.value) == ["0.0", "1.0"]


def test_eigenvalue_score_planted_ground_truth(registry_model: Callable[[str], ModelHandle]) -> None:
    gt = truth(ATTN)
    got = measure_metric(registry_model(ATTN), "copying.eigenvalue_score")
    assert got.value == pytest.approx(gt["ov_copying_score"], abs=1e-12)
    assert set(got.details["undefined"]) == set(gt["zero_full_ov_heads"])


def test_eigenvalue_score_sign_flips_with_the_circuit() -> None:
    model = random_model(11)
    before = measure_metric(model, "copying.eigenvalue_score", heads=["0.1"]).value["0.1"]
    with torch.no_grad():
        model._hooked.blocks[0].attn.W_O[1] *= -1.0
    after = measure_metric(model, "copying.eigenvalue_score", heads=["0.1"]).value["0.1"]
    assert after == pytest.approx(-before, abs=1e-9)


def dense_rank(model: ModelHandle, heads: list[Head], rtol: float) -> int:
    W_OV = sum(model.W_V[h].double() @ model.W_O[h].double() for h in heads)
    singular = torch.linalg.svdvals(W_OV)
    return int((singular > rtol * singular[0]).sum())


@SETTINGS
@given(shapes, st.integers(1, 3))
def test_ov_rank_matches_dense_and_is_generic(shape: dict, n_heads_used: int) -> None:
    model = random_model(**shape)
    heads = [Head(1, h) for h in range(min(n_heads_used, shape["n_heads"]))]
    got = measure_metric(model, "copying.ov_rank", heads=[str(h) for h in heads])
    tolerance = got.details["rtol"]
    assert tolerance == pytest.approx(shape["d_model"] * torch.finfo(torch.float32).eps)
    assert got.value == dense_rank(model, heads, tolerance)
    assert got.value == min(len(heads) * shape["d_head"], shape["d_model"])  # random factors: generic rank


@pytest.mark.parametrize("name", ["planted-ov-rank", "planted-split-copy"])
def test_ov_rank_planted_ground_truth(registry_model: Callable[[str], ModelHandle], name: str) -> None:
    for heads, rank in truth(name)["ov_rank"].items():
        got = measure_metric(registry_model(name), "copying.ov_rank", heads=heads.split("+"))
        assert got.value == rank, (heads, got.details)


def test_ov_rank_planted_rotated() -> None:
    """Random orthogonal bases on the residual and head spaces change no rank (rounding ~1e-7 < rtol)."""
    from fixtures.planted import split_copy_spec

    spec = split_copy_spec(rotate=True)
    identity = ModelIdentity(name=spec.name, source="test", weights_sha256=None, config_sha256=None)
    model = ModelHandle(spec.build(), identity, bos_token_id=None)
    for heads, rank in spec.ground_truth["ov_rank"].items():
        assert measure_metric(model, "copying.ov_rank", heads=heads.split("+")).value == rank
