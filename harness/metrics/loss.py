"""Next-token loss metrics: log-prob of the correct token, cross-entropy, greedy accuracy.

For tokens ``t[b, 0..n-1]`` and logits ``x[b, i, :]`` the model predicts ``t[b, i+1]`` at
position ``i``; the correct-token log-prob is (ARENA 1.2 ``get_log_probs``)

    lp[b, i] = log_softmax(x[b, i])[t[b, i+1]],   i = 0..n-2,

and the cross-entropy is ``-lp`` (``model(tokens, return_type="loss")`` is ``-lp.mean()``).

On repeated tokens ``[BOS] + R + R`` (``prefix`` = 1 BOS, ``|R| = L``) the predictions split as

- ``first_half``             : ``i in [prefix-1, prefix+L-1)`` (predicting the first copy of R),
- ``second_half``            : ``i in [prefix+L-1, prefix+2L-1)`` (the second copy; course ``[L:]``),
- ``second_half_excl_first`` : ``i in [prefix+L, prefix+2L-1)``: without the prediction of the
  first repeated token, which nothing in the context predicts (course ablation's last L-1).

With the course's BOS prefix these are ``[:L]``, ``[L:]`` and ``[L+1:]``. Every metric averages per
sequence first; the value is the mean over the batch and the uncertainty the standard error of
the per-sequence means (``None`` for one sequence).
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

from harness.context import MetricContext
from harness.core.measurement import Measurement
from harness.registry import metric
from harness.core.value_shape import Scalar, Table, names
from harness.core.details import PositionCurve

Positions = Literal["all", "first_half", "second_half", "second_half_excl_first"]
HALVES: tuple[Positions, ...] = ("first_half", "second_half", "second_half_excl_first")


def correct_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """``log_softmax(logits)[:, :-1]`` gathered at ``tokens[:, 1:]``.

    logits: [batch, pos, d_vocab], tokens: [batch, pos]; returns [batch, pos-1] (float32).
    """
    log_probs = logits[:, :-1].float().log_softmax(dim=-1)  # [batch, pos-1, d_vocab]
    return log_probs.gather(-1, tokens[:, 1:, None].to(log_probs.device)).squeeze(-1).cpu()


def prediction_slice(positions: Positions, n_pred: int, meta: dict) -> slice:
    """The prediction indices ``i`` (into ``lp[:, i]``, length ``n_pred``) that ``positions`` names.

    The halves need repeated-token inputs (``meta`` with ``seq_len`` and ``prefix``).
    """
    if positions == "all":
        return slice(0, n_pred)
    if "seq_len" not in meta:
        raise ValueError(f"positions {positions!r} needs repeated tokens (inputs: repeated_random)")
    seq_len, prefix = int(meta["seq_len"]), int(meta.get("prefix", 1))
    if n_pred != prefix + 2 * seq_len - 1:
        raise ValueError(f"inputs of {n_pred + 1} tokens are not prefix {prefix} + 2 x {seq_len} repeated tokens")
    start = {"first_half": max(prefix - 1, 0), "second_half": prefix + seq_len - 1, "second_half_excl_first": prefix + seq_len}[positions]
    stop = prefix + seq_len - 1 if positions == "first_half" else n_pred
    if stop <= start:
        raise ValueError(f"positions {positions!r} is empty for seq_len {seq_len} (use seq_len >= 2)")
    return slice(start, stop)


def mean_and_error(per_sequence: Tensor) -> tuple[float, float | None]:
    """Mean of per-sequence values [batch] and its standard error (``None`` for one sequence)."""
    values = per_sequence.double()
    if values.numel() < 2:
        return float(values.mean()), None
    return float(values.mean()), float(values.std(unbiased=True) / values.numel() ** 0.5)


def table(per_sequence: dict[str, Tensor]) -> tuple[dict[str, float], dict[str, float] | None]:
    """Means and standard errors of named per-sequence values ({name: [batch]})."""
    pairs = {name: mean_and_error(values) for name, values in per_sequence.items()}
    values = {name: mean for name, (mean, _) in pairs.items()}
    errors = {name: error for name, (_, error) in pairs.items()}
    return values, None if any(e is None for e in errors.values()) else errors  # type: ignore[return-value]


@metric("loss.logprob_halves", needs_inputs=True, details=(PositionCurve,),
        value=Table(names("first_half", "second_half", "second_half_excl_first", "difference")))
def logprob_halves(ctx: MetricContext) -> Measurement:
    """Mean correct-token log-prob on the first and second half of repeated random tokens.

    Value: ``{"first_half", "second_half", "second_half_excl_first", "difference"}`` with
    ``difference = second_half - first_half``; details: the per-position mean curve ``lp.mean(0)``.
    """
    inputs = ctx.require_inputs()
    lp = correct_logprobs(ctx.forward().logits, inputs.tokens)  # [batch, n_pred]
    per_sequence = {half: lp[:, prediction_slice(half, lp.shape[1], inputs.meta)].mean(1) for half in HALVES}
    per_sequence["difference"] = per_sequence["second_half"] - per_sequence["first_half"]
    values, errors = table(per_sequence)
    details = {
        "curve": [float(v) for v in lp.mean(0)],
        "seq_len": inputs.meta.get("seq_len"),
        "prefix": inputs.meta.get("prefix", 1),
        "n_sequences": int(lp.shape[0]),
    }
    return Measurement(values, errors, details, unit="nats")


@metric("loss.mean_loss", needs_inputs=True, value=Scalar())
def mean_loss(ctx: MetricContext, *, positions: Positions = "all") -> Measurement:
    """Mean next-token cross-entropy ``-lp`` over ``positions`` (``all``: as ``return_type="loss"``)."""
    inputs = ctx.require_inputs()
    lp = correct_logprobs(ctx.forward().logits, inputs.tokens)  # [batch, n_pred]
    chosen = prediction_slice(positions, lp.shape[1], inputs.meta)
    value, error = mean_and_error(-lp[:, chosen].mean(1))
    details = {"positions": positions, "n_predictions": int(lp[:, chosen].numel())}
    return Measurement(value, error, details, unit="nats")


@metric("loss.top1_accuracy", needs_inputs=True, value=Table(names("accuracy", "correct", "total")))
def top1_accuracy(ctx: MetricContext, *, positions: Positions = "all") -> Measurement:
    """Fraction of predictions where ``argmax(logits[:, i]) == tokens[:, i+1]`` (course: 33/111).

    Value: ``{"accuracy", "correct", "total"}`` (counts over the whole batch); the uncertainty of
    ``accuracy`` is the standard error of per-sequence accuracies.
    """
    inputs = ctx.require_inputs()
    logits, tokens = ctx.forward().logits, inputs.tokens
    hits = (logits[:, :-1].argmax(-1).cpu() == tokens[:, 1:]).float()  # [batch, n_pred]
    hits = hits[:, prediction_slice(positions, hits.shape[1], inputs.meta)]
    correct, total = int(hits.sum()), int(hits.numel())
    _, error = mean_and_error(hits.mean(1))
    value = {"accuracy": correct / total, "correct": float(correct), "total": float(total)}
    errors = None if error is None else {"accuracy": error}
    return Measurement(value, errors, {"positions": positions, "correct": correct, "total": total})
