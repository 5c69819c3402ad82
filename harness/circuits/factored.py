"""A matrix kept as two factors, and the effective OV circuit of several heads built as one.

A :class:`FactoredCircuit` is ``M = left @ right`` with ``left`` [d_in, r] and ``right``
[r, d_out], never formed unless asked (in the style of TransformerLens's ``FactoredMatrix``).
The OV circuit of a set of heads ``H`` is

    sum_{h in H} W_V[h] @ W_O[h] = [W_V[h1] | W_V[h2] | ...] @ [W_O[h1]; W_O[h2]; ...]

so its factors are the heads' ``W_V`` [d_model, d_head] concatenated along the columns
(``left`` [d_model, |H| * d_head]) and their ``W_O`` [d_head, d_model] along the rows
(``right`` [|H| * d_head, d_model]): the inner dimension ``r`` is ``|H| * d_head``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class FactoredCircuit:
    """``M = left @ right``: ``left`` [d_in, r], ``right`` [r, d_out] (torch tensors, one dtype)."""

    left: Tensor
    right: Tensor

    def __post_init__(self) -> None:
        if self.left.ndim != 2 or self.right.ndim != 2 or self.left.shape[1] != self.right.shape[0]:
            raise ValueError(f"factors do not chain: left {tuple(self.left.shape)}, right {tuple(self.right.shape)}")

    @classmethod
    def ov_of_stacked_heads(cls, W_V: Tensor, W_O: Tensor) -> FactoredCircuit:
        """The effective OV circuit of heads stacked on the first axis.

        W_V [n_heads, d_model, d_head] (or one head [d_model, d_head]), W_O [n_heads, d_head, d_model]:
        ``left = [W_V[0] | W_V[1] | ...]`` [d_model, n_heads * d_head],
        ``right = [W_O[0]; W_O[1]; ...]`` [n_heads * d_head, d_model].
        """
        if W_V.ndim == 2:
            W_V, W_O = W_V[None], W_O[None]
        return cls(torch.cat(list(W_V), dim=1), torch.cat(list(W_O), dim=0))

    @classmethod
    def ov_of_heads(cls, W_V: Tensor, W_O: Tensor, heads: Sequence[tuple[int, int]]) -> FactoredCircuit:
        """The effective OV circuit of ``heads`` (``(layer, head)`` pairs) of a model's weights.

        W_V [n_layers, n_heads, d_model, d_head], W_O [n_layers, n_heads, d_head, d_model].
        """
        if not heads:
            raise ValueError("an OV circuit needs at least one head")
        left = torch.cat([W_V[layer, head] for layer, head in heads], dim=1)  # [d_model, |H| d_head]
        right = torch.cat([W_O[layer, head] for layer, head in heads], dim=0)  # [|H| d_head, d_model]
        return cls(left, right)

    @property
    def d_in(self) -> int:
        return int(self.left.shape[0])

    @property
    def inner(self) -> int:
        """The inner dimension ``r``: an upper bound on the rank of ``M``."""
        return int(self.left.shape[1])

    @property
    def d_out(self) -> int:
        return int(self.right.shape[1])

    def double(self) -> FactoredCircuit:
        """Both factors in float64."""
        return FactoredCircuit(self.left.double(), self.right.double())

    def dense(self) -> Tensor:
        """``left @ right`` [d_in, d_out], formed."""
        return self.left @ self.right

    def numerical_rank(self) -> int:
        """The number of singular values of ``M`` above ``d_in * eps_float32 * sigma_max`` (0 for M = 0).

        The singular values are those of the formed d_in x d_out matrix (in the factors' dtype).
        """
        singular = torch.linalg.svdvals(self.dense())
        if not float(singular[0]) > 0:
            return 0
        tolerance = max(self.d_in, 1) * float(torch.finfo(torch.float32).eps) * float(singular[0])
        return int((singular > tolerance).sum())


def as_numpy(x: Any) -> np.ndarray:
    """A float32 or float64 numpy array of a torch tensor (on any device) or an array-like.

    Torch tensors of another dtype (bfloat16, float16, integers) become float32; numpy arrays of
    another dtype become float64. Float32 and float64 inputs keep their values bit for bit.
    """
    if hasattr(x, "detach"):
        x = x.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.float()
        x = x.cpu().numpy()
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    return x
