"""Direct logit attribution: the one decomposition of the residual stream that every metric uses.

At a read position ``p`` of sequence ``b`` the final residual stream is a sum of parts::

    x[b, p] = embed + pos_embed + sum_{l,h} z[b, p, l, h] @ W_O[l, h] + sum_l mlp_out[l][b, p] + sum_l b_O[l]

with ``pos_embed`` only for "standard" positions and ``mlp_out`` only for models with MLPs. The
logit of token ``t`` is ``N(x) . W_U[:, t] + b_U[t]`` where ``N`` is the final norm: the identity
(``normalization_type`` None), ``(x - mean(x)) / s`` (``LNPre``) or ``x / s`` (``RMSPre``), with
``s = ln_final.hook_scale[b, p]`` cached. ``N`` is linear for a fixed ``s`` and
``(x - mean(x)) . u = x . (u - mean(u))``, so each part's direct contribution along a direction
``u[b, p]`` (one unembedding column, or a difference of two) is ``part . N*(u)`` with
``N*(u) = (u - mean(u)) / s`` (or ``u / s``, or ``u``): the course's ``apply_ln_to_stack`` then a
dot product. Together with ``unembed_bias`` (``b_U`` along the same combination of tokens) the
parts sum to the logit (or logit difference) exactly, up to float rounding.

Part names (:data:`FIXED_PARTS`, then ``"L.H"`` per head and ``"mlp.L"`` per MLP): ``embed``,
``pos_embed``, ``"L.H"``, ``"mlp.L"``, ``attn_bias``, ``unembed_bias``. Models with an unfolded
final norm (weights ``w``, ``b``: ``LN``, ``RMS``) are rejected: the parts would be wrong.
"""

from __future__ import annotations

import torch
from torch import Tensor

from harness.core.heads import head_names
from harness.core.model_handle import Activations, ModelHandle

FIXED_PARTS = ("embed", "pos_embed", "attn_bias", "unembed_bias")
"""The parts that are not one head or one MLP."""


def mlp_name(layer: int) -> str:
    """The part name of layer ``layer``'s MLP output: ``"mlp.L"``."""
    return f"mlp.{layer}"


def gather_positions(act: Tensor, positions: Tensor) -> Tensor:
    """``act[b, positions[b, n]]`` [batch, n, ...] from act [batch, pos, ...] and positions [batch, n] (on CPU, float)."""
    rows = torch.arange(act.shape[0])[:, None].expand_as(positions)
    return act.float().cpu()[rows, positions]


def effective_directions(model: ModelHandle, activations: Activations, directions: Tensor, positions: Tensor) -> Tensor:
    """``N*(u)`` [batch, n, d_model]: the directions read through the final norm with its cached scale.

    directions [batch, n, d_model] (e.g. ``W_U[:, c]`` or ``W_U[:, c] - W_U[:, w]``), positions [batch, n].
    """
    norm = model.normalization_type
    if norm not in (None, "LNPre", "RMSPre"):
        raise ValueError(
            f"direct logit attribution needs normalization_type None or a folded final norm (LNPre/RMSPre, "
            f"e.g. loaded with fold_ln=True); this model has {norm!r}, whose weights would make the parts wrong"
        )
    if norm is None:
        return directions
    if norm == "LNPre":
        directions = directions - directions.mean(-1, keepdim=True)
    scale = gather_positions(activations["ln_final.hook_scale"], positions)  # [batch, n, 1]
    return directions / scale


def direct_parts(
    model: ModelHandle, activations: Activations, positions: Tensor, directions: Tensor, unembed_bias: Tensor,
) -> dict[str, Tensor]:
    """Each part's direct contribution ``part[b, p] . N*(u[b, p])`` [batch, n], in :data:`FIXED_PARTS` naming.

    positions [batch, n] (the read positions), directions [batch, n, d_model], unembed_bias [batch, n]
    (``b_U`` along the same token combination as ``directions``). Order: embed, [pos_embed], per
    layer its heads then [its MLP], attn_bias, unembed_bias.
    """
    u_eff = effective_directions(model, activations, directions.float().cpu(), positions)  # [batch, n, d_model]
    parts: dict[str, Tensor] = {"embed": (gather_positions(activations["embed"], positions) * u_eff).sum(-1)}
    if model.positional_embedding_type == "standard":
        parts["pos_embed"] = (gather_positions(activations["pos_embed"].expand_as(activations["embed"]), positions) * u_eff).sum(-1)
    names = iter(head_names(model.shape.n_layers, model.shape.n_heads))
    w_o = model.W_O.float().cpu()  # [layer, head, d_head, d_model]
    for layer in range(model.shape.n_layers):
        z = gather_positions(activations["z", layer], positions)  # [batch, n, head, d_head]
        out_dirs = torch.einsum("hdm,bnm->bnhd", w_o[layer], u_eff)  # W_O[l, h] @ u_eff
        per_head = (z * out_dirs).sum(-1)  # [batch, n, head]
        for head in range(model.shape.n_heads):
            parts[next(names)] = per_head[..., head]
        if not model.attn_only:
            parts[mlp_name(layer)] = (gather_positions(activations["mlp_out", layer], positions) * u_eff).sum(-1)
    parts["attn_bias"] = (u_eff * model.b_O.float().cpu().sum(0)).sum(-1)
    parts["unembed_bias"] = unembed_bias.float().cpu()
    return parts


