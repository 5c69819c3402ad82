"""Targeted ablations against loop references and ground truth.

``ablation.induction_score_after_ablation`` (course ``ablation_induction_score``) and
``ablation.offset_restricted`` (the course's bonus ``head_z_ablation_hook``) are compared with
references written one head at a time with TransformerLens's own ``run_with_hooks`` and plain
loops over batch, query and key, on seeded random 2-layer attention-only models drawn by
Hypothesis; then with the planted model's ground truth (read from its dict, or derived from its
documented mechanism) and with what was measured on the trained toy ``toy-attn-2l``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from transformer_lens import HookedTransformer

import harness.metrics.ablation as ablation
from fixtures.inputs import INPUT_KINDS, InputBatch
from fixtures.planted import PLANTED_MODELS, build_planted, distinct_repeated_tokens
from fixtures.random_models import random_hooked
from fixtures.registry import get_model_entry
from harness.core.heads import Head
from harness.core.measurement import Measurement
from harness.core.model_handle import ModelHandle, ModelIdentity
from harness.registry import get_metric
from harness.testing import ad_hoc_handle, fast_settings, measure_metric

ATTN = "planted-attn-2l"
GROUND_TRUTH = PLANTED_MODELS[ATTN].ground_truth
FAST = fast_settings(12)
TOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------------
# models, inputs, running a metric
# ----------------------------------------------------------------------------------------------


def repeated(model: ModelHandle, seq_len: int, batch: int, seed: int, prepend_bos: bool = True) -> InputBatch:
    kind = INPUT_KINDS["repeated_random"]
    params = {"seq_len": seq_len, "batch": batch, "seed": seed, "prepend_bos": prepend_bos}
    return kind.build(model, kind.params_model.model_validate(params))


def distinct_repeated(batch: int, seq_len: int, d_vocab: int, bos: int, seed: int = 0) -> InputBatch:
    """The planted ground truth's input (``distinct_repeated_tokens``) as an input batch."""
    tokens = distinct_repeated_tokens(batch, seq_len, d_vocab, bos, seed)
    return InputBatch(tokens, "tokens", {"ids": tokens.tolist()}, {"seq_len": seq_len, "prefix": 1})


def planted() -> ModelHandle:
    identity = ModelIdentity(name=ATTN, source="planted", weights_sha256=None, config_sha256=None)
    return ModelHandle(build_planted(ATTN), identity, bos_token_id=GROUND_TRUTH["bos_token_id"])


@st.composite
def cases(draw: st.DrawFn) -> tuple[HookedTransformer, ModelHandle, InputBatch]:
    """A random 2-layer model and repeated-token inputs (with or without BOS)."""
    shape = {
        "n_heads": draw(st.integers(1, 3)), "d_head": draw(st.integers(1, 4)), "d_model": draw(st.integers(2, 8)),
        "d_vocab": draw(st.integers(3, 12)), "positional": draw(st.sampled_from(["standard", "shortformer"])),
    }
    seed = draw(st.integers(0, 2**31 - 1))
    model = random_hooked(seed, **shape)
    wrapped = ad_hoc_handle(model, f"random-{seed}-{sorted(shape.items())}")
    inputs = repeated(wrapped, draw(st.integers(2, 5)), draw(st.integers(1, 3)), draw(st.integers(0, 1000)), draw(st.booleans()))
    return model, wrapped, inputs


def batch_mean_se(per_sequence: list[float]) -> tuple[float, float | None]:
    n = len(per_sequence)
    mean = sum(per_sequence) / n
    if n < 2:
        return mean, None
    return mean, (sum((x - mean) ** 2 for x in per_sequence) / (n - 1) / n) ** 0.5


def assert_table(result: Measurement, expected: dict[str, list[float]], tol: float = TOL) -> None:
    """``result``'s table and standard errors equal the batch means / SEs of per-sequence ``expected``."""
    assert list(result.value) == list(expected)
    for name, per_sequence in expected.items():
        mean, se = batch_mean_se(per_sequence)
        assert result.value[name] == pytest.approx(mean, abs=tol), name
        if se is None:
            assert result.uncertainty is None
        else:
            assert result.uncertainty[name] == pytest.approx(se, abs=tol), name


