"""Forward-pass metrics (loss, attribution, ablation) against dense references and ground truth.

Each metric is compared with an obviously-correct reference written with plain loops and
TransformerLens's own calls (``model(tokens)``, ``return_type="loss"``, ``run_with_cache`` with
``use_attn_result``, ``apply_ln_to_stack``, ``run_with_hooks``) on seeded random attention-only
models drawn by Hypothesis, and with the planted model's ground truth (read from its dict).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from transformer_lens import HookedTransformer

from fixtures.inputs import INPUT_KINDS, InputBatch
from fixtures.planted import PLANTED_MODELS, build_planted, distinct_repeated_tokens
from fixtures.random_models import random_hooked
from harness.core.model_handle import ModelHandle, ModelIdentity
from harness.registry import get_metric
from harness.testing import ad_hoc_handle, fast_settings, measure_metric

ATTN = "planted-attn-2l"
GROUND_TRUTH = PLANTED_MODELS[ATTN].ground_truth
DISTINCT_SEED = 78
"""repeated_random(seq_len=10, batch=4, seed=78) draws R rows of distinct non-BOS tokens for
planted-attn-2l (checked below); claims/toy/planted-forward.yaml uses it for exact claims."""
FAST = fast_settings(12)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------------
# models, inputs, running a metric
# ----------------------------------------------------------------------------------------------


def repeated(model: ModelHandle, seq_len: int, batch: int, seed: int, prepend_bos: bool = True) -> InputBatch:
    kind = INPUT_KINDS["repeated_random"]
    params = {"seq_len": seq_len, "batch": batch, "seed": seed, "prepend_bos": prepend_bos}
    return kind.build(model, kind.params_model.model_validate(params))


def planted() -> tuple[HookedTransformer, ModelHandle]:
    model = build_planted(ATTN)
    identity = ModelIdentity(name=ATTN, source="planted", weights_sha256=None, config_sha256=None)
    return model, ModelHandle(model, identity, bos_token_id=GROUND_TRUTH["bos_token_id"])


def distinct_repeated(batch: int, seq_len: int, d_vocab: int, bos: int, seed: int = 0) -> InputBatch:
    """The planted ground truth's input (``distinct_repeated_tokens``) as an input batch."""
    tokens = distinct_repeated_tokens(batch, seq_len, d_vocab, bos, seed)
    return InputBatch(tokens, "tokens", {"ids": tokens.tolist()}, {"seq_len": seq_len, "prefix": 1})


@st.composite
def cases(draw: st.DrawFn, normalizations: tuple[str | None, ...] = (None,)) -> tuple[HookedTransformer, ModelHandle, InputBatch]:
    """A random small model and repeated-token inputs (with or without BOS)."""
    shape = {
        "n_layers": draw(st.integers(1, 2)), "n_heads": draw(st.integers(1, 3)), "d_head": draw(st.integers(1, 4)),
        "d_model": draw(st.integers(2, 8)), "d_vocab": draw(st.integers(3, 12)),
        "positional": draw(st.sampled_from(["standard", "shortformer"])), "normalization": draw(st.sampled_from(normalizations)),
    }
    seed = draw(st.integers(0, 2**31 - 1))
    model = random_hooked(seed, **shape)
    wrapped = ad_hoc_handle(model, f"random-{seed}-{sorted(shape.items())}")
    inputs = repeated(wrapped, draw(st.integers(2, 5)), draw(st.integers(1, 3)), draw(st.integers(0, 1000)), draw(st.booleans()))
    return model, wrapped, inputs


# ----------------------------------------------------------------------------------------------
# dense references
# ----------------------------------------------------------------------------------------------


def ref_logprobs(model: HookedTransformer, tokens: torch.Tensor) -> list[list[float]]:
    """lp[b][i] = log_softmax(logits[b, i])[tokens[b, i+1]], by loops."""
    with torch.no_grad():
        logits = model(tokens)
    return [
        [float(torch.log_softmax(logits[b, i], dim=-1)[tokens[b, i + 1]]) for i in range(tokens.shape[1] - 1)]
        for b in range(tokens.shape[0])
    ]


