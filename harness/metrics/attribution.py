"""Direct logit attribution (ARENA 1.2 ``logit_attribution``) for attention-only models.

At prediction position ``i`` of sequence ``b`` the correct next token is ``c = t[b, i+1]`` and

    logit[b, i, c] = N(resid[b, i]) . W_U[:, c] + b_U[c],
    resid[b, i]   = W_E[t[b, i]]  (+ W_pos[i] for "standard" positions)
                    + sum_{l,h} z[b, i, l, h] @ W_O[l, h]  +  sum_l b_O[l],

where ``z`` is the cached per-head attention output before ``W_O`` (so no ``use_attn_result`` is
needed). ``N`` is the final normalization: the identity for ``normalization_type`` None (the
course's attention-only model); for a folded final norm, ``LNPre`` is ``(x - mean(x)) / s`` and
``RMSPre`` is ``x / s`` with ``s`` the cached ``ln_final.hook_scale``. ``N`` is linear for a fixed
``s``, and ``(x - mean(x)) . u = x . (u - mean(u))``, so each part is ``part . u_eff`` with
``u_eff = N(W_U[:, c])``. The parts are :mod:`harness.circuits.dla`'s (the same names as the IOI
attribution): ``embed``, ``pos_embed`` (standard positions only), one per head ``"L.H"``,
``attn_bias`` (``sum_l b_O[l] . u_eff``) and ``unembed_bias`` (``b_U[c]``); they sum to the logit
exactly, up to float rounding, and the metric fails closed when they do not (``sum_check``).

Models with MLPs, or with an unfolded final LayerNorm/RMSNorm (weights ``w``, ``b``), are
rejected with a ``ValueError``: the parts would not be the direct effects.

The direct path (the course's ``direct_attributions``, first column of ``logit_attr``) is the
embedding read straight by the unembedding: ``direct[b, i] = embed[b, i] + pos_embed[b, i]`` (``pos_embed``
only for "standard" positions; the course's model has shortformer positions, so it is
``W_E[t[b, i]] . W_U[:, t[b, i+1]]`` there). ``attribution.direct_by_position`` reports it per
prediction position ``i`` (the row index of ``logit_attr``: position 0 is BOS predicting the first
token).
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from harness.context import MetricContext
from harness.circuits.dla import next_token_parts
from harness.core.heads import head_names
from harness.core.measurement import Measurement
from harness.metrics.loss import Positions, prediction_slice, table
from harness.core.model_handle import Activations, ModelHandle
from harness.registry import metric
from harness.core.value_shape import HEADS, NameSet, OneOf, POSITIONS, Table, either, names

SUM_CHECK_ATOL = 1e-3
"""The course's ``assert_close(sum, logit, atol=1e-3)``, scaled by ``max(1, max |logit|)``."""


def direct_logit_parts(model: ModelHandle, tokens: Tensor, activations: Activations) -> dict[str, Tensor]:
    """Direct contributions to the correct next token's logit, ``{part: [batch, pos-1]}``.

    Parts (:mod:`harness.circuits.dla`): ``embed``, ``pos_embed`` (standard positions only),
    ``"L.H"`` for every head, ``attn_bias``, ``unembed_bias``. Raises for models with MLPs.
    """
    if not model.attn_only:
        raise ValueError("direct logit attribution needs an attention-only model: MLP outputs are not attributed")
    return next_token_parts(model, tokens, activations)


def _checked_parts(ctx: MetricContext) -> tuple[dict[str, Tensor], float]:
    """The parts and ``sum_check = max |sum of parts - logit|``; raises when the check fails."""
    inputs = ctx.require_inputs()
    forward = ctx.forward()
    parts = direct_logit_parts(ctx.model, inputs.tokens, forward.activations)
    logits = forward.logits[:, :-1].float().cpu().gather(-1, inputs.tokens[:, 1:, None]).squeeze(-1)  # [batch, n]
    sum_check = float((torch.stack(list(parts.values())).sum(0) - logits).abs().max())
    tolerance = SUM_CHECK_ATOL * max(1.0, float(logits.abs().max()))
    if not sum_check <= tolerance:
        raise ValueError(f"direct logit parts do not sum to the logit: max error {sum_check:.3g} > {tolerance:.3g}")
    return parts, sum_check