# ----------------------------------------------------------------------------------------------
# loop references
# ----------------------------------------------------------------------------------------------


def ref_stripe(pattern: torch.Tensor, seq_len: int, prefix: int, variant: str) -> list[float]:
    """Per-sequence mean of pattern[b, q, q-seq_len+1] over the course's queries (the whole
    diagonal, from q = seq_len-1) or the clean ones (the second copy, q = prefix+seq_len ..)."""
    n_pos = pattern.shape[-1]
    first = seq_len - 1 if variant == "course" else prefix + seq_len
    queries = range(first, n_pos)
    return [sum(float(pattern[b, q, q - seq_len + 1]) for q in queries) / len(queries) for b in range(pattern.shape[0])]


def ref_pattern_with_v_zeroed(model: HookedTransformer, tokens: torch.Tensor, target: Head, ablated: Head | None) -> torch.Tensor:
    """target's pattern [batch, q, k] with ``v[:, :, ablated.head] = 0`` at layer ``ablated.layer`` (course hooks)."""
    captured: dict[str, torch.Tensor] = {}

    def zero_v(v: torch.Tensor, hook: Any) -> torch.Tensor:
        v[:, :, ablated.head, :] = 0.0
        return v

    def record(pattern: torch.Tensor, hook: Any) -> None:
        captured["pattern"] = pattern[:, target.head].clone()

    hooks = [(f"blocks.{target.layer}.attn.hook_pattern", record)]
    if ablated is not None:
        hooks.insert(0, (f"blocks.{ablated.layer}.attn.hook_v", zero_v))
    with torch.no_grad():
        model.run_with_hooks(tokens, fwd_hooks=hooks)
    return captured["pattern"]


def ref_offset_z(pattern: torch.Tensor, v: torch.Tensor, offsets: list[int]) -> torch.Tensor:
    """The course's hook by loops: z[b, q] = sum_k A[b,q,k] (v[b,k] if q-k in offsets else mean_b v[b,k])."""
    batch, n_pos, d_head = v.shape
    v_bar = v.mean(0)
    z = torch.zeros(batch, n_pos, d_head)
    for b in range(batch):
        for q in range(n_pos):
            for k in range(n_pos):
                source = v[b, k] if (q - k) in offsets else v_bar[k]
                z[b, q] += pattern[b, q, k] * source
    return z


def ref_repeated_half_loss(logits: torch.Tensor, tokens: torch.Tensor, seq_len: int) -> list[float]:
    """Per-sequence -mean log-prob of the last seq_len-1 predictions (course ``[:, -(seq_len-1):]``)."""
    lp = logits[:, :-1].log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
    return (-lp[:, -(seq_len - 1) :].mean(1)).tolist()


def ref_offset_loss_change(model: HookedTransformer, tokens: torch.Tensor, head: Head, offsets: list[int], seq_len: int) -> list[float]:
    """Per-sequence loss change with ``head``'s z set to :func:`ref_offset_z` of the clean cache."""
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    new_z = ref_offset_z(cache["pattern", head.layer][:, head.head], cache["v", head.layer][:, :, head.head], offsets)

    def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
        z[:, :, head.head] = new_z
        return z

    with torch.no_grad():
        ablated = model.run_with_hooks(tokens, fwd_hooks=[(f"blocks.{head.layer}.attn.hook_z", hook)])
    clean_loss, ablated_loss = ref_repeated_half_loss(logits, tokens, seq_len), ref_repeated_half_loss(ablated, tokens, seq_len)
    return [a - c for a, c in zip(ablated_loss, clean_loss)]


def layer0_heads(model: HookedTransformer | ModelHandle) -> list[str]:
    n_heads = model.cfg.n_heads if isinstance(model, HookedTransformer) else model.shape.n_heads
    return [f"0.{h}" for h in range(n_heads)]


# ----------------------------------------------------------------------------------------------
# induction score after zeroing an earlier head's values
# ----------------------------------------------------------------------------------------------


