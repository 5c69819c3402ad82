"""IOI inputs and metrics (ARENA 1.4.1) against TransformerLens's own calls and plain loops.

Random models (seeded; LNPre, RMSPre or no final norm; with and without MLPs; standard or rotary
positions) carry a small byte-level BPE tokenizer trained on the course's prompts, so every word
of them is one token. References are the course's code paths: ``model(tokens)`` logits,
``cache.stack_head_results(layer=-1, pos_slice=-1)``, ``cache.decompose_resid``,
``cache.apply_ln_to_stack(..., layer=-1, pos_slice=-1)`` and ``model.tokens_to_residual_directions``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from fixtures.inputs import (
    INPUT_KINDS, IOI_COURSE_PROMPTS, IOI_CORRUPTED_ORDER, IOI_TEMPLATES, IOI_TEST_PROMPT, InputBatch,
)
from harness.core.heads import head_names
from harness.core.model_handle import ModelHandle
from harness.testing import fast_settings, measure_metric, random_handle

FAST = fast_settings(10)
BOS = "<|endoftext|>"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ------------------------------------------------------------------------------------------------
# tokenizers, models, inputs, running a metric
# ------------------------------------------------------------------------------------------------


def corpus(omit: tuple[str, ...] = ()) -> list[str]:
    """Every course prompt and answer, with the words in ``omit`` removed (they then split into pieces)."""
    texts = [prompt for prompt, _, _ in (*IOI_COURSE_PROMPTS, IOI_TEST_PROMPT)]
    texts += [name for _, pair in IOI_TEMPLATES for name in pair]
    for word in omit:
        texts = [text.replace(word, "") for text in texts]
    return texts


def train_tokenizer(where: Path, omit: tuple[str, ...] = ()) -> Any:
    """A byte-level BPE (GPT-2's pre-tokenizer, BOS ``<|endoftext|>`` = 0) trained on ``corpus(omit)``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=2000, min_frequency=1, special_tokens=[BOS], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(corpus(omit), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=BOS, pad_token=BOS)
    fast.save_pretrained(where)
    return AutoTokenizer.from_pretrained(where)  # TransformerLens re-reads it by path (name_or_path)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train_tokenizer(tmp_path_factory.mktemp("ioi-tokenizer"))


def random_model(
    seed: int, tokenizer: Any, *, normalization: str | None = "LNPre", attn_only: bool = False,
    positional: str = "standard", n_layers: int = 2, n_heads: int = 2,
) -> ModelHandle:
    """A small model with every parameter (biases included) ~ N(0, 0.5^2), seeded, with ``tokenizer``."""
    return random_handle(
        seed, f"random-ioi-{seed}", tokenizer=tokenizer, n_layers=n_layers, n_heads=n_heads, d_model=8, d_head=3,
        d_vocab=len(tokenizer) if tokenizer else 300, n_ctx=32, d_mlp=None if attn_only else 6, act_fn="gelu",
        normalization=normalization, positional=positional,
    )


def ioi(model: ModelHandle, **params: Any) -> InputBatch:
    kind = INPUT_KINDS["ioi_prompts"]
    return kind.build(model, kind.params_model.model_validate(params))


def reference_logit_diffs(model: ModelHandle, inputs: InputBatch) -> list[float]:
    """``logits[b, -1, c_b] - logits[b, -1, w_b]`` by a loop over prompts, from ``model(tokens)``."""
    with torch.no_grad():
        logits = model._hooked(inputs.tokens)  # [batch, pos, d_vocab]
    return [float(logits[b, -1, c] - logits[b, -1, w]) for b, (c, w) in enumerate(inputs.meta["answers"])]


@torch.no_grad()
def course_dla(model: ModelHandle, inputs: InputBatch, stack_of: str) -> torch.Tensor:
    """The course's ``residual_stack_to_logit_diff`` on a TL stack, per component and prompt [component, batch]."""
    hooked = model._hooked
    _, cache = hooked.run_with_cache(inputs.tokens)
    if stack_of == "heads":
        stack = cache.stack_head_results(layer=-1, pos_slice=-1)  # [component, batch, d_model]
    else:
        stack = cache.decompose_resid(layer=-1, pos_slice=-1)
    scaled = cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1) if hooked.cfg.normalization_type else stack
    answers = torch.tensor(inputs.meta["answers"])
    directions = hooked.tokens_to_residual_directions(answers[:, 0]) - hooked.tokens_to_residual_directions(answers[:, 1])
    return torch.einsum("cbm,bm->cb", scaled, directions)


