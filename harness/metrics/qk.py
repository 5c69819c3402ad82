"""QK-circuit metrics: a head's positional attention pattern, and its attention scores split by input.

Positional pattern (ARENA 1.2, "QK circuit" of head 0.7). For head ``h`` of layer ``l`` and the
first ``n`` positions::

    S = W_pos[:n] W_Q^{l.h} (W_K^{l.h})^T W_pos[:n]^T / sqrt(d_head)        [n, n]
    A = softmax_k(S masked causally)                                          rows sum to 1

The course ignores the biases ``b_Q``, ``b_K`` and the token embeddings; so does the default here
(``include_biases: true`` uses ``(W_pos W_Q + b_Q)(W_pos W_K + b_K)^T``). The course masks with
``-1e6`` (``mask_scores``); this module masks with ``-inf``, as TransformerLens's own attention
does: the two differ only for scores beyond about 1e6. The course's printed number (0.9978 for
head 0.7) is ``A.diagonal(-1).mean()`` over the whole context (``n = n_ctx = 2048``), which is
the default here.

Attention-score decomposition (ARENA 1.2, "K-composition", ``decompose_attn_scores``). For a head
in layer ``L`` of an attention-only model without normalization, the input of its queries and keys
is the sum of components ``y_c``: the token embedding, the positional embedding, and the output of
every head of layers ``< L`` (attention biases ``b_O`` are left out, as in the course). Then::

    score[cq, ck, i, j] = (y_cq[i] W_Q)(y_ck[j] W_K)^T / sqrt(d_head)

(ARENA 3 divides by sqrt(d_head), ARENA 2 does not: ``scale``), and the course plots, per pair,
the standard deviation over all (query, key) position pairs.

Query/key norms by component (ARENA 1.2, ``decompose_q`` / ``decompose_k``): with the same
components, ``q_c = y_c W_Q`` (``k_c = y_c W_K``) and the course plots ``||q_c[i]||^2`` per component
and position; ``qk.component_norms`` averages it over positions and sequences. The components plus
the bias part ``(sum_{l<L} b_O[l]) W + b`` sum to the cached q (k); the metric checks it.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from harness.context import MetricContext
from harness.core.heads import Head, HeadName
from harness.core.measurement import Measurement
from harness.metrics.attention import stripe_scores
from harness.core.model_handle import Activations, ModelHandle
from harness.registry import metric
from harness.core.value_shape import COMPONENTS, COMPONENT_PAIRS, NameSet, OneOf, Table, names

Variant = Literal["course", "clean"]
ABSOLUTE_POSITIONS = ("standard", "shortformer")


def positional_scores(W_pos: Tensor, W_Q: Tensor, W_K: Tensor, b_Q: Tensor | None = None, b_K: Tensor | None = None) -> Tensor:
    """Scaled positional attention scores ``(W_pos W_Q + b_Q)(W_pos W_K + b_K)^T / sqrt(d_head)``.

    W_pos: [n, d_model]; W_Q, W_K: [d_model, d_head]; b_Q, b_K: [d_head] or None. Returns [n, n]
    (query, key), unmasked.
    """
    q = W_pos @ W_Q  # [n, d_head]
    k = W_pos @ W_K  # [n, d_head]
    if b_Q is not None:
        q = q + b_Q
    if b_K is not None:
        k = k + b_K
    return (q @ k.T) / math.sqrt(W_Q.shape[-1])


def causal_softmax(scores: Tensor) -> Tensor:
    """Softmax over keys with key > query masked to ``-inf``. scores: [..., n, n] -> [..., n, n]."""
    n = scores.shape[-1]
    future = torch.triu(torch.ones(n, n, dtype=torch.bool, device=scores.device), diagonal=1)
    return scores.masked_fill(future, float("-inf")).softmax(dim=-1)


def positional_pattern(model: ModelHandle, head: Head, n_positions: int | None, include_biases: bool) -> Tensor:
    """Head ``head``'s positional attention pattern on the first ``n_positions`` positions: [n, n]."""
    if model.positional_embedding_type not in ABSOLUTE_POSITIONS:
        raise ValueError(
            f"model {model.identity.name!r} has {model.positional_embedding_type!r} positions: the positional "
            f"QK pattern needs a learned positional embedding W_pos ({' or '.join(ABSOLUTE_POSITIONS)})"
        )
    n = model.shape.n_ctx if n_positions is None else n_positions
    if n > model.shape.n_ctx:
        raise ValueError(f"n_positions={n} exceeds the model's context n_ctx={model.shape.n_ctx}")
    layer, index = head
    b_Q = model.b_Q[layer, index] if include_biases else None
    b_K = model.b_K[layer, index] if include_biases else None
    scores = positional_scores(model.W_pos[:n], model.W_Q[layer, index], model.W_K[layer, index], b_Q, b_K)
    return causal_softmax(scores)


