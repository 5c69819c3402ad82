"""qk.component_norms, qk.positional_share and attribution.direct_by_position against loop references and ground truth.

References are written with plain loops over TransformerLens's own per-head ``result`` (a run
with ``use_attn_result``) and its ``apply_ln_to_stack``, on seeded random attention-only models
drawn by Hypothesis (biases included, both positional types); ground truth from planted-attn-2l
(its ``ground_truth`` dict and the constants its constructor documents).
"""

from __future__ import annotations

import math
from typing import Any, Callable

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from fixtures.planted import PLANTED_MODELS, QK_SIDE
from harness.core.heads import Head
from harness.metrics import qk as qk_module
from harness.core.model_handle import ModelHandle
from harness.session import Session
from harness.testing import fast_settings, measure_metric, random_handle

ATTN = "planted-attn-2l"
GROUND_TRUTH = PLANTED_MODELS[ATTN].ground_truth
FAST = fast_settings(10)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------------
# models and running a metric
# ----------------------------------------------------------------------------------------------


def tokens_of(model: ModelHandle, inputs: dict[str, Any]) -> torch.Tensor:
    return Session().inputs(model, inputs).tokens


def cache_with_results(model: ModelHandle, tokens: torch.Tensor) -> Any:
    """TransformerLens's own cache with per-head ``result`` (use_attn_result on for this run only)."""
    hooked = model._hooked
    hooked.set_use_attn_result(True)
    try:
        with torch.no_grad():
            _, cache = hooked.run_with_cache(tokens)
    finally:
        hooked.set_use_attn_result(False)
    return cache


def se(values: list[float]) -> float | None:
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)


# ----------------------------------------------------------------------------------------------
# qk.component_norms: loop reference
# ----------------------------------------------------------------------------------------------


def ref_component_norms(model: ModelHandle, tokens: torch.Tensor, head: Head, side: str) -> dict[str, list[float]]:
    """Per component, per sequence: mean over positions of sum_e (y_c[b, p] @ W[:, e])^2, by loops."""
    cache = cache_with_results(model, tokens)
    components = {"embed": cache["embed"].double(), "pos": cache["pos_embed"].double().expand_as(cache["embed"])}
    for layer in range(head.layer):
        for h in range(model.shape.n_heads):
            components[f"{layer}.{h}"] = cache["result", layer][:, :, h].double()
    W = (model.W_Q if side == "query" else model.W_K)[head.layer, head.head].double()
    table: dict[str, list[float]] = {}
    for name, y in components.items():
        table[name] = []
        for b in range(tokens.shape[0]):
            per_position = []
            for p in range(tokens.shape[1]):
                vector = y[b, p] @ W
                per_position.append(sum(float(x) ** 2 for x in vector))
            table[name].append(sum(per_position) / len(per_position))
    return table


@FAST
@given(
    seed=st.integers(0, 2**31 - 1), n_layers=st.integers(1, 3), n_heads=st.integers(1, 3),
    positional=st.sampled_from(["standard", "shortformer"]), side=st.sampled_from(["query", "key"]),
    batch=st.integers(1, 3), data=st.data(),
)
def test_component_norms_equal_loop_reference(
    seed: int, n_layers: int, n_heads: int, positional: str, side: str, batch: int, data: st.DataObject,
) -> None:
    model = random_handle(seed, n_layers=n_layers, n_heads=n_heads, positional=positional)
    head = Head(data.draw(st.integers(0, n_layers - 1)), data.draw(st.integers(0, n_heads - 1)))
    inputs = {"repeated_random": {"seq_len": 4, "batch": batch, "seed": seed % 1000}}
    got = measure_metric(model, "qk.component_norms", inputs=inputs, head=str(head), side=side)
    expected = ref_component_norms(model, tokens_of(model, inputs), head, side)
    assert list(got.value) == list(expected)  # embed, pos, then heads of earlier layers in order
    for name, per_sequence in expected.items():
        assert got.value[name] == pytest.approx(sum(per_sequence) / batch, rel=1e-6, abs=1e-9), name
        if batch == 1:
            assert got.uncertainty is None
        else:
            assert got.uncertainty[name] == pytest.approx(se(per_sequence), rel=1e-5, abs=1e-9), name
    assert got.details["sum_check"] < 1e-4