# ------------------------------------------------------------------------------------------------
# the input kind
# ------------------------------------------------------------------------------------------------


def test_written_prompts_are_the_course_comprehension() -> None:
    """prompts = [p.format(n) for (p, names) in zip(prompt_format, name_pairs) for n in names[::-1]]."""
    prompts = [p.format(n) for (p, names) in IOI_TEMPLATES for n in names[::-1]]
    answers = [names[::i] for (_, names) in IOI_TEMPLATES for i in (1, -1)]
    assert [row[0] for row in IOI_COURSE_PROMPTS] == prompts
    assert [(row[1], row[2]) for row in IOI_COURSE_PROMPTS] == answers
    assert IOI_CORRUPTED_ORDER == (1, 0, 3, 2, 5, 4, 7, 6)


def test_inputs_tokenize_with_single_token_answers(tokenizer: Any) -> None:
    model = random_model(0, tokenizer)
    batch = ioi(model)
    assert batch.tokens.shape[0] == 8 and (batch.tokens[:, 0] == 0).all()
    assert batch.meta["prompts"] == [row[0] for row in IOI_COURSE_PROMPTS]
    for row, (correct, wrong), tokens in zip(IOI_COURSE_PROMPTS, batch.meta["answers"], batch.tokens):
        assert model.to_tokens(row[1], prepend_bos=False).tolist() == [[correct]]
        assert model.to_tokens(row[2], prepend_bos=False).tolist() == [[wrong]]
        assert tokenizer.decode(tokens[1:]) == row[0]
    without_bos = ioi(model, prepend_bos=False)
    assert torch.equal(without_bos.tokens, batch.tokens[:, 1:])
    test = ioi(model, prompts="test_prompt")
    assert test.tokens.shape[0] == 1 and test.meta["answer_names"] == [[" Mary", " John"]]


def test_corrupted_swaps_adjacent_pairs_and_keeps_answers(tokenizer: Any) -> None:
    model = random_model(0, tokenizer)
    clean, corrupted = ioi(model), ioi(model, corrupted=True)
    for i, j in enumerate([1, 0, 3, 2, 5, 4, 7, 6]):
        assert torch.equal(corrupted.tokens[i], clean.tokens[j])
        assert corrupted.meta["prompts"][i] == clean.meta["prompts"][j]
    assert corrupted.meta["answers"] == clean.meta["answers"]
    assert corrupted.key != clean.key


def test_multi_token_name_is_an_error(tmp_path: Path) -> None:
    model = random_model(0, train_tokenizer(tmp_path, omit=("Sid",)))
    with pytest.raises(ValueError, match=r"IOI answer ' Sid' is [2-9] tokens.*one token"):
        ioi(model)


def test_prompts_of_different_lengths_are_an_error(tmp_path: Path) -> None:
    model = random_model(0, train_tokenizer(tmp_path, omit=("drink",)))
    with pytest.raises(ValueError, match="different lengths.*a drink to"):
        ioi(model)


def test_model_without_tokenizer_is_an_error() -> None:
    model = random_model(0, None)
    with pytest.raises(ValueError, match="ioi_prompts needs the tokenizer.*has none"):
        ioi(model)


def test_corrupting_the_test_prompt_is_a_spec_error() -> None:
    with pytest.raises(ValidationError, match="corrupted"):
        INPUT_KINDS["ioi_prompts"].params_model.model_validate({"prompts": "test_prompt", "corrupted": True})


def test_metrics_refuse_other_inputs(tokenizer: Any) -> None:
    model = random_model(0, tokenizer)
    kind = INPUT_KINDS["tokens"]
    batch = kind.build(model, kind.params_model.model_validate({"ids": [[1, 2, 3]]}))
    with pytest.raises(ValueError, match="inputs: ioi_prompts"):
        measure_metric(model, "ioi.logit_diff", inputs=batch)


# ------------------------------------------------------------------------------------------------
# logit difference and the answer
# ------------------------------------------------------------------------------------------------


