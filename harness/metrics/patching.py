"""Activation patching on the IOI prompts (ARENA 1.4.1 section 3, "denoising").

Clean run: the claim's inputs, ``ioi_prompts`` with ``corrupted: false``. Corrupted run: the same
prompt set with ``corrupted: true`` (adjacent prompts swapped, answers kept), derived here from
the claim's inputs and built through the session (cached like any input, so its forward pass is
shared with e.g. ``1.4.setup.corrupted_is_negation``). Prompt ``b`` of the clean batch is patched
into prompt ``b`` of the corrupted batch (its pair partner), as the course does with
``clean_cache`` and ``corrupted_tokens``.

With ``LD(logits) = mean_b logits[b, -1, c_b] - logits[b, -1, w_b]`` (:mod:`harness.metrics.ioi`;
answers are the clean ones for every run), the course's ``ioi_metric`` is::

    ioi_metric(patched) = (LD(patched) - LD(corrupted)) / (LD(clean) - LD(corrupted))

1 on the clean logits, 0 on the corrupted ones. It is a ratio of means over the batch, so it has
no per-prompt standard error: the measurements are deterministic for these inputs (uncertainty
``None``). A denominator within ``MIN_DENOMINATOR`` of 0 is an error (fail closed).

Patches (one per run; the course's ``patching.get_act_patch_*``):

- ``resid_pre`` / ``attn_out`` / ``mlp_out`` at (layer ``L``, position ``P``): the corrupted run's
  ``act[L][:, P]`` is replaced by the clean run's;
- a head's ``z`` / ``q`` / ``k`` / ``v`` (hook of layer ``L``, head ``H``, all positions):
  ``act[:, :, H]`` replaced ([batch, pos, head, d_head]); its attention ``pattern``: ``pattern[:, H]``
  replaced ([batch, head, q_pos, k_pos], head axis 1: :data:`HEAD_AXIS`).

Exact no-op cells. The model is causal, so an activation at position ``P`` is a function of the
tokens ``[0, P]`` only. Where every clean prompt's prefix ``tokens[b, :P+1]`` equals its corrupted
partner's, the clean activation at ``P`` equals the corrupted one, the patched run *is* the
corrupted run and the cell is exactly 0: it is recorded as 0 without running (details list
those positions). On the course's prompts the pair partners differ only at S2, so every cell
before S2 is such a cell.

Each scan runs once per session (``Session.memoised``): claims that differ only in ``view``,
``top_k`` or ``select`` share it. Runs are batched: copy ``j`` of the stacked corrupted batch carries patch ``j`` (patches of
several layers share one pass: each hook touches only its own copies), in chunks of at most
:data:`harness.metrics.paths.MAX_PASS_TOKENS` tokens. No patched pass computes logits: the final
residual stream at the last position is read through the final norm and the two answers'
unembedding columns only (:func:`harness.circuits.dla.logit_diff_from_residual`). A pass starts at
the block of its patches and at the first position they change, reading the corrupted run's
residual stream there and its keys and values before it (:func:`patched_metrics`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Callable, Literal, TypeVar

import torch
from pydantic import Field
from torch import Tensor

from harness.context import MetricContext
from harness.core.details import PositionGrid
from harness.core.heads import Head, head_names
from harness.core.measurement import Measurement
from harness.circuits.dla import logit_diff_from_residual
from harness.metrics.ablation import chunks
from harness.metrics.paths import MAX_PASS_TOKENS, first_differing_position, kept_prefix
from harness.metrics.ioi import Sign, answer_ids, final_logit_diff
from harness.core.model_handle import Activations, KeyValuePrefix
from harness.registry import metric

T = TypeVar("T")
from harness.core.value_shape import CELLS, HEADS, LAYERS, NameSet, OneOf, Table, either

MIN_DENOMINATOR = 1e-6
"""``|LD(clean) - LD(corrupted)|`` below this makes ``ioi_metric`` meaningless: an error."""

Component = Literal["resid_pre", "attn_out", "mlp_out"]
View = Literal["cells", "argmax", "max_abs", "runner_up"]
HeadComponent = Literal["output", "query", "key", "value", "pattern"]

HEAD_HOOKS: dict[str, str] = {"output": "z", "query": "q", "key": "k", "value": "v", "pattern": "pattern"}
"""``patching.head_every``'s ``component`` -> the per-head activation kind patched (TransformerLens short name)."""

