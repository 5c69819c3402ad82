"""Composition between heads of different layers (ARENA 1.2, "Composition scores").

Score of matrices ``W_A`` [d, d] (the earlier head's OV circuit) and ``W_B`` [d, d]::

    comp(W_A, W_B) = ||W_A W_B||_F / (||W_A||_F ||W_B||_F)

With ``W_OV = W_V W_O`` and ``W_QK = W_Q W_K^T`` (row-vector convention: ``x W_OV`` is what a head
writes, ``x_q W_QK x_k^T`` its attention score), the course defines for head A (layer a) and head
B (layer b > a)::

    Q-composition: comp(W_OV^A, W_QK^B)        (A's output read by B's queries)
    K-composition: comp(W_OV^A, (W_QK^B)^T)    (A's output read by B's keys)
    V-composition: comp(W_OV^A, W_OV^B)        (A's output read by B's values)

Every matrix here has rank <= d_head and is kept factored: ``W_A W_B = L_A (R_A L_B) R_B`` with
``L`` [d, r], ``R`` [r, d]. With the Gram matrices ``G = L_A^T L_A``, ``H = R_B R_B^T`` [r, r],
``||L_A M R_B||_F^2 = trace(M^T G M H) = <G M H, M>``, so nothing d x d is formed. Model scores
are computed in float64. A pair where ``W_A`` or ``W_B`` is all zero has no score (0/0): it is
left out of the table and listed in the details.

The random baseline is the course's ``generate_single_random_comp_score``: four [d_model, d_head]
matrices with Kaiming-uniform init (``a = sqrt(5)``), ``W_A = A_left A_right^T``,
``W_B = B_left B_right^T``; here seeded, in float32 as the course. The course draws 300 samples (its text says 200) and
reports a mean of 0.03609 for d_model 768, d_head 64.

The K-composition full circuit (``find_K_comp_full_circuit``) of a previous-token head P and an
induction head I is the [d_vocab, d_vocab] matrix (query token, key token)::

    M = (W_E W_Q^I) (W_E W_V^P W_O^P W_K^I)^T

The course prints ``top_1_acc(M.T)``: for each *key* token (row of ``M^T``), is the argmax over
query tokens the same token (its label says "max-activating key", but that is ``rows``).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field, StringConstraints
from torch import Tensor

from harness.circuits.ov_topk import full_circuit_topk
from harness.context import MetricContext
from harness.core.heads import Head, HeadName
from harness.core.measurement import Measurement
from harness.core.model_handle import ModelHandle
from harness.registry import metric
from harness.core.value_shape import HEAD_PAIRS, NameSet, Scalar, Table, names

CompositionKind = Literal["q", "k", "v"]
LayerPairs = Literal["consecutive", "all"]
Orientation = Literal["rows", "columns"]


def grams(L: Tensor, R: Tensor) -> tuple[Tensor, Tensor]:
    """Gram matrices ``G = L^T L`` and ``H = R R^T`` [..., r, r] of a factored matrix ``L R``.

    L: [..., d, r]; R: [..., r, d]. Then ``||L M R||_F^2 = <G M H, M>`` for any M [..., r, r]:
    every Frobenius norm below needs only these [r, r] matrices.
    """
    return L.transpose(-1, -2) @ L, R @ R.transpose(-1, -2)


def gram_norm(G: Tensor, H: Tensor) -> Tensor:
    """``||L R||_F = sqrt(<G, H>)`` from ``G = L^T L``, ``H = R R^T`` [..., r, r]; returns [...]."""
    return (G * H).sum((-1, -2)).clamp(min=0).sqrt()


def sandwich_norm(G: Tensor, M: Tensor, H: Tensor) -> Tensor:
    """``||L M R||_F = sqrt(<G M H, M>)`` from ``G = L^T L``, ``H = R R^T``. G: [..., p, p]; M: [..., p, q]; H: [..., q, q]."""
    return ((G @ M @ H) * M).sum((-1, -2)).clamp(min=0).sqrt()


def composition_matrix(L_A: Tensor, R_A: Tensor, L_B: Tensor, R_B: Tensor) -> Tensor:
    """``comp(L_A[i] R_A[i], L_B[j] R_B[j])`` for every pair: [n_A, n_B] (NaN where a norm is 0).

    L_A: [n_A, d, r_A], R_A: [n_A, r_A, d]; L_B: [n_B, d, r_B], R_B: [n_B, r_B, d].
    ``W_A W_B = L_A (R_A L_B) R_B``, so ``||W_A W_B||_F = sandwich_norm(G_A, R_A L_B, H_B)``.
    """
    G_A, H_A = grams(L_A, R_A)
    G_B, H_B = grams(L_B, R_B)
    norm_A, norm_B = gram_norm(G_A, H_A), gram_norm(G_B, H_B)  # [n_A], [n_B]
    middle = torch.einsum("ird,jds->ijrs", R_A, L_B)  # [n_A, n_B, r_A, r_B]
    numerator = sandwich_norm(G_A[:, None], middle, H_B[None])
    return numerator / (norm_A[:, None] * norm_B[None, :])


def head_factors(model: ModelHandle, layer: int, kind: Literal["ov", "qk", "qk_t"]) -> tuple[Tensor, Tensor]:
    """Factors (L [head, d_model, d_head], R [head, d_head, d_model]) of a layer's W_OV, W_QK or W_QK^T, float64."""
    if kind == "ov":
        return model.W_V[layer].double(), model.W_O[layer].double()
    W_Q, W_K = model.W_Q[layer].double(), model.W_K[layer].double()
    if kind == "qk":
        return W_Q, W_K.transpose(-1, -2)
    return W_K, W_Q.transpose(-1, -2)