@FAST
@given(cases(), st.sampled_from(["course", "clean"]), st.data())
def test_induction_after_ablation_equals_reference(case: tuple[HookedTransformer, ModelHandle, InputBatch], variant: str, data: st.DataObject) -> None:
    model, wrapped, inputs = case
    target = Head(1, data.draw(st.integers(0, model.cfg.n_heads - 1)))
    seq_len, prefix = inputs.meta["seq_len"], inputs.meta["prefix"]
    result = measure_metric(wrapped, "ablation.induction_score_after_ablation", inputs=inputs, head=str(target), variant=variant)
    expected = {
        name: ref_stripe(ref_pattern_with_v_zeroed(model, inputs.tokens, target, Head.parse(name)), seq_len, prefix, variant)
        for name in layer0_heads(model)
    }
    assert_table(result, expected)
    clean = ref_stripe(ref_pattern_with_v_zeroed(model, inputs.tokens, target, None), seq_len, prefix, variant)
    assert result.details["clean"] == pytest.approx(batch_mean_se(clean)[0], abs=TOL)
    scores = measure_metric(wrapped, "attention.scores", inputs=inputs, pattern="induction", variant=variant)
    assert result.details["clean"] == pytest.approx(scores.value[str(target)], abs=TOL)
    for name, value in result.value.items():
        assert result.details["change"][name] == pytest.approx(value - result.details["clean"], abs=TOL)


@FAST
@given(cases(), st.floats(0.0, 1.0))
def test_breaking_heads_are_the_table_below_threshold(case: tuple[HookedTransformer, ModelHandle, InputBatch], threshold: float) -> None:
    _, wrapped, inputs = case
    scores = measure_metric(wrapped, "ablation.induction_score_after_ablation", inputs=inputs, head="1.0")
    breaking = measure_metric(wrapped, "ablation.induction_breaking_heads", inputs=inputs, head="1.0", threshold=threshold)
    assert breaking.value == [name for name, value in scores.value.items() if value < threshold]
    assert breaking.details["scores"] == scores.value


def test_stacked_copies_in_chunks_equal_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_hooked(11, n_heads=3)
    wrapped = ad_hoc_handle(model, "random-11")
    inputs = repeated(wrapped, 4, 3, 5)
    one_pass = measure_metric(wrapped, "ablation.induction_score_after_ablation", inputs=inputs, head="1.2", variant="clean")
    offsets_one_pass = measure_metric(wrapped, "ablation.offset_restricted", inputs=inputs, offsets=[1, 2])
    monkeypatch.setattr(ablation, "MAX_LOGIT_BYTES", 1)  # one copy per forward pass
    assert measure_metric(wrapped, "ablation.induction_score_after_ablation", inputs=inputs, head="1.2", variant="clean").value == pytest.approx(one_pass.value, abs=1e-6)
    assert measure_metric(wrapped, "ablation.offset_restricted", inputs=inputs, offsets=[1, 2]).value == pytest.approx(offsets_one_pass.value, abs=1e-6)


def test_induction_after_ablation_heads_and_schema() -> None:
    model = random_hooked(4, n_heads=3)
    wrapped = ad_hoc_handle(model, "random-4")
    inputs = repeated(wrapped, 4, 2, 1)
    full = measure_metric(wrapped, "ablation.induction_score_after_ablation", inputs=inputs, head="1.1")
    some = measure_metric(wrapped, "ablation.induction_score_after_ablation", inputs=inputs, head="1.1", heads=["0.2", "0.0"])
    assert list(some.value) == ["0.0", "0.2"]
    assert some.value == pytest.approx({name: full.value[name] for name in some.value}, abs=1e-6)
    with pytest.raises(ValueError, match="not in a layer before"):
        measure_metric(wrapped, "ablation.induction_score_after_ablation", inputs=inputs, head="1.1", heads=["0.0", "1.0"])
    with pytest.raises(ValueError, match="layer 0"):
        measure_metric(wrapped, "ablation.induction_score_after_ablation", inputs=inputs, head="0.1")
    text = INPUT_KINDS["tokens"].build(wrapped, INPUT_KINDS["tokens"].params_model.model_validate({"ids": [[0, 1, 2, 3]]}))
    with pytest.raises(ValueError, match="repeated_random"):
        measure_metric(wrapped, "ablation.induction_score_after_ablation", inputs=text, head="1.1")
    info = get_metric("ablation.induction_score_after_ablation")
    assert set(info.head_params) == {"head", "heads"}
    with pytest.raises(ValidationError):
        info.validate_params({"head": "1.1", "variant": "tidy"})
    with pytest.raises(ValidationError):
        info.validate_params({"heads": ["0.1"]})  # head is required
    assert set(get_metric("ablation.induction_breaking_heads").head_params) == {"head", "heads"}
    with pytest.raises(ValidationError):
        get_metric("ablation.induction_breaking_heads").validate_params({"head": "1.1", "threshold": 1.5})


