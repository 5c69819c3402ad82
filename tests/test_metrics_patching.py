"""Activation patching (``patching.*``, ARENA 1.4.1 section 3) against TransformerLens's own
``transformer_lens.patching`` functions (allowed here, in tests only) and exact identities.

Random models carry the IOI tokenizer of ``tests/test_metrics_ioi.py`` (every word one token).
References: ``get_act_patch_resid_pre`` / ``get_act_patch_block_every`` / ``get_act_patch_attn_head_all_pos_every`` /
``get_act_patch_attn_head_out_all_pos`` with the course's ``ioi_metric``.
"""

from __future__ import annotations

from typing import Any

import pytest
import torch

from fixtures.inputs import InputBatch
from harness.context import MetricContext
from harness.core.heads import head_names
from harness.core.measurement import Measurement
from harness.metrics import patching
from harness.core.model_handle import ModelHandle
from harness.registry import get_metric
from harness.session import Session
from harness.testing import measure_metric
from tests.test_metrics_ioi import ioi, random_model, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")
ATOL = 1e-4


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train_tokenizer(tmp_path_factory.mktemp("patching-tokenizer"))


def context(model: ModelHandle, **params: Any) -> MetricContext:
    """The claim's (clean) inputs built through a fresh session, as the runner does."""
    session = Session()
    return MetricContext(model, session.inputs(model, {"ioi_prompts": params}), session)


def measure(name: str, ctx: MetricContext, **params: Any) -> Measurement:
    """Metric ``name`` on the model and inputs of ``ctx``, cached in its session."""
    return measure_metric(ctx.model, name, inputs=ctx.inputs, session=ctx.session, **params)


@torch.no_grad()
def course_reference(model: ModelHandle, clean: InputBatch, corrupted: InputBatch, which: str) -> torch.Tensor:
    """TransformerLens's ``get_act_patch_*`` with the course's ``ioi_metric`` (float32)."""
    import transformer_lens.patching as tl_patching

    hooked = model._hooked
    answers = torch.tensor(clean.meta["answers"])

    def ld(logits: torch.Tensor) -> torch.Tensor:
        final = logits[:, -1]
        return (final.gather(-1, answers[:, :1]) - final.gather(-1, answers[:, 1:])).mean()

    clean_logits, clean_cache = hooked.run_with_cache(clean.tokens)
    clean_ld, corrupted_ld = ld(clean_logits), ld(hooked(corrupted.tokens))

    def ioi_metric(logits: torch.Tensor) -> torch.Tensor:
        return (ld(logits) - corrupted_ld) / (clean_ld - corrupted_ld)

    function = getattr(tl_patching, f"get_act_patch_{which}")
    return function(hooked, corrupted.tokens, clean_cache, ioi_metric)


MODELS = [
    pytest.param({"normalization": "LNPre"}, id="lnpre"),
    pytest.param({"normalization": "RMSPre", "positional": "rotary"}, id="rmspre-rotary"),
    pytest.param({"normalization": None, "attn_only": True}, id="attn-only"),
]


@pytest.mark.parametrize("config", MODELS)
def test_resid_pre_matches_transformer_lens(tokenizer: Any, config: dict[str, Any]) -> None:
    model = random_model(3, tokenizer, n_layers=3, **config)
    ctx = context(model)
    got = measure("patching.resid_pre", ctx)
    expected = course_reference(model, ctx.inputs, ioi(model, corrupted=True), "resid_pre")  # [layer, pos]
    n_layers, pos = expected.shape
    assert len(got.value) == n_layers * pos and got.uncertainty is None
    for layer in range(n_layers):
        for p in range(pos):
            assert got.value[f"{layer}:{p}"] == pytest.approx(float(expected[layer, p]), abs=ATOL), (layer, p)
    assert torch.allclose(torch.tensor(got.details["grid"], dtype=torch.float64), expected.double(), atol=ATOL)


