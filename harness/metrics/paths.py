"""Path patching on the course's IOI dataset and its ABC twin (ARENA 1.4.1 section 4).

Inputs: ``ioi_dataset`` (the claim's, ``flip`` unset) is ``x_orig``; the same dataset with
``flip: abc`` is ``x_new`` (built through the session, so its forward pass is shared). Every
logit difference is read at each prompt's END position with the clean answers (IO, S)::

    LD[b] = logit[b, end_b, IO_b] - logit[b, end_b, S_b]

The course's ``ioi_metric_2`` of a patched run, ``(mean_b LD_patched - mean_b LD_orig) /
(mean_b LD_orig - mean_b LD_new)``, is 0 for the clean run and -1 for the ABC run (value in
fractions: the course's plots show it x100 as percent). Per prompt, the same with the prompt's
own ``LD_patched[b] - LD_orig[b]`` over the batch-mean denominator (details ``per_prompt``).

Sender heads -> final residual (``get_path_patch_head_to_final_resid_post``): run ``x_orig`` with
the sender's ``z`` taken from ``x_new`` and every other head's ``z`` frozen at its ``x_orig``
value (MLPs and norms recomputed); the logits of that run. Only paths from the sender that avoid
every other attention head count.

Sender heads -> receiver heads' ``q``/``k``/``v`` (``get_path_patch_head_to_heads``): (1) run
``x_orig`` with the sender patched and all other heads frozen as above, and keep the receivers'
input (``q``, ``k`` or ``v``, [batch, pos, head, d_head]); (2) run ``x_orig`` again with only the
receivers' input replaced by the kept one (everything else free); the metric of run (2).
Senders are the heads of layers before the last receiver layer, as the course loops them.

Batching: copy ``j`` of the stacked ``x_orig`` carries sender ``j``; a pass holds at most
:data:`MAX_PASS_TOKENS` tokens, and no pass computes logits: the residual stream at END goes
through the final norm and the two answers' unembedding columns only
(:func:`harness.circuits.dla.logit_diff_from_residual`). Passes skip what they cannot change: a
pass starts at its senders' block; with every head frozen no block mixes positions, so a path to
the residual runs END alone and run (1) runs position-wise; run (2) starts at the first position
where ``x_orig`` and ``x_new`` differ (:func:`path_to_resid_lds`, :func:`path_to_heads_lds`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal

import torch
from pydantic import Field
from torch import Tensor

from harness.circuits.dla import logit_diff_from_residual
from harness.context import MetricContext
from harness.core.details import HeadScores
from harness.core.heads import Head, HeadName, head_names, sort_heads
from harness.core.measurement import Measurement
from harness.core.model_handle import Activations, Hook, KeyValuePrefix, ModelHandle
from harness.core.value_shape import HEADS, NameSet, OneOf, Table, names
from harness.metrics.ioi import Sign, answer_ids, end_positions
from harness.registry import metric

MAX_PASS_TOKENS = 12_000
"""Upper bound on copies x batch x positions of one stacked forward pass (GPT-2 small: about 0.5 GB of activations)."""

MIN_DENOMINATOR = 1e-6
"""``|mean LD_orig - mean LD_new|`` below this makes ``ioi_metric_2`` undefined: an error."""

ReceiverInput = Literal["q", "k", "v"]


@dataclass(frozen=True)
class PathRuns:
    """``x_orig`` tokens [batch, pos], its activations, both runs' ``z`` per layer [batch, pos, head, d_head]
    (read before any hook runs: activations are computed on first read), answers [batch, 2], END positions [batch], LDs [batch]."""

    tokens: Tensor
    orig: Activations
    orig_z: list[Tensor]
    new_z: list[Tensor]
    answers: Tensor
    ends: Tensor
    ld_orig: Tensor
    ld_new: Tensor
    prefixes: dict[int, KeyValuePrefix] = field(default_factory=dict, compare=False, repr=False)
    """``x_orig``'s keys and values before each position a run (2) started at (built once: :func:`kept_prefix`)."""

    @property
    def denominator(self) -> float:
        return float(self.ld_orig.double().mean() - self.ld_new.double().mean())

    def ioi_metric_2(self, ld: Tensor) -> Tensor:
        """Batch-mean metric per copy: ld [copies, batch] -> [copies] (float64)."""
        return (ld.double().mean(1) - self.ld_orig.double().mean()) / self.denominator

    def per_prompt(self, ld: Tensor) -> Tensor:
        """``(LD_patched[b] - LD_orig[b]) / denominator``: ld [copies, batch] -> [copies, batch]."""
        return (ld.double() - self.ld_orig.double()) / self.denominator


