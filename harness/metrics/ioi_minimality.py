"""Minimality scores of a mean-ablation circuit (ARENA 1.4.1 section 5; the paper's Fig. 7).

``C`` is a circuit given as ``keep`` ({named position: heads}, as ``ioi.circuit_mean_ablation``):
``F(C)`` is the mean END logit difference of the run in which every head output is replaced by its
ABC template mean except each kept head at its position. ``C \\ K`` drops the heads of ``K`` from
every list of ``keep``. For a circuit head ``v`` and its set ``K_v`` (the course's
``K_FOR_EACH_COMPONENT``, from the paper's "minimality sets", Fig. 20)::

    score(v) = |F(C \\ K_v) - F(C \\ (K_v u {v}))| / F(M)

with ``F(M)`` the full (unablated) model's mean logit difference, signed as the course divides
(a model that prefers S has negative scores): the course's ``get_all_minimality_scores``. A head whose output does not reach the logits (a zero ``W_O``)
scores exactly 0, whatever ``K``.
"""

from __future__ import annotations

import json
from typing import Annotated

from pydantic import Field
from torch import Tensor

from harness.context import MetricContext
from harness.core.details import HeadScores
from harness.core.heads import HeadName, sort_heads
from harness.core.measurement import Measurement
from harness.core.value_shape import HEADS, NameSet, OneOf, Table
from harness.metrics.ioi import answer_ids, end_positions, final_logit_diff
from harness.metrics.ioi_circuit import NamedPosition, all_template_means, circuit_logit_diffs
from harness.registry import metric


def without(keep: dict[str, list[str]], removed: frozenset[str]) -> dict[str, list[str]]:
    """``C \\ K``: ``keep`` with the heads of ``removed`` dropped from every position's list."""
    return {where: [head for head in heads if head not in removed] for where, heads in keep.items()}


def check_sets(keep: dict[str, list[str]], k_sets: dict[str, list[str]]) -> None:
    """Each ``v`` and every head of its ``K_v`` is a circuit head, and ``v`` is not in ``K_v`` (the course asserts it)."""
    circuit = {head for heads in keep.values() for head in heads}
    for v, k in k_sets.items():
        outside = sorted({v, *k} - circuit)
        if outside:
            raise ValueError(f"k_sets[{v!r}]: heads {outside} are not in the circuit (keep)")
        if v in k:
            raise ValueError(f"k_sets[{v!r}]: {v} is in its own K")


@metric("ioi.minimality_scores", needs_inputs=True, value=OneOf(Table(HEADS), NameSet(HEADS)), details=(HeadScores,))
def minimality_scores(
    ctx: MetricContext, *, keep: dict[NamedPosition, list[HeadName]], k_sets: Annotated[dict[HeadName, list[HeadName]], Field(min_length=1)],
    above: Annotated[float, Field(ge=0)] | None = None,
) -> Measurement:
    """Minimality score of each head ``v`` of ``k_sets``: ``|F(C \\ K_v) - F(C \\ (K_v u {v}))| / F(M)`` (module docstring).

    ``keep`` is the circuit ``C`` with its kept positions, ``k_sets`` maps each scored head to its
    ``K_v`` (heads of ``C``; ``v`` not in ``K_v``). Value: table ``"L.H"`` of the scores (fractions
    of the full model's logit difference; uncertainty: the standard error over prompts of the
    per-prompt difference, over ``|F(M)|``), or with ``above`` the set of heads scoring above it.
    Details: ``scores``, ``f_model`` and per head ``F(C \\ K_v)`` and ``F(C \\ (K_v u {v}))``.
    Runs with the same removed set are computed once per session (claims that differ in ``above``
    or ``k_sets`` share them).
    """
    check_sets(keep, k_sets)
    means: dict[int, Tensor] = {}
    runs: set[frozenset[str]] = set()
    circuit = json.dumps(keep, sort_keys=True)

    def f(removed: frozenset[str]) -> Tensor:
        runs.add(removed)

        def compute() -> Tensor:
            if not means:  # the ABC means are needed only when some run is not yet in the session
                means.update(all_template_means(ctx))
            return circuit_logit_diffs(ctx, without(keep, removed), means)
        key = (ctx.model.identity.key, ctx.require_inputs().key, "minimality", circuit, *sorted(removed))
        return ctx.session.memoised(key, compute)

    f_model = float(final_logit_diff(ctx.forward().logits, answer_ids(ctx), end_positions(ctx)).mean())
    if f_model == 0:
        raise ValueError("the full model's mean logit difference F(M) is 0: minimality scores are undefined")
    heads = sort_heads(sorted(k_sets))
    scores: dict[str, float] = {}
    errors: dict[str, float] = {}
    pairs: dict[str, dict[str, float]] = {}
    for v in heads:
        without_k, without_kv = f(frozenset(k_sets[v])), f(frozenset(k_sets[v]) | {v})
        difference = (without_k - without_kv).double()  # [batch]
        scores[v] = abs(float(difference.mean())) / f_model
        if difference.numel() > 1:
            errors[v] = float(difference.std(unbiased=True) / difference.numel() ** 0.5) / abs(f_model)
        pairs[v] = {"without_k": float(without_k.mean()), "without_k_and_v": float(without_kv.mean())}
    details = {"scores": scores, "f_model": f_model, "runs": pairs, "k_sets": {v: sorted(k_sets[v]) for v in heads}, "n_ablation_runs": len(runs)}
    if above is not None:
        chosen = [v for v in sorted(heads, key=lambda n: -scores[n]) if scores[v] > above]
        return Measurement(chosen, None, {**details, "threshold": above})
    return Measurement(scores, errors or None, details)