def test_components_plus_biases_sum_to_cached_q_and_k() -> None:
    """The course's assert (decomposed q sums to cache["q", 1][:, h]), here with biases: to 1e-5."""
    model = random_handle(3, n_layers=2, n_heads=3)
    tokens = tokens_of(model, {"repeated_random": {"seq_len": 5, "batch": 2}})
    forward = model.run_with_cache(tokens)
    _, components = qk_module.qk_components(model, forward.activations, 1)
    for side, W, kind in (("query", model.W_Q, "q"), ("key", model.W_K, "k")):
        parts = qk_module.decompose_qk(components.double(), W[1, 2].double())
        bias = qk_module.qk_bias_part(model, 1, 2, side)
        assert bias.abs().max() > 0.1  # the biases are not zero here, so they must be counted
        assert qk_module.qk_sum_error(parts, bias, forward.activations[kind, 1][:, :, 2]) < 1e-5
        assert qk_module.qk_sum_error(parts[1:], bias, forward.activations[kind, 1][:, :, 2]) > 1e-2  # a part missing shows


def test_component_norms_fail_closed_when_the_sum_check_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_handle(4)
    monkeypatch.setattr(qk_module, "qk_bias_part", lambda model, layer, index, side: torch.zeros(model.shape.d_head, dtype=torch.float64))
    with pytest.raises(ValueError, match="do not sum"):
        measure_metric(model, "qk.component_norms", inputs={"repeated_random": {"seq_len": 3}}, head="1.0")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"normalization": "LN"}, "normalization"), ({"normalization": "LNPre"}, "normalization"), ({"d_mlp": 4}, "attn_only")],
)
def test_component_norms_refuse_nonlinear_inputs(kwargs: dict[str, Any], match: str) -> None:
    model = random_handle(1, **kwargs)
    with pytest.raises(ValueError, match=match):
        measure_metric(model, "qk.component_norms", inputs={"repeated_random": {"seq_len": 3}}, head="1.0")


def test_component_norms_top_k_is_the_ranking_of_the_table() -> None:
    model = random_handle(11, n_layers=2, n_heads=3)
    inputs = {"repeated_random": {"seq_len": 5, "batch": 2}}
    table = measure_metric(model, "qk.component_norms", inputs=inputs, head="1.1", side="key").value
    ranked = sorted(table, key=table.get, reverse=True)
    for k in (1, 3, 5):
        assert measure_metric(model, "qk.component_norms", inputs=inputs, head="1.1", side="key", top_k=k).value == ranked[:k]


# ----------------------------------------------------------------------------------------------
# qk.component_norms: planted ground truth
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("inputs", [
    {"repeated_random": {"seq_len": 20, "batch": 3, "seed": 0}},
    {"repeated_maxrep": {"seq_len": 20, "batch": 3, "seed": 0}},
    {"tokens": {"ids": [[0, 5, 5, 7, 3, 3]]}},
])
def test_planted_induction_head_query_reads_embed_key_reads_prev_token_head(registry_model: Callable[[str], ModelHandle], inputs: dict[str, Any]) -> None:
    """Head 1.0: W_Q[TOK] = 40 I and W_K[PREV] = 40 I, so ||e_t W_Q||^2 = ||e_t W_K||^2 = 1600 at every
    position (0.0 writes the previous token, or BOS at position 0, into PREV); nothing else reaches them."""
    (writer, reader), = GROUND_TRUTH["k_composition"]
    model = registry_model(ATTN)
    full = QK_SIDE**2
    query = measure_metric(model, "qk.component_norms", inputs=inputs, head=reader, side="query")
    key = measure_metric(model, "qk.component_norms", inputs=inputs, head=reader, side="key")
    assert query.value["embed"] == pytest.approx(full, rel=1e-6)
    assert key.value[writer] == pytest.approx(full, rel=1e-6)
    assert all(v == 0.0 for name, v in query.value.items() if name != "embed")
    assert all(v == 0.0 for name, v in key.value.items() if name != writer)
    assert measure_metric(model, "qk.component_norms", inputs=inputs, head=reader, side="key", top_k=1).value == [writer]


def test_planted_previous_token_head_reads_positions(registry_model: Callable[[str], ModelHandle]) -> None:
    """Head 0.0: query(p) = 40 e_{p-1} for p >= 1 (0 at p = 0), key(j) = 40 e_j: pos norms 1600 (n-1)/n and 1600."""
    model = registry_model(ATTN)
    seq_len = 10
    n = 1 + 2 * seq_len
    inputs = {"repeated_random": {"seq_len": seq_len, "batch": 2}}
    query = measure_metric(model, "qk.component_norms", inputs=inputs, head="0.0", side="query")
    key = measure_metric(model, "qk.component_norms", inputs=inputs, head="0.0", side="key")
    assert list(query.value) == ["embed", "pos"]
    assert query.value == pytest.approx({"embed": 0.0, "pos": QK_SIDE**2 * (n - 1) / n}, rel=1e-6)
    assert key.value == pytest.approx({"embed": 0.0, "pos": QK_SIDE**2}, rel=1e-6)
    assert query.uncertainty == {"embed": 0.0, "pos": 0.0}