def new_spec(ctx: MetricContext) -> dict[str, dict[str, Any]]:
    """``{"ioi_dataset": {..., "flip": "abc"}}`` from the claim's clean ``ioi_dataset`` inputs."""
    inputs = ctx.require_inputs()
    if inputs.kind != "ioi_dataset" or inputs.params.get("flip") is not None:
        raise ValueError(f"path patching needs inputs: ioi_dataset without flip (x_orig; x_new is its ABC flip), not {inputs.key}")
    return {"ioi_dataset": {**inputs.params, "flip": "abc"}}


def path_runs(ctx: MetricContext) -> PathRuns:
    """Both runs' activations (session-cached) and their per-prompt END logit differences, once per
    (model, inputs) and session: every path patching claim on them shares one."""
    return ctx.session.memoised((ctx.model.identity.key, ctx.require_inputs().key, "paths", "runs"), lambda: _path_runs(ctx))


def _path_runs(ctx: MetricContext) -> PathRuns:
    """One pass per run (:meth:`~harness.core.model_handle.Forward.prefetch`): ``x_orig``'s ``z`` and
    ``resid_pre`` in every layer and ``x_new``'s ``z``, each with the residual stream after the last
    block (``resid_post`` of the last layer: the final residual stream, before the final norm) that
    the LDs are read from. Hooks that store an activation change nothing in a pass: every value
    equals its own pass's."""
    new_inputs = ctx.session.inputs(ctx.model, new_spec(ctx))
    tokens = ctx.require_inputs().tokens
    answers, ends = answer_ids(ctx), end_positions(ctx)
    layers = range(ctx.model.shape.n_layers)
    final = ctx.model.hook_name("resid_post", ctx.model.shape.n_layers - 1)
    z_hooks = [ctx.model.hook_name("z", layer) for layer in layers]
    orig_forward, new_forward = ctx.forward(), ctx.session.forward(ctx.model, new_inputs)
    orig_forward.prefetch([*z_hooks, *(ctx.model.hook_name("resid_pre", layer) for layer in layers), final])
    new_forward.prefetch([*z_hooks, final])
    orig, new = orig_forward.activations, new_forward.activations
    ld_orig = logit_diff_from_residual(ctx.model, orig[final], answers, ends)[0]
    ld_new = logit_diff_from_residual(ctx.model, new[final], answers, ends)[0]
    runs = PathRuns(tokens, orig, [orig["z", l] for l in layers], [new["z", l] for l in layers], answers, ends, ld_orig, ld_new)
    if not abs(runs.denominator) >= MIN_DENOMINATOR:
        raise ValueError(f"ioi_metric_2 is undefined: mean LD on IOI and on ABC differ by {runs.denominator:.3g}")
    return runs


def kept_prefix(kept: dict[int, KeyValuePrefix], model: ModelHandle, tokens: Tensor, position: int) -> KeyValuePrefix | None:
    """``model.key_value_prefix(tokens, position)`` (``None`` at position 0), built once per position and kept in ``kept``:
    every pass a run's scans start at ``position`` reads the same one."""
    if position == 0:
        return None
    if position not in kept:
        kept[position] = model.key_value_prefix(tokens, position)
    return kept[position]


