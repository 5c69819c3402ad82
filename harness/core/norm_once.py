"""The attention's input norm computed once per block and pass, not three times.

TransformerLens 3.x's block normalises the residual stream once for each of the attention's
three inputs: ``self.ln1(query_input)``, ``self.ln1(key_input)``, ``self.ln1(value_input)``,
where all three are the block's ``resid_pre`` (one tensor) unless the model gives each head its
own input (``use_split_qkv_input``, ``use_attn_in``). So every block of every pass computes
``ln1(resid_pre)`` [batch, pos, d_model] three times: for RMSNorm ``x / sqrt(mean(x^2) + eps)``,
five tensor operations and two hook points each time, a tenth of the operations of a SmolLM2
block in a patched pass over a few positions.

:func:`norm_once_per_block` makes each block's ``ln1`` return, for a call on the very tensor its
previous call was given (``is``, not equality), that call's output, for the two calls that
follow it; the third call forgets it, so nothing outlives the block's pass. The norm is a pure
function of its input, so the output each of the three calls got before is, bit for bit, the one
they share now; its hook points (``ln1.hook_scale``, ``ln1.hook_normalized``) fire once per block
instead of three times, with the same values (a hook that edits them edits the one shared output).

Left alone where the three inputs are different tensors (per-head inputs) and where ``ln1``
normalises the attention's output instead (post-norm architectures).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor
    from transformer_lens import HookedTransformer

REUSES = 2
"""Calls after the first that share its output: the key and value inputs' norms."""

_MEMO = "_norm_once_memo"


def _forward_once(self: Any, x: "Tensor") -> "Tensor":
    """``ln1``'s forward: the previous call's output when ``x`` is the tensor it was given (at most
    :data:`REUSES` times), else the module class's own forward."""
    memo = self.__dict__.get(_MEMO)
    if memo is not None and memo[0] is x:
        memo[2] += 1
        if memo[2] >= REUSES:
            self.__dict__[_MEMO] = None
        return memo[1]
    out = type(self).forward(self, x)
    self.__dict__[_MEMO] = [x, out, 0]
    return out


def norm_once_per_block(hooked: "HookedTransformer") -> int:
    """Wrap every block's ``ln1`` as the module docstring says, in place; the number of blocks wrapped
    (0 where the model splits the attention's inputs per head or is post-norm)."""
    from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

    cfg = hooked.cfg
    if getattr(cfg, "use_split_qkv_input", False) or getattr(cfg, "use_attn_in", False):
        return 0
    if getattr(cfg, "original_architecture", None) in POST_NORM_ARCHITECTURES:
        return 0
    wrapped = 0
    for block in hooked.blocks:
        norm = getattr(block, "ln1", None)
        if norm is None or "forward" in norm.__dict__:
            continue
        norm.forward = _forward_once.__get__(norm)  # a bound method: copies of the model bind their own norm
        norm.__dict__[_MEMO] = None
        wrapped += 1
    return wrapped