def composition_scores(model: ModelHandle, kind: CompositionKind, layer_a: int, layer_b: int) -> Tensor:
    """Scores [n_heads (layer_a), n_heads (layer_b)] of ``kind`` composition from layer_a to layer_b."""
    L_A, R_A = head_factors(model, layer_a, "ov")
    L_B, R_B = head_factors(model, layer_b, {"q": "qk", "k": "qk_t", "v": "ov"}[kind])
    return composition_matrix(L_A, R_A, L_B, R_B)


def composition_table(model: ModelHandle, kind: CompositionKind, pairs: LayerPairs) -> tuple[dict[str, float], list[str]]:
    """``({"A->B": score}, undefined pair names)`` of every head pair of ``kind`` composition.

    A in an earlier layer than B: consecutive layers or every earlier layer (``pairs: all``).
    """
    n_layers = model.shape.n_layers
    if n_layers < 2:
        raise ValueError(f"composition needs two layers; {model.identity.name!r} has {n_layers}")
    layer_pairs = [(a, a + 1) for a in range(n_layers - 1)] if pairs == "consecutive" else [
        (a, b) for b in range(n_layers) for a in range(b)
    ]
    value: dict[str, float] = {}
    undefined: list[str] = []
    for a, b in layer_pairs:
        scores = composition_scores(model, kind, a, b)
        for i in range(scores.shape[0]):
            for j in range(scores.shape[1]):
                name = f"{a}.{i}->{b}.{j}"
                if torch.isfinite(scores[i, j]):
                    value[name] = float(scores[i, j])
                else:
                    undefined.append(name)
    return value, undefined


@metric("composition.scores", value=Table(HEAD_PAIRS))
def composition_scores_metric(ctx: MetricContext, *, kind: CompositionKind, pairs: LayerPairs = "consecutive") -> Measurement:
    """Q-, K- or V-composition score ||W_A W_B||_F / (||W_A||_F ||W_B||_F) of every head pair, as ARENA 1.2.

    Value: table ``"A->B"`` (e.g. ``"0.7->1.4"``), A in an earlier layer than B: consecutive layers
    (default) or every earlier layer (``pairs: all``). Undefined pairs (an all-zero W_OV or W_QK)
    are left out and listed in ``details.undefined``. Weights only.
    """
    value, undefined = composition_table(ctx.model, kind, pairs)
    top = sorted(value, key=value.get, reverse=True)[:5]
    details = {"kind": kind, "pairs": pairs, "undefined": undefined, "top": {k: value[k] for k in top}}
    return Measurement(value, None, details)


@metric("composition.top_pairs", value=NameSet(HEAD_PAIRS))
def composition_top_pairs(
    ctx: MetricContext, *, kind: CompositionKind, k: Annotated[int, Field(ge=1)], pairs: LayerPairs = "consecutive",
) -> Measurement:
    """The ``k`` head pairs with the largest ``kind`` composition scores (as composition.scores).

    Value: the pair names (``"0.7->1.4"``), a set; ``details.scores`` has the top ``k + 3`` scores,
    so the margin to the first pair left out is in the record. "X and Y exceed every other pair"
    is ``equals: [X, Y]`` with ``k: 2``. A tie at the k-th place is an error (the set is not
    defined). Weights only.
    """
    value, undefined = composition_table(ctx.model, kind, pairs)
    ranked = sorted(value, key=value.get, reverse=True)
    if len(ranked) < k:
        raise ValueError(f"k={k} but only {len(ranked)} pairs have a score")
    if len(ranked) > k and value[ranked[k - 1]] == value[ranked[k]]:
        raise ValueError(f"tie at place {k}: {ranked[k - 1]} and {ranked[k]} both score {value[ranked[k]]}")
    shown = {name: value[name] for name in ranked[: k + 3]}
    return Measurement(ranked[:k], None, {"kind": kind, "pairs": pairs, "k": k, "scores": shown, "undefined": undefined})


