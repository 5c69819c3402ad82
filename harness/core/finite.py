"""Fail closed on a model whose weights or activations are not finite.

A NaN compares false with every threshold, so a metric that keeps the heads whose score is above
a threshold returns the empty set on a NaN model, and that empty set would be judged. Every claim
on such a model must be an ``error`` instead: the weights are checked once when the model is
loaded, the activations after each cached forward pass.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import Tensor

MASKED_SCORES_SUFFIX = "attn_scores"
"""Hook names ending so hold attention scores after the causal mask, whose masked entries are
``-inf``. They are checked for NaN and ``+inf`` all the same: TransformerLens zeroes the NaN that a
``+inf`` score makes in the softmax, so the pattern alone can look finite."""


class NonFiniteModelError(Exception):
    """A model's weights or activations hold NaN or infinity; ``reason`` names the tensor."""

    def __init__(self, model: str, reason: str) -> None:
        self.model = model
        self.reason = reason
        super().__init__(f"model {model!r}: {reason}")


def non_finite_summary(tensor: Tensor, *, allow_negative_infinity: bool = False) -> str | None:
    """How ``tensor`` is not finite (count, kind and index of the first bad entry), or ``None``.

    ``allow_negative_infinity`` accepts ``-inf`` (masked attention scores) but not NaN or ``+inf``.
    """
    if not tensor.is_floating_point():
        return None
    if tensor.numel() == 0:
        return None
    # A reduction first, far cheaper than isfinite on every entry: NaN and +inf propagate to the
    # max, and any NaN or infinity makes the sum non-finite (which an overflow can too: then look).
    quick = tensor.max() if allow_negative_infinity else tensor.sum()
    if bool(torch.isfinite(quick)):
        return None
    finite = torch.isfinite(tensor)
    if allow_negative_infinity:
        finite = finite | (tensor == float("-inf"))
    if bool(finite.all()):
        return None
    bad = (~finite).nonzero()[0].tolist()
    first = float(tensor[tuple(bad)])
    count = int((~finite).sum())
    return f"{count} of {tensor.numel()} entries are NaN or infinite, the first {first} at index {bad}"


def first_non_finite_parameter(parameters: Iterable[tuple[str, Tensor]]) -> str | None:
    """The first parameter (in the model's order) that holds NaN or infinity, described, or ``None``."""
    for name, tensor in parameters:
        summary = non_finite_summary(tensor)
        if summary is not None:
            return f"parameter {name}: {summary}"
    return None


def first_non_finite_activation(logits: Tensor | None, activations: Iterable[tuple[str, Tensor]]) -> str | None:
    """The first activation (or the logits, if given) that holds NaN or infinity, described, or ``None``.

    Masked attention scores (hook names ending in ``attn_scores``) may hold ``-inf``.
    """
    for name, tensor in activations:
        summary = non_finite_summary(tensor, allow_negative_infinity=name.endswith(MASKED_SCORES_SUFFIX))
        if summary is not None:
            return f"activation {name}: {summary}"
    summary = None if logits is None else non_finite_summary(logits)
    return None if summary is None else f"logits: {summary}"