# ----------------------------------------------------------------------------------------------
# mean-ablating a head's inputs except those from given offsets
# ----------------------------------------------------------------------------------------------


@FAST
@given(cases(), st.lists(st.integers(0, 6), min_size=1, max_size=3))
def test_offset_restricted_equals_reference(case: tuple[HookedTransformer, ModelHandle, InputBatch], offsets: list[int]) -> None:
    model, wrapped, inputs = case
    seq_len = inputs.meta["seq_len"]
    result = measure_metric(wrapped, "ablation.offset_restricted", inputs=inputs, offsets=offsets)
    names = [f"{layer}.{h}" for layer in range(2) for h in range(model.cfg.n_heads)]
    expected = {name: ref_offset_loss_change(model, inputs.tokens, Head.parse(name), offsets, seq_len) for name in names}
    assert_table(result, expected, tol=1e-4)
    assert result.details["offsets"] == sorted(set(offsets))


@FAST
@given(cases())
def test_keeping_every_offset_changes_nothing(case: tuple[HookedTransformer, ModelHandle, InputBatch]) -> None:
    _, wrapped, inputs = case
    every = list(range(inputs.tokens.shape[1]))
    result = measure_metric(wrapped, "ablation.offset_restricted", inputs=inputs, offsets=every)
    assert all(abs(value) <= 1e-4 for value in result.value.values()), result.value


def test_one_sequence_has_nothing_to_mean_ablate() -> None:
    model = random_hooked(7, n_heads=2)
    wrapped = ad_hoc_handle(model, "random-7")
    result = measure_metric(wrapped, "ablation.offset_restricted", inputs=repeated(wrapped, 5, 1, 3), offsets=[0])
    assert all(abs(value) <= 1e-4 for value in result.value.values()), result.value
    assert result.uncertainty is None


def test_offset_restricted_schema() -> None:
    info = get_metric("ablation.offset_restricted")
    assert info.head_params == ("heads",)
    for bad in ({"offsets": []}, {"offsets": [-1]}, {}, {"offsets": [1], "positions": "second_half"}):
        with pytest.raises(ValidationError):
            info.validate_params(bad)


# ----------------------------------------------------------------------------------------------
# ground truth: the planted model
# ----------------------------------------------------------------------------------------------


def test_planted_zeroing_the_previous_token_head_leaves_uniform_attention() -> None:
    """With 0.0's values zeroed, PREV is empty, 1.0's key reads nothing and its attention is uniform
    over 0..q (planted docstring: "no match gives uniform causal attention"): the stripe entry of
    query q is 1/(q+1). Heads with zero OV write nothing: ablating them changes nothing."""
    wrapped = planted()
    seq_len, prefix = 40, 1
    inputs = distinct_repeated(3, seq_len, wrapped.shape.d_vocab, GROUND_TRUTH["bos_token_id"])
    (induction,) = GROUND_TRUTH["induction_heads"]
    result = measure_metric(wrapped, "ablation.induction_score_after_ablation", inputs=inputs, head=induction, variant="clean")
    assert result.details["clean"] == pytest.approx(GROUND_TRUTH["induction_attention_second_half"], abs=1e-6)
    queries = range(prefix + seq_len, prefix + 2 * seq_len)
    uniform = sum(1.0 / (q + 1) for q in queries) / len(queries)
    for name in GROUND_TRUTH["previous_token_heads"]:
        assert result.value[name] == pytest.approx(uniform, abs=1e-6)
    for name in set(GROUND_TRUTH["zero_ov_heads"]) & set(result.value):
        assert result.value[name] == pytest.approx(result.details["clean"], abs=1e-6), name
    breaking = measure_metric(wrapped, "ablation.induction_breaking_heads", inputs=inputs, head=induction, threshold=0.5, variant="clean")
    assert breaking.value == GROUND_TRUTH["previous_token_heads"]


