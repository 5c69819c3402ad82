"""Head ablation (ARENA 1.2 ``get_ablation_scores``): loss change when one head's output is replaced.

A head's output enters the model only through ``z[b, p, h, :]`` (then ``@ W_O``), so ablating
head ``L.H`` replaces ``z[:, :, H]`` at hook ``z`` of layer ``L`` with

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

Value: table ``"L.H" -> mean over the batch`` of the per-sequence loss change, uncertainty its
standard error. Ablations of several heads run as one forward pass on stacked copies of the batch
(copy ``j`` has head ``j`` ablated), in chunks bounded by :data:`MAX_LOGIT_BYTES`.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from harness.context import MetricContext
from harness.heads import Head, HeadName, head_names, sort_heads
from harness.measurement import Measurement
from harness.metrics.loss import correct_logprobs, prediction_slice, table
from harness.registry import metric

Method = Literal["zero", "mean", "mean_all"]
LossPositions = Literal["repeated_half", "all"]
MAX_LOGIT_BYTES = 256 * 2**20
"""Upper bound on the float32 logits of one stacked forward pass (copies x batch x pos x d_vocab)."""


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


def ablated_losses(ctx: MetricContext, heads: list[Head], method: Method, chosen: slice) -> dict[str, Tensor]:
    """Per-sequence loss [batch] with each head of ``heads`` (all in one layer) ablated."""
    tokens = ctx.require_inputs().tokens
    z_clean = ctx.forward().activations["z", heads[0].layer]  # [batch, pos, head, d_head]
    batch, pos = tokens.shape
    per_pass = max(1, MAX_LOGIT_BYTES // (4 * batch * pos * ctx.model.shape.d_vocab))
    losses: dict[str, Tensor] = {}
    for start in range(0, len(heads), per_pass):
        chunk = heads[start : start + per_pass]
        values = [replacement(z_clean, head.head, method) for head in chunk]

        def hook(z: Tensor, hook: Any, chunk: list[Head] = chunk, values: list[Tensor] = values) -> Tensor:
            for j, (head, value) in enumerate(zip(chunk, values)):  # copy j: rows j*batch .. (j+1)*batch
                z[j * batch : (j + 1) * batch, :, head.head] = value.to(z.dtype)
            return z

        stacked = tokens.repeat(len(chunk), 1)  # [copies*batch, pos]
        logits = ctx.model.run_with_hooks(stacked, [(ctx.model.hook_name("z", heads[0].layer), hook)])
        loss = sequence_loss(logits, stacked, chosen).view(len(chunk), batch)
        losses.update({str(head): loss[j] for j, head in enumerate(chunk)})
    return losses


@metric("ablation.head_loss_change", needs_inputs=True)
def head_loss_change(
    ctx: MetricContext, *, method: Method = "zero", positions: LossPositions = "repeated_half", heads: list[HeadName] | None = None,
) -> Measurement:
    """Loss increase per head when its ``z`` is zero- or mean-ablated (ablated loss - clean loss).

    ``heads`` limits the ablations to those heads (default: every head).
    """
    inputs = ctx.require_inputs()
    n_pred = inputs.tokens.shape[1] - 1
    chosen = prediction_slice("second_half_excl_first" if positions == "repeated_half" else "all", n_pred, inputs.meta)
    clean = sequence_loss(ctx.forward().logits, inputs.tokens, chosen)  # [batch]
    chosen_heads = [Head.parse(name) for name in sort_heads(sorted(set(heads)))] if heads else [
        Head.parse(name) for name in head_names(ctx.model.shape.n_layers, ctx.model.shape.n_heads)
    ]
    changes: dict[str, Tensor] = {}
    for layer in sorted({head.layer for head in chosen_heads}):
        in_layer = [head for head in chosen_heads if head.layer == layer]
        changes.update({name: loss - clean for name, loss in ablated_losses(ctx, in_layer, method, chosen).items()})
    values, errors = table(changes)
    clean_mean = float(clean.mean())
    details = {"method": method, "positions": positions, "clean_loss": clean_mean, "ablated_loss": {name: clean_mean + v for name, v in values.items()}}
    return Measurement(values, errors, details, unit="nats")
