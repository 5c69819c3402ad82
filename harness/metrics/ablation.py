"""Head ablations (ARENA 1.2): the loss change when a head's output is replaced, the loss change
when a head's inputs are mean-ablated outside given offsets, and an induction head's attention
when an earlier head's values are zeroed.

Loss change (``ablation.head_loss_change``, course ``get_ablation_scores``). A head's output
enters the model only through ``z[b, p, h, :]`` (then ``@ W_O``), so ablating head ``L.H``
replaces ``z[:, :, H]`` at hook ``z`` of layer ``L`` with

- ``zero``     : 0 (course A3 ``head_zero_ablation_hook``);
- ``mean``     : its batch mean at each position, ``z[:, p, H].mean(over b)`` (course
  ``head_mean_ablation_hook``: ``z[:, :, h].mean(0)``; with one sequence this changes nothing);
- ``mean_all`` : its mean over the batch and all positions.

The score of a head is ``loss_ablated - loss_clean`` with per-sequence loss
``-mean_i lp[b, i]`` (``lp`` as in :mod:`harness.metrics.loss`) over

- ``repeated_half``: the last ``seq_len - 1`` predictions of repeated tokens (course A3: the
  second copy without its unpredictable first token);
- ``all``: every prediction (the older A2 definition, mean cross-entropy over the sequence;
  A2 also zeroed ``v`` rather than ``z``, so its numbers differ).

Offset-restricted ablation (``ablation.offset_restricted``, the course's bonus
``head_z_ablation_hook`` with ``get_ablation_scores_cache_assisted``): see
:func:`offset_restricted_z`. Targeted ablation (``ablation.induction_score_after_ablation``,
course ``ablation_induction_score``): see :func:`zeroed_value_patterns`.

Tables are ``"L.H" -> mean over the batch`` of a per-sequence figure, the uncertainty its
standard error (``None`` for one sequence). Ablations of several heads run as one forward pass on
stacked copies of the batch (copy ``j`` has head ``j`` ablated), in chunks bounded by
:data:`MAX_LOGIT_BYTES`. Every replacement is computed from the clean forward pass: with one
head ablated per copy, the activations of its own layer (and all before) equal the clean ones.
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Literal, TypeVar

import torch
from pydantic import Field
from torch import Tensor

from harness.context import MetricContext
from harness.core.heads import Head, HeadName, head_names, sort_heads
from harness.core.measurement import Measurement
from harness.metrics.attention import Variant, stripe_scores
from harness.metrics.loss import correct_logprobs, mean_and_error, prediction_slice, table
from harness.registry import metric
from harness.core.value_shape import HEADS, NameSet, Table
from harness.core.details import HeadScores

Method = Literal["zero", "mean", "mean_all"]
LossPositions = Literal["repeated_half", "all"]
Offset = Annotated[int, Field(ge=0)]
T = TypeVar("T")
MAX_LOGIT_BYTES = 256 * 2**20
"""Upper bound on the float32 logits of one stacked forward pass (copies x batch x pos x d_vocab)."""


# ----------------------------------------------------------------------------------------------
# shared: stacked forward passes, one ablated head per copy
# ----------------------------------------------------------------------------------------------


def copies_per_pass(tokens: Tensor, d_vocab: int) -> int:
    """How many stacked copies of tokens [batch, pos] one forward pass may hold (float32 logits
    within MAX_LOGIT_BYTES)."""
    batch, pos = tokens.shape
    return max(1, MAX_LOGIT_BYTES // (4 * batch * pos * d_vocab))


def chunks(items: list[T], size: int) -> list[list[T]]:
    """``items`` cut into consecutive runs of at most ``size``."""
    return [items[start : start + size] for start in range(0, len(items), size)]


def chosen_heads(ctx: MetricContext, heads: list[str] | None) -> list[Head]:
    """``heads`` parsed, sorted and deduplicated; every head of the model if ``None``."""
    names = sort_heads(sorted(set(heads))) if heads else head_names(ctx.model.shape.n_layers, ctx.model.shape.n_heads)
    return [Head.parse(name) for name in names]


def by_layer(heads: list[Head]) -> list[list[Head]]:
    """``heads`` grouped by layer, layers in order."""
    return [[head for head in heads if head.layer == layer] for layer in sorted({head.layer for head in heads})]


def head_slice_hook(chunk: list[Head], batch: int, values: Callable[[int, Head], Tensor | None], n_heads: int) -> Callable[[Tensor, Any], Tensor]:
    """A hook on a [copies*batch, pos, head, d] activation setting copy ``j``'s head ``chunk[j]``.

    ``values(j, head)`` is the new ``act[j*batch:(j+1)*batch, :, head.head]`` (broadcastable to
    [batch, pos, d]); ``None`` leaves it. Raises on activations with grouped key/value heads,
    where index ``head.head`` would be a group, not the head.
    """

    def hook(act: Tensor, hook: Any) -> Tensor:
        if act.shape[2] != n_heads:
            raise ValueError(f"{hook.name} has {act.shape[2]} heads, not {n_heads} (grouped key/value heads): cannot ablate one head there")
        for j, head in enumerate(chunk):
            value = values(j, head)
            if value is not None:
                act[j * batch : (j + 1) * batch, :, head.head] = value.to(act.dtype)
        return act

    return hook


# ----------------------------------------------------------------------------------------------
# loss change when one head's z is replaced
# ----------------------------------------------------------------------------------------------


def sequence_loss(logits: Tensor, tokens: Tensor, chosen: slice) -> Tensor:
    """Per-sequence mean cross-entropy over predictions ``chosen``: [batch]."""
    return -correct_logprobs(logits, tokens)[:, chosen].mean(1)


def replacement(z: Tensor, head: int, method: Method) -> Tensor:
    """What ``z[:, :, head]`` [batch, pos, d_head] becomes (broadcastable to it)."""
    z_head = z[:, :, head]  # [batch, pos, d_head]
    if method == "zero":
        return torch.zeros_like(z_head)
    if method == "mean":
        return z_head.mean(0, keepdim=True)  # [1, pos, d_head]
    return z_head.mean((0, 1), keepdim=True)  # [1, 1, d_head]


def losses_with_z(ctx: MetricContext, heads: list[Head], new_z: Callable[[Head], Tensor], chosen: slice) -> dict[str, Tensor]:
    """Per-sequence loss [batch] with each head's ``z[:, :, H]`` (all in one layer) set to ``new_z(head)``."""
    tokens = ctx.require_inputs().tokens
    batch = tokens.shape[0]
    losses: dict[str, Tensor] = {}
    for chunk in chunks(heads, copies_per_pass(ctx.require_inputs().tokens, ctx.model.shape.d_vocab)):
        values = [new_z(head) for head in chunk]  # each broadcastable to [batch, pos, d_head]
        hook = head_slice_hook(chunk, batch, lambda j, _head, values=values: values[j], ctx.model.shape.n_heads)
        stacked = tokens.repeat(len(chunk), 1)  # [copies*batch, pos]
        logits = ctx.model.run_with_hooks(stacked, [(ctx.model.hook_name("z", heads[0].layer), hook)])
        loss = sequence_loss(logits, stacked, chosen).view(len(chunk), batch)
        losses.update({str(head): loss[j] for j, head in enumerate(chunk)})
    return losses