def test_planted_previous_token_head_uses_only_offset_1() -> None:
    """0.0 attends exactly to q-1 (q = 0 to itself, BOS in every row), so keeping offset 1 keeps
    everything, and keeping anything else is exactly mean ablation of its z; zero-OV heads have
    no effect whatever is kept."""
    wrapped = planted()
    inputs = repeated(wrapped, 10, 4, 78)
    heads = layer0_heads(wrapped)
    mean_ablation = measure_metric(wrapped, "ablation.head_loss_change", inputs=inputs, method="mean", heads=heads)
    for offsets in ([1], [0], [2], [1, 2]):
        result = measure_metric(wrapped, "ablation.offset_restricted", inputs=inputs, offsets=offsets, heads=heads)
        for name in GROUND_TRUTH["previous_token_heads"]:
            expected = 0.0 if 1 in offsets else mean_ablation.value[name]
            assert result.value[name] == pytest.approx(expected, abs=1e-5), (offsets, name)
        for name in set(GROUND_TRUTH["zero_ov_heads"]) & set(heads):
            assert result.value[name] == pytest.approx(0.0, abs=1e-6), (offsets, name)
    assert mean_ablation.value[GROUND_TRUTH["previous_token_heads"][0]] > 0.1  # the comparison has teeth


# ----------------------------------------------------------------------------------------------
# the trained toy (measured: seq_len 30, batch 10, seed 0)
# ----------------------------------------------------------------------------------------------

TOY_PREVIOUS = ["0.0", "0.2"]
TOY_OTHERS = ["0.1", "0.3"]


@pytest.fixture(scope="module")
def toy() -> tuple[ModelHandle, InputBatch]:
    wrapped = get_model_entry("toy-attn-2l").load()
    return wrapped, repeated(wrapped, 30, 10, 0)


def test_toy_previous_token_heads_feed_the_induction_head(toy: tuple[ModelHandle, InputBatch]) -> None:
    """Measured (course variant): unablated 0.869; 0.0 -> 0.280, 0.2 -> 0.141; 0.1 -> 0.796, 0.3 -> 0.837."""
    wrapped, inputs = toy
    result = measure_metric(wrapped, "ablation.induction_score_after_ablation", inputs=inputs, head="1.0")
    change = result.details["change"]
    assert all(change[name] < -0.4 for name in TOY_PREVIOUS), change
    assert all(change[name] > -0.2 for name in TOY_OTHERS), change
    breaking = measure_metric(wrapped, "ablation.induction_breaking_heads", inputs=inputs, head="1.0", threshold=0.5)
    assert breaking.value == TOY_PREVIOUS


def test_toy_previous_token_heads_use_only_offset_1(toy: tuple[ModelHandle, InputBatch]) -> None:
    """Measured loss change: keep [1]: 0.0 -0.001, 0.2 0.000; keep [0]: 0.0 3.00, 0.2 4.26."""
    wrapped, inputs = toy
    keep_previous = measure_metric(wrapped, "ablation.offset_restricted", inputs=inputs, offsets=[1], heads=TOY_PREVIOUS)
    keep_current = measure_metric(wrapped, "ablation.offset_restricted", inputs=inputs, offsets=[0], heads=TOY_PREVIOUS)
    for name in TOY_PREVIOUS:
        assert abs(keep_previous.value[name]) < 0.02, keep_previous.value
        assert keep_current.value[name] > 1.0, keep_current.value
