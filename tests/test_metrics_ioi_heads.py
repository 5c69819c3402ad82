"""ARENA 1.4.1's early-head scores (duplicate / previous / induction, variant ``ioi``) and name copy scores.

Each is compared with a dense reference written with plain loops (the course's index lists for the
stripes; LayerNorm, RMSNorm and the MLPs written out by hand for the copy score) on seeded random
models drawn by Hypothesis, and with constructed models whose answer is known: a one-layer model
with a planted duplicate-token head and a planted previous-token head, and heads whose OV circuit
is a multiple of the identity (a copying map).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError
from torch import Tensor
from transformer_lens import HookedTransformer, HookedTransformerConfig

from fixtures.inputs import INPUT_KINDS, InputBatch
from fixtures.random_models import random_hooked
from harness.core.heads import Head
from harness.metrics.copying import extended_embedding, head_copy_score
from harness.core.model_handle import ModelHandle, ModelIdentity
from harness.registry import get_metric
from harness.testing import ad_hoc_handle, fast_settings, measure_metric

FAST = fast_settings(12)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------------------------
# models, inputs, running a metric
# ----------------------------------------------------------------------------------------------


def random_model(
    seed: int, *, n_layers: int = 2, n_heads: int = 2, d_head: int = 3, d_model: int = 6, d_vocab: int = 10,
    normalization: str | None = None, attn_only: bool = True, gated: bool = False, act_fn: str = "relu",
) -> HookedTransformer:
    """A small model with every parameter (biases included) ~ N(0, 0.5^2), seeded."""
    return random_hooked(
        seed, n_layers=n_layers, n_heads=n_heads, d_head=d_head, d_model=d_model, d_vocab=d_vocab,
        normalization=normalization, d_mlp=None if attn_only else 5, act_fn=act_fn, gated=gated, positional="standard",
    )


class NamesHandle(ModelHandle):
    """A handle whose "tokenizer" maps a name to the ids in ``vocab`` (several ids: several tokens)."""

    def __init__(self, model: HookedTransformer, name: str, vocab: dict[str, list[int]]) -> None:
        super().__init__(model, ModelIdentity(name=name, source="test", weights_sha256=None, config_sha256=None), bos_token_id=0)
        self.vocab = vocab

    def to_tokens(self, text: str | list[str], *, prepend_bos: bool = True) -> Tensor:
        assert isinstance(text, str) and not prepend_bos
        return torch.tensor([self.vocab.get(text, [1, 2])])


def repeated(model: ModelHandle, seq_len: int, batch: int, seed: int, prepend_bos: bool) -> InputBatch:
    kind = INPUT_KINDS["repeated_random"]
    params = {"seq_len": seq_len, "batch": batch, "seed": seed, "prepend_bos": prepend_bos}
    return kind.build(model, kind.params_model.model_validate(params))


def distinct_repeated(batch: int, seq_len: int, d_vocab: int, prefix: int, seed: int) -> InputBatch:
    """``[BOS]? + R + R`` with R's tokens distinct within a row and never the BOS (id 0)."""
    generator = torch.Generator().manual_seed(seed)
    halves = torch.stack([1 + torch.randperm(d_vocab - 1, generator=generator)[:seq_len] for _ in range(batch)])
    tokens = torch.cat([torch.zeros(batch, prefix, dtype=torch.int64), halves, halves], dim=1)
    return InputBatch(tokens, "tokens", {"ids": tokens.tolist()}, {"seq_len": seq_len, "prefix": prefix})


# ----------------------------------------------------------------------------------------------
# stripes: dense reference (the course's index lists) and a constructed ground truth
# ----------------------------------------------------------------------------------------------


def course_index_lists(kind: str, n: int, p: int) -> tuple[list[int], list[int]]:
    """ARENA 1.4.1 ``get_attn_scores``'s (dest, src) lists on ``R + R``, shifted by a prefix of ``p``."""
    if kind == "duplicate":
        dest, src = range(n, 2 * n), range(n)
    elif kind == "previous":
        dest, src = range(1, n + 1), range(n)
    else:
        dest, src = range(n, 2 * n), range(1, n + 1)
    return [p + d for d in dest], [p + s for s in src]