@FAST
@given(seed=st.integers(0, 10_000), normalization=st.sampled_from(["LNPre", "RMSPre", None]))
def test_logit_diff_matches_a_loop(tokenizer: Any, seed: int, normalization: str | None) -> None:
    model = random_model(seed, tokenizer, normalization=normalization)
    batch = ioi(model)
    measured = measure_metric(model, "ioi.logit_diff", inputs=batch)
    expected = reference_logit_diffs(model, batch)
    for b, value in enumerate(expected):
        assert measured.value[str(b)] == pytest.approx(value, abs=1e-5)
    assert measured.value["mean"] == pytest.approx(sum(expected) / 8, abs=1e-5)
    assert measured.value["min"] == pytest.approx(min(expected), abs=1e-5)
    sd = math.sqrt(sum((v - sum(expected) / 8) ** 2 for v in expected) / 7)
    assert measured.uncertainty == {"mean": pytest.approx(sd / math.sqrt(8), rel=1e-5)}


@FAST
@given(seed=st.integers(0, 10_000))
def test_corrupted_mean_is_the_negated_clean_mean(tokenizer: Any, seed: int) -> None:
    model = random_model(seed, tokenizer)
    clean = measure_metric(model, "ioi.logit_diff", inputs=ioi(model))
    corrupted = measure_metric(model, "ioi.logit_diff", inputs=ioi(model, corrupted=True))
    assert corrupted.value["mean"] == pytest.approx(-clean.value["mean"], abs=1e-5)
    for i, j in enumerate(IOI_CORRUPTED_ORDER):  # prompt i is clean prompt j scored with i's answers
        assert corrupted.value[str(i)] == pytest.approx(-clean.value[str(j)], abs=1e-5)


def test_answer_rank_logit_and_probability(tokenizer: Any) -> None:
    model = random_model(3, tokenizer)
    batch = ioi(model)
    with torch.no_grad():
        logits = model._hooked(batch.tokens)[:, -1]  # [batch, d_vocab]
    for prompt in (0, 5):
        measured = measure_metric(model, "ioi.answer", inputs=batch, prompt=prompt, top=3)
        row, correct = logits[prompt], batch.meta["answers"][prompt][0]
        assert measured.value["rank"] == sum(1 for x in row.tolist() if x > float(row[correct]))
        assert measured.value["logit"] == pytest.approx(float(row[correct]), abs=1e-5)
        assert measured.value["prob"] == pytest.approx(math.exp(float(row[correct] - row.logsumexp(0))), rel=1e-5)
        top = measured.details["top"]
        assert [entry["id"] for entry in top] == row.topk(3).indices.tolist()
        assert top[0]["token"] == tokenizer.decode([top[0]["id"]])
    with pytest.raises(ValueError, match="outside the 8 prompts"):
        measure_metric(model, "ioi.answer", inputs=batch, prompt=8)


# ------------------------------------------------------------------------------------------------
# direct attribution
# ------------------------------------------------------------------------------------------------


MODEL_KINDS = st.sampled_from([
    dict(normalization="LNPre"), dict(normalization="RMSPre"), dict(normalization=None),
    dict(normalization="LNPre", attn_only=True), dict(normalization="RMSPre", positional="rotary"),
])


@FAST
@given(seed=st.integers(0, 10_000), kind=MODEL_KINDS)
def test_head_attribution_matches_the_course_stack(tokenizer: Any, seed: int, kind: dict[str, Any]) -> None:
    model = random_model(seed, tokenizer, n_layers=2, n_heads=3, **kind)
    batch = ioi(model)
    measured = measure_metric(model, "ioi.head_attribution", inputs=batch)
    per_prompt = course_dla(model, batch, "heads")  # [layer*head, batch]
    names = head_names(2, 3)
    assert list(measured.value) == names
    for name, row in zip(names, per_prompt):
        assert measured.value[name] == pytest.approx(float(row.mean()), abs=1e-5)
        assert measured.uncertainty[name] == pytest.approx(float(row.std() / math.sqrt(8)), abs=1e-5)