@metric("qk.positional_pattern", value=Table(names()))
def qk_positional_pattern(
    ctx: MetricContext,
    *,
    head: HeadName,
    n_positions: Annotated[int, Field(ge=2)] | None = None,
    include_biases: bool = False,
    variant: Variant = "course",
) -> Measurement:
    """Head's positional QK pattern softmax(causal(W_pos W_Q W_K^T W_pos^T / sqrt(d_head))), summarised.

    Value: ``{"prev_diag_mean", "diag_mean", "first_col_mean"}``, the mean of the pattern on the
    sub-diagonal (the course's number, 0.9978 for the toy model's head 0.7), the diagonal and
    column 0. ``n_positions`` defaults to the whole context, as the course; ``variant: clean``
    drops the forced entry of query 0 from ``diag_mean`` and ``first_col_mean``. Weights only.
    """
    pattern = positional_pattern(ctx.model, Head.parse(head), n_positions, include_biases)
    batch = pattern[None, None]  # [1, 1, n, n], as stripe_scores wants
    value = {
        "prev_diag_mean": float(stripe_scores(batch, "previous", variant)[0, 0]),
        "diag_mean": float(stripe_scores(batch, "current", variant)[0, 0]),
        "first_col_mean": float(stripe_scores(batch, "first", variant)[0, 0]),
    }
    details = {"head": head, "n_positions": pattern.shape[-1], "include_biases": include_biases, "variant": variant}
    return Measurement(value, None, details)


# ------------------------------------------------------------------------------------------------
# Attention-score decomposition by input component
# ------------------------------------------------------------------------------------------------


def qk_components(model: ModelHandle, forward_activations: Activations, layer: int) -> tuple[list[str], Tensor]:
    """The components whose sum is the Q/K input of ``layer``: names and tensor [comp, batch, pos, d_model].

    Components: ``embed``, ``pos`` (the only two for layer 0), then every head ``"l.h"`` of layers
    ``< layer``: its output ``z[:, :, h] W_O[l, h]``, computed from the cached ``z`` (no
    ``use_attn_result`` needed); ``b_O`` is left out, as in the course.
    """
    if not model.attn_only or model.normalization_type is not None:
        raise ValueError(
            "the attention-score decomposition is linear only in attention-only models without "
            f"normalization; {model.identity.name!r} has attn_only={model.attn_only}, "
            f"normalization_type={model.normalization_type!r}"
        )
    if model.positional_embedding_type not in ABSOLUTE_POSITIONS:
        raise ValueError(f"model {model.identity.name!r} has {model.positional_embedding_type!r} positions: no W_pos component")
    names = ["embed", "pos"]
    embed = forward_activations["embed"]  # [batch, pos, d_model]
    parts = [embed, forward_activations["pos_embed"].expand_as(embed)]
    for earlier in range(layer):
        z = forward_activations["z", earlier]  # [batch, pos, head, d_head]
        results = torch.einsum("bphe,hed->hbpd", z, model.W_O[earlier])  # [head, batch, pos, d_model]
        names += [f"{earlier}.{h}" for h in range(model.shape.n_heads)]
        parts += list(results)
    return names, torch.stack(parts)


def decompose_scores(components: Tensor, W_Q: Tensor, W_K: Tensor, scale: bool) -> Tensor:
    """Scores split by (query component, key component).

    components: [comp, batch, pos, d_model]; W_Q, W_K: [d_model, d_head]. Returns
    [q_comp, k_comp, batch, q_pos, k_pos] with entry ``(y_cq W_Q)(y_ck W_K)^T`` (/ sqrt(d_head) if
    ``scale``), unmasked; the sum over both component axes is the head's attention score without biases.
    """
    q = components @ W_Q  # [comp, batch, pos, d_head]
    k = components @ W_K
    scores = torch.einsum("cbqe,dbke->cdbqk", q, k)
    return scores / math.sqrt(W_Q.shape[-1]) if scale else scores