def ref_groups(n_tokens: int, seq_len: int, prefix: int) -> dict[str, list[int]]:
    """Prediction indices by the position j = i + 1 of the token they predict."""
    groups: dict[str, list[int]] = {"all": [], "first_half": [], "second_half": [], "second_half_excl_first": []}
    for j in range(1, n_tokens):
        groups["all"].append(j - 1)
        if prefix <= j < prefix + seq_len:
            groups["first_half"].append(j - 1)
        if j >= prefix + seq_len:
            groups["second_half"].append(j - 1)
        if j > prefix + seq_len:
            groups["second_half_excl_first"].append(j - 1)
    return groups


def batch_mean_se(per_sequence: list[float]) -> tuple[float, float | None]:
    n = len(per_sequence)
    mean = sum(per_sequence) / n
    if n < 2:
        return mean, None
    var = sum((x - mean) ** 2 for x in per_sequence) / (n - 1)
    return mean, math.sqrt(var / n)


def ref_direct_logit(model: HookedTransformer, tokens: torch.Tensor) -> tuple[dict[str, list[list[float]]], torch.Tensor]:
    """Parts per (b, i) from TransformerLens's per-head ``result`` and ``apply_ln_to_stack``; and logits."""
    model.set_use_attn_result(True)
    try:
        with torch.no_grad():
            logits, cache = model.run_with_cache(tokens)
    finally:
        model.set_use_attn_result(False)
    names, stack = ["embed"], [cache["embed"]]
    if model.cfg.positional_embedding_type == "standard":
        names.append("pos_embed")
        stack.append(cache["pos_embed"].expand_as(cache["embed"]))
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            names.append(f"{layer}.{head}")
            stack.append(cache["result", layer][:, :, head])
    names.append("attn_bias")
    stack.append(model.b_O.sum(0).expand_as(cache["embed"]).detach())
    components = torch.stack(stack)  # [component, batch, pos, d_model]
    if model.cfg.normalization_type is not None:
        components = cache.apply_ln_to_stack(components, layer=-1)
    parts: dict[str, list[list[float]]] = {name: [] for name in names}
    for b in range(tokens.shape[0]):
        for n, name in enumerate(names):
            row = []
            for i in range(tokens.shape[1] - 1):
                c = int(tokens[b, i + 1])
                value = float(components[n, b, i] @ model.W_U[:, c].detach())
                row.append(value)
            parts[name].append(row)
    parts["unembed_bias"] = [[float(model.b_U[int(tokens[b, i + 1])].detach()) for i in range(tokens.shape[1] - 1)]
                             for b in range(tokens.shape[0])]
    return parts, logits


def ref_ablation(model: HookedTransformer, tokens: torch.Tensor, layer: int, head: int, method: str, last: int | None) -> list[float]:
    """Per-sequence ablated loss, course style: hook z, -lp[:, -last:].mean() (or all positions)."""

    def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
        if method == "zero":
            z[:, :, head, :] = 0.0
        elif method == "mean":
            z[:, :, head, :] = z[:, :, head, :].mean(0)
        else:
            z[:, :, head, :] = z[:, :, head, :].mean((0, 1))
        return z

    with torch.no_grad():
        logits = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", hook)])
    lp = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    return (-(lp[:, -last:] if last else lp).mean(1)).tolist()


def close(a: float, b: float, tol: float = 1e-5) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(b))


# ----------------------------------------------------------------------------------------------
# loss metrics
# ----------------------------------------------------------------------------------------------


@FAST
@given(cases())
def test_loss_metrics_equal_references(case: tuple[HookedTransformer, ModelHandle, InputBatch]) -> None:
    model, wrapped, inputs = case
    tokens, seq_len, prefix = inputs.tokens, inputs.meta["seq_len"], inputs.meta["prefix"]
    lp = ref_logprobs(model, tokens)
    groups = ref_groups(tokens.shape[1], seq_len, prefix)
    halves = measure_metric(wrapped, "loss.logprob_halves", inputs=inputs)
    per_seq = {name: [sum(row[i] for i in idx) / len(idx) for row in lp] for name, idx in groups.items()}
    per_seq["difference"] = [s - f for s, f in zip(per_seq["second_half"], per_seq["first_half"])]
    for name in ("first_half", "second_half", "second_half_excl_first", "difference"):
        mean, se = batch_mean_se(per_seq[name])
        assert close(halves.value[name], mean), name
        assert (halves.uncertainty is None) == (se is None)
        assert se is None or close(halves.uncertainty[name], se), name
    curve = [sum(row[i] for row in lp) / len(lp) for i in range(len(lp[0]))]
    assert all(close(a, b) for a, b in zip(halves.details["curve"], curve, strict=True))

    loss = measure_metric(wrapped, "loss.mean_loss", inputs=inputs)
    with torch.no_grad():
        assert close(loss.value, float(model(tokens, return_type="loss")))
    with torch.no_grad():
        logits = model(tokens)
    for positions, idx in groups.items():
        top1 = measure_metric(wrapped, "loss.top1_accuracy", inputs=inputs, positions=positions)
        correct = sum(int(logits[b, i].argmax()) == int(tokens[b, i + 1]) for b in range(tokens.shape[0]) for i in idx)
        total = tokens.shape[0] * len(idx)
        assert top1.value == {"accuracy": correct / total, "correct": correct, "total": total}
        assert close(measure_metric(wrapped, "loss.mean_loss", inputs=inputs, positions=positions).value, -sum(sum(row[i] for i in idx) for row in lp) / total)


