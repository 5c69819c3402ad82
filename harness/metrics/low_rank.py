"""Achievable single-head copying accuracy at rank r (ARENA 1.2's "rank 64 versus 128" question).

The course explains why copying is split across heads 1.4 and 1.10 by rank: one W_V W_O has rank
64, two have rank 128, "a better approximation of the 50k x 50k copying matrix".  These metrics
measure what rank alone allows: the top-1/top-5 copying accuracy of the best rank-r matrix ``A B``
found for ``W_E A B W_U`` with the model's own embedding and unembedding
(:func:`harness.circuits.low_rank.fit_low_rank_copying`: closed-form least-squares start, softmax
cross-entropy over the whole vocabulary, then a multiclass hinge), against the model's actual heads.

A trained figure is a lower bound on what rank r can reach, whether or not the fit converged:
some rank-r matrix reaches it, a better one may exist (the problem is not convex, and converged
fits from other seeds land elsewhere: on the trained toy at rank 2, 86 to 90 of 256 tokens).
So these figures carry ``bound="lower"`` (the trained points of a curve as a field of the point),
and a verdict decides only what a lower bound can: "rank r reaches at least x" when it does, "rank
r cannot reach x" never.  Deterministic for a seed and a step budget on one machine; across
machines (other BLAS kernels) the path, and so the figure, can move (see ``benchmarks/fit_spread.py``).
Accuracies count ties with the diagonal as wrong.
"""

from __future__ import annotations

import json
from typing import Annotated, Literal

import torch
from pydantic import Field

from harness.circuits.factored import FactoredCircuit
from harness.circuits.low_rank import TOP_K, LowRankFit, Objective, fit_low_rank_copying
from harness.circuits.ov_topk import full_circuit_topk
from harness.context import MetricContext
from harness.core.heads import Head, HeadName
from harness.core.measurement import Measurement
from harness.core.model_handle import ModelHandle
from harness.registry import metric
from harness.core.value_shape import Curve, HEAD_GROUPS, Table, either, labelled, numbered
from harness.core.details import RankFits

Device = Literal["auto", "cpu", "cuda"]
HeadGroup = Annotated[list[HeadName], Field(min_length=1)]
"""Heads whose OV circuits are summed into one point of ``rank_curve`` (``["1.4", "1.10"]``)."""

DEFAULT_RANKS = [1, 2, 4, 8, 16, 32, 64, 128]
Rank = Annotated[int, Field(ge=1, le=4096)]
Seconds = Annotated[float, Field(gt=0, le=86400)]
Negatives = Annotated[int, Field(ge=1)]
EvalEvery = Annotated[int, Field(ge=1)]
Bulk = Annotated[int, Field(ge=1)]
BulkWeight = Annotated[float, Field(gt=0, le=1)]


def _device(device: Device) -> str | None:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else None
    return None if device == "cpu" else device


def _fit(
    ctx: MetricContext, rank: int, *, seed: int, max_steps: int | None, max_seconds: float | None,
    batch_rows: int, lr: float, margin_lr: float, objective: Objective, device: Device, negatives: int | None = None,
    eval_every: int | None = None, bulk: int | None = None, bulk_weight: float | None = None,
    stop_at_bound: bool = False,
) -> LowRankFit:
    """The fit of these settings, trained once per session (a curve and a single-rank claim share it)."""
    settings = dict(rank=rank, seed=seed, max_steps=max_steps, max_seconds=max_seconds, batch_rows=batch_rows,
                    lr=lr, margin_lr=margin_lr, objective=objective, device=_device(device))
    optional = (("negatives", negatives), ("eval_every", eval_every), ("bulk", bulk), ("bulk_weight", bulk_weight),
                ("stop_at_bound", stop_at_bound or None))
    for name, value in optional:
        if value is not None:  # absent otherwise: the key of every fit without it is unchanged
            settings[name] = value
    identity = ctx.model.identity
    key = (identity.key, "low_rank.fit", json.dumps(settings, sort_keys=True))
    weights_key = identity.key if identity.weights_sha256 is not None else None  # names these exact weights
    return ctx.session.memoised(key, lambda: fit_low_rank_copying(
        ctx.model.W_E, ctx.model.W_U, progress=ctx.session.progress, weights_key=weights_key, **settings))


