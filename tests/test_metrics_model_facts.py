"""Model-fact metrics (harness/metrics/model_facts.py) on planted and seeded random models.

Each value is checked against what the model was built with: the planted model's config, biases
and tied embedding (fixtures/planted.py), random models with planted biases, an untied or tied
unembedding, and a hand-built BPE tokenizer that splits "gpt2" as GPT-2 does (``g``, ``pt``,
``2``, BOS ``<|endoftext|>``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from pydantic import ValidationError

from harness.core.model_handle import ModelHandle
from harness.registry import get_metric
from fixtures.random_models import random_scaled
from harness.testing import ad_hoc_handle, measure_metric

PLANTED = "planted-attn-2l"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_model(
    seed: int, *, biases: dict[str, float] | None = None, positional: str = "shortformer", tie: bool = False,
    normalization: str | None = None, tokenizer: Any = None, d_vocab: int = 10,
) -> ModelHandle:
    """A 2-layer attention-only model at a trained model's scale (:func:`fixtures.random_models.fill_scaled_`);
    every bias is zero except ``biases[name]`` (``b_Q``...), which holds the constant given."""
    hooked = random_scaled(seed, biases=biases, tie=tie, tokenizer=tokenizer, d_model=8, d_head=3, d_vocab=d_vocab,
                           positional=positional, normalization=normalization)
    return ad_hoc_handle(hooked, f"random-{seed}")


REPEATED = {"repeated_random": {"seq_len": 6, "batch": 3, "seed": 0}}


# ------------------------------------------------------------------------------------------------
# config, biases, tied embeddings
# ------------------------------------------------------------------------------------------------


def test_config_of_planted_model(registry_model: Callable[[str], ModelHandle]) -> None:
    model = registry_model(PLANTED)
    value = measure_metric(model, "model_facts.config").value
    shape = model.shape
    assert value["attn_only"] == 1.0 and value["has_normalization"] == 0.0 and value["shortformer"] == 1.0
    assert (value["n_layers"], value["n_heads"], value["d_model"], value["d_head"], value["d_vocab"], value["n_ctx"]) == (
        shape.n_layers, shape.n_heads, shape.d_model, shape.d_head, shape.d_vocab, shape.n_ctx)
    assert value["full_circuit_entries"] == shape.d_vocab**2


def test_config_flags_follow_the_model() -> None:
    value = measure_metric(random_model(0, positional="standard", normalization="LNPre"), "model_facts.config").value
    assert value["shortformer"] == 0.0 and value["has_normalization"] == 1.0


def test_planted_model_has_no_biases(registry_model: Callable[[str], ModelHandle]) -> None:
    value = measure_metric(registry_model(PLANTED), "model_facts.bias_norms").value
    assert value["max"] == 0.0
    assert {"b_Q", "b_K", "b_O", "b_U"} <= set(value)


@pytest.mark.parametrize("bias", ["b_Q", "b_K", "b_O", "b_U"])
def test_a_planted_bias_is_found(bias: str) -> None:
    measured = measure_metric(random_model(1, biases={bias: -0.25}), "model_facts.bias_norms")
    assert measured.value[bias] == pytest.approx(0.25)
    assert measured.value["max"] == pytest.approx(0.25)
    assert all(v == 0.0 for name, v in measured.value.items() if name not in (bias, "max"))
    assert set(measured.details["checked"]) | set(measured.details["not_exposed"]) == {"b_Q", "b_K", "b_V", "b_O", "b_U"}


def test_planted_model_is_tied(registry_model: Callable[[str], ModelHandle]) -> None:
    value = measure_metric(registry_model(PLANTED), "model_facts.embed_unembed").value
    assert value["rel_distance"] == pytest.approx(0.0, abs=1e-12)
    assert value["cosine"] == pytest.approx(1.0, abs=1e-12)


def test_embed_unembed_distance_is_exact() -> None:
    model = random_model(2)
    W_E, W_U = model.W_E.double(), model.W_U.double()
    value = measure_metric(model, "model_facts.embed_unembed").value
    assert value["rel_distance"] == pytest.approx(float(torch.linalg.norm(W_E - W_U.T) / torch.linalg.norm(W_E)), rel=1e-12)
    assert value["cosine"] == pytest.approx(float((W_E * W_U.T).sum() / (torch.linalg.norm(W_E) * torch.linalg.norm(W_U))), rel=1e-12)
    assert value["rel_distance"] > 0.5
    tied = measure_metric(random_model(2, tie=True), "model_facts.embed_unembed").value
    assert tied["rel_distance"] == pytest.approx(0.0, abs=1e-12)


# ------------------------------------------------------------------------------------------------
# tokenization
# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gpt2_like_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """A byte-level BPE with GPT-2's split of "gpt2": ['g', 'pt', '2'], BOS '<|endoftext|>' = 0."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = {"<|endoftext|>": 0, "g": 1, "p": 2, "t": 3, "2": 4, "pt": 5, "Ġ": 6, "a": 7}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[("p", "t")]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    core.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|endoftext|>", eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    where: Path = tmp_path_factory.mktemp("tokenizer")
    fast.save_pretrained(where)
    return AutoTokenizer.from_pretrained(where)  # TransformerLens re-reads it by path (name_or_path)


