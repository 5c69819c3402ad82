"""Weights stored in the memory layout TransformerLens's forward pass multiplies by.

TransformerLens 3.x multiplies by rearranged weights on every call of every block: attention
projections as ``rearrange(W_Q, "head d_model d_head -> (head d_head) d_model")`` (a copy, since
the view is not contiguous), the output as ``rearrange(W_O, "head d_head d_model -> d_model
(head d_head)").contiguous()``, a gated MLP as ``W_gate.T.contiguous()`` (likewise ``W_in``,
``W_out``). For SmolLM2-135M that is 14 MB of strided copies per block and pass, whatever the
number of positions run: most of the time of a patched pass over a few positions.

:func:`store_as_multiplied` keeps each of those parameters' values and shape and changes only its
strides, so that the rearranged view *is* contiguous and the copy is a no-op: ``W_Q``'s storage
is ``[head, d_head, d_model]`` (the parameter a transposed view of it), ``W_O``'s ``[d_model,
head, d_head]``, a gated MLP's ``W.T``. The matrix each product receives then holds the same
numbers in the same layout as the copy it replaces, so every activation is bit for bit what it
was. Other readers see the same values: TransformerLens's stacked properties (``W_Q`` of the
model, ``[layer, head, d_model, d_head]``) are fresh contiguous tensors, and
:meth:`~harness.core.model_handle.ModelHandle.named_parameters` yields contiguous tensors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

QKV = ("W_Q", "W_K", "W_V", "_W_K", "_W_V")
"""Attention input projections [head, d_model, d_head] (``_W_K``/``_W_V``: a grouped-query model's key/value heads)."""

GATED_MLP = ("W_gate", "W_in", "W_out")
"""A gated MLP's matrices, multiplied as ``W.T.contiguous()``."""


def _restride(module: Any, name: str, order: tuple[int, ...]) -> bool:
    """Store parameter ``name`` of ``module`` as ``permute(order)`` contiguous (values and shape kept)."""
    parameter = module._parameters.get(name)
    if parameter is None:
        return False
    inverse = tuple(sorted(range(len(order)), key=lambda i: order[i]))
    stored: Tensor = parameter.data.permute(order).contiguous()
    parameter.data = stored.permute(inverse)
    return True


def store_as_multiplied(hooked: "HookedTransformer") -> int:
    """Re-stride the block weights TransformerLens rearranges on every call (module docstring) in place;
    the number of parameters re-strided. Left alone where the forward pass multiplies differently
    (split or per-head attention inputs, per-head results, 4-bit weights) or for a plain MLP
    (``addmm`` reads ``W_in`` as it is)."""
    cfg = hooked.cfg
    if getattr(cfg, "load_in_4bit", False):
        return 0
    per_head_inputs = bool(getattr(cfg, "use_split_qkv_input", False) or getattr(cfg, "use_attn_in", False))
    restrided = 0
    with torch.no_grad():
        for block in hooked.blocks:
            attn = getattr(block, "attn", None)
            if attn is not None and not per_head_inputs:
                restrided += sum(_restride(attn, name, (0, 2, 1)) for name in QKV)
            if attn is not None and not getattr(cfg, "use_attn_result", False):
                restrided += _restride(attn, "W_O", (2, 0, 1))
            mlp = getattr(block, "mlp", None)
            if mlp is not None and type(mlp).__name__ == "GatedMLP":
                restrided += sum(_restride(mlp, name, (1, 0)) for name in GATED_MLP)
    return restrided