def attention_decomposition_stds(ctx: MetricContext, head: HeadName, scale: bool) -> tuple[dict[str, float], dict[str, float] | None, list[str]]:
    """``(std per "QCOMP|KCOMP", its standard error or None, component names)`` of a head's scores (see below)."""
    layer, index = Head.parse(head)
    activations = ctx.forward().activations
    names, components = qk_components(ctx.model, activations, layer)
    components = components.double()
    scores = decompose_scores(components, ctx.model.W_Q[layer, index].double(), ctx.model.W_K[layer, index].double(), scale)
    stds = scores.flatten(-2).std(dim=-1)  # [q_comp, k_comp, batch]
    means = stds.mean(-1)
    n_batch = stds.shape[-1]
    errors = stds.std(-1) / math.sqrt(n_batch) if n_batch > 1 else None
    value: dict[str, float] = {}
    uncertainty: dict[str, float] | None = {} if errors is not None else None
    for i, q_name in enumerate(names):
        for j, k_name in enumerate(names):
            value[f"{q_name}|{k_name}"] = float(means[i, j])
            if uncertainty is not None:
                uncertainty[f"{q_name}|{k_name}"] = float(errors[i, j])
    return value, uncertainty, names


@metric("qk.attention_decomposition", needs_inputs=True, value=Table(COMPONENT_PAIRS))
def qk_attention_decomposition(ctx: MetricContext, *, head: HeadName, scale: bool = True) -> Measurement:
    """Std of a head's attention scores per (query component, key component), as ARENA 1.2 plots it.

    Value: table ``"QCOMP|KCOMP"`` (e.g. ``"embed|0.7"``) -> std over all (query, key) position pairs
    of ``(y_q W_Q)(y_k W_K)^T / sqrt(d_head)`` (``scale: false`` for ARENA 2's unscaled numbers),
    components ``embed``, ``pos`` and every head of earlier layers. Per sequence (unbiased std, as
    ``torch.std``), then the mean over the batch; the uncertainty is its standard error.
    """
    value, uncertainty, names = attention_decomposition_stds(ctx, head, scale)
    top = sorted(value, key=value.get, reverse=True)[:5]
    details = {"head": head, "components": names, "scale": scale, "top_pairs": {k: value[k] for k in top}}
    return Measurement(value, uncertainty, details)


@metric("qk.attention_decomposition_top", needs_inputs=True, value=NameSet(COMPONENT_PAIRS))
def qk_attention_decomposition_top(ctx: MetricContext, *, head: HeadName, k: Annotated[int, Field(ge=1)] = 1, scale: bool = True) -> Measurement:
    """The ``k`` (query component, key component) pairs whose score terms vary most (as qk.attention_decomposition).

    Value: the pair names (``"embed|0.7"``), a set: "X varies more than every other pair" is
    ``equals: [X]`` with ``k: 1``. ``details.stds`` holds the top ``k + 3`` stds with their standard
    errors, so the margin to the first pair left out is in the record. A tie at place k is an error.
    """
    value, uncertainty, _ = attention_decomposition_stds(ctx, head, scale)
    ranked = sorted(value, key=value.get, reverse=True)
    if len(ranked) > k and value[ranked[k - 1]] == value[ranked[k]]:
        raise ValueError(f"tie at place {k}: {ranked[k - 1]} and {ranked[k]} both have std {value[ranked[k]]}")
    shown = {name: [value[name], None if uncertainty is None else uncertainty[name]] for name in ranked[: k + 3]}
    return Measurement(ranked[:k], None, {"head": head, "k": k, "scale": scale, "stds": shown})


# ------------------------------------------------------------------------------------------------
# Query / key norms by input component
# ------------------------------------------------------------------------------------------------

Side = Literal["query", "key"]
QK_SUM_CHECK_RTOL = 1e-2
"""The course's ``assert_close(decomposed_q.sum(0), cache["q", 1][:, h], rtol=0.01)``; here the
error bound is ``rtol * max(1, max |cached|)`` on the largest entry error (biases included)."""