def test_tokenize_forms(gpt2_like_tokenizer: Any) -> None:
    model = random_model(3, tokenizer=gpt2_like_tokenizer, d_vocab=8)
    assert measure_metric(model, "model_facts.tokenize", text="gpt2").value == ["0:0", "1:1", "2:5", "3:4"]
    assert measure_metric(model, "model_facts.tokenize", text="gpt2", form="str_tokens").value == ["0:<|endoftext|>", "1:g", "2:pt", "3:2"]
    assert measure_metric(model, "model_facts.tokenize", text="gpt2", form="decoded").value == ["<|endoftext|>gpt2"]
    without_bos = measure_metric(model, "model_facts.tokenize", text="gpt2", prepend_bos=False)
    assert without_bos.value == ["0:1", "1:5", "2:4"] and without_bos.details["n_tokens"] == 3


def test_tokenize_needs_a_tokenizer(registry_model: Callable[[str], ModelHandle]) -> None:
    with pytest.raises(ValueError, match="no tokenizer"):
        measure_metric(registry_model(PLANTED), "model_facts.tokenize", text="gpt2")


def test_tokenize_params_are_strict() -> None:
    info = get_metric("model_facts.tokenize")
    with pytest.raises(ValidationError):
        info.validate_params({"text": "gpt2", "form": "bytes"})
    with pytest.raises(ValidationError):
        info.validate_params({"text": ""})


# ------------------------------------------------------------------------------------------------
# cache consistency and the query/key input decomposition
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [0, 1])
@pytest.mark.parametrize("biases", [None, {"b_Q": 0.3, "b_K": -0.2}])
def test_pattern_rebuilt_from_q_and_k(layer: int, biases: dict[str, float] | None) -> None:
    value = measure_metric(random_model(4, biases=biases), "model_facts.cache_consistency", inputs=REPEATED, layer=layer).value
    assert value["pattern_vs_qk_max_abs_diff"] < 1e-6
    assert value["alias_max_abs_diff"] == 0.0


def test_cache_consistency_layer_outside_model() -> None:
    with pytest.raises(ValueError, match="outside the model"):
        measure_metric(random_model(4), "model_facts.cache_consistency", inputs=REPEATED, layer=2)


def test_qk_input_decomposition_shortformer_without_biases() -> None:
    value = measure_metric(random_model(5), "model_facts.qk_input_decomposition", inputs=REPEATED).value
    assert value["max_abs_error"] < 1e-5
    assert value["assert_close_excess"] <= 0.0
    assert value["pos_in_residual"] == 0.0  # shortformer: positions stay out of the residual stream


def test_qk_input_decomposition_misses_b_O() -> None:
    """b_O is not a component (as in the course): the error is exactly the layer-0 output bias."""
    value = measure_metric(random_model(5, biases={"b_O": 0.125}), "model_facts.qk_input_decomposition", inputs=REPEATED).value
    assert value["max_abs_error"] == pytest.approx(0.125, abs=1e-5)
    assert value["assert_close_excess"] > 0.0


def test_qk_input_decomposition_standard_positions() -> None:
    model = random_model(6, positional="standard")
    value = measure_metric(model, "model_facts.qk_input_decomposition", inputs=REPEATED).value
    assert value["max_abs_error"] < 1e-5
    positions = REPEATED["repeated_random"]["seq_len"] * 2 + 1
    assert value["pos_in_residual"] == pytest.approx(float(model.W_pos[:positions].abs().max()), rel=1e-6)


def test_qk_input_decomposition_rejects_layernorm() -> None:
    with pytest.raises(ValueError, match="normalization"):
        measure_metric(random_model(7, normalization="LNPre"), "model_facts.qk_input_decomposition", inputs=REPEATED)
