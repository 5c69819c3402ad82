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

Name copy score (ARENA 1.4.1 ``get_copying_scores``, the IOI paper's copy score, p. 6). For each
name token ``t`` of a list (the course's 109 ``NAMES``), the "extended embedding" read by a head of
layer ``>= 1`` is ``e_t = W_E[t] + MLP_0(ln2_0(W_E[t]))`` (block 0's MLP on the embedding alone,
without block 0's attention; ``W_E[t]`` alone for an attention-only model). Head ``h``'s OV
circuit, with sign ``s = +1`` (positive) or ``-1`` (negative), writes ``s e_t W_V^h W_O^h``; read
directly by the unembedding, ``logits_t = ln_final(s e_t W_V^h W_O^h) W_U + b_U`` [d_vocab]. The
score is the fraction of names whose own token is among the ``k`` largest logits::

    score_h = (1/N) sum_t [ t in topk(logits_t, k) ]

The sign is applied before ``ln_final`` and ``b_U`` (it matters for LayerNorm's bias and ``b_U``).

OV rank: the numerical rank of ``W_OV = sum_h W_V^h W_O^h`` for one head or several (the effective
circuit of heads attending to the same place, ARENA 1.2: "rank 64 versus 128"), i.e. the number
of singular values above ``rtol * sigma_max``.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from fixtures.ioi_names import NAME_LISTS
from harness.context import MetricContext
from harness.core.heads import Head, HeadName, head_names, sort_heads
from harness.core.measurement import Measurement
from harness.core.model_handle import ModelHandle
from harness.registry import metric
from harness.core.value_shape import HEADS, Scalar, Table, either
from harness.core.value_shape import names as fixed_names

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


@metric("copying.eigenvalue_score", value=Table(HEADS))
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


@metric("copying.ov_rank", value=Scalar())
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


Sign = Literal["positive", "negative"]


def extended_embedding(model: ModelHandle, tokens: Tensor) -> Tensor:
    """``W_E[t] + MLP_0(ln2_0(W_E[t]))`` for tokens [n]: [n, d_model] (``W_E[t]`` if attention-only)."""
    embedded = model.W_E[tokens]  # [n, d_model]
    if model.attn_only:
        return embedded
    return embedded + model.mlp_on(0, embedded[:, None, :])[:, 0, :]


def head_copy_score(model: ModelHandle, resid: Tensor, tokens: Tensor, head: Head, sign: float, k: int) -> float:
    """Fraction of rows ``i`` with ``tokens[i]`` in the top ``k`` of ``ln_final(sign resid_i W_OV) W_U + b_U``.

    resid: [n, d_model] (extended embeddings); tokens: [n].
    """
    W_OV = model.W_V[head] @ model.W_O[head]  # [d_model, d_model]
    logits = model.final_norm(resid @ (sign * W_OV)) @ model.W_U + model.b_U  # [n, d_vocab]
    top = logits.topk(k, dim=-1).indices  # [n, k]
    return int((top == tokens[:, None]).any(-1).sum()) / tokens.shape[0]


def single_token_names(model: ModelHandle, names: tuple[str, ...], leading_space: bool) -> tuple[list[int], list[str], dict[str, int]]:
    """Token ids of the names that are one token (no BOS), the kept names, and the others' token counts."""
    ids: list[int] = []
    kept: list[str] = []
    dropped: dict[str, int] = {}
    for name in names:
        tokens = model.to_tokens((" " if leading_space else "") + name, prepend_bos=False)[0]  # [pos]
        if tokens.numel() == 1:
            ids.append(int(tokens[0]))
            kept.append(name)
        else:
            dropped[name] = int(tokens.numel())
    return ids, kept, dropped


@metric("copying.name_copy_score", value=Table(either(HEADS, fixed_names("course_average"))))
def name_copy_score(
    ctx: MetricContext,
    *,
    sign: Sign = "positive",
    k: Annotated[int, Field(ge=1)] = 5,
    heads: list[HeadName] | None = None,
    names: Literal["arena_ioi"] = "arena_ioi",
    leading_space: bool = False,
) -> Measurement:
    """ARENA 1.4.1's copy score of each head of layer >= 1: the fraction of names whose own token is
    in the top ``k`` logits of ``ln_final(+/- (W_E + MLP_0) W_V W_O) W_U + b_U`` (see the module).

    Value: table per head ``"L.H"`` (every head of layers >= 1, or ``heads``; layer 0 is refused:
    with all heads, also ``course_average``, below;
    it reads the embedding before MLP 0). Names are tokenized as the course does (no BOS, no
    leading space unless ``leading_space``); names that are not one token are left out and listed
    in ``details.dropped_names`` with their token counts. ``details.course_average`` (all heads
    only) is the course's "Average": the sum of the scores over ``n_layers * n_heads`` entries, as
    its tensor keeps a zero row for the omitted layer 0. Weights only; exact (no uncertainty).
    """
    model = ctx.model
    chosen = _copy_heads(model, heads)
    ids, kept, dropped = single_token_names(model, NAME_LISTS[names], leading_space)
    if not ids:
        raise ValueError(f"none of the {len(NAME_LISTS[names])} names is a single token for {model.identity.name!r}")
    tokens = torch.tensor(ids, dtype=torch.int64)
    resid = extended_embedding(model, tokens)
    factor = 1.0 if sign == "positive" else -1.0
    value = {str(head): head_copy_score(model, resid, tokens, head, factor, k) for head in chosen}
    details: dict[str, object] = {
        "sign": sign, "k": k, "n_names": len(kept), "dropped_names": dropped,
        "extended_embedding": "W_E" if model.attn_only else "W_E + MLP_0(ln2_0(W_E))",
    }
    if heads is None:
        details["mean_over_heads"] = sum(value.values()) / len(value)
        details["course_average"] = sum(value.values()) / (model.shape.n_layers * model.shape.n_heads)
        value["course_average"] = details["course_average"]
    return Measurement(value, None, details)


def _copy_heads(model: ModelHandle, heads: list[str] | None) -> list[Head]:
    """The heads to score: all of layers >= 1, or ``heads`` (refusing layer 0)."""
    chosen = [head for head in _heads(model, heads) if heads is not None or head.layer >= 1]
    early = [str(head) for head in chosen if head.layer == 0]
    if early:
        raise ValueError(f"copy scores are defined for layers >= 1 (layer 0 reads the embedding before MLP 0): {early}")
    if not chosen:
        raise ValueError(f"model {model.identity.name!r} has no head in layers >= 1")
    return chosen