def ref_ioi_scores(model: HookedTransformer, inputs: InputBatch, kind: str) -> tuple[dict[str, float], dict[str, float] | None]:
    """Mean over sequences of the mean of ``pattern[b, h, dest[i], src[i]]``, by loops; and its s.e."""
    n, p = inputs.meta["seq_len"], inputs.meta["prefix"]
    dest, src = course_index_lists(kind, n, p)
    with torch.no_grad():
        _, cache = model.run_with_cache(inputs.tokens)
    values: dict[str, float] = {}
    errors: dict[str, float] = {}
    for layer in range(model.cfg.n_layers):
        for head in range(model.cfg.n_heads):
            pattern = cache["pattern", layer]
            per_seq = [sum(float(pattern[b, head, d, s]) for d, s in zip(dest, src)) / n for b in range(inputs.tokens.shape[0])]
            mean = sum(per_seq) / len(per_seq)
            values[f"{layer}.{head}"] = mean
            if len(per_seq) > 1:
                var = sum((x - mean) ** 2 for x in per_seq) / (len(per_seq) - 1)
                errors[f"{layer}.{head}"] = math.sqrt(var / len(per_seq))
    return values, (errors or None)


@FAST
@given(
    seed=st.integers(0, 2**31 - 1), n_layers=st.integers(1, 2), n_heads=st.integers(1, 3),
    seq_len=st.integers(2, 6), batch=st.integers(1, 3), bos=st.booleans(), kind=st.sampled_from(["duplicate", "previous", "induction"]),
)
def test_ioi_stripes_equal_course_index_lists(seed: int, n_layers: int, n_heads: int, seq_len: int, batch: int, bos: bool, kind: str) -> None:
    model = random_model(seed, n_layers=n_layers, n_heads=n_heads)
    wrapped = ad_hoc_handle(model, f"random-{seed}-{n_layers}-{n_heads}")
    inputs = repeated(wrapped, seq_len, batch, seed % 1000, bos)
    measured = measure_metric(wrapped, "attention.scores", inputs=inputs, pattern=kind, variant="ioi")
    expected, errors = ref_ioi_scores(model, inputs, kind)
    assert measured.value.keys() == expected.keys()
    for name, value in expected.items():
        assert measured.value[name] == pytest.approx(value, abs=1e-6)
        if errors is None:
            assert measured.uncertainty is None
        else:
            assert measured.uncertainty[name] == pytest.approx(errors[name], abs=1e-6)
    if kind == "duplicate":  # duplicate has no trivial entries: every variant is the course's stripe
        for variant in ("course", "clean"):
            assert measure_metric(wrapped, "attention.scores", inputs=inputs, pattern=kind, variant=variant).value == measured.value
    if kind == "induction":  # the 1.4.1 stripe is the clean one
        assert measure_metric(wrapped, "attention.scores", inputs=inputs, pattern=kind, variant="clean").value == measured.value


STRENGTH = 60.0


def planted_duplicate_model(d_vocab: int = 12, n_ctx: int = 16) -> HookedTransformer:
    """One layer, two heads, one-hot token and position embeddings (``d_model = d_vocab + n_ctx``).

    Head 0.0 (duplicate token): score ``B([tok_q = tok_k] - [q = k])``. Head 0.1 (previous token):
    score ``B [k = q - 1]``. With ``W_Q = I``, ``W_K = M^T`` gives scores ``x_q^T M x_k``.
    """
    d_model = d_vocab + n_ctx
    cfg = HookedTransformerConfig(
        n_layers=1, d_model=d_model, d_head=d_model, n_heads=2, d_vocab=d_vocab, n_ctx=n_ctx, attn_only=True,
        normalization_type=None, positional_embedding_type="standard", tokenizer_name=None,
        init_weights=False, device="cpu", dtype=torch.float32,
    )
    model = HookedTransformer(cfg)
    B = STRENGTH * math.sqrt(d_model)  # scores are divided by sqrt(d_head)
    eye = torch.eye(d_model)
    duplicate = torch.zeros(d_model, d_model)
    duplicate[:d_vocab, :d_vocab] = B * torch.eye(d_vocab)
    duplicate[d_vocab:, d_vocab:] = -B * torch.eye(n_ctx)
    previous = torch.zeros(d_model, d_model)
    previous[d_vocab:, d_vocab:] = B * torch.diag(torch.ones(n_ctx - 1), -1)  # M[q, q-1] = B
    with torch.no_grad():
        for param in model.parameters():
            param.zero_()
        model.embed.W_E.copy_(eye[:d_vocab])
        model.pos_embed.W_pos.copy_(eye[d_vocab:])
        model.blocks[0].attn.W_Q.copy_(torch.stack([eye, eye]))
        model.blocks[0].attn.W_K.copy_(torch.stack([duplicate.T, previous.T]))
    return model.eval()


