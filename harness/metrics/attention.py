"""Attention-pattern metrics: where each head looks, and which heads cross a threshold.

For a head's pattern ``A[b, q, k]`` (batch ``b``, query ``q``, key ``k``; rows sum to 1), on
repeated tokens ``P + R + R`` (a prefix ``P`` of ``p`` tokens, ``p = 1`` for a BOS and 0 without
one; half length ``n``) for the last two:

- ``current``  : mean of ``A[b, q, q]``;
- ``previous`` : mean of ``A[b, q, q-1]``;
- ``first``    : mean of ``A[b, q, 0]``;
- ``induction``: mean of ``A[b, q, q-n+1]`` (the token after the earlier occurrence);
- ``duplicate``: mean of ``A[b, q, q-n]`` over the ``n`` second-half queries ``q = p+n .. p+2n-1``
  (the same token's earlier occurrence; ARENA 1.4.1's duplicate-token score).

Variants. ``course`` averages exactly as ARENA 1.2 does, trivial entries included: the whole
diagonal for ``current`` (``A[0,0] = 1``), every row for ``first`` (row 0 is 1), and
``diagonal(1-n)`` for ``induction`` (``n+2`` entries with a BOS, two of which, queries ``n`` and
``n+1``, are not induction positions). ``clean`` keeps only the informative entries: queries
``q >= 1`` for ``current`` and ``first``, and the ``n`` second-half queries for ``induction``.
``previous`` has no trivial entries; both variants agree. ``duplicate`` (which 1.2 does not
define) has no trivial entries either: both variants take the ``n`` second-half queries.

``ioi`` is ARENA 1.4.1's ``get_attn_scores`` (run there on ``R + R`` without BOS), each stripe
``n`` entries long, shifted by the prefix ``p`` when there is one:
``duplicate`` queries ``p+n .. p+2n-1`` -> keys ``p .. p+n-1``; ``previous`` queries
``p+1 .. p+n`` -> keys ``p .. p+n-1`` (the first half and the first second-half token only, not
the whole diagonal); ``induction`` queries ``p+n .. p+2n-1`` -> keys ``p+1 .. p+n`` (the same
entries as ``clean``). 1.4.1 defines no ``current`` or ``first`` score: those are refused.

The score of a head is the mean over the batch of per-sequence means; the uncertainty is the
standard error of those per-sequence means (``None`` for one sequence).
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from harness.context import MetricContext
from harness.core.heads import head_names
from harness.core.measurement import Measurement
from harness.registry import metric
from harness.core.value_shape import HEADS, NameSet, Table
from harness.core.details import AttentionExamples, HeadScores

PatternKind = Literal["current", "previous", "first", "induction", "duplicate"]
Variant = Literal["course", "clean", "ioi"]
REPEATED_KINDS = ("induction", "duplicate")
"""Stripes defined by the half length ``n`` of repeated tokens."""


def stripe_scores(pattern: Tensor, kind: PatternKind, variant: Variant, *, seq_len: int | None = None, prefix: int = 1) -> Tensor:
    """Per-sequence, per-head mean attention on a stripe.

    pattern: [batch, head, query, key]; returns [batch, head]. ``seq_len`` is the half length ``n``
    of repeated tokens and ``prefix`` the number ``p`` of tokens before them (see the module).
    """
    if variant == "ioi" or kind in REPEATED_KINDS or kind == "previous":
        return _offset_stripe(pattern, kind, variant, seq_len, prefix).mean(-1)
    if kind == "current":
        stripe = pattern.diagonal(offset=0, dim1=-2, dim2=-1)
        return (stripe[..., 1:] if variant == "clean" else stripe).mean(-1)
    column = pattern[..., :, 0]  # first
    return (column[..., 1:] if variant == "clean" else column).mean(-1)


def _offset_stripe(pattern: Tensor, kind: PatternKind, variant: Variant, seq_len: int | None, prefix: int) -> Tensor:
    """The entries ``A[b, h, q, q - offset]`` a stripe averages: [batch, head, entries].

    ``diagonal(-o)`` lists ``A[q, q-o]`` for ``q = o, o+1, ...``: entry ``i`` is query ``q = i + o``.
    """
    if kind == "previous":
        stripe = pattern.diagonal(offset=-1, dim1=-2, dim2=-1)
        if variant != "ioi":
            return stripe
        _require_repeated(kind, variant, seq_len)
        return stripe[..., prefix : prefix + seq_len]  # queries p+1 .. p+n
    if kind not in REPEATED_KINDS:
        raise ValueError(f"variant 'ioi' (ARENA 1.4.1) defines only duplicate, previous and induction scores, not {kind!r}")
    n = _require_repeated(kind, variant, seq_len)
    if kind == "duplicate":
        return pattern.diagonal(offset=-n, dim1=-2, dim2=-1)[..., prefix:]  # queries p+n .. p+2n-1
    stripe = pattern.diagonal(offset=1 - n, dim1=-2, dim2=-1)  # queries n-1 ..
    return stripe if variant == "course" else stripe[..., prefix + 1 :]  # queries p+n .. p+2n-1


def _require_repeated(kind: PatternKind, variant: Variant, seq_len: int | None) -> int:
    if seq_len is None:
        raise ValueError(f"the {kind} stripe (variant {variant!r}) needs repeated tokens (inputs: repeated_random)")
    return seq_len


def per_head_scores(ctx: MetricContext, kind: PatternKind, variant: Variant) -> tuple[dict[str, float], dict[str, float] | None]:
    """Mean stripe score per head ``"L.H"``, and its standard error over the batch."""
    inputs = ctx.require_inputs()
    activations = ctx.forward().activations
    seq_len = inputs.meta.get("seq_len")
    prefix = inputs.meta.get("prefix", 1)
    if seq_len is None and kind in REPEATED_KINDS:
        raise ValueError(f"the {kind} score (variant {variant!r}) needs inputs: repeated_random")
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


@metric("attention.scores", needs_inputs=True, value=Table(HEADS))
def attention_scores(ctx: MetricContext, *, pattern: PatternKind, variant: Variant = "course") -> Measurement:
    """Per-head mean attention on a stripe (current, previous, first token, induction or duplicate token).

    Use ``select: "L.H"`` to compare one head's score.
    """
    values, errors = per_head_scores(ctx, pattern, variant)
    return Measurement(values, errors, {"pattern": pattern, "variant": variant})


@metric("attention.detect", needs_inputs=True, value=NameSet(HEADS), details=(HeadScores, AttentionExamples))
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
