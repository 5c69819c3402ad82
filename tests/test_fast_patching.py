"""The shortcuts of activation and path patching give the plain passes' values.

- :mod:`harness.core.weight_layout` changes the strides of the weights TransformerLens copies on
  every call, never a value: every activation of a pass is unchanged, bit for bit;
- a pass started at a block and a position (:meth:`ModelHandle.residual_from` with a
  :meth:`ModelHandle.key_value_prefix`) equals the plain pass from the embedding there;
- ``patching.*`` scans equal the same scans run as whole passes (every block, every position), and
  ``paths.*`` scans equal the course's runs written out one sender at a time.

Those last three agree up to float32 rounding: a matrix product over fewer rows (a pass over
fewer positions, a tiny model's one position per prompt) may round differently. On SmolLM2-135M
every scan's table was bit for bit the previous code's (``benchmarks/bench_patching.py``).

Small seeded random models: GPT-2-like (LayerNorm, learned positions, plain MLP) and
SmolLM2-like (RMSNorm, rotary, gated MLP, grouped-query attention).
"""

from __future__ import annotations

from typing import Any

import einops
import pytest
import torch
from transformer_lens import HookedTransformer, HookedTransformerConfig

from fixtures.random_models import fill_normal_, small_config
from harness.circuits.dla import logit_diff_from_residual
from harness.context import MetricContext
from harness.core.model_handle import ModelHandle
from harness.core.weight_layout import store_as_multiplied
from harness.metrics import patching, paths
from harness.session import Session
from harness.testing import ad_hoc_handle, measure_metric
from tests.ioi_dataset_support import dataset_model, train_dataset_tokenizer
from tests.test_metrics_ioi import random_model, train_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPES = {
    "gpt2-like": dict(normalization="LN", positional="standard", gated=False, kv_heads=None),
    "smollm2-like": dict(normalization="RMS", positional="rotary", gated=True, kv_heads=2),
}


def hooked_model(shape: str, seed: int = 0) -> HookedTransformer:
    """A 3-layer model of ``shape`` (:data:`SHAPES`), d_model 64, 4 heads, every parameter seeded N(0, 0.1^2)."""
    spec = SHAPES[shape]
    cfg = small_config(n_layers=3, n_heads=4, d_model=64, d_head=16, d_vocab=50, n_ctx=32, d_mlp=128, act_fn="silu",
                       normalization=spec["normalization"], positional=spec["positional"], gated=spec["gated"])
    if spec["kv_heads"] is not None:
        cfg = HookedTransformerConfig.from_dict({**cfg.to_dict(), "n_key_value_heads": spec["kv_heads"]})
    if spec["positional"] == "rotary":
        cfg = HookedTransformerConfig.from_dict({**cfg.to_dict(), "rotary_dim": 16})
    return fill_normal_(HookedTransformer(cfg), seed, std=0.1)


