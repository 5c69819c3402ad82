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
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Annotated, Any, Callable, Literal

import torch
from pydantic import Field

from harness.circuits.factored import FactoredCircuit
from harness.circuits.low_rank import TOP_K, LowRankFit, Objective, fit_low_rank_copying, prepare_bases
from harness.circuits.ov_tiles import single_threaded_blas
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
    stop_at_bound: bool = False, threads: int | None = None,
) -> LowRankFit:
    """The fit of these settings, trained once per session (a curve and a single-rank claim share it).
    ``threads``: its worker threads (not part of the key: the fit is the same on any number)."""
    settings = dict(rank=rank, seed=seed, max_steps=max_steps, max_seconds=max_seconds, batch_rows=batch_rows,
                    lr=lr, margin_lr=margin_lr, objective=objective, device=_device(device))
    optional = (("negatives", negatives), ("eval_every", eval_every), ("bulk", bulk), ("bulk_weight", bulk_weight),
                ("stop_at_bound", stop_at_bound or None))
    for name, value in optional:
        if value is not None:  # absent otherwise: the key of every fit without it is unchanged
            settings[name] = value
    identity = ctx.model.identity
    key = (identity.key, "low_rank.fit", json.dumps(settings, sort_keys=True))
    return ctx.session.memoised(key, lambda: fit_low_rank_copying(
        ctx.model.W_E, ctx.model.W_U, progress=ctx.session.progress, weights_key=_weights_key(ctx.model), threads=threads,
        **settings))


def _weights_key(model: ModelHandle) -> str | None:
    """The key under which the fits keep the orthonormal bases of ``model``'s W_E and W_U: its
    identity's, where that names these exact weights (a sha256 of them), else None (then the
    bases are found by the hash of the weights' bytes)."""
    return model.identity.key if model.identity.weights_sha256 is not None else None


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


def head_point(model: ModelHandle, group: list[str], device: Device, workers: int | None = None) -> dict[str, object]:
    """The curve point of the heads' effective OV circuit: numerical rank, top-1, top-5 (``workers``:
    the OV kernel's threads, None for its own choice; the counts never depend on them)."""
    parsed = [_parse_head(model, name) for name in group]
    circuit = FactoredCircuit.ov_of_heads(model.W_V, model.W_O, [(h.layer, h.head) for h in parsed]).double()
    rank = circuit.numerical_rank()  # of the d x d OV matrix itself
    on = _device(device)  # top-1 and top-5 only: on the CPU a row is settled at TOP_K = 5 entries above its diagonal
    result = full_circuit_topk(model.W_E, circuit.left, circuit.right, model.W_U, device=on,
                               margins=False, k_max=None if on is not None else TOP_K,
                               workers=workers if on is None else None)
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
    On the CPU without a time budget (``max_seconds_per_rank: null``) the fits and head points run
    side by side on torch's threads, one thread each (:func:`_side_by_side`): the same curve.
    """
    for group in heads:
        for name in group:
            _parse_head(ctx.model, name)
    points: list[dict[str, object]] = []
    fits: dict[str, dict[str, object]] = {}
    ordered = sorted(set(ranks))
    groups = [list(dict.fromkeys(group)) for group in heads]

    def fit(rank: int, threads: int | None = None) -> LowRankFit:
        return _fit(ctx, rank, seed=seed, max_steps=max_steps, max_seconds=max_seconds_per_rank, batch_rows=batch_rows,
                    lr=lr, margin_lr=margin_lr, objective=objective, device=device, negatives=negatives,
                    eval_every=eval_every, bulk=bulk, bulk_weight=bulk_weight, stop_at_bound=stop_at_bound,
                    threads=threads)

    lanes = _lanes(device, len(ordered) + len(groups), max_seconds_per_rank)
    if lanes > 1:
        trained, measured = _side_by_side(ctx, lanes, ordered, groups, fit, device)
    else:
        trained = {rank: fit(rank) for rank in ordered}
        measured = [head_point(ctx.model, group, device) for group in groups]
    for rank in ordered:
        found = trained[rank]
        points.append({"label": rank_label(rank), "rank": rank, "top1": found.top1, "top5": found.top5,
                       "kind": "trained", "heads": [], "bound": "lower"})
        fits[str(rank)] = found.summary()
    points += measured
    summary = {
        "effective_rank": {r: f["effective_rank"] for r, f in fits.items()},
        "fits": fits,
        "ties": "pessimistic",
    }
    return Measurement(points, None, summary)


def _lanes(device: Device, jobs: int, max_seconds: float | None) -> int:
    """How many of the curve's fits and head points run side by side: torch's thread count on the
    CPU (one thread each), else 1.  A fit with a time budget runs alone (a side-by-side neighbour
    would eat into it, and where it stops would depend on the neighbour)."""
    if _device(device) is not None or max_seconds is not None:
        return 1
    return max(1, min(torch.get_num_threads(), jobs))


def _side_by_side(ctx: MetricContext, lanes: int, ranks: list[int], groups: list[list[str]],
                  fit: Callable[..., LowRankFit], device: Device) -> tuple[dict[int, LowRankFit], list[dict[str, object]]]:
    """The curve's fits and head points on ``lanes`` threads, one thread each, the largest first
    (fits from the highest rank down, then head groups from the largest): every fit is the same on
    one thread as on several (:func:`harness.circuits.low_rank.fit_low_rank_copying`) and every
    count the same on any number of workers, so the curve is the one computed in turn, while the
    serial parts of one fit's steps overlap another's work.  BLAS stays single-threaded throughout
    (a fit ending must not hand BLAS its threads back while another runs)."""
    model = ctx.model
    prepare_bases(model.W_E, model.W_U, _weights_key(model))  # the key _fit gives the fits
    order = sorted(range(len(groups)), key=lambda k: -len(groups[k]))
    with single_threaded_blas(), ThreadPoolExecutor(lanes, thread_name_prefix="rank-curve") as pool:
        fit_jobs: dict[int, Future[LowRankFit]] = {rank: pool.submit(fit, rank, 1) for rank in sorted(ranks, reverse=True)}
        head_jobs: dict[int, Future[Any]] = {k: pool.submit(head_point, model, groups[k], device, 1) for k in order}
        trained = {rank: job.result() for rank, job in fit_jobs.items()}
        measured = [head_jobs[k].result() for k in range(len(groups))]
    return trained, measured


def _parse_head(model: ModelHandle, name: str) -> Head:
    head = Head.parse(name)
    if head.layer >= model.shape.n_layers or head.head >= model.shape.n_heads:
        raise ValueError(
            f"head {name!r} is not in the model ({model.shape.n_layers} layers x {model.shape.n_heads} heads)"
        )
    return head