@FAST
@given(seed=st.integers(0, 10_000), kind=MODEL_KINDS)
def test_all_parts_sum_to_the_logit_diff(tokenizer: Any, seed: int, kind: dict[str, Any]) -> None:
    """Decomposition identity: heads + embed (+ pos) + MLPs + attention biases + b_U term = LD."""
    model = random_model(seed, tokenizer, **kind)
    batch = ioi(model)
    details = measure_metric(model, "ioi.head_attribution", inputs=batch).details
    expected = sum(reference_logit_diffs(model, batch)) / 8
    assert details["heads_sum"] + sum(details["other_parts"].values()) == pytest.approx(expected, abs=1e-4)
    assert details["logit_diff_mean"] == pytest.approx(expected, abs=1e-5)
    assert details["other_parts"]["unembed_bias"] == pytest.approx(0.0, abs=1e-6)  # pairs swap (c, w): it cancels
    expected_parts = {"embed", "attn_bias", "unembed_bias"} | ({"pos_embed"} if kind.get("positional", "standard") == "standard" else set())
    expected_parts |= set() if kind.get("attn_only") else {"mlp.0", "mlp.1"}
    assert set(details["other_parts"]) == expected_parts
    # TransformerLens's own decomposition (embed, pos_embed, attn_out, mlp_out per layer) gives the same total
    total = course_dla(model, batch, "resid").sum(0).mean() + details["other_parts"]["unembed_bias"]
    assert float(total) == pytest.approx(expected, abs=1e-4)
    # one prompt: the b_U term does not cancel, and the identity still holds
    single = ioi(model, prompts="test_prompt")
    one = measure_metric(model, "ioi.head_attribution", inputs=single).details
    assert abs(one["other_parts"]["unembed_bias"]) > 1e-3  # random b_U: the bias term is not dropped
    assert one["heads_sum"] + sum(one["other_parts"].values()) == pytest.approx(reference_logit_diffs(model, single)[0], abs=1e-4)


def test_top_heads_by_sign(tokenizer: Any) -> None:
    model = random_model(7, tokenizer, n_heads=4)
    batch = ioi(model)
    table = measure_metric(model, "ioi.head_attribution", inputs=batch).value
    positive = measure_metric(model, "ioi.head_attribution", inputs=batch, top_k=3).value
    negative = measure_metric(model, "ioi.head_attribution", inputs=batch, top_k=2, sign="negative").value
    assert positive == sorted(table, key=lambda name: -table[name])[:3]
    assert negative == sorted(table, key=lambda name: table[name])[:2]
    assert table[positive[0]] >= max(table.values()) and table[negative[0]] <= min(table.values())


def test_unfolded_final_norm_is_refused(tokenizer: Any) -> None:
    model = random_model(0, tokenizer, normalization="LN")
    with pytest.raises(ValueError, match="folded final norm"):
        measure_metric(model, "ioi.head_attribution", inputs=ioi(model))


@pytest.mark.parametrize("prompts", ["course_8", "test_prompt"])
@FAST
@given(seed=st.integers(0, 10_000), kind=MODEL_KINDS)
def test_residual_reconstruction(tokenizer: Any, prompts: str, seed: int, kind: dict[str, Any]) -> None:
    model = random_model(seed, tokenizer, **kind)
    batch = ioi(model, prompts=prompts)
    measured = measure_metric(model, "ioi.residual_reconstruction", inputs=batch).value
    hooked = model._hooked
    with torch.no_grad():
        _, cache = hooked.run_with_cache(batch.tokens)
    final = cache["resid_post", -1][:, -1]  # [batch, d_model]
    scaled = cache.apply_ln_to_stack(final, layer=-1, pos_slice=-1) if hooked.cfg.normalization_type else final
    answers = torch.tensor(batch.meta["answers"])
    directions = (hooked.tokens_to_residual_directions(answers[:, 0]) - hooked.tokens_to_residual_directions(answers[:, 1])).detach()
    assert measured["reconstructed"] == pytest.approx(float((scaled * directions).sum(-1).mean()), abs=1e-5)
    diffs = reference_logit_diffs(model, batch)
    assert measured["actual"] == pytest.approx(sum(diffs) / len(diffs), abs=1e-5)
    # the reconstruction misses exactly the unembedding bias term (0 on the course's 8, whose pairs
    # swap correct and incorrect); with b_U = 0 it is the logit diff
    assert measured["difference"] == pytest.approx(-measured["unembed_bias"], abs=1e-4)
    if prompts == "test_prompt":
        assert abs(measured["unembed_bias"]) > 1e-3
    else:
        assert measured["unembed_bias"] == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        hooked.b_U.zero_()
    zero_bias = measure_metric(model, "ioi.residual_reconstruction", inputs=batch).value
    assert zero_bias["difference"] == pytest.approx(0.0, abs=1e-5) and zero_bias["unembed_bias"] == 0.0