def test_block_every_matches_transformer_lens(tokenizer: Any) -> None:
    model = random_model(4, tokenizer, n_layers=2)
    ctx = context(model)
    expected = course_reference(model, ctx.inputs, ioi(model, corrupted=True), "block_every")  # [3, layer, pos]
    for row, component in enumerate(("resid_pre", "attn_out", "mlp_out")):
        grid = torch.tensor(measure("patching.block_every", ctx, component=component).details["grid"], dtype=torch.float64)
        assert torch.allclose(grid, expected[row].double(), atol=ATOL), component


@pytest.mark.parametrize("config", MODELS)
def test_head_out_matches_transformer_lens(tokenizer: Any, config: dict[str, Any]) -> None:
    model = random_model(5, tokenizer, n_layers=2, n_heads=3, **config)
    ctx = context(model)
    got = measure("patching.head_out", ctx)
    expected = course_reference(model, ctx.inputs, ioi(model, corrupted=True), "attn_head_out_all_pos")  # [layer, head]
    names = head_names(2, 3)
    assert list(got.value) == names
    for name, value in zip(names, expected.flatten()):
        assert got.value[name] == pytest.approx(float(value), abs=ATOL), name


def test_head_out_top_k_ranks_the_table(tokenizer: Any) -> None:
    model = random_model(6, tokenizer, n_layers=2, n_heads=3)
    ctx = context(model)
    table = measure("patching.head_out", ctx).value
    for sign, key in (("positive", lambda n: -table[n]), ("negative", lambda n: table[n])):
        got = measure("patching.head_out", ctx, top_k=2, sign=sign)
        assert got.value == sorted(table, key=key)[:2]
        assert got.details["scores"] == table


def test_views_agree_with_the_grid(tokenizer: Any) -> None:
    model = random_model(7, tokenizer, n_layers=3)
    ctx = context(model)
    grid = torch.tensor(measure("patching.resid_pre", ctx).details["grid"])
    argmax = measure("patching.resid_pre", ctx, view="argmax").value
    max_abs = measure("patching.resid_pre", ctx, view="max_abs").value
    runner_up = measure("patching.resid_pre", ctx, view="runner_up").value
    for layer in range(3):
        row = grid[layer]
        best = int(row.argmax())
        assert argmax[str(layer)] == best
        assert max_abs[str(layer)] == pytest.approx(float(row.abs().max()))
        others = [abs(float(v)) for p, v in enumerate(row) if p != best]
        assert runner_up[str(layer)] == pytest.approx(max(others))


def test_identities(tokenizer: Any) -> None:
    """Layer 0 at S2 restores the clean run (the only differing embedding); the last layer's
    resid_pre patched at every position is the clean run too; unchanged prefixes give exactly 0."""
    model = random_model(8, tokenizer, n_layers=2)
    ctx = context(model)
    got = measure("patching.resid_pre", ctx)
    r = patching.runs(ctx)
    s2 = patching.first_difference(r)
    assert (r.clean_tokens[:, s2 + 1 :] == r.corrupted_tokens[:, s2 + 1 :]).all()  # pairs differ only at S2
    assert got.value[f"0:{s2}"] == pytest.approx(1.0, abs=ATOL)
    pos = r.clean_tokens.shape[1]
    for p in range(pos):
        if p != s2:
            assert got.value[f"0:{p}"] == pytest.approx(0.0, abs=ATOL)
    for p in range(s2):
        assert got.value[f"1:{p}"] == 0.0 and p in got.details["not_run_positions"]
    last = model.shape.n_layers - 1
    everything = [patching.Patch("resid_pre", last, position=p) for p in range(pos)]
    nothing = patching.patched_metrics(ctx, r, [])
    assert nothing.numel() == 0
    full = patched_all_positions(ctx, r, everything)
    assert full == pytest.approx(1.0, abs=ATOL)
    assert float(r.ioi_metric(model.run_with_hooks(r.corrupted_tokens, []))[0]) == pytest.approx(0.0, abs=1e-9)
    assert float(r.ioi_metric(ctx.forward().logits)[0]) == pytest.approx(1.0, abs=1e-9)