def random_composition_scores(n_samples: int, d_model: int, d_head: int, seed: int, chunk: int = 50) -> Tensor:
    """``n_samples`` composition scores of random rank-d_head matrices, as the course draws them: [n_samples].

    Per sample, four [d_model, d_head] float32 matrices in the course's order (A_left, B_left,
    A_right, B_right), each ``kaiming_uniform_(a=sqrt(5))`` from one seeded generator;
    ``W_A = A_left A_right^T``, ``W_B = B_left B_right^T``. Computed ``chunk`` samples at a time.
    """
    generator = torch.Generator().manual_seed(seed)
    scores = []
    for start in range(0, n_samples, chunk):
        draws = torch.empty(min(chunk, n_samples - start), 4, d_model, d_head)
        for sample in draws:
            for matrix in sample:
                torch.nn.init.kaiming_uniform_(matrix, a=math.sqrt(5), generator=generator)
        A_left, B_left, A_right, B_right = draws.unbind(1)  # each [chunk, d_model, d_head], float32 as the course
        scores.append(composition_matrix_paired(A_left, A_right.transpose(-1, -2), B_left, B_right.transpose(-1, -2)))
    return torch.cat(scores)


def composition_matrix_paired(L_A: Tensor, R_A: Tensor, L_B: Tensor, R_B: Tensor) -> Tensor:
    """``comp(L_A[n] R_A[n], L_B[n] R_B[n])`` for each n (pairs, not all pairs): [n]. Shapes as composition_matrix."""
    G_A, H_A = grams(L_A, R_A)
    G_B, H_B = grams(L_B, R_B)
    return sandwich_norm(G_A, R_A @ L_B, H_B) / (gram_norm(G_A, H_A) * gram_norm(G_B, H_B))


@metric("composition.baseline", value=Table(names("mean", "std", "min", "max")))
def composition_baseline(
    ctx: MetricContext,
    *,
    n_samples: Annotated[int, Field(ge=2, le=100_000)] = 300,
    seed: int = 0,
    d_model: Annotated[int, Field(ge=1)] | None = None,
    d_head: Annotated[int, Field(ge=1)] | None = None,
) -> Measurement:
    """The course's random composition-score baseline: mean of ``n_samples`` scores of random matrices.

    Value: ``{"mean", "std", "min", "max"}`` (``std`` with ddof 0, as the course prints it; ``min``
    and ``max`` over the samples); the uncertainty of ``mean`` is its standard error. Shapes default to the model's d_model and d_head (course:
    768 and 64, mean 0.03609). Seeded; weights are not read.
    """
    d_model = ctx.model.shape.d_model if d_model is None else d_model
    d_head = ctx.model.shape.d_head if d_head is None else d_head
    if d_head > d_model:
        raise ValueError(f"d_head ({d_head}) must not exceed d_model ({d_model})")
    scores = random_composition_scores(n_samples, d_model, d_head, seed)
    mean, std = float(scores.mean()), float(scores.std(unbiased=False))
    standard_error = float(scores.std(unbiased=True)) / math.sqrt(n_samples)
    details = {"n_samples": n_samples, "seed": seed, "d_model": d_model, "d_head": d_head}
    return Measurement({"mean": mean, "std": std, "min": float(scores.min()), "max": float(scores.max())}, {"mean": standard_error}, details)


def baseline_z_score(score: float, baseline: Tensor) -> float:
    """``(score - mean) / std`` of ``score`` against the random scores ``baseline`` [n] (std with ddof 0)."""
    return (score - float(baseline.mean())) / float(baseline.std(unbiased=False))