# ----------------------------------------------------------------------------------------------
# attribution.direct_by_position
# ----------------------------------------------------------------------------------------------


def ref_direct_by_position(model: ModelHandle, tokens: torch.Tensor) -> list[list[float]]:
    """direct[b][i] = N(embed[b, i] (+ pos_embed[i])) . W_U[:, t[b, i+1]], by loops (N: TL's apply_ln_to_stack)."""
    cache = cache_with_results(model, tokens)
    residual = cache["embed"]
    if model.positional_embedding_type == "standard":
        residual = residual + cache["pos_embed"]
    if model.normalization_type is not None:
        residual = cache.apply_ln_to_stack(residual[None], layer=-1)[0]
    W_U = model.W_U
    return [
        [float(residual[b, i] @ W_U[:, int(tokens[b, i + 1])]) for i in range(tokens.shape[1] - 1)]
        for b in range(tokens.shape[0])
    ]


@FAST
@given(
    seed=st.integers(0, 2**31 - 1), positional=st.sampled_from(["standard", "shortformer"]),
    normalization=st.sampled_from([None, "LNPre"]), batch=st.integers(1, 3), seq_len=st.integers(2, 6),
)
def test_direct_by_position_equals_loop_reference(seed: int, positional: str, normalization: str | None, batch: int, seq_len: int) -> None:
    model = random_handle(seed, positional=positional, normalization=normalization)
    inputs = {"repeated_random": {"seq_len": seq_len, "batch": batch, "seed": seed % 997}}
    got = measure_metric(model, "attribution.direct_by_position", inputs=inputs)
    reference = ref_direct_by_position(model, tokens_of(model, inputs))
    n_pred = 2 * seq_len
    assert list(got.value) == [str(i) for i in range(n_pred)]
    for i in range(n_pred):
        column = [row[i] for row in reference]
        assert got.value[str(i)] == pytest.approx(sum(column) / batch, rel=1e-4, abs=1e-5), i
        if batch > 1:
            assert got.uncertainty[str(i)] == pytest.approx(se(column), rel=1e-3, abs=1e-5), i
    if batch == 1:
        assert got.uncertainty is None


def test_direct_by_position_averages_to_direct_logit() -> None:
    """The mean over positions of the table is attribution.direct_logit's embed + pos_embed (positions all)."""
    model = random_handle(21, positional="standard")
    inputs = {"repeated_random": {"seq_len": 5, "batch": 3, "seed": 2}}
    table = measure_metric(model, "attribution.direct_by_position", inputs=inputs).value
    dla = measure_metric(model, "attribution.direct_logit", inputs=inputs, positions="all").value
    assert sum(table.values()) / len(table) == pytest.approx(dla["embed"] + dla["pos_embed"], rel=1e-5, abs=1e-6)


def test_direct_by_position_top_k_is_the_ranking_of_the_table() -> None:
    model = random_handle(5)
    inputs = {"repeated_random": {"seq_len": 6, "batch": 2, "seed": 1}}
    table = measure_metric(model, "attribution.direct_by_position", inputs=inputs).value
    ranked = sorted(table, key=table.get, reverse=True)
    for k in (1, 4, 12):
        assert measure_metric(model, "attribution.direct_by_position", inputs=inputs, top_k=k).value == ranked[:k]
    with pytest.raises(ValueError, match="exceeds"):
        measure_metric(model, "attribution.direct_by_position", inputs=inputs, top_k=13)


def test_planted_direct_path_is_one_exactly_on_doubled_tokens(registry_model: Callable[[str], ModelHandle]) -> None:
    """planted-attn-2l: W_E W_U = I (direct_path_gain 1), so direct[i] = [t[i] == t[i+1]]."""
    model = registry_model(ATTN)
    ids = [0, 5, 5, 7, 3, 3, 9]
    got = measure_metric(model, "attribution.direct_by_position", inputs={"tokens": {"ids": [ids]}})
    gain = GROUND_TRUTH["direct_path_gain"]
    assert got.value == {str(i): gain * float(ids[i] == ids[i + 1]) for i in range(len(ids) - 1)}
    assert sorted(measure_metric(model, "attribution.direct_by_position", inputs={"tokens": {"ids": [ids]}}, top_k=2).value) == ["1", "4"]
    assert got.details["std_by_part"]["direct"] > 0.0