def tokens(seed: int = 1, batch: int = 4, pos: int = 12) -> torch.Tensor:
    return torch.randint(1, 50, (batch, pos), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------------------------
# weights stored as TransformerLens multiplies them
# ----------------------------------------------------------------------------------------------


def assert_same_activations(plain: HookedTransformer, other: HookedTransformer) -> None:
    """The two models' logits and every cached activation on :func:`tokens` are equal bit for bit."""
    with torch.no_grad():
        logits_a, cache_a = plain.run_with_cache(tokens())
        logits_b, cache_b = other.run_with_cache(tokens())
    assert torch.equal(logits_a, logits_b)
    assert set(cache_a.keys()) == set(cache_b.keys())
    for name in cache_a.keys():
        assert torch.equal(cache_a[name], cache_b[name]), name


@pytest.mark.parametrize("shape", list(SHAPES))
def test_weights_stored_as_multiplied_change_no_activation(shape: str) -> None:
    plain, restrided = hooked_model(shape), hooked_model(shape)
    assert store_as_multiplied(restrided) > 0
    for (name, a), (_, b) in zip(plain.named_parameters(), restrided.named_parameters()):
        assert a.shape == b.shape and torch.equal(a, b), name
    assert_same_activations(plain, restrided)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_multiplied_views_need_no_copy(shape: str) -> None:
    """The views TransformerLens multiplies by are contiguous, so its ``.contiguous()``/``reshape`` copies nothing."""
    hooked = hooked_model(shape)
    store_as_multiplied(hooked)
    for block in hooked.blocks:
        attn = block.attn
        assert einops.rearrange(attn.W_O, "h d m -> m (h d)").data_ptr() == attn.W_O.data_ptr()
        names = ("W_Q", "_W_K", "_W_V") if SHAPES[shape]["kv_heads"] else ("W_Q", "W_K", "W_V")
        for name in names:
            weight = getattr(attn, name)
            assert einops.rearrange(weight, "h m d -> (h d) m").data_ptr() == weight.data_ptr(), name
        if SHAPES[shape]["gated"]:
            for name in ("W_gate", "W_in", "W_out"):
                assert getattr(block.mlp, name).T.is_contiguous(), name
    model = ad_hoc_handle(hooked, shape)
    assert all(p.is_contiguous() for _, p in model.named_parameters())


# ----------------------------------------------------------------------------------------------
# a pass started at a block and a position
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", list(SHAPES))
@pytest.mark.parametrize("position", [1, 5, 11])
def test_pass_from_a_position_is_the_plain_pass(shape: str, position: int) -> None:
    model = ad_hoc_handle(hooked_model(shape), shape)
    toks = tokens()
    base = model.run_with_cache(toks).activations
    layer = 1
    other_z = model.run_with_cache(tokens(seed=2)).activations["z", layer]
    base_resid = base["resid_pre", layer]

    def patch(offset: int):
        def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:  # head 2 from the other run, positions >= `position`
            z[:, position - offset :, 2] = other_z[:, position:, 2]
            return z
        return hook

    plain = model.residual_with_hooks(toks, [(model.hook_name("z", layer), patch(0))])
    prefix = model.key_value_prefix(toks, position)
    started = model.residual_from(layer, base_resid[:, position:], toks,
                                  [(model.hook_name("z", layer), patch(position))], prefix=prefix)
    assert started.shape == (4, 12 - position, 64)
    torch.testing.assert_close(started, plain[:, position:], rtol=1e-5, atol=1e-6)  # float rounding at most
    assert not torch.equal(plain, model.residual_with_hooks(toks, []))  # the patch changed something
    # stacked copies read the prefix once per copy
    stacked = model.residual_from(layer, base_resid[:, position:].repeat(2, 1, 1), toks.repeat(2, 1), [],
                                  prefix=prefix)
    torch.testing.assert_close(stacked[4:], model.residual_with_hooks(toks, [])[:, position:], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("shape", list(SHAPES))
def test_prefix_stacks_only_the_blocks_a_pass_reads(shape: str) -> None:
    """A pass from block 1 reads the prefix's keys and values of blocks 1.. only: those are stacked
    per copy, block 0's are not, and the pass is bit for bit the one with every block stacked."""
    model = ad_hoc_handle(hooked_model(shape), shape)
    toks, position, layer, copies = tokens(), 5, 1, 3
    prefix = model.key_value_prefix(toks, position)
    cache = prefix.cache(copies, range(layer, 3))
    assert cache[0].past_keys.shape[0] == 4 and all(cache[i].past_keys.shape[0] == 4 * copies for i in (1, 2))
    resid = model.run_with_cache(toks).activations["resid_pre", layer][:, position:].repeat(copies, 1, 1)
    started = model.residual_from(layer, resid, toks.repeat(copies, 1), [], prefix=prefix)
    every = prefix.cache
    try:
        prefix.cache = lambda n, blocks=None: every(n)  # type: ignore[method-assign]  (every block stacked)
        assert torch.equal(started, model.residual_from(layer, resid, toks.repeat(copies, 1), [], prefix=prefix))
    finally:
        del prefix.cache
    with pytest.raises(RuntimeError, match="Sizes of tensors must match"):  # a pass reading an unstacked block fails, never reads wrong keys
        model._hooked(resid, start_at_layer=0, stop_at_layer=1, return_type=None, past_kv_cache=cache)


def test_prefix_positions_are_checked() -> None:
    model = ad_hoc_handle(hooked_model("gpt2-like"), "gpt2-like")
    for position in (0, 12):
        with pytest.raises(ValueError, match="0 < position < 12"):
            model.key_value_prefix(tokens(), position)
    with pytest.raises(ValueError, match="residual stream"):
        model.residual_from(1, None, tokens(), [], prefix=model.key_value_prefix(tokens(), 3))


# ----------------------------------------------------------------------------------------------
# activation patching scans against whole passes
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ioi_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train_tokenizer(tmp_path_factory.mktemp("fast-patching-tokenizer"))


def whole_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every patched pass from the embedding, every position (the plain way)."""
    monkeypatch.setattr(patching, "first_changed", lambda patch, first: 0)
    monkeypatch.setattr(ModelHandle, "residual_from",
                        lambda self, layer, resid, tokens, hooks, stop_at_layer=None, prefix=None:
                        self.residual_with_hooks(tokens, hooks, stop_at_layer))


SCANS = [("patching.resid_pre", {}), ("patching.block_every", {"component": "attn_out"}),
         ("patching.head_out", {}), ("patching.head_every", {"component": "query"}),
         ("patching.head_every", {"component": "pattern"}), ("patching.head_every", {"component": "value"})]


@pytest.mark.parametrize("config", [{"normalization": "LNPre"}, {"normalization": "RMSPre", "positional": "rotary"}],
                         ids=["lnpre", "rmspre-rotary"])
def test_patching_scans_equal_whole_passes(ioi_tokenizer: Any, config: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    model = random_model(21, ioi_tokenizer, n_layers=3, n_heads=3, **config)
    fast = {name + str(params): measure_metric(model, name, inputs={"ioi_prompts": {}}, **params).value for name, params in SCANS}
    r = patching.runs(MetricContext(model, Session().inputs(model, {"ioi_prompts": {}}), Session()))
    assert 0 < patching.first_difference(r) < r.clean_tokens.shape[1] - 1  # the passes did start later
    with monkeypatch.context() as m:
        whole_passes(m)
        plain = {name + str(params): measure_metric(model, name, inputs={"ioi_prompts": {}}, **params).value for name, params in SCANS}
    for scan, table in plain.items():
        assert fast[scan] == pytest.approx(table, abs=1e-5, rel=1e-5), scan  # float rounding (values of order 1)
    assert any(abs(v) > 1e-2 for table in fast.values() for v in table.values())


# ----------------------------------------------------------------------------------------------
# path patching scans against one sender at a time over every position
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dataset_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    return train_dataset_tokenizer(tmp_path_factory.mktemp("fast-paths-tokenizer"))


DATASET = {"ioi_dataset": {"n": 6, "seed": 2}}


def frozen_z_hooks(model: ModelHandle, runs: paths.PathRuns, sender: tuple[int, int]) -> list[tuple[str, Any]]:
    """Hooks that set every head's z to its x_orig value, but ``sender``'s to its x_new value."""
    layer_s, head_s = sender

    def freeze(layer: int):
        def hook(z: torch.Tensor, hook: Any) -> torch.Tensor:
            z[:] = runs.orig_z[layer]
            if layer == layer_s:
                z[:, :, head_s] = runs.new_z[layer][:, :, head_s]
            return z
        return hook

    return [(model.hook_name("z", layer), freeze(layer)) for layer in range(model.shape.n_layers)]


def plain_to_resid(model: ModelHandle, runs: paths.PathRuns, sender: tuple[int, int]) -> torch.Tensor:
    """LD [batch] of one sender's path to the residual: a whole pass, every head's z frozen, the sender's from x_new."""
    hooks = frozen_z_hooks(model, runs, sender)
    return logit_diff_from_residual(model, model.residual_with_hooks(runs.tokens, hooks), runs.answers, runs.ends)[0]


# The scans and the whole passes add the same terms in another order: in float64 they agree to the
# last bits; in float32 (what a claim runs) to float32 rounding over three layers, about 1e-6 on
# these values of up to 2.4 on some CPUs (AMD Zen 4), so 1e-5 there.
PATH_TOLERANCE = {torch.float32: 1e-5, torch.float64: 1e-12}


def in_dtype(model: ModelHandle, dtype: torch.dtype) -> ModelHandle:
    """``model`` with its weights (and so every activation of its passes) in ``dtype``, as a new handle
    (whose identity hashes the converted weights)."""
    if dtype == model._hooked.cfg.dtype:
        return model
    return ad_hoc_handle(model._hooked.to(dtype, print_details=False), f"{model.identity.name}-{dtype}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("attn_only, norm", [(False, "LNPre"), (True, "RMSPre"), (False, None)])
def test_path_to_resid_equals_whole_passes(dataset_tokenizer: Any, attn_only: bool, norm: str | None,
                                           dtype: torch.dtype) -> None:
    model = in_dtype(dataset_model(31, dataset_tokenizer, attn_only=attn_only, normalization=norm), dtype)
    session = Session()
    ctx = MetricContext(model, session.inputs(model, DATASET), session)
    runs = paths.path_runs(ctx)
    got = measure_metric(model, "paths.to_resid", inputs=DATASET, session=session).value
    n_heads = model.shape.n_heads
    plain = {f"{l}.{h}": float(runs.ioi_metric_2(plain_to_resid(model, runs, (l, h))[None])[0])
             for l in range(model.shape.n_layers) for h in range(n_heads)}
    assert got == pytest.approx(plain, abs=PATH_TOLERANCE[dtype], rel=0)
    assert max(abs(v) for v in plain.values()) > 1e-2


def plain_to_heads(model: ModelHandle, runs: paths.PathRuns, sender: tuple[int, int], receivers: list[tuple[int, int]],
                   kind: str) -> torch.Tensor:
    """LD [batch] of one sender's path to the receivers' ``kind``: run (1) a whole pass with every head
    frozen (the sender from x_new) keeping the receivers' input; run (2) a whole pass with only that patched."""
    kept: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        return lambda act, hook: kept.__setitem__(layer, act.clone())

    layers = sorted({layer for layer, _ in receivers})
    hooks = frozen_z_hooks(model, runs, sender)
    model.residual_with_hooks(runs.tokens, hooks + [(model.hook_name(kind, layer), keep(layer)) for layer in layers])

    def patch(layer: int):
        def hook(act: torch.Tensor, hook: Any) -> torch.Tensor:
            for receiver_layer, head in receivers:
                if receiver_layer == layer:
                    act[:, :, head] = kept[layer][:, :, head]
            return act
        return hook

    resid = model.residual_with_hooks(runs.tokens, [(model.hook_name(kind, layer), patch(layer)) for layer in layers])
    return logit_diff_from_residual(model, resid, runs.answers, runs.ends)[0]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("kind", ["q", "k", "v"])
def test_path_to_heads_equals_whole_passes(dataset_tokenizer: Any, kind: str, dtype: torch.dtype) -> None:
    model = in_dtype(dataset_model(32, dataset_tokenizer, n_layers=3, n_heads=2), dtype)
    session = Session()
    ctx = MetricContext(model, session.inputs(model, DATASET), session)
    runs = paths.path_runs(ctx)
    new_tokens = session.inputs(model, paths.new_spec(ctx)).tokens
    assert paths.first_difference(runs, new_tokens) > 0  # run (2) did start at a later position
    receivers = [(2, 0), (1, 1)]
    got = measure_metric(model, "paths.to_heads", inputs=DATASET, session=session,
                         receivers=["2.0", "1.1"], receiver_input=kind).value
    plain = {f"{l}.{h}": float(runs.ioi_metric_2(plain_to_heads(model, runs, (l, h), receivers, kind)[None])[0])
             for l in range(2) for h in range(2)}
    assert got == pytest.approx(plain, abs=PATH_TOLERANCE[dtype], rel=0)
    assert max(abs(v) for v in plain.values()) > 1e-3
