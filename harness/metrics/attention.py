"""Attention-pattern metrics: where each head looks, and which heads cross a threshold.

For a head's pattern ``A[b, q, k]`` (batch ``b``, query ``q``, key ``k``; rows sum to 1):

- ``current``  : mean of ``A[b, q, q]``;
- ``previous`` : mean of ``A[b, q, q-1]``;
- ``first``    : mean of ``A[b, q, 0]``;
- ``induction``: on ``[BOS] + R + R`` (half length ``n``), mean of ``A[b, q, q-n+1]``.

Variants. ``course`` averages exactly as ARENA 1.2 does, trivial entries included: the whole
diagonal for ``current`` (``A[0,0] = 1``), every row for ``first`` (row 0 is 1), and
``diagonal(1-n)`` for ``induction`` (``n+2`` entries, two of which, queries ``n`` and ``n+1``,
are not induction positions). ``clean`` keeps only the informative entries: queries ``q >= 1``
for ``current`` and ``first``, and the ``n`` second-half queries for ``induction``.
``previous`` has no trivial entries; both variants agree.

The score of a head is the mean over the batch of per-sequence means; the uncertainty is the
standard error of those per-sequence means (``None`` for one sequence).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from harness.context import MetricContext
from harness.heads import head_names
from harness.measurement import Measurement
from harness.registry import metric

PatternKind = Literal["current", "previous", "first", "induction"]
Variant = Literal["course", "clean"]


def stripe_scores(pattern: Tensor, kind: PatternKind, variant: Variant, *, seq_len: int | None = None, prefix: int = 1) -> Tensor:
    """Per-sequence, per-head mean attention on a stripe.

    pattern: [batch, head, query, key]; returns [batch, head].
    """
    if kind == "current":
        stripe = pattern.diagonal(offset=0, dim1=-2, dim2=-1)
        return (stripe[..., 1:] if variant == "clean" else stripe).mean(-1)
    if kind == "previous":
        return pattern.diagonal(offset=-1, dim1=-2, dim2=-1).mean(-1)
    if kind == "first":
        column = pattern[..., :, 0]
        return (column[..., 1:] if variant == "clean" else column).mean(-1)
    if seq_len is None:
        raise ValueError("the induction stripe needs repeated tokens (inputs: repeated_random)")
    stripe = pattern.diagonal(offset=1 - seq_len, dim1=-2, dim2=-1)
    if variant == "clean":
        # diagonal(1-n) starts at query n-1; the second-half queries start at prefix + n.
        stripe = stripe[..., prefix + 1 :]
    return stripe.mean(-1)


def per_head_scores(ctx: MetricContext, kind: PatternKind, variant: Variant) -> tuple[dict[str, float], dict[str, float] | None]:
    """Mean stripe score per head ``"L.H"``, and its standard error over the batch."""
    inputs = ctx.require_inputs()
    activations = ctx.forward().activations
    seq_len = inputs.meta.get("seq_len")
    prefix = inputs.meta.get("prefix", 1)
    if kind == "induction" and seq_len is None:
        raise ValueError("the induction score needs inputs: repeated_random")
    per_layer = [
        stripe_scores(activations["pattern", layer].float(), kind, variant, seq_len=seq_len, prefix=prefix)
        for layer in range(ctx.model.shape.n_layers)
    ]
    scores = torch.stack(per_layer, dim=1).flatten(1)  # [batch, layer*head]
    names = head_names(ctx.model.shape.n_layers, ctx.model.shape.n_heads)
    means = scores.mean(0)
    values = {name: float(means[i]) for i, name in enumerate(names)}
    if scores.shape[0] < 2:
        return values, None
    errors = scores.std(0, unbiased=True) / scores.shape[0] ** 0.5
    return values, {name: float(errors[i]) for i, name in enumerate(names)}


@metric("attention.scores", needs_inputs=True)
def attention_scores(ctx: MetricContext, *, pattern: PatternKind, variant: Variant = "course") -> Measurement:
    """Per-head mean attention on a stripe (current, previous, first token, or induction).

    Use ``select: "L.H"`` to compare one head's score.
    """
    values, errors = per_head_scores(ctx, pattern, variant)
    return Measurement(values, errors, {"pattern": pattern, "variant": variant})


@metric("attention.detect", needs_inputs=True)
def attention_detect(
    ctx: MetricContext, *, pattern: PatternKind, threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.4, variant: Variant = "course",
) -> Measurement:
    """The heads whose mean attention on a stripe is above ``threshold`` (strictly), as ARENA's detectors.

    Details carry every head's score and the heads within two standard errors of the threshold.
    """
    values, errors = per_head_scores(ctx, pattern, variant)
    detected = [name for name, value in values.items() if value > threshold]
    borderline = [
        name for name, value in values.items()
        if errors is not None and abs(value - threshold) <= 2 * errors[name]
    ]
    details = {
        "pattern": pattern, "variant": variant, "threshold": threshold, "scores": values, "borderline": borderline,
        "example_patterns": example_patterns(ctx, detected),
    }
    return Measurement(detected, None, details)


EXAMPLE_POSITIONS = 48


def example_patterns(ctx: MetricContext, heads: list[str]) -> dict[str, list[list[float]]]:
    """The first sequence's pattern [query, key] of each head (first ``EXAMPLE_POSITIONS`` positions), for reports."""
    activations = ctx.forward().activations
    patterns: dict[str, list[list[float]]] = {}
    for name in heads:
        layer, head = (int(part) for part in name.split("."))
        pattern = activations["pattern", layer][0, head, :EXAMPLE_POSITIONS, :EXAMPLE_POSITIONS].float()
        patterns[name] = [[round(float(x), 4) for x in row] for row in pattern]
    return patterns