@pytest.mark.parametrize("prefix", [0, 1])
def test_planted_duplicate_and_previous_heads(prefix: int) -> None:
    model = planted_duplicate_model()
    wrapped = ad_hoc_handle(model, "planted-duplicate")
    inputs = distinct_repeated(batch=3, seq_len=5, d_vocab=12, prefix=prefix, seed=prefix)
    duplicate = measure_metric(wrapped, "attention.scores", inputs=inputs, pattern="duplicate", variant="ioi").value
    previous = measure_metric(wrapped, "attention.scores", inputs=inputs, pattern="previous", variant="ioi").value
    induction = measure_metric(wrapped, "attention.scores", inputs=inputs, pattern="induction", variant="ioi").value
    assert duplicate["0.0"] == pytest.approx(1.0, abs=1e-6)
    assert previous["0.1"] == pytest.approx(1.0, abs=1e-6)
    assert duplicate["0.1"] < 1e-6 and induction["0.0"] < 1e-6 and induction["0.1"] < 1e-6
    # 0.0 spreads the first half's attention over the earlier keys: not a previous-token head
    assert previous["0.0"] < 0.5
    detected = measure_metric(wrapped, "attention.detect", inputs=inputs, pattern="duplicate", variant="ioi", threshold=0.5)
    assert detected.value == ["0.0"]


def test_ioi_previous_stripe_is_not_the_whole_diagonal() -> None:
    """1.4.1's previous-token stripe stops at the first second-half query; 1.2's takes the diagonal."""
    from harness.metrics.attention import stripe_scores

    n, p = 3, 1
    size = p + 2 * n
    pattern = torch.zeros(1, 1, size, size)
    for q in range(1, size):
        pattern[0, 0, q, q - 1] = 1.0 if q <= p + n else 0.0  # a previous-token head only up to query p+n
    assert float(stripe_scores(pattern, "previous", "ioi", seq_len=n, prefix=p)[0, 0]) == pytest.approx(1.0)
    assert float(stripe_scores(pattern, "previous", "course", seq_len=n, prefix=p)[0, 0]) == pytest.approx((p + n) / (size - 1))


def test_stripe_errors() -> None:
    model = random_model(0)
    wrapped = ad_hoc_handle(model, "random-0")
    inputs = repeated(wrapped, 3, 2, 0, False)
    for kind in ("current", "first"):
        with pytest.raises(ValueError, match="variant 'ioi'.*duplicate, previous and induction"):
            measure_metric(wrapped, "attention.scores", inputs=inputs, pattern=kind, variant="ioi")
    plain = InputBatch(inputs.tokens, "tokens", {"ids": inputs.tokens.tolist()}, {})
    with pytest.raises(ValueError, match="duplicate score .* needs inputs: repeated_random"):
        measure_metric(wrapped, "attention.scores", inputs=plain, pattern="duplicate")
    with pytest.raises(ValueError, match="previous stripe .*'ioi'.* needs repeated tokens"):
        measure_metric(wrapped, "attention.scores", inputs=plain, pattern="previous", variant="ioi")
    with pytest.raises(ValidationError):
        get_metric("attention.scores").validate_params({"pattern": "duplicate", "variant": "paper"})


# ----------------------------------------------------------------------------------------------
# copy scores: dense reference with hand-written norms and MLPs
# ----------------------------------------------------------------------------------------------


def ref_norm(x: Tensor, module: Any, kind: str | None, eps: float) -> Tensor:
    """LayerNorm / RMSNorm (with or without weights) of x [d_model], written out."""
    if kind is None:
        return x
    if kind.startswith("LN"):
        x = x - x.mean()
    x = x / torch.sqrt((x * x).mean() + eps)
    if kind in ("LN", "RMS"):
        x = x * module.w.detach()
    if kind == "LN":
        x = x + module.b.detach()
    return x


def ref_mlp(x: Tensor, mlp: Any, gated: bool, act_fn: str) -> Tensor:
    """``act(x W_in + b_in) W_out + b_out``, or TransformerLens's gated ``(act(x W_gate) * x W_in + b_in) W_out + b_out``."""
    act = {"relu": torch.relu, "silu": torch.nn.functional.silu}[act_fn]
    W_in, b_in, W_out, b_out = (t.detach() for t in (mlp.W_in, mlp.b_in, mlp.W_out, mlp.b_out))
    hidden = act(x @ mlp.W_gate.detach()) * (x @ W_in) + b_in if gated else act(x @ W_in + b_in)
    return hidden @ W_out + b_out


