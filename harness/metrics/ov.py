"""Full OV circuit metrics: how well a head (or several together) copies tokens.

The full OV circuit of heads ``H`` is ``M = W_E (sum_{h in H} W_V[h] W_O[h]) W_U`` (V x V, row =
source token, column = output logit). Its top-k accuracy is the fraction of rows whose diagonal
entry is among the row's k largest (ARENA 1.2's ``top_1_acc``: argmax over each row, compared with
the row index, over all ``d_vocab`` rows). The matrix is never formed: the exact one-pass kernel of
:mod:`harness.circuits.ov_topk` counts, per row, the entries above and tied with the diagonal,
which answers every k at once.
"""

from __future__ import annotations

import time
from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from harness.circuits.factored import FactoredCircuit
from harness.circuits.ov_topk import TiePolicy, TopKResult, full_circuit_topk
from harness.context import MetricContext
from harness.core.heads import Head, HeadName
from harness.core.measurement import Measurement
from harness.registry import metric
from harness.core.value_shape import Table, numbered

def head_circuit(ctx: MetricContext, heads: list[str]) -> FactoredCircuit:
    """The effective OV circuit of ``heads``: ``left`` [d_model, d_head*|H|], ``right`` [d_head*|H|, d_model].

    ``left @ right = sum_h W_V[h] W_O[h]`` (:meth:`FactoredCircuit.ov_of_heads`).
    """
    parsed = [Head.parse(name) for name in heads]
    return FactoredCircuit.ov_of_heads(ctx.model.W_V, ctx.model.W_O, [(h.layer, h.head) for h in parsed])


def topk_table(result: TopKResult, ks: list[int], ties: TiePolicy) -> dict[str, float]:
    """``{"top1": acc, "top5": acc, ...}`` under the tie policy."""
    return {f"top{k}": result.accuracy(k, ties) for k in ks}


@metric("ov.full_circuit_topk", heavy=True, value=Table(numbered("top")))
def full_circuit_topk_metric(
    ctx: MetricContext,
    *,
    heads: Annotated[list[HeadName], Field(min_length=1)],
    ks: Annotated[list[Annotated[int, Field(ge=1)]], Field(min_length=1)] = [1, 5, 10],
    ties: TiePolicy = "argmax",
) -> Measurement:
    """Top-k copying accuracy of the full OV circuit of ``heads`` (effective circuit if several).

    Value: ``{"top1": ..., "top5": ...}`` (select one with ``select: top1``). ``ties: argmax``
    counts a tie the way ``torch.argmax`` breaks it (first index wins), as the course does;
    ``pessimistic`` counts every tie against the diagonal, ``optimistic`` for it. Details: rows,
    rows whose answer depends on the tie policy (per k), median margin, rows rechecked in float64.
    """
    start = time.perf_counter()
    circuit = head_circuit(ctx, heads)
    device = "cuda" if ctx.model.W_E.is_cuda else None
    result = full_circuit_topk(ctx.model.W_E, circuit.left, circuit.right, ctx.model.W_U, device=device)
    details = {
        "heads": heads,
        "rows": result.n_rows,
        "tie_rows": {f"top{k}": result.n_tie_rows(k) for k in ks},
        "all_policies": {policy: topk_table(result, ks, policy) for policy in ("argmax", "pessimistic", "optimistic")},
        "median_margin": float(np.median(result.margin)),
        "rows_rechecked_float64": result.n_rechecked,
        "seconds": round(time.perf_counter() - start, 3),
    }
    return Measurement(topk_table(result, ks, ties), None, details)