def copies_per_pass(tokens: Tensor) -> int:
    """How many stacked copies of tokens [batch, pos] one pass may hold (:data:`MAX_PASS_TOKENS`)."""
    return max(1, MAX_PASS_TOKENS // tokens.numel())


def freeze_hook(orig_z: Tensor, new_z: Tensor, layer: int, senders: list[Head]) -> Hook:
    """``z`` of ``layer``: every head frozen at ``x_orig``'s ``orig_z``, except copy ``j``'s sender, taken
    from ``x_new``'s ``new_z`` (both [batch, pos, head, d_head], at the positions the pass runs)."""
    batch = orig_z.shape[0]

    def hook(z: Tensor, hook: Any) -> Tensor:
        z[:] = orig_z.to(z.device, z.dtype).repeat(len(senders), 1, 1, 1)
        for j, sender in enumerate(senders):
            if sender.layer == layer:
                z[j * batch : (j + 1) * batch, :, sender.head] = new_z[:, :, sender.head].to(z.dtype)
        return z

    return hook


def freeze_hooks(model: ModelHandle, runs: PathRuns, senders: list[Head], layers: range,
                 at: Callable[[Tensor], Tensor] = lambda z: z) -> list[tuple[str, Hook]]:
    """:func:`freeze_hook` on ``z`` of ``layers``, both runs' ``z`` read at the positions ``at`` picks."""
    return [(model.hook_name("z", layer), freeze_hook(at(runs.orig_z[layer]), at(runs.new_z[layer]), layer, senders))
            for layer in layers]


def sender_chunks(runs: PathRuns, senders: list[Head]) -> list[list[Head]]:
    """Consecutive senders of one layer, at most :func:`copies_per_pass` per chunk (order kept)."""
    size = copies_per_pass(runs.tokens)
    chunks: list[list[Head]] = []
    for sender in senders:
        if chunks and len(chunks[-1]) < size and chunks[-1][0].layer == sender.layer:
            chunks[-1].append(sender)
        else:
            chunks.append([sender])
    return chunks


def at_end(runs: PathRuns) -> Callable[[Tensor], Tensor]:
    """act [batch, pos, ...] -> act at each prompt's END [batch, 1, ...]."""
    rows = torch.arange(runs.tokens.shape[0])
    return lambda act: act[rows, runs.ends.to(act.device)].unsqueeze(1)


def path_to_resid_lds(model: ModelHandle, runs: PathRuns, senders: list[Head]) -> Tensor:
    """LD [senders, batch] with each sender patched and every other head frozen (module docstring).

    With every head's ``z`` fixed, no block mixes positions (norms and MLPs act on each position
    alone; attention's output is ``z W_O + b_O``): END's final residual stream is a function of
    END's residual stream entering the sender's block and the heads' ``z`` at END. So each pass
    runs one position per prompt, from the sender's block on
    (:meth:`~harness.core.model_handle.ModelHandle.positionwise_from`), and holds the senders of one layer."""
    end = at_end(runs)
    batch = runs.tokens.shape[0]
    out = []
    for chunk in sender_chunks(runs, senders):
        layer = chunk[0].layer
        hooks = freeze_hooks(model, runs, chunk, range(layer, model.shape.n_layers), at=end)
        resid = model.positionwise_from(layer, end(runs.orig["resid_pre", layer]).repeat(len(chunk), 1, 1), hooks)
        out.append(logit_diff_from_residual(model, resid, runs.answers, torch.zeros(batch, dtype=torch.int64)))
    return torch.cat(out) if out else torch.zeros(0, batch)


def capture_hook(store: dict[int, Tensor], layer: int) -> Hook:
    def hook(act: Tensor, hook: Any) -> None:
        store[layer] = act.detach().clone()

    return hook


def receiver_patch_hook(kept: Tensor, heads: list[int]) -> Hook:
    """Replace the receivers' input ``act[:, :, h]`` (h in ``heads``) with the kept values (same stacked rows)."""

    def hook(act: Tensor, hook: Any) -> Tensor:
        act[:, :, heads] = kept[:, :, heads].to(act.dtype)
        return act

    return hook


def check_receiver_heads(model: ModelHandle, runs: PathRuns, kind: str) -> None:
    """Raise for a grouped-query model's ``k``/``v``: one key/value head is shared by several query heads."""
    cached = runs.orig[kind, 0].shape[2]
    if cached != model.shape.n_heads:
        raise ValueError(
            f"model {model.identity.name!r} has {cached} '{kind}' heads for {model.shape.n_heads} query heads "
            f"(grouped-query attention): a receiver head's {kind} is shared and cannot be patched alone; use q"
        )


def first_differing_position(a: Tensor, b: Tensor) -> int:
    """The first position where some prompt of tokens ``a`` and ``b`` [batch, pos] differ (``pos`` if none)."""
    differs = (a != b).any(0)  # [pos]
    return int(differs.nonzero()[0]) if differs.any() else int(differs.numel())


def first_difference(runs: PathRuns, new_tokens: Tensor) -> int:
    """The first position where some prompt of ``x_orig`` and of ``x_new`` differ (at most the first END,
    which is read): before it every activation of both runs, and of any patched run of them, is ``x_orig``'s."""
    return min(first_differing_position(runs.tokens, new_tokens), int(runs.ends.min()))  # every END is read


def path_to_heads_lds(model: ModelHandle, runs: PathRuns, senders: list[Head], receivers: list[Head], kind: str,
                      new_tokens: Tensor) -> Tensor:
    """LD [senders, batch] of run (2) for each sender (module docstring).

    Both runs change nothing before the first position ``P`` where ``x_orig`` and ``x_new`` differ
    (:func:`first_difference`) nor before their first block. Run (1), every head frozen, mixes no
    positions (:func:`path_to_resid_lds`): it runs positions ``P ..`` from the senders' block
    (:meth:`~harness.core.model_handle.ModelHandle.positionwise_from`); run (2) starts at the first
    receiver's block and position ``P``, its attention reading ``x_orig``'s keys and values before ``P``."""
    check_receiver_heads(model, runs, kind)
    layers = sorted({r.layer for r in receivers})
    first = first_difference(runs, new_tokens)
    tail = lambda act: act[:, first:]  # noqa: E731  [batch, pos - P, ...]
    prefix = kept_prefix(runs.prefixes, model, runs.tokens, first)
    out = []
    for chunk in sender_chunks(runs, senders):
        start, copies = chunk[0].layer, len(chunk)
        store: dict[int, Tensor] = {}
        hooks = freeze_hooks(model, runs, chunk, range(start, layers[-1] + 1), at=tail)
        hooks += [(model.hook_name(kind, layer), capture_hook(store, layer)) for layer in layers if layer >= start]
        model.positionwise_from(start, tail(runs.orig["resid_pre", start]).repeat(copies, 1, 1), hooks, stop_at_layer=layers[-1] + 1)
        for layer in layers:  # a receiver before the senders reads x_orig's own input
            if layer < start:
                store[layer] = tail(runs.orig[kind, layer]).repeat(copies, 1, 1, 1)
        patch = [(model.hook_name(kind, layer), receiver_patch_hook(store[layer], [r.head for r in receivers if r.layer == layer]))
                 for layer in layers]
        resid_in = tail(runs.orig["resid_pre", layers[0]]).repeat(copies, 1, 1)
        resid = model.residual_from(layers[0], resid_in, runs.tokens.repeat(copies, 1), patch, prefix=prefix)
        out.append(logit_diff_from_residual(model, resid, runs.answers, runs.ends - first))
    return torch.cat(out) if out else torch.zeros(0, runs.tokens.shape[0])


def scan_measurement(runs: PathRuns, names: list[str], lds: Tensor, top_k: int | None, sign: Sign, extra: dict[str, Any]) -> Measurement:
    """The ``ioi_metric_2`` table per sender (or the ``top_k`` by ``sign``), per-prompt values in details."""
    values = runs.ioi_metric_2(lds)
    scores = {name: float(v) for name, v in zip(names, values)}
    per_prompt = runs.per_prompt(lds)
    details = {
        **extra, "scores": scores, "ld_orig": float(runs.ld_orig.mean()), "ld_new": float(runs.ld_new.mean()),
        "per_prompt": {name: [round(float(v), 5) for v in row] for name, row in zip(names, per_prompt)},
    }
    if top_k is None:
        return Measurement(scores, None, details)
    ranked = sorted(names, key=lambda n: -scores[n] if sign == "positive" else scores[n])
    return Measurement(ranked[:top_k], None, {**details, "top_k": top_k, "sign": sign})


def memoised(ctx: MetricContext, what: tuple[Any, ...], compute: Callable[[], Tensor]) -> Tensor:
    return ctx.session.memoised((ctx.model.identity.key, ctx.require_inputs().key, "paths", *what), compute)


@metric("paths.to_resid", needs_inputs=True, value=OneOf(Table(HEADS), NameSet(HEADS)), details=(HeadScores,))
def to_resid(
    ctx: MetricContext, *, top_k: Annotated[int, Field(ge=1)] | None = None, sign: Sign = "negative",
    from_layer: Annotated[int, Field(ge=0)] = 0,
) -> Measurement:
    """Path patching from each head to the final residual stream: ``ioi_metric_2`` per sender ``"L.H"``.

    The course's ``get_path_patch_head_to_final_resid_post`` (module docstring): 0 = no effect,
    -1 = as bad as the ABC run. Senders: every head of layers ``from_layer`` and later (a deep
    model's scan can skip early layers). Value: table ``"L.H"``, or with ``top_k`` the ``top_k``
    heads with the most negative (``sign: negative``, name movers) or largest values. Details:
    ``scores``, the mean LDs of both runs and ``per_prompt`` (each prompt's change over the
    batch-mean denominator).
    """
    runs = path_runs(ctx)
    names = [n for n in head_names(ctx.model.shape.n_layers, ctx.model.shape.n_heads) if Head.parse(n).layer >= from_layer]
    lds = memoised(ctx, ("resid", str(from_layer)), lambda: path_to_resid_lds(ctx.model, runs, [Head.parse(n) for n in names]))
    return scan_measurement(runs, names, lds, top_k, sign, {"receiver": "resid_post"})


@metric("paths.to_heads", needs_inputs=True, value=OneOf(Table(HEADS), NameSet(HEADS)), details=(HeadScores,))
def to_heads(
    ctx: MetricContext, *, receivers: Annotated[list[HeadName], Field(min_length=1)], receiver_input: ReceiverInput,
    top_k: Annotated[int, Field(ge=1)] | None = None, sign: Sign = "negative", from_layer: Annotated[int, Field(ge=0)] = 0,
) -> Measurement:
    """Path patching from each earlier head to the ``receivers``' ``receiver_input`` (q, k or v).

    The course's ``get_path_patch_head_to_heads(receiver_heads, receiver_input)`` (module
    docstring): senders are every head of layers ``0 .. max receiver layer - 1``; the value per
    sender ``"L.H"`` is ``ioi_metric_2`` of the run with only the receivers' input patched (senders
    from layer ``from_layer`` on). Value, ``top_k``/``sign`` and details as ``paths.to_resid``.
    """
    runs = path_runs(ctx)
    heads = [Head.parse(name) for name in sort_heads(sorted(set(receivers)))]
    last = max(h.layer for h in heads)
    names = [n for n in head_names(last, ctx.model.shape.n_heads) if Head.parse(n).layer >= from_layer]
    if not names:
        raise ValueError(f"no sender heads: from_layer {from_layer} is not before the last receiver layer {last}")
    key = ("heads", receiver_input, str(from_layer), *map(str, heads))
    new_tokens = ctx.session.inputs(ctx.model, new_spec(ctx)).tokens
    lds = memoised(ctx, key, lambda: path_to_heads_lds(ctx.model, runs, [Head.parse(n) for n in names], heads, receiver_input, new_tokens))
    return scan_measurement(runs, names, lds, top_k, sign, {"receiver": f"{receiver_input} of {', '.join(map(str, heads))}"})


@metric("paths.calibration", needs_inputs=True, value=Table(names("ioi", "abc", "frozen")))
def calibration(ctx: MetricContext) -> Measurement:
    """``ioi_metric_2`` of the runs path patching normalises by: 0 on ``x_orig``, -1 on ``x_new``.

    The course's calibration (P141:2364-2365), read off the same runs and code path as
    ``paths.to_resid``: ``ioi`` = the metric of ``x_orig``'s own logit difference (0 by
    construction), ``abc`` = that of ``x_new`` (-1 by construction), and ``frozen`` = that of a
    run of ``x_orig`` with every head's ``z`` frozen at its ``x_orig`` value and no sender patched,
    which is 0 only if freezing reproduces the clean run (up to float rounding). Details: both mean LDs.
    """
    runs = path_runs(ctx)
    model = ctx.model
    hooks = [(model.hook_name("z", layer), frozen_hook(runs.orig_z[layer])) for layer in range(model.shape.n_layers)]
    frozen = logit_diff_from_residual(model, model.residual_with_hooks(runs.tokens, hooks), runs.answers, runs.ends)
    values = runs.ioi_metric_2(torch.stack([runs.ld_orig, runs.ld_new, frozen[0]]))
    value = {"ioi": float(values[0]), "abc": float(values[1]), "frozen": float(values[2])}
    return Measurement(value, None, {"ld_orig": float(runs.ld_orig.mean()), "ld_new": float(runs.ld_new.mean())})


def frozen_hook(orig_z: Tensor) -> Hook:
    """Set ``z`` [batch, pos, head, d_head] to its cached ``x_orig`` value."""

    def hook(z: Tensor, hook: Any) -> Tensor:
        z[:] = orig_z.to(z.device, z.dtype)
        return z

    return hook