def ref_copy_score(model: HookedTransformer, tokens: list[int], layer: int, head: int, sign: float, k: int, gated: bool, act_fn: str) -> float:
    """Fraction of names t whose logit ranks in the top k (fewer than k logits strictly larger), by loops."""
    cfg = model.cfg
    hits = 0
    W_OV = model.W_V[layer, head].detach() @ model.W_O[layer, head].detach()
    for t in tokens:
        e = model.W_E[t].detach()
        if not cfg.attn_only:
            e = e + ref_mlp(ref_norm(e, model.blocks[0].ln2, cfg.normalization_type, cfg.eps), model.blocks[0].mlp, gated, act_fn)
        out = ref_norm(e @ (sign * W_OV), getattr(model, "ln_final", None), cfg.normalization_type, cfg.eps)
        logits = out @ model.W_U.detach() + model.b_U.detach()
        hits += int(int((logits > logits[t]).sum()) < k)
    return hits / len(tokens)


@FAST
@given(
    seed=st.integers(0, 2**31 - 1), n_layers=st.integers(2, 3), n_heads=st.integers(1, 3),
    normalization=st.sampled_from([None, "LN", "LNPre", "RMS", "RMSPre"]), attn_only=st.booleans(), gated=st.booleans(),
    act_fn=st.sampled_from(["relu", "silu"]), k=st.integers(1, 4), sign=st.sampled_from([1.0, -1.0]),
)
def test_copy_scores_equal_dense_reference(
    seed: int, n_layers: int, n_heads: int, normalization: str | None, attn_only: bool, gated: bool, act_fn: str, k: int, sign: float,
) -> None:
    gated = gated and not attn_only
    model = random_model(seed, n_layers=n_layers, n_heads=n_heads, d_vocab=12, normalization=normalization,
                         attn_only=attn_only, gated=gated, act_fn=act_fn)
    wrapped = ad_hoc_handle(model, f"random-{seed}")
    tokens = list(range(1, 12))
    resid = extended_embedding(wrapped, torch.tensor(tokens))
    for layer in range(1, n_layers):
        for head in range(n_heads):
            measured = head_copy_score(wrapped, resid, torch.tensor(tokens), Head(layer, head), sign, k)
            expected = ref_copy_score(model, tokens, layer, head, sign, k, gated, act_fn)
            assert measured == pytest.approx(expected, abs=1e-9), (layer, head)