def ablated_losses(ctx: MetricContext, heads: list[Head], method: Method, chosen: slice) -> dict[str, Tensor]:
    """Per-sequence loss [batch] with each head of ``heads`` (all in one layer) ablated by ``method``."""
    z_clean = ctx.forward().activations["z", heads[0].layer]  # [batch, pos, head, d_head]
    return losses_with_z(ctx, heads, lambda head: replacement(z_clean, head.head, method), chosen)


def loss_changes(
    ctx: MetricContext, heads: list[Head], positions: LossPositions, ablate: Callable[[list[Head], slice], dict[str, Tensor]],
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-sequence ``loss_ablated - loss_clean`` [batch] per head, and the clean loss [batch].

    ``ablate(heads_of_one_layer, chosen)`` gives the ablated per-sequence losses.
    """
    inputs = ctx.require_inputs()
    n_pred = inputs.tokens.shape[1] - 1
    chosen = prediction_slice("second_half_excl_first" if positions == "repeated_half" else "all", n_pred, inputs.meta)
    clean = sequence_loss(ctx.forward().logits, inputs.tokens, chosen)  # [batch]
    changes: dict[str, Tensor] = {}
    for in_layer in by_layer(heads):
        changes.update({name: loss - clean for name, loss in ablate(in_layer, chosen).items()})
    return changes, clean


def loss_change_measurement(changes: dict[str, Tensor], clean: Tensor, details: dict[str, Any]) -> Measurement:
    """The table of mean loss changes with standard errors; details gain the clean and ablated losses."""
    values, errors = table(changes)
    clean_mean = float(clean.mean())
    details = {**details, "clean_loss": clean_mean, "ablated_loss": {name: clean_mean + v for name, v in values.items()}}
    return Measurement(values, errors, details, unit="nats")


@metric("ablation.head_loss_change", needs_inputs=True, value=Table(HEADS))
def head_loss_change(
    ctx: MetricContext, *, method: Method = "zero", positions: LossPositions = "repeated_half", heads: list[HeadName] | None = None,
) -> Measurement:
    """Loss increase per head when its ``z`` is zero- or mean-ablated (ablated loss - clean loss).

    ``heads`` limits the ablations to those heads (default: every head).
    """
    changes, clean = loss_changes(
        ctx, chosen_heads(ctx, heads), positions, lambda in_layer, chosen: ablated_losses(ctx, in_layer, method, chosen),
    )
    return loss_change_measurement(changes, clean, {"method": method, "positions": positions})


# ----------------------------------------------------------------------------------------------
# mean-ablating a head's inputs except those from given offsets
# ----------------------------------------------------------------------------------------------


def offset_mask(pos: int, offsets: list[int]) -> Tensor:
    """keep[q, k] = 1.0 if ``q - k`` is in ``offsets`` else 0.0: [pos, pos] (float32)."""
    distance = torch.arange(pos)[:, None] - torch.arange(pos)[None, :]  # [query, key]: q - k
    return torch.isin(distance, torch.tensor(sorted(set(offsets)))).float()


def offset_restricted_z(pattern: Tensor, v: Tensor, offsets: list[int]) -> Tensor:
    """One head's ``z`` with its values mean-ablated except at source offsets ``offsets``.

    pattern: [batch, query, key] (the clean pattern ``A``), v: [batch, key, d_head] (the clean
    values); returns [batch, query, d_head]::

        z'[b, q] = sum_k A[b, q, k] * (keep[q, k] * v[b, k] + (1 - keep[q, k]) * vbar[k]),
        vbar[k]  = mean_b v[b, k],          keep[q, k] = [q - k in offsets].

    The pattern is not ablated, only what it reads: the values at every other offset become their
    batch mean at that source position (with one sequence ``vbar = v`` and nothing changes). With
    every offset ``0..pos-1`` kept, ``z' = A v = z``.
    """
    keep = offset_mask(pattern.shape[-1], offsets).to(pattern.device)  # [query, key]
    kept = torch.einsum("bqk,bkd->bqd", pattern * keep, v)
    v_bar = v.mean(0)  # [key, d_head]
    return kept + torch.einsum("bqk,kd->bqd", pattern * (1.0 - keep), v_bar)


def offset_restricted_losses(ctx: MetricContext, heads: list[Head], offsets: list[int], chosen: slice) -> dict[str, Tensor]:
    """Per-sequence loss [batch] with each head's (all in one layer) inputs restricted to ``offsets``."""
    layer = heads[0].layer
    activations = ctx.forward().activations
    pattern, v = activations["pattern", layer].float(), activations["v", layer].float()  # [b, head, q, k], [b, k, head, d]
    if v.shape[2] != ctx.model.shape.n_heads:
        raise ValueError(f"layer {layer} has {v.shape[2]} value heads for {ctx.model.shape.n_heads} heads (grouped key/value heads): not supported")
    return losses_with_z(ctx, heads, lambda head: offset_restricted_z(pattern[:, head.head], v[:, :, head.head], offsets), chosen)


@metric("ablation.offset_restricted", needs_inputs=True, value=Table(HEADS))
def offset_restricted(
    ctx: MetricContext, *, offsets: Annotated[list[Offset], Field(min_length=1)], heads: list[HeadName] | None = None,
    positions: LossPositions = "repeated_half",
) -> Measurement:
    """Loss increase per head when all its inputs except those from ``offsets`` are mean-ablated.

    For head ``L.H`` with clean pattern ``A`` and values ``v``, ``z[:, :, H]`` at hook ``z`` of
    layer ``L`` becomes ``z'[b, q] = sum_k A[b,q,k] (keep[q,k] v[b,k] + (1-keep[q,k]) vbar[k])``
    with ``keep[q, k] = [q - k in offsets]`` and ``vbar[k] = mean_b v[b, k]`` (the course's
    bonus ``head_z_ablation_hook``: it broadcasts ``v.mean(0)`` over queries and restores
    ``v[b, k]`` where ``q - k`` is an offset). Offset 0 is the token itself, 1 the previous token.
    The score is ``loss_ablated - loss_clean`` per sequence over ``positions`` (as
    ``ablation.head_loss_change``), averaged over the batch.

    Choices where the course is loose: the pattern and values are the clean run's (the course
    reads them from a cache; with one head ablated per run they are the same); the batch mean
    is over the claim's inputs (the course's 50 sequences); ``heads`` defaults to every head (the
    course scores layer 0: pass its heads).
    """
    offsets = sorted(set(offsets))
    changes, clean = loss_changes(
        ctx, chosen_heads(ctx, heads), positions, lambda in_layer, chosen: offset_restricted_losses(ctx, in_layer, offsets, chosen),
    )
    return loss_change_measurement(changes, clean, {"offsets": offsets, "positions": positions})


# ----------------------------------------------------------------------------------------------
# an induction head's attention with an earlier head's values zeroed
# ----------------------------------------------------------------------------------------------


def ablated_heads_for(ctx: MetricContext, target: Head, heads: list[str] | None) -> list[Head]:
    """The heads to ablate: ``heads``, or every head of every layer before ``target``'s.

    Raises if one is not in an earlier layer (its values cannot reach ``target``'s pattern).
    """
    if heads is None:
        if target.layer == 0:
            raise ValueError(f"head {target} is in layer 0: no earlier head can be ablated")
        return [Head(layer, h) for layer in range(target.layer) for h in range(ctx.model.shape.n_heads)]
    chosen = chosen_heads(ctx, heads)
    late = [str(head) for head in chosen if head.layer >= target.layer]
    if late:
        raise ValueError(f"heads {late} are not in a layer before {target}'s (layer {target.layer}): ablating them cannot change its pattern")
    return chosen


def zeroed_value_patterns(ctx: MetricContext, target: Head, heads: list[Head]) -> Tensor:
    """``target``'s pattern with each head of ``heads`` (one layer) zero-ablated at its values.

    Copy ``j`` runs with ``v[:, :, heads[j].head] = 0`` at hook ``v`` of that layer (course
    ``ablation_induction_score``), and the pattern of ``target`` is read at hook ``pattern`` of
    its layer. Returns [len(heads), batch, query, key] (float32).
    """
    tokens = ctx.require_inputs().tokens
    batch = tokens.shape[0]
    patterns: list[Tensor] = []
    for chunk in chunks(heads, copies_per_pass(ctx.require_inputs().tokens, ctx.model.shape.d_vocab)):
        zero = head_slice_hook(chunk, batch, lambda _j, _head: torch.zeros(()), ctx.model.shape.n_heads)
        captured: list[Tensor] = []

        def record(pattern: Tensor, hook: Any, captured: list[Tensor] = captured) -> None:
            captured.append(pattern[:, target.head].detach().float().clone())  # [copies*batch, query, key]

        hooks = [(ctx.model.hook_name("v", chunk[0].layer), zero), (ctx.model.hook_name("pattern", target.layer), record)]
        ctx.model.run_with_hooks(tokens.repeat(len(chunk), 1), hooks)
        patterns.append(captured[0].view(len(chunk), batch, *captured[0].shape[1:]).cpu())
    return torch.cat(patterns)


def induction_stripe(ctx: MetricContext, pattern: Tensor, variant: Variant) -> Tensor:
    """Per-sequence induction score of one head's pattern(s) [..., query, key] -> [...] (as ``attention.scores``)."""
    meta = ctx.require_inputs().meta
    if meta.get("seq_len") is None:
        raise ValueError("the induction score needs inputs: repeated_random")
    return stripe_scores(pattern, "induction", variant, seq_len=int(meta["seq_len"]), prefix=int(meta.get("prefix", 1)))


def ablated_induction_scores(
    ctx: MetricContext, head: str, heads: list[str] | None, variant: Variant,
) -> tuple[dict[str, Tensor], Tensor]:
    """Per-sequence induction score [batch] of ``head`` with each ablated head's values zeroed, and unablated."""
    target = Head.parse(head)
    clean = induction_stripe(ctx, ctx.forward().activations["pattern", target.layer][:, target.head].float().cpu(), variant)
    scores: dict[str, Tensor] = {}
    for in_layer in by_layer(ablated_heads_for(ctx, target, heads)):
        per_copy = induction_stripe(ctx, zeroed_value_patterns(ctx, target, in_layer), variant)  # [copies, batch]
        scores.update({str(ablated): per_copy[j] for j, ablated in enumerate(in_layer)})
    return scores, clean


@metric("ablation.induction_score_after_ablation", needs_inputs=True, value=Table(HEADS))
def induction_score_after_ablation(
    ctx: MetricContext, *, head: HeadName, heads: list[HeadName] | None = None, variant: Variant = "course",
) -> Measurement:
    """Induction score of ``head`` when each earlier head's value vectors are zeroed (one at a time).

    For each ablated head ``l.h`` (``heads``; default every head of every layer before
    ``head``'s), the model runs with ``v[:, :, h] = 0`` at hook ``v`` of layer ``l``, and the score
    is ``head``'s mean attention on the induction stripe ``A[b, q, q - (n-1)]`` on
    ``[BOS] + R + R`` (``|R| = n``), as ``attention.scores``: ``variant: course`` averages the
    whole ``diagonal(1-n)`` (``n+2`` entries, course ``attn[0, head].diag(-(seq_len-1)).mean()``),
    ``clean`` only the ``n`` second-half queries. The course reads batch element 0; give
    ``batch: 1`` inputs to match it, or a batch to average over.

    Value: table ``"l.h" -> score with l.h's values zeroed`` (mean over the batch, uncertainty the
    standard error). Details: ``clean`` (the unablated score, equal to ``attention.scores``'s for
    ``head``), its standard error, and ``change`` (ablated - clean) per head.
    """
    scores, clean = ablated_induction_scores(ctx, head, heads, variant)
    values, errors = table(scores)
    clean_mean, clean_error = mean_and_error(clean)
    details = {
        "head": head, "variant": variant, "ablation": "zero v", "clean": clean_mean, "clean_error": clean_error,
        "change": {name: value - clean_mean for name, value in values.items()},
    }
    return Measurement(values, errors, details)


@metric("ablation.induction_breaking_heads", needs_inputs=True, value=NameSet(HEADS), details=(HeadScores,))
def induction_breaking_heads(
    ctx: MetricContext, *, head: HeadName, threshold: Annotated[float, Field(ge=0.0, le=1.0)],
    heads: list[HeadName] | None = None, variant: Variant = "course",
) -> Measurement:
    """The earlier heads whose zeroed values leave ``head``'s induction score below ``threshold`` (strictly).

    The scores are ``ablation.induction_score_after_ablation``'s (same parameters); the set answers
    "ablating 0.7, and no other layer-0 head, drops 1.4's score near zero" in one claim
    (``expect: {equals: ["0.7"]}``). Details carry every score, the unablated one and the heads
    within two standard errors of the threshold.
    """
    scores, clean = ablated_induction_scores(ctx, head, heads, variant)
    values, errors = table(scores)
    breaking = [name for name, value in values.items() if value < threshold]
    borderline = [name for name, value in values.items() if errors is not None and abs(value - threshold) <= 2 * errors[name]]
    details = {
        "head": head, "variant": variant, "threshold": threshold, "scores": values,
        "clean": mean_and_error(clean)[0], "borderline": borderline,
    }
    return Measurement(breaking, None, details)