def qk_bias_part(model: ModelHandle, layer: int, index: int, side: Side) -> Tensor:
    """What the biases add to the head's query/key: ``(sum_{l < layer} b_O[l]) W + b`` [d_head], float64.

    ``W``, ``b`` are ``W_Q``, ``b_Q`` (``side: query``) or ``W_K``, ``b_K``. The course leaves this
    part out of its decomposition; it is needed for the components to sum to the cached q/k exactly.
    """
    W = (model.W_Q if side == "query" else model.W_K)[layer, index].double()  # [d_model, d_head]
    b = (model.b_Q if side == "query" else model.b_K)[layer, index].double()  # [d_head]
    b_O = model.b_O[:layer].double().sum(0)  # [d_model]; zeros for layer 0
    return b_O @ W + b


def decompose_qk(components: Tensor, W: Tensor) -> Tensor:
    """Per-component query (or key) vectors ``y_c W``: components [comp, batch, pos, d_model], W [d_model, d_head].

    Returns [comp, batch, pos, d_head] (the course's ``decompose_q`` / ``decompose_k``).
    """
    return components @ W


def qk_sum_error(parts: Tensor, bias: Tensor, cached: Tensor) -> float:
    """``max |sum_c parts[c] + bias - cached|``: parts [comp, batch, pos, d_head], bias [d_head], cached [batch, pos, d_head]."""
    return float((parts.sum(0) + bias - cached.double()).abs().max())


@metric("qk.component_norms", needs_inputs=True, value=OneOf(Table(COMPONENTS), NameSet(COMPONENTS)))
def qk_component_norms(
    ctx: MetricContext, *, head: HeadName, side: Side = "query", top_k: Annotated[int, Field(ge=1)] | None = None,
) -> Measurement:
    """Squared norm of a head's query (or key) contributed by each input component, as ARENA 1.2 plots it.

    The Q/K input of a head in layer ``L`` of an attention-only model without normalization is
    ``sum_c y_c`` (plus ``b_O`` of earlier layers): ``embed``, ``pos`` (the positional embedding,
    the course's ``pos_embed``) and every head ``"l.h"`` of layers ``< L`` (its output
    ``z W_O``). Per component, ``n_c[b, p] = ||y_c[b, p] W||^2`` (summed over d_head; ``W = W_Q``
    for ``side: query``, ``W_K`` for ``side: key``): the course's ``decompose_q(...).pow(2).sum(-1)``.

    Value: table component -> ``n_c`` averaged over all positions of each sequence, then over the
    batch (uncertainty: standard error over sequences; none for one sequence). With ``top_k``: the
    names of the ``top_k`` largest components instead, largest first (a set for ``equals``). Fails closed unless
    ``sum_c y_c W + (sum b_O) W + b`` equals the cached q/k (details: ``sum_check``). Models with
    MLPs or a normalization before attention are refused: there the input is not a sum of these
    components (LayerNorm divides by a per-position scale and mixes them; MLPs add inputs).
    """
    layer, index = Head.parse(head)
    activations = ctx.forward().activations
    names, components = qk_components(ctx.model, activations, layer)  # [comp, batch, pos, d_model]
    W = (ctx.model.W_Q if side == "query" else ctx.model.W_K)[layer, index].double()
    parts = decompose_qk(components.double(), W)  # [comp, batch, pos, d_head]
    cached = activations["q" if side == "query" else "k", layer][:, :, index]  # [batch, pos, d_head]
    sum_check = qk_sum_error(parts, qk_bias_part(ctx.model, layer, index, side), cached)
    tolerance = QK_SUM_CHECK_RTOL * max(1.0, float(cached.abs().max()))
    if not sum_check <= tolerance:
        raise ValueError(f"the {side} components do not sum to the cached {side}: max error {sum_check:.3g} > {tolerance:.3g}")
    norms = parts.pow(2).sum(-1).mean(-1)  # [comp, batch]: mean over positions of ||y_c W||^2
    means = norms.mean(-1)
    n_batch = norms.shape[-1]
    errors = norms.std(-1) / math.sqrt(n_batch) if n_batch > 1 else None
    value = {name: float(means[i]) for i, name in enumerate(names)}
    uncertainty = {name: float(errors[i]) for i, name in enumerate(names)} if errors is not None else None
    ranked = sorted(value, key=value.get, reverse=True)
    details = {"head": head, "side": side, "components": names, "sum_check": sum_check, "ranked": ranked}
    if top_k is not None:
        return Measurement(ranked[:top_k], None, {**details, "top_k": top_k, "norms": value})
    return Measurement(value, uncertainty, details)


# ------------------------------------------------------------------------------------------------
# How much of a head's attention the positional term alone decides
# ------------------------------------------------------------------------------------------------