def next_token_parts(model: ModelHandle, tokens: Tensor, activations: Activations) -> dict[str, Tensor]:
    """Direct parts of the correct next token's logit at every prediction position, ``{part: [batch, pos-1]}``.

    ``u[b, i] = W_U[:, t[b, i+1]]``, ``unembed_bias[b, i] = b_U[t[b, i+1]]`` (ARENA 1.2 ``logit_attribution``).
    """
    batch, pos = tokens.shape
    targets = tokens[:, 1:].cpu()  # [batch, pos-1]
    positions = torch.arange(pos - 1).expand(batch, -1)
    w_u = model.W_U.float().cpu()  # [d_model, d_vocab]
    return direct_parts(model, activations, positions, w_u.T[targets], model.b_U.float().cpu()[targets])


def logit_diff_directions(model: ModelHandle, answers: Tensor) -> Tensor:
    """``d_b = W_U[:, c_b] - W_U[:, w_b]`` [batch, d_model] (the course's ``logit_diff_directions``)."""
    w_u = model.W_U.float().cpu()  # [d_model, d_vocab]
    return (w_u[:, answers[:, 0]] - w_u[:, answers[:, 1]]).T


def part_hooks(model: ModelHandle) -> list[str]:
    """The hook points :func:`direct_parts` reads: embeddings, every ``z`` and ``mlp_out``, the final-norm scale."""
    names = ["hook_embed"] + (["hook_pos_embed"] if model.positional_embedding_type == "standard" else [])
    names += ["ln_final.hook_scale"] if model.normalization_type is not None else []
    names += [model.hook_name("z", layer) for layer in range(model.shape.n_layers)]
    if not model.attn_only:
        names += [model.hook_name("mlp_out", layer) for layer in range(model.shape.n_layers)]
    return names


def logit_diff_parts(model: ModelHandle, activations: Activations, answers: Tensor, positions: Tensor) -> dict[str, Tensor]:
    """Direct parts of ``logit[c_b] - logit[w_b]`` at ``positions[b]``, ``{part: [batch]}``.

    answers [batch, 2] (correct, incorrect), positions [batch] (the course's final position, or
    ``word_idx["end"]``); ``u[b] = W_U[:, c_b] - W_U[:, w_b]`` (``logit_diff_directions``).
    """
    b_u = model.b_U.float().cpu()
    directions = logit_diff_directions(model, answers)[:, None]  # [batch, 1, d_model]
    bias = (b_u[answers[:, 0]] - b_u[answers[:, 1]])[:, None]  # [batch, 1]
    parts = direct_parts(model, activations, positions.cpu()[:, None], directions, bias)
    return {name: part[:, 0] for name, part in parts.items()}


def logit_diff_from_residual(model: ModelHandle, resid: Tensor, answers: Tensor, ends: Tensor) -> Tensor:
    """LD [copies, batch] from a stacked final residual stream resid [copies*batch, pos, d_model] (before the final norm).

    ``LD = ln_final(x[end]) . (W_U[:, c] - W_U[:, w]) + b_U[c] - b_U[w]`` with the norm recomputed
    from ``x`` (the run's own scale): the run's logit difference, with only the two answer columns
    of the unembedding read. answers [batch, 2], ends [batch] (each copy's rows repeat them).
    """
    batch = answers.shape[0]
    copies = resid.shape[0] // batch
    rows = torch.arange(resid.shape[0])
    at_end = resid[rows, ends.repeat(copies).to(resid.device)]  # [copies*batch, d_model]
    normed = model.final_norm(at_end).float().cpu()
    directions = logit_diff_directions(model, answers).repeat(copies, 1)  # [copies*batch, d_model]
    b_u = model.b_U.float().cpu()
    bias = (b_u[answers[:, 0]] - b_u[answers[:, 1]]).repeat(copies)
    return ((normed * directions).sum(-1) + bias).view(copies, batch)