@metric("low_rank.achievable_accuracy", fitted=True, heavy=True, value=Table(numbered("top")))
def achievable_accuracy(
    ctx: MetricContext,
    *,
    rank: Rank,
    seed: int = 0,
    max_steps: Annotated[int, Field(ge=0)] | None = None,
    max_seconds: Seconds | None = 300.0,
    batch_rows: Annotated[int, Field(ge=1)] = 2048,
    lr: Annotated[float, Field(gt=0)] = 0.05,
    margin_lr: Annotated[float, Field(gt=0)] = 0.01,
    objective: Objective = "ce+margin",
    device: Device = "auto",
    negatives: Negatives | None = None,
    eval_every: EvalEvery | None = None,
    bulk: Bulk | None = None,
    bulk_weight: BulkWeight | None = None,
    stop_at_bound: bool = False,
) -> Measurement:
    """Top-1/top-5 copying accuracy of the best rank-``rank`` matrix found for W_E A B W_U.

    Value: ``{"top1": ..., "top5": ...}`` over the full vocabulary (ties count as wrong), of the
    fit (``objective``: cross-entropy, then the hinge from its best point) that stops when the
    monitored top-1 stops improving (``stopped_by: converged``), after ``max_steps`` per phase or
    at the ``max_seconds`` wall-clock budget.  A lower bound on what rank r can
    reach (``bound="lower"``).  Details: the loss, steps, stopping reason, settings, timings and the
    convergence trace.
    Weights only.  Give ``max_steps`` for a result that does not depend on the machine's speed.
    ``negatives``: K, train each row against its K hardest columns only (the restricted step of
    :mod:`harness.circuits.low_rank_sparse`, several times cheaper per step on a large vocabulary);
    the figure is still the exact full-vocabulary count.  ``eval_every``: steps between the
    monitor's evaluations (8,192 rows against every column; default half an epoch): with a small
    ``max_steps``, ``eval_every = max_steps`` monitors only each phase's start and end.
    ``bulk``: m, with ``negatives``, the cross-entropy also holds m uniformly sampled columns per
    step standing for the rest of each row's softmax, weighted by ``bulk_weight`` (1: an unbiased
    estimate of the full softmax; smaller: between it and the hardest columns alone).
    ``stop_at_bound``: a rank-1 fit whose start already reaches the rank-1 bound (2 rows, counted
    exactly) is not trained (``stopped_by: "bound"``).
    """
    fit = _fit(ctx, rank, seed=seed, max_steps=max_steps, max_seconds=max_seconds, batch_rows=batch_rows,
               lr=lr, margin_lr=margin_lr, objective=objective, device=device, negatives=negatives,
               eval_every=eval_every, bulk=bulk, bulk_weight=bulk_weight, stop_at_bound=stop_at_bound)
    return Measurement({"top1": fit.top1, "top5": fit.top5}, None, fit.summary(), bound="lower")


def head_point(model: ModelHandle, group: list[str], device: Device) -> dict[str, object]:
    """The curve point of the heads' effective OV circuit: numerical rank, top-1, top-5."""
    parsed = [_parse_head(model, name) for name in group]
    circuit = FactoredCircuit.ov_of_heads(model.W_V, model.W_O, [(h.layer, h.head) for h in parsed]).double()
    rank = circuit.numerical_rank()  # of the d x d OV matrix itself
    on = _device(device)  # top-1 and top-5 only: on the CPU a row is settled at TOP_K = 5 entries above its diagonal
    result = full_circuit_topk(model.W_E, circuit.left, circuit.right, model.W_U, device=on,
                               margins=False, k_max=None if on is not None else TOP_K)
    names = [str(h) for h in parsed]
    return {"label": group_label(names), "rank": rank, "top1": result.accuracy(1, "pessimistic"),
            "top5": result.accuracy(5, "pessimistic"), "kind": "head", "heads": names}