def test_course_slices_with_bos() -> None:
    """With BOS the halves are the course's lp[:, :L], lp[:, L:] and lp[:, L+1:]."""
    model = random_hooked(1)
    wrapped = ad_hoc_handle(model, "random-1")
    inputs = repeated(wrapped, seq_len=5, batch=2, seed=3)
    lp = torch.tensor(ref_logprobs(model, inputs.tokens))
    value = measure_metric(wrapped, "loss.logprob_halves", inputs=inputs).value
    assert close(value["first_half"], float(lp[:, :5].mean()))
    assert close(value["second_half"], float(lp[:, 5:].mean()))
    assert close(value["second_half_excl_first"], float(lp[:, 6:].mean()))


def test_halves_need_repeated_tokens() -> None:
    wrapped = ad_hoc_handle(random_hooked(2), "random-2")
    inputs = InputBatch(torch.tensor([[0, 1, 2, 3, 4]]), "tokens", {"ids": [[0, 1, 2, 3, 4]]})
    with pytest.raises(ValueError, match="repeated"):
        measure_metric(wrapped, "loss.logprob_halves", inputs=inputs)
    assert measure_metric(wrapped, "loss.top1_accuracy", inputs=inputs).value["total"] == 4


# ----------------------------------------------------------------------------------------------
# direct logit attribution
# ----------------------------------------------------------------------------------------------


@FAST
@given(cases(normalizations=(None, "LNPre", "RMSPre")), st.sampled_from(["all", "first_half", "second_half", "second_half_excl_first"]))
def test_direct_logit_equals_reference(case: tuple[HookedTransformer, ModelHandle, InputBatch], positions: str) -> None:
    model, wrapped, inputs = case
    result = measure_metric(wrapped, "attribution.direct_logit", inputs=inputs, positions=positions)
    parts, logits = ref_direct_logit(model, inputs.tokens)
    idx = ref_groups(inputs.tokens.shape[1], inputs.meta["seq_len"], inputs.meta["prefix"])[positions]
    assert list(result.value) == list(parts)
    for name, rows in parts.items():
        mean, se = batch_mean_se([sum(row[i] for i in idx) / len(idx) for row in rows])
        assert close(result.value[name], mean), name
        assert se is None or close(result.uncertainty[name], se, 1e-4), name
    # the reference parts themselves sum to the logit (the course's check)
    for b in range(inputs.tokens.shape[0]):
        for i in range(inputs.tokens.shape[1] - 1):
            total = sum(rows[b][i] for rows in parts.values())
            assert close(total, float(logits[b, i, inputs.tokens[b, i + 1]]), 1e-4)
    assert result.details["sum_check"] <= 1e-4
    top = measure_metric(wrapped, "attribution.top_heads", inputs=inputs, k=1, positions=positions).value
    heads = [name for name in parts if "." in name]
    assert result.value[top[0]] == max(result.value[name] for name in heads)


@pytest.mark.parametrize(("kwargs", "match"), [({"normalization": "LN"}, "normalization_type"), ({"d_mlp": 4}, "attention-only")])
def test_direct_logit_rejects_unsupported_models(kwargs: dict[str, Any], match: str) -> None:
    wrapped = ad_hoc_handle(random_hooked(3, **kwargs), f"random-3-{kwargs}")
    with pytest.raises(ValueError, match=match):
        measure_metric(wrapped, "attribution.direct_logit", inputs=repeated(wrapped, 3, 1, 0))


# ----------------------------------------------------------------------------------------------
# ablation
# ----------------------------------------------------------------------------------------------


