"""Indirect object identification (ARENA 1.4.1): logit difference and its direct attribution.

Inputs are ``ioi_prompts`` (:mod:`fixtures.inputs`): ``B`` prompts of one length ``P`` with
answers ``(c_b, w_b)`` (correct = indirect object, incorrect = subject) as token ids in
``meta["answers"]``. Everything is read at the final position ``P-1``, where the model predicts
the indirect object.

Logit difference (the course's ``logits_to_ave_logit_diff``)::

    LD[b] = logits[b, P-1, c_b] - logits[b, P-1, w_b]

Direct attribution (the course's ``residual_stack_to_logit_diff``). With a folded final norm the
logits are ``N(x) @ W_U + b_U`` where ``x = resid_post[L-1][b, P-1]`` and ``N(x) = (x - mean(x)) / s``
(``LNPre``), ``x / s`` (``RMSPre``) or ``x`` (no norm), ``s = ln_final.hook_scale[b, P-1]`` cached.
For a fixed ``s``, ``N`` is linear, so with the logit-difference direction
``d_b = W_U[:, c_b] - W_U[:, w_b]``::

    LD[b] = sum_parts N(part[b]) . d_b  +  (b_U[c_b] - b_U[w_b])

over the parts that sum to ``x``: ``embed``, ``pos_embed`` (standard positions only), each
head's output ``z[b, P-1, l, h] @ W_O[l, h]`` (``"L.H"``), each MLP's output (``"mlp.L"``) and the
attention output biases (``attn_bias`` = ``sum_l b_O[l]``), and ``unembed_bias``
(``b_U[c_b] - b_U[w_b]``): :mod:`harness.circuits.dla`'s parts, the same names as
``attribution.direct_logit``'s. Applying ``N`` with the cached ``s`` to
one part is what ``cache.apply_ln_to_stack(stack, layer=-1, pos_slice=-1)`` does. Models with an
unfolded final norm (weights ``w``, ``b``: ``LN``, ``RMS``) are rejected: the parts would be wrong.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from harness.context import MetricContext
from harness.circuits.dla import effective_directions, gather_positions, logit_diff_directions, logit_diff_parts, part_hooks
from harness.core.heads import head_names
from harness.core.measurement import Measurement
from harness.metrics.loss import mean_and_error
from harness.core.model_handle import Activations, ModelHandle
from harness.registry import metric
from harness.core.value_shape import HEADS, NameSet, OneOf, POSITIONS, Table, either, names

SUM_CHECK_ATOL = 1e-3
"""How far (scaled by ``max(1, max |LD|)``) the parts may sum from the logit difference."""

Sign = Literal["positive", "negative"]


def answer_ids(ctx: MetricContext) -> Tensor:
    """The answers [batch, 2] (correct, incorrect) of ``ioi_prompts`` inputs; raises for other inputs."""
    inputs = ctx.require_inputs()
    if "answers" not in inputs.meta:
        raise ValueError(f"IOI metrics need inputs: ioi_prompts or ioi_dataset (answers as token ids), not {inputs.kind}")
    return torch.tensor(inputs.meta["answers"], dtype=torch.int64)


def end_positions(ctx: MetricContext) -> Tensor:
    """The read position of each prompt [batch]: ``word_idx["end"]`` of ``ioi_dataset``, else the final position."""
    inputs = ctx.require_inputs()
    word_idx = inputs.meta.get("word_idx")
    if word_idx is not None:
        return torch.tensor(word_idx["end"], dtype=torch.int64)
    return torch.full((inputs.tokens.shape[0],), inputs.tokens.shape[1] - 1, dtype=torch.int64)


def final_logit_diff(logits: Tensor, answers: Tensor, ends: Tensor | None = None) -> Tensor:
    """``LD[b] = logits[b, e_b, c_b] - logits[b, e_b, w_b]`` [batch] from logits [batch, pos, d_vocab].

    ``e_b = ends[b]`` (default: the final position, ``-1``).
    """
    if ends is None:
        final = logits[:, -1].float().cpu()  # [batch, d_vocab]
    else:
        final = logits[torch.arange(logits.shape[0]), ends.to(logits.device)].float().cpu()
    picked = final.gather(-1, answers)  # [batch, 2]
    return picked[:, 0] - picked[:, 1]


def checked_parts(ctx: MetricContext) -> tuple[dict[str, Tensor], Tensor, float]:
    """``(parts, LD, sum_check)``; raises unless the parts sum to the logit difference (fail closed)."""
    answers = answer_ids(ctx)
    forward = ctx.forward()
    ends = end_positions(ctx)  # [batch]
    forward.prefetch(part_hooks(ctx.model), logits=True)  # one pass, not one per kind of activation and one for the logits
    parts = logit_diff_parts(ctx.model, forward.activations, answers, ends)
    actual = final_logit_diff(forward.logits, answers, ends)  # [batch]
    sum_check = float((torch.stack(list(parts.values())).sum(0) - actual).abs().max())
    tolerance = SUM_CHECK_ATOL * max(1.0, float(actual.abs().max()))
    if not sum_check <= tolerance:
        raise ValueError(f"the direct parts do not sum to the logit difference: max error {sum_check:.3g} > {tolerance:.3g}")
    return parts, actual, sum_check


@metric("ioi.logit_diff", needs_inputs=True, value=Table(either(POSITIONS, names("mean", "min"))))
def logit_diff(ctx: MetricContext) -> Measurement:
    """Final-position logit difference ``logit(correct) - logit(incorrect)`` per prompt and its mean.

    Value: table ``"0".."B-1"`` (each prompt, in batch order: corrupted inputs are permuted, their
    answers are not), ``"mean"`` and ``"min"`` (``min_b LD[b]``: "every prompt is positive" is
    ``min > 0``); the uncertainty of ``mean`` is the standard error over prompts (none for one
    prompt); single prompts and ``min`` have none (deterministic for these inputs).
    """
    diffs = final_logit_diff(ctx.forward().logits, answer_ids(ctx), end_positions(ctx))  # [batch]
    mean, error = mean_and_error(diffs)
    values = {str(i): float(v) for i, v in enumerate(diffs)}
    values["mean"] = mean
    values["min"] = float(diffs.min())
    details = {"n_prompts": int(diffs.numel()), "all_positive": bool((diffs > 0).all())}
    return Measurement(values, None if error is None else {"mean": error}, details, unit="logit")


@metric("ioi.answer", needs_inputs=True, value=Table(names("rank", "logit", "prob")))
def answer(
    ctx: MetricContext, *, prompt: Annotated[int, Field(ge=0)] = 0, top: Annotated[int, Field(ge=1, le=50)] = 5,
) -> Measurement:
    """The correct answer's ``rank``, ``logit`` and ``prob`` at the final position of prompt ``prompt``.

    ``rank = #{t : logit[t] > logit[c]}`` (0 = the top prediction), ``prob = softmax(logits)[c]``
    (a fraction), as ``utils.test_prompt`` prints them. Details: the ``top`` predictions with their
    logits and probabilities.
    """
    answers = answer_ids(ctx)
    if prompt >= answers.shape[0]:
        raise ValueError(f"prompt {prompt} is outside the {answers.shape[0]} prompts of the inputs")
    final = ctx.forward().logits[prompt, int(end_positions(ctx)[prompt])].float().cpu()  # [d_vocab]
    probs = final.softmax(-1)
    correct = int(answers[prompt, 0])
    best = final.topk(top)
    pieces = ctx.model.to_str_tokens(best.indices) if ctx.model.has_tokenizer else [str(i) for i in best.indices.tolist()]
    details = {
        "answer": ctx.require_inputs().meta["answer_names"][prompt][0],
        "answer_id": correct,
        "top": [{"token": piece, "id": int(i), "logit": float(final[i]), "prob": float(probs[i])}
                for piece, i in zip(pieces, best.indices)],
    }
    value = {"rank": float((final > final[correct]).sum()), "logit": float(final[correct]), "prob": float(probs[correct])}
    return Measurement(value, None, details)


@metric("ioi.head_attribution", needs_inputs=True, value=OneOf(Table(HEADS), NameSet(HEADS)))
def head_attribution(
    ctx: MetricContext, *, top_k: Annotated[int, Field(ge=1)] | None = None, sign: Sign = "positive",
) -> Measurement:
    """Each head's direct contribution to the logit difference, ``mean_b N(z[b,-1,l,h] W_O[l,h]) . d_b``.

    ``N`` is the final norm with its cached scale at the final position (module docstring), as the
    course's ``residual_stack_to_logit_diff(cache.stack_head_results(layer=-1, pos_slice=-1))``.
    Value: table ``"L.H"`` (uncertainty: standard error over prompts), or with ``top_k`` the
    ``top_k`` heads with the largest (``sign: positive``) or most negative mean, first first.
    Details: the other parts' means (embed, pos_embed, mlp.L, attn_bias, unembed_bias), the sum of
    the heads, the mean logit difference and ``sum_check`` (all parts sum to it per prompt).
    """
    parts, actual, sum_check = checked_parts(ctx)
    names = head_names(ctx.model.shape.n_layers, ctx.model.shape.n_heads)
    pairs = {name: mean_and_error(parts[name]) for name in names}
    values = {name: mean for name, (mean, _) in pairs.items()}
    errors = None if actual.numel() < 2 else {name: float(error) for name, (_, error) in pairs.items()}
    ranked = sorted(names, key=lambda name: -values[name] if sign == "positive" else values[name])
    details = {
        "other_parts": {name: float(part.mean()) for name, part in parts.items() if name not in values},
        "heads_sum": float(sum(values.values())),
        "logit_diff_mean": float(actual.mean()),
        "sum_check": sum_check,
        "top_positive": {name: values[name] for name in sorted(names, key=lambda n: -values[n])[:10]},
        "top_negative": {name: values[name] for name in sorted(names, key=lambda n: values[n])[:10]},
    }
    if top_k is not None:
        return Measurement(ranked[:top_k], None, {**details, "top_k": top_k, "sign": sign, "scores": values}, unit="logit")
    return Measurement(values, errors, details, unit="logit")


@metric("ioi.residual_reconstruction", needs_inputs=True, value=Table(names()))
def residual_reconstruction(ctx: MetricContext) -> Measurement:
    """The mean logit difference rebuilt from the normalised final residual, against the actual one.

    ``reconstructed = mean_b N(resid_post[L-1][b, -1]) . d_b`` (the course's
    ``residual_stack_to_logit_diff(final_residual_stream[:, -1], cache)``), ``actual = mean_b LD[b]``.
    They differ by the unembedding bias term ``mean_b (b_U[c_b] - b_U[w_b])`` and float rounding.
    That term is 0 for GPT-2 (its b_U is 0, and stays 0 when centred) and, for any b_U, on the
    course's 8 prompts, whose pairs swap correct and incorrect; it is not 0 on one prompt. Value: table ``difference``
    (``reconstructed - actual``), ``reconstructed``, ``actual``, ``unembed_bias``; the per-prompt
    differences are in details.
    """
    answers = answer_ids(ctx)
    forward = ctx.forward()
    model, activations = ctx.model, forward.activations
    ends = end_positions(ctx)  # [batch]
    final_resid = gather_positions(activations["resid_post", model.shape.n_layers - 1], ends[:, None])[:, 0]  # [batch, d_model]
    u_eff = effective_directions(model, activations, logit_diff_directions(model, answers)[:, None], ends[:, None])[:, 0]
    rebuilt = (final_resid * u_eff).sum(-1)  # [batch]
    actual = final_logit_diff(forward.logits, answers, ends)  # [batch]
    b_u = model.b_U.float().cpu()
    value = {
        "difference": float(rebuilt.mean() - actual.mean()),
        "reconstructed": float(rebuilt.mean()),
        "actual": float(actual.mean()),
        "unembed_bias": float((b_u[answers[:, 0]] - b_u[answers[:, 1]]).mean()),
    }
    return Measurement(value, None, {"per_prompt_difference": [float(v) for v in rebuilt - actual]}, unit="logit")