HEAD_AXIS: dict[str, int] = {"pattern": 1}
"""The head axis of a per-head activation: 1 for ``pattern`` [batch, head, q_pos, k_pos], else 2
(``z``, ``q``, ``k``, ``v``: [batch, pos, head, d_head])."""


def head_axis(kind: str) -> int:
    """The axis indexing heads in activation ``kind`` (:data:`HEAD_AXIS`, default 2)."""
    return HEAD_AXIS.get(kind, 2)


# ----------------------------------------------------------------------------------------------
# the clean and corrupted runs, and the normalised metric
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Runs:
    """Clean and corrupted tokens [batch, pos], the clean activations, answers [batch, 2], LDs."""

    clean_tokens: Tensor
    corrupted_tokens: Tensor
    clean: Activations
    answers: Tensor
    ld_clean: float
    ld_corrupted: float
    corrupted: Activations | None = None
    """The corrupted run's activations: a patched run starts from its residual stream at the first
    patched layer (``None``: every patched run starts at the embedding)."""

    prefixes: dict[int, KeyValuePrefix] = field(default_factory=dict, compare=False, repr=False)
    """The corrupted run's keys and values before each position a patched pass started at (built once)."""

    def prefix(self, ctx: MetricContext, position: int) -> KeyValuePrefix | None:
        """The corrupted run's :class:`~harness.core.model_handle.KeyValuePrefix` before ``position`` (``None`` at 0)."""
        return kept_prefix(self.prefixes, ctx.model, self.corrupted_tokens, position)

    def metric_of(self, lds: Tensor) -> Tensor:
        """``(mean_b LD - LD(corrupted)) / (LD(clean) - LD(corrupted))`` per copy: lds [copies, batch] -> [copies] (float64)."""
        return (lds.double().mean(1) - self.ld_corrupted) / (self.ld_clean - self.ld_corrupted)

    def ioi_metric(self, logits: Tensor) -> Tensor:
        """``(LD(logits) - LD(corrupted)) / (LD(clean) - LD(corrupted))`` per copy.

        logits [copies*batch, pos, d_vocab] -> [copies] (copy ``j`` = rows ``j*batch .. (j+1)*batch``).
        """
        batch = self.answers.shape[0]
        diffs = final_logit_diff(logits, self.answers.repeat(logits.shape[0] // batch, 1))  # [copies*batch]
        patched = diffs.view(-1, batch).double().mean(1)  # [copies]
        return (patched - self.ld_corrupted) / (self.ld_clean - self.ld_corrupted)


def corrupted_spec(ctx: MetricContext) -> dict[str, dict[str, Any]]:
    """``{"ioi_prompts": {..., "corrupted": True}}`` from the claim's clean ``ioi_prompts`` inputs."""
    inputs = ctx.require_inputs()
    if inputs.kind != "ioi_prompts":
        raise ValueError(f"activation patching needs inputs: ioi_prompts (the clean run), not {inputs.kind}")
    if inputs.params.get("corrupted"):
        raise ValueError("the claim's inputs are the clean run: give ioi_prompts with corrupted: false (the corrupted run is derived)")
    if inputs.params.get("prompts") != "course_8":
        raise ValueError("activation patching needs prompts: course_8 (the corrupted run swaps adjacent prompt pairs)")
    return {"ioi_prompts": {**inputs.params, "corrupted": True}}


def runs(ctx: MetricContext, kind: str | None = None) -> Runs:
    """The clean and corrupted forward passes (session-cached) and their mean logit differences.

    What a scan of activation ``kind`` reads of them is computed in one pass per run
    (:meth:`~harness.core.model_handle.Forward.prefetch`): the clean run's logits and ``kind`` in
    every layer, the corrupted run's logits and ``resid_pre`` in every layer (where the patched
    passes start), instead of one pass for the logits and one per kind of activation. Hooks that
    store an activation change nothing in a pass: every value equals its own pass's."""
    clean_inputs = ctx.require_inputs()
    corrupted_inputs = ctx.session.inputs(ctx.model, corrupted_spec(ctx))
    answers = answer_ids(ctx)
    clean = ctx.forward()
    corrupted = ctx.session.forward(ctx.model, corrupted_inputs)
    layers = range(ctx.model.shape.n_layers)
    clean.prefetch([ctx.model.hook_name(kind, layer) for layer in layers] if kind is not None else [], logits=True)
    corrupted.prefetch([ctx.model.hook_name("resid_pre", layer) for layer in layers], logits=True)
    ld_clean = float(final_logit_diff(clean.logits, answers).double().mean())
    ld_corrupted = float(final_logit_diff(corrupted.logits, answers).double().mean())
    if not abs(ld_clean - ld_corrupted) >= MIN_DENOMINATOR:
        raise ValueError(
            f"ioi_metric is undefined: LD(clean) = {ld_clean:.6g} and LD(corrupted) = {ld_corrupted:.6g} "
            f"differ by less than {MIN_DENOMINATOR:g}"
        )
    return Runs(clean_inputs.tokens, corrupted_inputs.tokens, clean.activations, answers, ld_clean, ld_corrupted, corrupted.activations)


# ----------------------------------------------------------------------------------------------
# patches and batched patched runs
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Patch:
    """Replace activation ``kind`` of ``layer`` at ``position`` (all heads) or of ``head`` (all positions)."""

    kind: str
    layer: int
    position: int | None = None
    head: int | None = None

    def write(self, act: Tensor, rows: slice, clean: Tensor, offset: int = 0) -> None:
        """``act[rows][index] = clean[index]`` in place; act [copies*batch, ...], clean [batch, ...] (heads on :func:`head_axis`).

        Both hold positions ``offset ..`` (a pass started at position ``offset``: :func:`from_position`)."""
        if self.head is not None:
            between = (slice(None),) * (head_axis(self.kind) - 1)  # pattern: [:, H]; z/q/k/v: [:, :, H]
            act[(rows, *between, self.head)] = clean[(slice(None), *between, self.head)].to(act.dtype)
        elif self.position is not None:
            act[rows, self.position - offset] = clean[:, self.position - offset].to(act.dtype)
        else:
            act[rows] = clean.to(act.dtype)


def first_changed(patch: Patch, first: int) -> int:
    """The first position ``patch`` changes: its ``position``, else ``first``, the first position where
    the clean and corrupted tokens differ (:func:`first_difference`: before it both runs' activations are equal)."""
    return first if patch.position is None else patch.position


POSITION_AXIS: dict[str, int] = {"pattern": 2}
"""The (query) position axis of an activation: 2 for ``pattern`` [batch, head, q_pos, k_pos], else 1."""


def from_position(act: Tensor, kind: str, position: int) -> Tensor:
    """``act`` [batch, pos, ...] at positions ``position ..`` (a pattern's query positions; all its keys)."""
    return act.narrow(POSITION_AXIS.get(kind, 1), position, act.shape[POSITION_AXIS.get(kind, 1)] - position)


def patch_hook(chunk: list[Patch | None], batch: int, clean: Tensor, n_heads: int, offset: int = 0) -> Callable[[Tensor, Any], Tensor]:
    """A hook writing, for each copy ``j`` whose patch is at this hook point, ``chunk[j]`` into rows of copy ``j``.

    ``chunk[j]`` is copy ``j``'s patch if it is at this hook point, else ``None``; ``clean`` is
    the clean activation [batch, pos, ...] of that hook point, at positions ``offset ..`` where the
    pass starts at position ``offset`` (:func:`from_position`).
    """

    def hook(act: Tensor, hook: Any) -> Tensor:
        for j, patch in enumerate(chunk):
            if patch is None:
                continue
            if patch.head is not None and act.shape[head_axis(patch.kind)] != n_heads:
                heads = act.shape[head_axis(patch.kind)]
                raise ValueError(f"{hook.name} has {heads} heads, not {n_heads}: cannot patch one head there")
            patch.write(act, slice(j * batch, (j + 1) * batch), clean, offset)
        return act

    return hook


def layer_chunks(items: list[T], size: int, layer: Callable[[T], int]) -> list[list[T]]:
    """``items`` cut into consecutive runs of at most ``size`` items of one layer each (order kept)."""
    cut: list[list[T]] = []
    for item in items:
        if cut and len(cut[-1]) < size and layer(cut[-1][0]) == layer(item):
            cut[-1].append(item)
        else:
            cut.append([item])
    return cut


def patched_metrics(ctx: MetricContext, r: Runs, patches: list[Patch]) -> Tensor:
    """``ioi_metric`` of the corrupted run with each patch applied alone: [len(patches)] (float64).

    A patch at layer ``L`` changes nothing before block ``L``, and (the model is causal) nothing
    before the first position it changes (:func:`first_changed`): each pass holds the patches of
    one layer and starts at that block and the first position ``P`` any of them changes, from the
    corrupted run's residual stream there, its attention reading the corrupted run's keys and
    values before ``P`` (:meth:`~harness.core.model_handle.ModelHandle.residual_from`). On the
    course's prompts (S2 = 10 of 15 positions) a pass runs a third of the positions, and a deep
    model's late layers a few blocks each. (A pass per layer and position, each from its own
    position, ran fewer rows but was slower on SmolLM2: five times the passes.)"""
    batch, pos = r.corrupted_tokens.shape
    size = max(1, MAX_PASS_TOKENS // (batch * pos))
    results: list[Tensor] = []
    by_layer = r.corrupted is not None
    first = first_difference(r)
    starts = {id(p): min(first_changed(p, first), pos - 1) for p in patches}  # the final position is read
    for chunk in (layer_chunks(patches, size, lambda p: p.layer) if by_layer else chunks(patches, size)):
        start = min(p.layer for p in chunk)
        offset = min(starts[id(p)] for p in chunk) if by_layer else 0
        points = sorted({(p.kind, p.layer) for p in chunk})
        hooks = []
        for kind, layer in points:
            mine = [p if (p.kind, p.layer) == (kind, layer) else None for p in chunk]
            hook = patch_hook(mine, batch, from_position(r.clean[kind, layer], kind, offset), ctx.model.shape.n_heads, offset)
            hooks.append((ctx.model.hook_name(kind, layer), hook))
        stacked = r.corrupted_tokens.repeat(len(chunk), 1)
        if by_layer:
            resid_in = r.corrupted["resid_pre", start][:, offset:].repeat(len(chunk), 1, 1)
            resid = ctx.model.residual_from(start, resid_in, stacked, hooks, prefix=r.prefix(ctx, offset))
        else:
            resid = ctx.model.residual_with_hooks(stacked, hooks)  # no logits
        ends = torch.full((batch,), pos - 1 - offset, dtype=torch.int64)
        results.append(r.metric_of(logit_diff_from_residual(ctx.model, resid, r.answers, ends)))
    return torch.cat(results) if results else torch.zeros(0, dtype=torch.float64)


def first_difference(r: Runs) -> int:
    """The first position ``P`` where some clean prompt's token differs from its corrupted partner's
    (``pos`` if none): every activation at a position before it is the same in both runs."""
    return first_differing_position(r.clean_tokens, r.corrupted_tokens)


# ----------------------------------------------------------------------------------------------
# (layer, position) patching and its views
# ----------------------------------------------------------------------------------------------


def layer_position_grid(ctx: MetricContext, r: Runs, kind: str) -> Tensor:
    """``ioi_metric`` with ``kind`` of layer ``L`` patched at position ``P``: [n_layers, pos] (float64).

    Cells before :func:`first_difference` are exact no-ops (module docstring) and are 0 without a run.
    """
    n_layers, pos = ctx.model.shape.n_layers, r.clean_tokens.shape[1]
    start = first_difference(r)
    patches = [Patch(kind, layer, position=p) for layer in range(n_layers) for p in range(start, pos)]
    grid = torch.zeros(n_layers, pos, dtype=torch.float64)
    grid[:, start:] = patched_metrics(ctx, r, patches).view(n_layers, pos - start)
    return grid


def grid_view(grid: Tensor, view: View) -> dict[str, float]:
    """A [layer, pos] grid as a table.

    - ``cells``: ``"L:P"`` -> ``grid[L, P]``;
    - ``argmax``: ``"L"`` -> ``argmax_P grid[L, P]`` (a position index; the first on ties);
    - ``max_abs``: ``"L"`` -> ``max_P |grid[L, P]|``;
    - ``runner_up``: ``"L"`` -> ``max_{P != argmax} |grid[L, P]|`` (how much any other position
      matters: "layer L matters only at position P" is ``argmax = P`` and a small runner-up).
    """
    if view == "cells":
        return {f"{layer}:{p}": float(grid[layer, p]) for layer in range(grid.shape[0]) for p in range(grid.shape[1])}
    best = grid.argmax(1)  # [layer]
    if view == "argmax":
        return {str(layer): float(best[layer]) for layer in range(grid.shape[0])}
    if view == "max_abs":
        return {str(layer): float(grid[layer].abs().max()) for layer in range(grid.shape[0])}
    others = grid.abs().clone()
    others[torch.arange(grid.shape[0]), best] = float("-inf")
    return {str(layer): float(others[layer].max()) for layer in range(grid.shape[0])}


def memo_key(ctx: MetricContext, what: str) -> tuple[str, ...]:
    """Session memo key of one patching scan: claims that differ in ``view``/``top_k`` share the scan."""
    return (ctx.model.identity.key, ctx.require_inputs().key, "patching", what)


def grid_measurement(ctx: MetricContext, kind: str, view: View) -> Measurement:
    """The (layer, position) patching grid of ``kind`` as ``view``, with the grid and the runs in details."""
    r = runs(ctx, kind)
    grid = ctx.session.memoised(memo_key(ctx, kind), lambda: layer_position_grid(ctx, r, kind))
    tokens = ctx.model.to_str_tokens(r.clean_tokens[0]) if ctx.model.has_tokenizer else None
    details = {
        "component": kind, "view": view, "grid": [[float(v) for v in row] for row in grid],
        "ld_clean": r.ld_clean, "ld_corrupted": r.ld_corrupted, "first_difference": first_difference(r),
        "not_run_positions": list(range(first_difference(r))), "tokens_prompt_0": tokens,
        "argmax_position": grid_view(grid, "argmax"),
    }
    return Measurement(grid_view(grid, view), None, details)


@metric("patching.resid_pre", needs_inputs=True, value=Table(either(CELLS, LAYERS)), details=(PositionGrid,))
def resid_pre(ctx: MetricContext, *, view: View = "cells") -> Measurement:
    """``ioi_metric`` with the clean ``resid_pre[L][:, P]`` patched into the corrupted run, per (L, P).

    The course's ``get_act_patch_resid_pre(model, corrupted_tokens, clean_cache, ioi_metric)``:
    positions are token indices (BOS = 0; on the course's prompts S2 = 10 and END = 14 for GPT-2
    and SmolLM2). Value by ``view`` (:func:`grid_view`): ``cells`` ``"L:P"``, or per layer ``"L"``
    the ``argmax`` position, the ``max_abs`` value or the ``runner_up`` (largest |value| at any
    other position). Details: the whole grid [layer][pos], LD(clean), LD(corrupted), the cells
    not run (exact zeros) and prompt 0's tokens.
    """
    return grid_measurement(ctx, "resid_pre", view)


@metric("patching.block_every", needs_inputs=True, value=Table(either(CELLS, LAYERS)), details=(PositionGrid,))
def block_every(ctx: MetricContext, *, component: Component, view: View = "cells") -> Measurement:
    """``ioi_metric`` with one block component of layer ``L`` patched at position ``P``, per (L, P).

    ``component`` is ``resid_pre``, ``attn_out`` (the attention layer's output) or ``mlp_out``:
    one row of the course's ``get_act_patch_block_every`` (shape [3, n_layers, pos]). Value and
    details as ``patching.resid_pre``. Attention-only models have no ``mlp_out`` (an error).
    """
    if component == "mlp_out" and ctx.model.attn_only:
        raise ValueError(f"model {ctx.model.identity.name!r} is attention-only: it has no mlp_out to patch")
    return grid_measurement(ctx, component, view)


# ----------------------------------------------------------------------------------------------
# head outputs over all positions
# ----------------------------------------------------------------------------------------------


def head_scan(ctx: MetricContext, kind: str, top_k: int | None, sign: Sign) -> Measurement:
    """``ioi_metric`` with each head's clean activation ``kind`` (all positions) patched into the corrupted run.

    Value: table ``"L.H"`` -> ``ioi_metric``, or with ``top_k`` the ``top_k`` heads with the largest
    (``sign: positive``) or most negative values, first first (the table stays in details ``scores``).
    One scan per (model, inputs, kind) and session. Per-head ``k``/``v`` of a grouped-query model
    (fewer key/value heads than query heads, shared across heads) are an error.
    """
    r = runs(ctx, kind)
    n_layers, n_heads = ctx.model.shape.n_layers, ctx.model.shape.n_heads
    cached_heads = r.clean[kind, 0].shape[head_axis(kind)]
    if cached_heads != n_heads:
        raise ValueError(
            f"model {ctx.model.identity.name!r} has {cached_heads} '{kind}' heads for {n_heads} query heads "
            f"(grouped-query attention): one head's {kind} is shared with other heads and cannot be patched alone"
        )
    names = head_names(n_layers, n_heads)
    heads = [Head.parse(name) for name in names]
    patches = [Patch(kind, head.layer, head=head.head) for head in heads]
    values = ctx.session.memoised(memo_key(ctx, kind), lambda: patched_metrics(ctx, r, patches))  # [n_layers*n_heads]
    scores = {name: float(v) for name, v in zip(names, values)}
    ordered = sorted(names, key=lambda n: -scores[n])
    details = {
        "hook": kind, "ld_clean": r.ld_clean, "ld_corrupted": r.ld_corrupted,
        "top_positive": {n: scores[n] for n in ordered[:10]}, "top_negative": {n: scores[n] for n in sorted(names, key=lambda n: scores[n])[:10]},
    }
    if top_k is None:
        return Measurement(scores, None, details)
    ranked = sorted(names, key=lambda n: -scores[n] if sign == "positive" else scores[n])
    return Measurement(ranked[:top_k], None, {**details, "top_k": top_k, "sign": sign, "scores": scores})


@metric("patching.head_out", needs_inputs=True, value=OneOf(Table(HEADS), NameSet(HEADS)))
def head_out(
    ctx: MetricContext, *, top_k: Annotated[int, Field(ge=1)] | None = None, sign: Sign = "positive",
) -> Measurement:
    """``ioi_metric`` with head ``L.H``'s clean ``z[:, :, H]`` (all positions) patched into the corrupted run.

    The course's ``get_act_patch_attn_head_out_all_pos`` (hook ``z``: the head's output before
    ``W_O``, so patching it patches the head's whole contribution ``z W_O``). Value: table
    ``"L.H"``, or with ``top_k`` the ``top_k`` heads with the largest (``sign: positive``) or most
    negative values, first first (the table stays in details ``scores``).
    """
    return head_scan(ctx, "z", top_k, sign)


@metric("patching.head_every", needs_inputs=True, value=OneOf(Table(HEADS), NameSet(HEADS)))
def head_every(
    ctx: MetricContext, *, component: HeadComponent,
    top_k: Annotated[int, Field(ge=1)] | None = None, sign: Sign = "positive",
) -> Measurement:
    """``ioi_metric`` with one of head ``L.H``'s clean activations (all positions) patched into the corrupted run.

    One row of the course's ``get_act_patch_attn_head_all_pos_every`` (shape [5, n_layers, n_heads]:
    output, query, key, value, pattern). With ``x`` the corrupted run's activation and ``x'`` the
    clean one, the patched run uses, for every prompt and position (all ``d_head`` / key entries):

    - ``output``: ``z[:, :, H] <- z'[:, :, H]`` (the same scan as ``patching.head_out``);
    - ``query`` / ``key`` / ``value``: ``q[:, :, H] <- q'[:, :, H]`` (resp. ``k``, ``v``; [batch, pos,
      head, d_head], before any rotary embedding), so ``z_H = softmax(q_H k_H^T / sqrt(d_head) + mask) v_H``
      is recomputed with one input clean and the others corrupted;
    - ``pattern``: ``A[:, H] <- A'[:, H]`` ([batch, head, q_pos, k_pos]), so ``z_H = A'_H v_H`` with
      the corrupted values;

    and the value is ``ioi_metric(patched)`` (module docstring). Everything downstream (later layers)
    is recomputed. Value and ``top_k``/``sign`` as ``patching.head_out``. Grouped-query models share a
    key/value head among several query heads: ``key`` and ``value`` are an error there.
    """
    return head_scan(ctx, HEAD_HOOKS[component], top_k, sign)