@fast_settings(12)
@given(cases(), st.sampled_from(["zero", "mean", "mean_all"]), st.sampled_from(["repeated_half", "all"]))
def test_ablation_equals_reference(case: tuple[HookedTransformer, ModelHandle, InputBatch], method: str, positions: str) -> None:
    model, wrapped, inputs = case
    tokens, seq_len = inputs.tokens, inputs.meta["seq_len"]
    last = seq_len - 1 if positions == "repeated_half" else None
    result = measure_metric(wrapped, "ablation.head_loss_change", inputs=inputs, method=method, positions=positions)
    with torch.no_grad():
        lp = model(tokens).log_softmax(-1)[:, :-1].gather(-1, tokens[:, 1:, None])[..., 0]
    clean = (-(lp[:, -last:] if last else lp).mean(1)).tolist()
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            ablated = ref_ablation(model, tokens, layer, head, method, last)
            mean, se = batch_mean_se([a - c for a, c in zip(ablated, clean)])
            name = f"{layer}.{head}"
            assert close(result.value[name], mean), name
            assert se is None or abs(result.uncertainty[name] - se) <= 1e-5, name


def test_ablation_head_subset_and_schema() -> None:
    model = random_hooked(4, n_heads=3)
    wrapped = ad_hoc_handle(model, "random-4")
    inputs = repeated(wrapped, 4, 3, 1)
    full = measure_metric(wrapped, "ablation.head_loss_change", inputs=inputs, method="mean")
    some = measure_metric(wrapped, "ablation.head_loss_change", inputs=inputs, method="mean", heads=["1.2", "0.1"])
    assert list(some.value) == ["0.1", "1.2"]
    assert all(close(some.value[name], full.value[name]) for name in some.value)
    info = get_metric("ablation.head_loss_change")
    assert info.head_params == ("heads",)
    with pytest.raises(ValidationError):
        info.validate_params({"method": "median"})
    with pytest.raises(ValidationError):
        info.validate_params({"position": "all"})


# ----------------------------------------------------------------------------------------------
# ground truth of the planted model
# ----------------------------------------------------------------------------------------------


def test_yaml_seed_draws_distinct_tokens() -> None:
    _, wrapped = planted()
    tokens = repeated(wrapped, 10, 4, DISTINCT_SEED).tokens[:, 1:11]
    bos = GROUND_TRUTH["bos_token_id"]
    assert all(len(set(row)) == 10 and bos not in row for row in tokens.tolist())


@pytest.mark.parametrize("source", ["yaml_seed", "distinct_40"])
def test_planted_ground_truth(source: str) -> None:
    _, wrapped = planted()
    if source == "yaml_seed":
        inputs = repeated(wrapped, 10, 4, DISTINCT_SEED)
    else:
        inputs = distinct_repeated(3, 40, wrapped.shape.d_vocab, GROUND_TRUTH["bos_token_id"])
    excl = "second_half_excl_first"

    halves = measure_metric(wrapped, "loss.logprob_halves", inputs=inputs)
    assert halves.value[excl] == pytest.approx(GROUND_TRUTH["second_half_correct_logprob"], abs=1e-6)
    assert halves.value["difference"] > 2.0
    top1 = measure_metric(wrapped, "loss.top1_accuracy", inputs=inputs, positions=excl)
    assert top1.value["accuracy"] == GROUND_TRUTH["second_half_top1"]

    dla = measure_metric(wrapped, "attribution.direct_logit", inputs=inputs, positions=excl)
    for name, expected in GROUND_TRUTH["dla_correct_token_second_half"].items():
        assert dla.value[name] == pytest.approx(expected, abs=1e-5), name
    assert dla.value["attn_bias"] == 0.0 and dla.value["unembed_bias"] == 0.0 and dla.details["sum_check"] <= 1e-5
    assert measure_metric(wrapped, "attribution.top_heads", inputs=inputs, k=1, positions=excl).value == GROUND_TRUTH["induction_heads"]

    for method in ("zero", "mean", "mean_all"):
        ablation = measure_metric(wrapped, "ablation.head_loss_change", inputs=inputs, method=method)
        for name in GROUND_TRUTH["ablation_no_effect_heads"]:
            assert ablation.value[name] == pytest.approx(0.0, abs=1e-6), (method, name)
        for name in GROUND_TRUTH["induction_circuit"]:
            assert ablation.value[name] > 0.1, (method, name)  # the induction circuit matters