@pytest.mark.parametrize("normalization", [None, "LN", "LNPre", "RMS", "RMSPre"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_copy_scores_every_norm_both_signs(normalization: str | None, sign: float) -> None:
    """Every normalization with MLP 0, both signs (LayerNorm's bias makes ``ln(-x) != -ln(x)``:
    the sign must be applied before the final norm)."""
    for seed in (11, 12, 13):
        model = random_model(seed, n_layers=2, n_heads=3, d_vocab=12, normalization=normalization, attn_only=False)
        wrapped = ad_hoc_handle(model, f"random-{seed}-{normalization}")
        tokens = list(range(12))
        resid = extended_embedding(wrapped, torch.tensor(tokens))
        for head in range(3):
            measured = head_copy_score(wrapped, resid, torch.tensor(tokens), Head(1, head), sign, 3)
            assert measured == pytest.approx(ref_copy_score(model, tokens, 1, head, sign, 3, False, "relu"), abs=1e-9)


def copying_model(normalization: str | None, scale: float, d_vocab: int = 8) -> HookedTransformer:
    """Two layers, ``d_model = d_head = d_vocab``, ``W_E = W_U = I``; head 1.0's ``W_OV = scale * I``,
    head 1.1's ``W_OV = 0.5 * scale * P`` (a permutation without fixed points), random MLPs."""
    model = random_model(3, n_layers=2, n_heads=2, d_head=d_vocab, d_model=d_vocab, d_vocab=d_vocab,
                         normalization=normalization, attn_only=False)
    eye = torch.eye(d_vocab)
    with torch.no_grad():
        model.embed.W_E.copy_(eye)
        model.unembed.W_U.copy_(eye)
        model.unembed.b_U.zero_()
        for block in model.blocks:  # zero MLP 0: the extended embedding is the embedding
            block.mlp.W_out.zero_()
            block.mlp.b_out.zero_()
        model.blocks[1].attn.W_V.copy_(torch.stack([eye, eye]))
        model.blocks[1].attn.W_O.copy_(torch.stack([scale * eye, 0.5 * scale * eye.roll(1, dims=1)]))
    return model.eval()


@pytest.mark.parametrize("normalization", [None, "LNPre", "RMSPre"])
@pytest.mark.parametrize("scale", [3.0, -3.0])
def test_copying_map_scores_one_and_its_negation_zero(normalization: str | None, scale: float) -> None:
    model = copying_model(normalization, scale)
    vocab = {f"n{t}": [t] for t in range(8)}
    wrapped = NamesHandle(model, f"copying-{normalization}-{scale}", vocab)
    names = tuple(vocab)
    positive = _scores(wrapped, names, "positive", k=3)
    negative = _scores(wrapped, names, "negative", k=3)
    copying, anti = (positive, negative) if scale > 0 else (negative, positive)
    assert copying["1.0"] == 1.0 and anti["1.0"] == 0.0  # own token uniquely largest / smallest
    # a permutation without fixed points sends every name to another token: never the top-1
    assert _scores(wrapped, names, "positive" if scale > 0 else "negative", k=1)["1.1"] == 0.0


def _scores(wrapped: ModelHandle, names: tuple[str, ...], sign: str, k: int) -> dict[str, float]:
    from fixtures import ioi_names

    saved = dict(ioi_names.NAME_LISTS)
    ioi_names.NAME_LISTS["arena_ioi"] = names
    try:
        return measure_metric(wrapped, "copying.name_copy_score", inputs=None, sign=sign, k=k).value
    finally:
        ioi_names.NAME_LISTS.clear()
        ioi_names.NAME_LISTS.update(saved)


def test_copy_score_metric_tokenizes_drops_and_averages() -> None:
    from fixtures.ioi_names import IOI_NAMES

    model = random_model(5, n_layers=3, n_heads=2, d_vocab=12, normalization="LN", attn_only=False)
    one_token = {name: [1 + i % 11] for i, name in enumerate(IOI_NAMES[:40])}
    vocab = {**one_token, " Aaron": [7], " Adam": [3]}
    wrapped = NamesHandle(model, "random-names", vocab)
    result = measure_metric(wrapped, "copying.name_copy_score", inputs=None, sign="negative", k=2)
    assert set(result.value) == {"1.0", "1.1", "2.0", "2.1", "course_average"}
    assert result.details["n_names"] == 40
    assert result.details["dropped_names"] == {name: 2 for name in IOI_NAMES[40:]}
    tokens = [ids[0] for ids in one_token.values()]
    heads = {name: value for name, value in result.value.items() if name != "course_average"}
    for name, value in heads.items():
        layer, head = map(int, name.split("."))
        assert value == pytest.approx(ref_copy_score(model, tokens, layer, head, -1.0, 2, False, "relu"), abs=1e-9)
    total = sum(heads.values())
    assert result.details["course_average"] == pytest.approx(total / 6)  # 3 layers x 2 heads, layer 0 as zeros
    assert result.value["course_average"] == result.details["course_average"]
    assert result.details["mean_over_heads"] == pytest.approx(total / 4)
    spaced = measure_metric(wrapped, "copying.name_copy_score", inputs=None, leading_space=True, heads=["2.1"])
    assert spaced.details["n_names"] == 2 and "course_average" not in spaced.details
    assert set(spaced.value) == {"2.1"}


def test_copy_score_errors() -> None:
    model = random_model(1, n_layers=2, d_vocab=12, normalization="LN", attn_only=False)
    wrapped = NamesHandle(model, "random-errors", {})
    with pytest.raises(ValueError, match="none of the 109 names is a single token"):
        measure_metric(wrapped, "copying.name_copy_score", inputs=None)
    named = NamesHandle(model, "random-errors-2", {"Mary": [3]})
    with pytest.raises(ValueError, match="layers >= 1.*'0.1'"):
        measure_metric(named, "copying.name_copy_score", inputs=None, heads=["0.1", "1.0"])
    one_layer = NamesHandle(random_model(1, n_layers=1, d_vocab=12), "one-layer", {"Mary": [3]})
    with pytest.raises(ValueError, match="no head in layers >= 1"):
        measure_metric(one_layer, "copying.name_copy_score", inputs=None)
    info = get_metric("copying.name_copy_score")
    for bad in ({"k": 0}, {"sign": "both"}, {"names": "paper"}, {"topk": 5}):
        with pytest.raises(ValidationError):
            info.validate_params(bad)


def test_mlp_on_refuses_other_block_layouts() -> None:
    model = random_model(2, attn_only=False, normalization="LN")
    model.cfg.parallel_attn_mlp = True
    with pytest.raises(ValueError, match="cannot apply MLP 0 alone.*parallel_attn_mlp"):
        ad_hoc_handle(model, "parallel").mlp_on(0, torch.zeros(1, 1, 6))
    attn_only = ad_hoc_handle(random_model(2), "attn-only")
    with pytest.raises(ValueError, match="attention-only"):
        attn_only.mlp_on(0, torch.zeros(1, 1, 6))