@metric("attribution.direct_logit", needs_inputs=True, value=Table(either(HEADS, names())))
def direct_logit(ctx: MetricContext, *, positions: Positions = "all") -> Measurement:
    """Mean direct contribution of each part (embed, [pos_embed], each head, attn_bias, unembed_bias) to the correct token's logit.

    Averaged over ``positions`` per sequence, then over the batch (uncertainty: standard error).
    Details: ``sum_check`` (max |sum of parts - logit|) and the per-position embed curve.
    """
    inputs = ctx.require_inputs()
    parts, sum_check = _checked_parts(ctx)
    chosen = prediction_slice(positions, inputs.tokens.shape[1] - 1, inputs.meta)
    values, errors = table({name: part[:, chosen].mean(1) for name, part in parts.items()})
    details = {
        "positions": positions,
        "sum_check": sum_check,
        "embed_by_position": [float(v) for v in parts["embed"].mean(0)],
    }
    return Measurement(values, errors, details, unit="logit")


@metric("attribution.top_heads", needs_inputs=True, value=NameSet(HEADS))
def top_heads(
    ctx: MetricContext, *, k: Annotated[int, Field(ge=1)] = 1, positions: Positions = "all", absolute: bool = False,
) -> Measurement:
    """The ``k`` heads with the largest mean direct logit contribution (by ``|mean|`` if ``absolute``).

    Value: head names, largest first; details: every head's mean contribution and ``sum_check``.
    """
    inputs = ctx.require_inputs()
    parts, sum_check = _checked_parts(ctx)
    chosen = prediction_slice(positions, inputs.tokens.shape[1] - 1, inputs.meta)
    names = head_names(ctx.model.shape.n_layers, ctx.model.shape.n_heads)
    means = {name: float(parts[name][:, chosen].mean()) for name in names}
    ranked = sorted(names, key=lambda name: -abs(means[name]) if absolute else -means[name])
    details = {"positions": positions, "k": k, "absolute": absolute, "contributions": means, "sum_check": sum_check}
    return Measurement(ranked[:k], None, details)


def direct_path(parts: dict[str, Tensor]) -> Tensor:
    """The direct path's attribution ``embed + pos_embed`` (pos_embed only where present) [batch, pos-1]."""
    return parts["embed"] + parts["pos_embed"] if "pos_embed" in parts else parts["embed"]


@metric("attribution.direct_by_position", needs_inputs=True, value=OneOf(Table(POSITIONS), NameSet(POSITIONS)))
def direct_by_position(ctx: MetricContext, *, top_k: Annotated[int, Field(ge=1)] | None = None) -> Measurement:
    """The direct path's (embedding -> unembedding) attribution to the correct next token at each position.

    ``direct[b, i] = (W_E[t[b, i]] (+ W_pos[i])) . u_eff[b, i]`` with ``u_eff`` the effective
    unembedding direction of ``t[b, i+1]`` (module docstring). Value: table ``"i"`` -> mean over
    the batch of ``direct[:, i]`` (uncertainty: standard error; none for one sequence), for
    ``i = 0 .. pos-2``. With ``top_k``: the ``top_k`` positions with the largest mean, largest
    first, as a set of names (``"46"``) for ``equals`` / ``contains``. Details: ``sum_check``, the
    ranked positions with their values, and ``std_by_part`` (std over positions of each part's
    batch-mean attribution, ``direct`` included: which part varies most along the text).
    """
    parts, sum_check = _checked_parts(ctx)
    direct = direct_path(parts)  # [batch, n]
    values, errors = table({str(i): direct[:, i] for i in range(direct.shape[1])})
    ranked = sorted(values, key=values.get, reverse=True)
    by_part = {**parts, "direct": direct}
    std_by_part = {name: float(part.mean(0).std()) if part.shape[1] > 1 else 0.0 for name, part in by_part.items()}
    details = {
        "sum_check": sum_check,
        "top": {position: values[position] for position in ranked[:10]},
        "std_by_part": std_by_part,
    }
    if top_k is not None:
        if top_k > len(ranked):
            raise ValueError(f"top_k={top_k} exceeds the {len(ranked)} prediction positions")
        return Measurement(ranked[:top_k], None, {**details, "top_k": top_k}, unit="logit")
    return Measurement(values, errors, details, unit="logit")