def patched_all_positions(ctx: MetricContext, r: patching.Runs, patches: list[patching.Patch]) -> float:
    """``ioi_metric`` with every patch applied in one run (one copy)."""
    batch = r.corrupted_tokens.shape[0]
    hooks = []
    for patch in patches:
        hook = patching.patch_hook([patch], batch, r.clean[patch.kind, patch.layer], ctx.model.shape.n_heads)
        hooks.append((ctx.model.hook_name(patch.kind, patch.layer), hook))
    return float(r.ioi_metric(ctx.model.run_with_hooks(r.corrupted_tokens, hooks))[0])


def test_head_with_zero_output_weights_scores_zero(tokenizer: Any) -> None:
    model = random_model(9, tokenizer, n_layers=2, n_heads=3)
    with torch.no_grad():
        model._hooked.blocks[1].attn.W_O[2].zero_()
    got = measure("patching.head_out", context(model))
    # patched runs read LD from the final residual (norm + two unembedding columns), the corrupted run
    # from its logits: the same number up to float rounding
    assert got.value["1.2"] == pytest.approx(0.0, abs=1e-5)
    assert any(abs(v) > 1e-3 for v in got.value.values())


def test_chunking_does_not_change_values(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_model(10, tokenizer, n_layers=2, n_heads=3)
    whole = measure("patching.head_out", context(model)).value
    monkeypatch.setattr(patching, "MAX_PASS_TOKENS", 2 * 8 * 16)  # two copies of the 8 prompts per pass
    chunked = measure("patching.head_out", context(model)).value
    assert chunked == pytest.approx(whole, abs=1e-5)


def test_scans_are_shared_within_a_session(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_model(11, tokenizer, n_layers=2)
    ctx = context(model)
    calls: list[int] = []
    original = patching.patched_metrics
    monkeypatch.setattr(patching, "patched_metrics", lambda *a: calls.append(1) or original(*a))
    measure("patching.resid_pre", ctx)
    measure("patching.resid_pre", ctx, view="argmax")
    assert len(calls) == 1


def test_errors(tokenizer: Any) -> None:
    model = random_model(12, tokenizer, n_layers=2)
    with pytest.raises(ValueError, match="corrupted: false"):
        measure("patching.resid_pre", context(model, corrupted=True))
    with pytest.raises(ValueError, match="course_8"):
        measure("patching.head_out", context(model, prompts="test_prompt"))
    session = Session()
    text = session.inputs(model, {"text": {"text": "When John and Mary"}})
    with pytest.raises(ValueError, match="ioi_prompts"):
        measure("patching.resid_pre", MetricContext(model, text, session))
    attn_only = random_model(13, tokenizer, n_layers=2, attn_only=True, normalization=None)
    with pytest.raises(ValueError, match="attention-only"):
        measure("patching.block_every", context(attn_only), component="mlp_out")
    with pytest.raises(Exception):
        get_metric("patching.block_every").validate_params({"component": "resid_mid"})
    with pytest.raises(Exception):
        get_metric("patching.resid_pre").validate_params({"view": "sum"})


def test_undefined_metric_fails_closed(tokenizer: Any) -> None:
    """A model whose output ignores the tokens (zero unembedding) has LD(clean) = LD(corrupted)."""
    model = random_model(14, tokenizer, n_layers=2)
    with torch.no_grad():
        model._hooked.W_U.zero_()
    with pytest.raises(ValueError, match="ioi_metric is undefined"):
        measure("patching.resid_pre", context(model))


HEAD_COMPONENTS = ("output", "query", "key", "value", "pattern")  # the rows of get_act_patch_attn_head_all_pos_every


@pytest.mark.parametrize("config", MODELS)
def test_head_every_matches_transformer_lens(tokenizer: Any, config: dict[str, Any]) -> None:
    model = random_model(15, tokenizer, n_layers=2, n_heads=3, **config)
    ctx = context(model)
    expected = course_reference(model, ctx.inputs, ioi(model, corrupted=True), "attn_head_all_pos_every")  # [5, layer, head]
    assert expected.shape == (5, 2, 3)
    names = head_names(2, 3)
    tables = {}
    for row, component in enumerate(HEAD_COMPONENTS):
        got = measure("patching.head_every", ctx, component=component)
        assert list(got.value) == names and got.uncertainty is None
        for name, value in zip(names, expected[row].flatten()):
            assert got.value[name] == pytest.approx(float(value), abs=ATOL), (component, name)
        tables[component] = got.value
    # the rows differ (a wrong hook or head axis would repeat one), and output is head_out's scan
    assert any(abs(tables["pattern"][n] - tables["query"][n]) > 1e-3 for n in names)
    assert any(abs(tables["value"][n] - tables["output"][n]) > 1e-3 for n in names)
    assert tables["output"] == measure("patching.head_out", ctx).value


def test_head_every_pattern_patches_one_head(tokenizer: Any) -> None:
    """Patching head H's pattern changes only head H's z in that layer (the head axis of pattern is 1)."""
    model = random_model(16, tokenizer, n_layers=1, n_heads=3)
    ctx = context(model)
    r = patching.runs(ctx)
    batch = r.corrupted_tokens.shape[0]
    seen: dict[str, torch.Tensor] = {}
    patch = patching.Patch("pattern", 0, head=1)
    hooks = [
        (model.hook_name("pattern", 0), patching.patch_hook([patch], batch, r.clean["pattern", 0], 3)),
        (model.hook_name("z", 0), lambda act, hook: seen.__setitem__("z", act.clone())),
    ]
    model.run_with_hooks(r.corrupted_tokens, hooks)
    corrupted = model.run_with_cache(r.corrupted_tokens).activations
    corrupted_z = corrupted["z", 0]  # [batch, pos, head, d_head]
    expected_head = torch.einsum("bqk,bkd->bqd", r.clean["pattern", 0][:, 1], corrupted["v", 0][:, :, 1])  # A'_H v_H
    assert torch.allclose(seen["z"][:, :, 1], expected_head, atol=1e-5)
    for other in (0, 2):
        assert torch.equal(seen["z"][:, :, other], corrupted_z[:, :, other])
    assert not torch.allclose(seen["z"][:, :, 1], corrupted_z[:, :, 1], atol=1e-3)


def test_head_every_shares_scans_and_ranks(tokenizer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_model(17, tokenizer, n_layers=2, n_heads=3)
    ctx = context(model)
    calls: list[int] = []
    original = patching.patched_metrics
    monkeypatch.setattr(patching, "patched_metrics", lambda *a: calls.append(1) or original(*a))
    table = measure("patching.head_every", ctx, component="value").value
    got = measure("patching.head_every", ctx, component="value", top_k=2, sign="negative")
    assert got.value == sorted(table, key=lambda n: table[n])[:2] and got.details["scores"] == table
    measure("patching.head_every", ctx, component="output")
    measure("patching.head_out", ctx)
    assert len(calls) == 2  # value once, output/head_out once
    with pytest.raises(Exception):
        get_metric("patching.head_every").validate_params({"component": "z"})


def gqa_model(seed: int, tokenizer: Any) -> ModelHandle:
    """A random model with 4 query heads sharing 2 key/value heads (grouped-query attention)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from fixtures.random_models import fill_normal_, small_config
    from harness.core.model_handle import ModelIdentity

    cfg = small_config(n_layers=2, n_heads=4, d_model=8, d_head=3, d_vocab=len(tokenizer), n_ctx=32,
                       normalization="RMSPre", positional="rotary", d_mlp=6, act_fn="gelu")
    cfg = HookedTransformerConfig.from_dict({**cfg.to_dict(), "n_key_value_heads": 2})
    hooked = fill_normal_(HookedTransformer(cfg, tokenizer=tokenizer), seed)
    identity = ModelIdentity(name=f"random-gqa-{seed}", source="test", weights_sha256=None, config_sha256=None)
    return ModelHandle(hooked, identity, bos_token_id=0)


def test_head_every_refuses_grouped_key_values(tokenizer: Any) -> None:
    model = gqa_model(18, tokenizer)
    ctx = context(model)
    for component in ("key", "value"):
        with pytest.raises(ValueError, match="grouped-query attention"):
            measure("patching.head_every", ctx, component=component)
    for component in ("output", "query", "pattern"):
        assert len(measure("patching.head_every", ctx, component=component).value) == 2 * 4