def group_label(heads: list[str]) -> str:
    """A head group's curve label, the heads joined by ``+`` (``"1.4+1.10"``)."""
    return "+".join(heads)


def rank_label(rank: int) -> str:
    """A trained point's curve label (``"rank=64"``)."""
    return f"rank={rank}"


@metric("low_rank.rank_curve", fitted=True, heavy=True, details=(RankFits,),
        value=Curve(either(labelled("rank"), HEAD_GROUPS), ("top1", "top5", "rank")))
def rank_curve(
    ctx: MetricContext,
    *,
    ranks: Annotated[list[Rank], Field(min_length=0)] = DEFAULT_RANKS,
    heads: list[HeadGroup] = [],
    seed: int = 0,
    max_steps: Annotated[int, Field(ge=0)] | None = None,
    max_seconds_per_rank: Seconds | None = 300.0,
    batch_rows: Annotated[int, Field(ge=1)] = 2048,
    lr: Annotated[float, Field(gt=0)] = 0.05,
    margin_lr: Annotated[float, Field(gt=0)] = 0.01,
    objective: Objective = "ce+margin",
    device: Device = "auto",
    negatives: Negatives | None = None,
    eval_every: EvalEvery | None = None,
    bulk: Bulk | None = None,
    bulk_weight: BulkWeight | None = None,
    stop_at_bound: bool = False,
) -> Measurement:
    """Copying accuracy against rank: trained rank-r matrices, and the model's heads as points.

    Value: a curve, one point per rank ``{"label": "rank=R", "rank", "top1", "top5", "kind":
    "trained", "heads": [], "bound": "lower"}`` (what the fit found: a lower bound) and one per head group ``{"label": "1.4+1.10", "rank": numerical rank
    of sum W_V W_O, ..., "kind": "head", "heads": [...]}`` (a group of several heads is their
    effective circuit).  A claim picks one figure with ``select: "rank=64/top1"`` or
    ``select: "1.4+1.10/top1"``.  Ranks above what
    W_E and W_U allow are fitted at the largest possible rank (``details.effective_rank``).
    Details: each trained fit's summary (steps, loss, stopping reason, trace).  ``negatives``,
    ``eval_every``, ``bulk``, ``bulk_weight``, ``stop_at_bound``: as for ``low_rank.achievable_accuracy``.
    """
    for group in heads:
        for name in group:
            _parse_head(ctx.model, name)
    points: list[dict[str, object]] = []
    fits: dict[str, dict[str, object]] = {}
    for rank in sorted(set(ranks)):
        fit = _fit(ctx, rank, seed=seed, max_steps=max_steps, max_seconds=max_seconds_per_rank, batch_rows=batch_rows,
                   lr=lr, margin_lr=margin_lr, objective=objective, device=device, negatives=negatives,
                   eval_every=eval_every, bulk=bulk, bulk_weight=bulk_weight, stop_at_bound=stop_at_bound)
        points.append({"label": rank_label(rank), "rank": rank, "top1": fit.top1, "top5": fit.top5,
                       "kind": "trained", "heads": [], "bound": "lower"})
        fits[str(rank)] = fit.summary()
    for group in heads:
        points.append(head_point(ctx.model, list(dict.fromkeys(group)), device))
    summary = {
        "effective_rank": {r: f["effective_rank"] for r, f in fits.items()},
        "fits": fits,
        "ties": "pessimistic",
    }
    return Measurement(points, None, summary)


def _parse_head(model: ModelHandle, name: str) -> Head:
    head = Head.parse(name)
    if head.layer >= model.shape.n_layers or head.head >= model.shape.n_heads:
        raise ValueError(
            f"head {name!r} is not in the model ({model.shape.n_layers} layers x {model.shape.n_heads} heads)"
        )
    return head