@metric("composition.baseline_z", value=Scalar())
def composition_baseline_z(
    ctx: MetricContext,
    *,
    kind: CompositionKind,
    pair: Annotated[str, StringConstraints(pattern=r"^\d+\.\d+->\d+\.\d+$")],
    n_samples: Annotated[int, Field(ge=2, le=100_000)] = 300,
    seed: int = 0,
) -> Measurement:
    """How far one pair's composition score lies from the random baseline, in the baseline's standard deviations.

    Value: ``(score - mean) / std``, with score as composition.scores and mean, std of
    composition.baseline (``n_samples`` seeded random pairs of the model's d_model and d_head).
    "Far above the baseline" is a large positive value, "below" a negative one; a random pair is
    about standard normal. Weights only.
    """
    source, target = (Head.parse(part) for part in pair.split("->"))
    if source.layer >= target.layer:
        raise ValueError(f"pair {pair}: the first head must be in an earlier layer than the second")
    for head in (source, target):
        if head.layer >= ctx.model.shape.n_layers or head.head >= ctx.model.shape.n_heads:
            raise ValueError(f"pair {pair}: head {head} is not in the model")
    score = float(composition_scores(ctx.model, kind, source.layer, target.layer)[source.head, target.head])
    if not math.isfinite(score):
        raise ValueError(f"pair {pair} has no {kind}-composition score (an all-zero W_OV or W_QK)")
    baseline = random_composition_scores(n_samples, ctx.model.shape.d_model, ctx.model.shape.d_head, seed)
    details = {"kind": kind, "pair": pair, "score": score, "baseline_mean": float(baseline.mean()),
               "baseline_std": float(baseline.std(unbiased=False)), "n_samples": n_samples, "seed": seed}
    return Measurement(baseline_z_score(score, baseline), None, details)


# ------------------------------------------------------------------------------------------------
# K-composition full circuit
# ------------------------------------------------------------------------------------------------


def kcomp_circuit_factors(model: ModelHandle, prev: Head, ind: Head) -> tuple[Tensor, Tensor]:
    """Query and key factors of the K-composition full circuit ``M = Q K^T``: Q, K [d_vocab, d_head].

    ``Q = W_E W_Q^ind`` (query token), ``K = W_E W_V^prev W_O^prev W_K^ind`` (key token, through prev).
    """
    W_E = model.W_E
    query = W_E @ model.W_Q[ind.layer, ind.head]
    key = ((W_E @ model.W_V[prev.layer, prev.head]) @ model.W_O[prev.layer, prev.head]) @ model.W_K[ind.layer, ind.head]
    return query, key


def argmax_top1(left: Tensor, right: Tensor) -> tuple[int, int]:
    """Rows ``i`` of ``M = left right^T`` whose argmax is ``i`` (the course's ``top_1_acc``), and tied rows.

    left: [n, r]; right: [n, r]. The exact kernel :func:`full_circuit_topk` with ``W_E = left``,
    identity inner factors [r, r] and ``W_U = right^T`` counts, per row, the entries above and tied
    with the diagonal; ``argmax`` takes the first maximum, as ``torch.argmax`` (``ties="argmax"``).
    Tied rows: the diagonal equals the row maximum and the maximum is attained more than once.
    """
    identity = torch.eye(left.shape[1], dtype=left.dtype)
    result = full_circuit_topk(left, identity, identity, right.T)
    hits = int(result.correct(1, "argmax").sum())
    ties = int(((result.above == 0) & (result.ties > 0)).sum())
    return hits, ties


@metric("composition.kcomp_full_circuit_top1", heavy=True, value=Scalar())
def kcomp_full_circuit_top1(ctx: MetricContext, *, prev_head: HeadName, ind_head: HeadName, orientation: Orientation) -> Measurement:
    """Top-1 accuracy of the K-composition full circuit W_E W_Q^I (W_E W_OV^P W_K^I)^T (query x key tokens).

    ``orientation: rows``: for each query token, is the best key token the same token (what the
    course's label "max-activating key" describes). ``orientation: columns``: for each key token, is
    the best query token the same (what the course's code ``top_1_acc(K_comp_circuit.T)`` computes).
    No d_vocab x d_vocab matrix is formed (the exact one-pass top-k kernel). Weights only.
    """
    prev, ind = Head.parse(prev_head), Head.parse(ind_head)
    if prev.layer >= ind.layer:
        raise ValueError(f"prev_head {prev_head} must be in an earlier layer than ind_head {ind_head}")
    query, key = kcomp_circuit_factors(ctx.model, prev, ind)
    left, right = (query, key) if orientation == "rows" else (key, query)
    hits, ties = argmax_top1(left, right)
    n = query.shape[0]
    details = {"prev_head": prev_head, "ind_head": ind_head, "orientation": orientation, "rows": n, "hits": hits, "tied_rows": ties}
    return Measurement(hits / n, None, details)
