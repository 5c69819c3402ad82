"""The attention's input norm computed once per block and pass, not three times.

TransformerLens 3.x's block normalises the residual stream once for each of the attention's
three inputs: ``self.ln1(query_input)``, ``self.ln1(key_input)``, ``self.ln1(value_input)``,
where all three are the block's ``resid_pre`` (one tensor) unless the model gives each head its
own input (``use_split_qkv_input``, ``use_attn_in``). So every block of every pass computes
``ln1(resid_pre)`` [batch, pos, d_model] three times: for RMSNorm ``x / sqrt(mean(x^2) + eps)``,
five tensor operations and two hook points each time, a tenth of the operations of a SmolLM2
block in a patched pass over a few positions.

:func:`norm_once_per_block` makes each block's ``ln1``, while that block's forward runs, return
for a call on the very tensor its previous call was given (``is``, not equality) that call's
output; the block's forward opens the memo on entry and drops it on exit (``finally``: an
exception too), so nothing outlives the block's pass, and a call outside the block's forward (a
norm computed on its own) is computed and kept nowhere: a later pass given the same tensor, with
hooks on the norm or the tensor edited in place, computes its own.  The norm is a pure function
of its input, so the output each of the three calls got before is, bit for bit, the one they
share now; its hook points (``ln1.hook_scale``, ``ln1.hook_normalized``) fire once per block
instead of three times, with the same values (a hook that edits them edits the one shared
output).  Not the same under autograd: the three inputs' gradients are summed before the norm's
backward instead of after (equal up to rounding), and a backward hook on the norm sees that sum
once instead of each input's share; no metric of this suite takes gradients through a model.

Left alone where the three inputs are different tensors (per-head inputs) and where ``ln1``
normalises the attention's output instead (post-norm architectures).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from torch import Tensor
    from transformer_lens import HookedTransformer

_MEMO = "_norm_once_memo"
"""``ln1.__dict__`` key: None outside the block's forward, else [] or [input, output] of its last call."""


def _forward_once(self: Any, x: "Tensor") -> "Tensor":
    """``ln1``'s forward: inside its block's forward, the previous call's output when ``x`` is the
    tensor it was given, else (and outside the block's forward always) the module class's own forward."""
    memo = self.__dict__.get(_MEMO)
    if memo and memo[0] is x:
        return memo[1]
    out = type(self).forward(self, x)
    if memo is not None:
        memo[:] = [x, out]
    return out


def _block_forward(self: Any, *args: Any, **kwargs: Any) -> Any:
    """The block class's own forward, with its ``ln1``'s memo open for the duration of the call."""
    norm = self.ln1
    norm.__dict__[_MEMO] = []
    try:
        return type(self).forward(self, *args, **kwargs)
    finally:
        norm.__dict__[_MEMO] = None


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
        norm.forward = _forward_once.__get__(norm)  # bound methods: copies of the model bind their own
        norm.__dict__[_MEMO] = None
        block.forward = _block_forward.__get__(block)
        wrapped += 1
    return wrapped