def test_direct_by_position_refuses_models_with_mlps() -> None:
    model = random_handle(2, d_mlp=4)
    with pytest.raises(ValueError, match="attention-only"):
        measure_metric(model, "attribution.direct_by_position", inputs={"repeated_random": {"seq_len": 3}})


# ----------------------------------------------------------------------------------------------
# qk.positional_share
# ----------------------------------------------------------------------------------------------


def positional_share_reference(model: ModelHandle, tokens: torch.Tensor, layer: int, head: int) -> tuple[list[float], list[float]]:
    """Per sequence (r2, pattern_tv) with plain loops over rows, from TransformerLens's own scores."""
    hooked = model._hooked
    _, cache = hooked.run_with_cache(tokens)
    scores = cache["attn_scores", layer][:, head].double()
    W_pos, W_Q, W_K = (w.detach().double() for w in (hooked.W_pos, hooked.W_Q[layer, head], hooked.W_K[layer, head]))
    scale = math.sqrt(hooked.cfg.d_head)
    r2s, tvs = [], []
    for b in range(tokens.shape[0]):
        ss_total = ss_rest = tv = 0.0
        for q in range(tokens.shape[1]):
            row = [float(scores[b, q, k]) for k in range(q + 1)]
            pos = [float((W_pos[q] @ W_Q) @ (W_pos[k] @ W_K)) / scale for k in range(q + 1)]
            rest = [s - p for s, p in zip(row, pos)]
            ss_total += sum((s - sum(row) / len(row)) ** 2 for s in row)
            ss_rest += sum((r - sum(rest) / len(rest)) ** 2 for r in rest)
            actual = [math.exp(s - max(row)) for s in row]
            alone = [math.exp(p - max(pos)) for p in pos]
            tv += 0.5 * sum(abs(a / sum(actual) - o / sum(alone)) for a, o in zip(actual, alone))
        r2s.append(1 - ss_rest / ss_total)
        tvs.append(tv / tokens.shape[1])
    return r2s, tvs


@FAST
@given(seed=st.integers(0, 10_000), positional=st.sampled_from(["shortformer", "standard"]), head=st.sampled_from(["0.1", "1.0"]))
def test_positional_share_matches_loops(seed: int, positional: str, head: str) -> None:
    model = random_handle(seed, positional=positional)
    inputs = {"repeated_random": {"seq_len": 4, "batch": 3, "seed": seed}}
    result = measure_metric(model, "qk.positional_share", inputs=inputs, head=head)
    layer, index = Head.parse(head)
    r2s, tvs = positional_share_reference(model, tokens_of(model, inputs), layer, index)
    assert result.value["r2"] == pytest.approx(sum(r2s) / 3, abs=1e-9)
    assert result.value["pattern_tv"] == pytest.approx(sum(tvs) / 3, abs=1e-9)
    se = lambda xs: math.sqrt(sum((x - sum(xs) / 3) ** 2 for x in xs) / 2 / 3)  # noqa: E731
    assert result.uncertainty == pytest.approx({"r2": se(r2s), "pattern_tv": se(tvs)}, abs=1e-9)


def test_positional_share_on_planted_heads(registry_model: Callable[[str], ModelHandle]) -> None:
    """0.0 attends by position only (r2 1, the same pattern); 1.0 by content only (no pos|pos term: r2 0)."""
    inputs = {"repeated_random": {"seq_len": 20, "batch": 4, "seed": 0}}
    previous = measure_metric(registry_model(ATTN), "qk.positional_share", inputs=inputs, head="0.0").value
    induction = measure_metric(registry_model(ATTN), "qk.positional_share", inputs=inputs, head="1.0").value
    assert previous["r2"] == pytest.approx(1.0, abs=1e-9) and previous["pattern_tv"] == pytest.approx(0.0, abs=1e-9)
    assert induction["r2"] == pytest.approx(0.0, abs=1e-9) and induction["pattern_tv"] > 0.4


def test_positional_share_needs_absolute_positions() -> None:
    with pytest.raises(ValueError, match="rotary"):
        measure_metric(random_handle(0, positional="rotary"), "qk.positional_share", inputs={"repeated_random": {"seq_len": 4, "batch": 1, "seed": 0}}, head="0.0")