def row_centred_r2(scores: Tensor, part: Tensor, causal: Tensor) -> Tensor:
    """Per sequence, ``1 - SS(scores - part) / SS(scores)`` over causal pairs, sums of squares taken
    about each query row's mean (a softmax ignores a per-row constant).

    scores: [batch, q_pos, k_pos]; part: broadcastable to it; causal: [q_pos, k_pos] bool. Returns [batch].
    """
    def centred_ss(x: Tensor) -> Tensor:
        x = torch.where(causal, x, torch.zeros_like(x))
        counts = causal.sum(-1).clamp(min=1)  # [q_pos]
        row_mean = x.sum(-1) / counts  # [batch, q_pos]
        deviations = torch.where(causal, x - row_mean[..., None], torch.zeros_like(x))
        return deviations.pow(2).sum((-1, -2))  # [batch]

    return 1 - centred_ss(scores - part) / centred_ss(scores)


def pattern_tv(scores: Tensor, part: Tensor, causal: Tensor) -> Tensor:
    """Mean over query rows of the total variation ``0.5 sum_k |softmax(scores) - softmax(part)|``
    between the head's causal pattern and the pattern of ``part`` alone: [batch]."""
    masked = lambda x: torch.where(causal, x, torch.full_like(x, -torch.inf))  # noqa: E731
    actual = masked(scores).softmax(-1)
    alone = masked(part.expand_as(scores)).softmax(-1)
    return 0.5 * (actual - alone).abs().sum(-1).mean(-1)


@metric("qk.positional_share", needs_inputs=True, value=Table(names("r2", "pattern_tv")))
def qk_positional_share(ctx: MetricContext, *, head: HeadName) -> Measurement:
    """How much of a head's attention its positional QK term alone decides (ARENA 1.2: "for 0.7,
    positional embeddings affect the scores far more than tokens, so we can ignore the tokens").

    Split the head's pre-softmax scores ``s[b, q, k]`` (cached ``attn_scores``, biases and every
    input included) into the pos|pos term ``s_pos = (W_pos[q] W_Q)(W_pos[k] W_K)^T / attn_scale``
    and the rest. Over the causal pairs ``k <= q``, with sums of squares about each query row's
    mean (a softmax ignores a per-row constant):

    - ``r2``: ``1 - SS(s - s_pos) / SS(s)``, the share of the scores' within-row variation that
      the positional term alone explains (1: tokens change nothing; can be negative);
    - ``pattern_tv``: the mean over query rows of the total variation distance between the
      head's attention pattern and ``softmax(s_pos)`` (0: ignoring the tokens changes nothing).

    Value: table ``{"r2", "pattern_tv"}``, each a per-sequence figure averaged over the batch,
    uncertainty their standard errors. For absolute positional embeddings only (``W_pos``).
    """
    layer, index = Head.parse(head)
    if ctx.model.positional_embedding_type not in ABSOLUTE_POSITIONS:
        raise ValueError(f"model {ctx.model.identity.name!r} has {ctx.model.positional_embedding_type!r} positions: no W_pos term")
    scores = ctx.forward().activations["attn_scores", layer][:, index].double()  # [batch, q_pos, k_pos]
    n_pos = scores.shape[-1]
    causal = torch.ones(n_pos, n_pos, dtype=torch.bool).tril()
    W_Q, W_K = ctx.model.W_Q[layer, index].double(), ctx.model.W_K[layer, index].double()
    rescale = math.sqrt(W_Q.shape[-1]) / ctx.model.attn_scale  # positional_scores divides by sqrt(d_head)
    part = positional_scores(ctx.model.W_pos[:n_pos].double(), W_Q, W_K) * rescale  # [q_pos, k_pos]
    scores = torch.where(causal, scores, torch.zeros_like(scores))  # drop the mask's -inf
    figures = {"r2": row_centred_r2(scores, part, causal), "pattern_tv": pattern_tv(scores, part, causal)}
    value = {name: float(per_sequence.mean()) for name, per_sequence in figures.items()}
    n_batch = scores.shape[0]
    uncertainty = (
        {name: float(per_sequence.std() / math.sqrt(n_batch)) for name, per_sequence in figures.items()}
        if n_batch > 1 else None
    )
    return Measurement(value, uncertainty, {"head": head, "positions": n_pos, "attn_scale": ctx.model.attn_scale})
