"""OV-circuit copying metrics: the eigenvalue copying score and the rank of W_OV.

Eigenvalue copying score (Elhage et al. 2021, "A Mathematical Framework", used by ARENA 1.2 only
in words: it computes no number). A head's full OV circuit, in TransformerLens's row convention, is
the [d_vocab, d_vocab] matrix ``M = W_E W_V W_O W_U`` (row: source token, column: output logit). A
copying head has mostly positive eigenvalues; the score is::

    score = sum_i lambda_i / sum_i |lambda_i|   in [-1, 1]     (sum_i lambda_i = trace M is real)

``M = (W_E W_V)(W_O W_U)`` has rank <= d_head, and its nonzero eigenvalues are those of the small
[d_head, d_head] matrix ``(W_O W_U)(W_E W_V) = W_O (W_U W_E) W_V`` (as TransformerLens's
``FactoredMatrix.eigenvalues``). A head whose full OV circuit is 0 has no score (0/0): it is left
out of the table and listed in the details.

OV rank: the numerical rank of ``W_OV = sum_h W_V^h W_O^h`` for one head or several (the effective
circuit of heads attending to the same place, ARENA 1.2: "rank 64 versus 128"), i.e. the number
of singular values above ``rtol * sigma_max``.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import Tensor

from harness.context import MetricContext
from harness.heads import Head, HeadName, head_names, sort_heads
from harness.measurement import Measurement
from harness.model_api import ModelHandle
from harness.registry import metric

FLOAT32_EPS = float(torch.finfo(torch.float32).eps)
ZERO_CIRCUIT_RTOL = 1e-9


def ov_eigenvalues(W_V: Tensor, W_O: Tensor, W_U_W_E: Tensor) -> Tensor:
    """Nonzero-candidate eigenvalues of the full OV circuit ``W_E W_V W_O W_U``: [d_head] complex.

    W_V: [d_model, d_head]; W_O: [d_head, d_model]; W_U_W_E: [d_model, d_model] = ``W_U W_E``.
    These are the eigenvalues of ``W_O (W_U W_E) W_V``; the full circuit's other eigenvalues are 0.
    """
    return torch.linalg.eigvals(W_O @ W_U_W_E @ W_V)


def copying_score(eigenvalues: Tensor) -> float:
    """``Re(sum lambda) / sum |lambda|`` of eigenvalues [n] (complex); NaN if all are 0."""
    total = float(eigenvalues.abs().sum())
    return float(eigenvalues.sum().real) / total if total > 0 else float("nan")


def _heads(model: ModelHandle, heads: list[str] | None) -> list[Head]:
    names = head_names(model.shape.n_layers, model.shape.n_heads) if heads is None else sort_heads(list(dict.fromkeys(heads)))
    return [Head.parse(name) for name in names]


@metric("copying.eigenvalue_score")
def eigenvalue_score(ctx: MetricContext, *, heads: list[HeadName] | None = None) -> Measurement:
    """Eigenvalue copying score sum(lambda) / sum(|lambda|) of each head's full OV circuit W_E W_V W_O W_U.

    Value: table per head ``"L.H"`` (all heads, or ``heads``); 1 for a pure copying head, -1 for a
    pure anti-copying one. Heads whose full OV circuit is zero are left out (``details.undefined``).
    Eigenvalues come from the [d_head, d_head] factored form, in float64. Weights only.
    """
    model = ctx.model
    W_U_W_E = (model.W_U @ model.W_E).double()  # [d_model, d_model], one float32 product
    W_V, W_O = model.W_V.double(), model.W_O.double()
    norm_G = float(torch.linalg.matrix_norm(W_U_W_E))
    value: dict[str, float] = {}
    undefined: list[str] = []
    spectra: dict[str, list[float]] = {}
    for head in _heads(model, heads):
        eigenvalues = ov_eigenvalues(W_V[head], W_O[head], W_U_W_E)
        # sum |lambda| <= sqrt(d_head) ||W_O G W_V||_F <= sqrt(d_head) ||W_O||_F ||G||_F ||W_V||_F
        scale = float(torch.linalg.matrix_norm(W_O[head]) * norm_G * torch.linalg.matrix_norm(W_V[head]))
        if float(eigenvalues.abs().sum()) <= ZERO_CIRCUIT_RTOL * scale:
            undefined.append(str(head))
            continue
        value[str(head)] = copying_score(eigenvalues)
        spectra[str(head)] = [float(eigenvalues.real.max()), float(eigenvalues.real.min())]
    details = {"undefined": undefined, "max_min_real_eigenvalue": spectra}
    return Measurement(value, None, details)


def ov_singular_values(W_V: Tensor, W_O: Tensor) -> Tensor:
    """Singular values of ``sum_h W_V[h] W_O[h] = [W_V[h1] | W_V[h2] ...] [W_O[h1]; W_O[h2] ...]``.

    W_V: [n, d_model, d_head]; W_O: [n, d_head, d_model]. Returns [min(n d_head, d_model)] in
    decreasing order. With QR factorisations ``left = Q_1 T_1`` and ``right^T = Q_2 T_2`` (``Q``
    orthonormal columns), ``left right = Q_1 (T_1 T_2^T) Q_2^T`` has the singular values of the
    small ``T_1 T_2^T``; when n d_head > d_model the [d_model, d_model] product is used directly.
    """
    left = torch.cat(list(W_V), dim=-1)  # [d_model, n * d_head]
    right = torch.cat(list(W_O), dim=-2)  # [n * d_head, d_model]
    if left.shape[-1] >= left.shape[-2]:
        return torch.linalg.svdvals(left @ right)
    T_1 = torch.linalg.qr(left, mode="r")[1]
    T_2 = torch.linalg.qr(right.T, mode="r")[1]
    return torch.linalg.svdvals(T_1 @ T_2.T)


@metric("copying.ov_rank")
def ov_rank(
    ctx: MetricContext,
    *,
    heads: Annotated[list[HeadName], Field(min_length=1)],
    rtol: Annotated[float, Field(gt=0, lt=1)] | None = None,
) -> Measurement:
    """Numerical rank of W_V W_O (one head) or of the sum of several heads' W_V W_O (effective circuit).

    Rank = number of singular values above ``rtol * sigma_max`` (computed in float64). ``rtol``
    defaults to ``d_model * eps(float32)``, the default of ``torch.linalg.matrix_rank`` on the
    course's float32 [d_model, d_model] product. Value: the rank (a float). Weights only.
    """
    model = ctx.model
    parsed = [Head.parse(name) for name in dict.fromkeys(heads)]
    tolerance = model.shape.d_model * FLOAT32_EPS if rtol is None else rtol
    W_V = torch.stack([model.W_V[h] for h in parsed]).double()
    W_O = torch.stack([model.W_O[h] for h in parsed]).double()
    singular = ov_singular_values(W_V, W_O)
    top = float(singular[0]) if singular.numel() else 0.0
    rank = int((singular > tolerance * top).sum()) if top > 0 else 0
    details = {"heads": [str(h) for h in parsed], "rtol": tolerance, "sigma_max": top,
               "sigma_at_rank": float(singular[rank - 1]) if rank else 0.0,
               "sigma_after_rank": float(singular[rank]) if rank < singular.numel() else None}
    return Measurement(float(rank), None, details)
