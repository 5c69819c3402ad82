"""The IOI circuit's other measurements (ARENA 1.4.1 sections 2 and 5): attention between named
positions, per-layer direct attribution, the logit lens, and mean ablation followed by direct attribution.

Named positions of prompt ``b`` (``word_idx`` of the course's ``IOIDataset``): ``IO``, ``S1``,
``S1+1``, ``S2``, ``end``. For ``ioi_dataset`` inputs they are in ``meta["word_idx"]``; for the
course's 8 ``ioi_prompts`` they are read from the tokens: the first occurrence of the correct
answer's token (IO), the first and last occurrence of the incorrect one's (S1, S2) and the final
position (``end``).

All logit differences are read at ``end`` with the clean answers, ``d_b = W_U[:, IO_b] - W_U[:, S_b]``,
through :mod:`harness.circuits.dla` (the final norm with its cached scale).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import torch
from pydantic import Field
from torch import Tensor

from harness.circuits.dla import effective_directions, gather_positions, logit_diff_directions, logit_diff_parts, part_hooks
from harness.context import MetricContext
from harness.core.details import HeadScores, NamedPositionAttention
from harness.core.heads import Head, HeadName, head_names, sort_heads
from harness.core.measurement import Measurement
from harness.core.model_handle import Activations, Hook
from harness.core.value_shape import HEADS, NameSet, OneOf, Table, either, names
from harness.metrics.ioi import answer_ids, end_positions, final_logit_diff
from harness.metrics.loss import mean_and_error
from harness.registry import metric

NamedPosition = Literal["IO", "S1", "S1+1", "S2", "end"]


def named_positions(ctx: MetricContext) -> dict[str, Tensor]:
    """``{name: positions [batch]}`` for :data:`NamedPosition` (module docstring)."""
    inputs = ctx.require_inputs()
    word_idx = inputs.meta.get("word_idx")
    if word_idx is not None:
        return {key: torch.tensor(value, dtype=torch.int64) for key, value in word_idx.items()}
    answers = answer_ids(ctx)
    rows = [row.tolist() for row in inputs.tokens]
    io = [row.index(int(c)) if int(c) in row else -1 for row, c in zip(rows, answers[:, 0])]
    s1 = [row.index(int(w)) if int(w) in row else -1 for row, w in zip(rows, answers[:, 1])]
    s2 = [len(row) - 1 - row[::-1].index(int(w)) if int(w) in row else -1 for row, w in zip(rows, answers[:, 1])]
    if -1 in io + s1:
        raise ValueError("named positions need both answer names in every prompt (IO and S)")
    found = {"IO": io, "S1": s1, "S1+1": [p + 1 for p in s1], "S2": s2}
    out = {key: torch.tensor(value, dtype=torch.int64) for key, value in found.items()}
    out["end"] = end_positions(ctx)
    return out


@metric("ioi.attention_between", needs_inputs=True, value=OneOf(Table(HEADS), NameSet(HEADS)), details=(HeadScores, NamedPositionAttention))
def attention_between(
    ctx: MetricContext, *, query: NamedPosition = "end", key: NamedPosition = "IO",
    heads: list[HeadName] | None = None, top_k: Annotated[int, Field(ge=1)] | None = None,
) -> Measurement:
    """Mean attention probability from the ``query`` position to the ``key`` position, per head.

    ``A[l, h] = mean_b pattern[l][b, h, query_b, key_b]`` with each prompt's own positions (module
    docstring), e.g. ``end -> IO`` (name movers), ``end -> S2`` (S-inhibition), ``S2 -> S1``
    (duplicate-token heads), ``S2 -> S1+1`` (induction). Value: table ``"L.H"`` for ``heads``
    (every head when unset; uncertainty: standard error over prompts), or with ``top_k`` the
    ``top_k`` heads with the largest mean, largest first. Details: ``scores`` (every head) and
    ``by_position``: for the chosen heads (or the top ``top_k``, at most 8), the mean attention from
    ``query`` to every named position.
    """
    positions = named_positions(ctx)
    q, k = positions[query], positions[key]
    activations = ctx.forward().activations
    batch = q.shape[0]
    rows = torch.arange(batch)
    per_head: dict[str, Tensor] = {}
    for layer in range(ctx.model.shape.n_layers):
        pattern = activations["pattern", layer].float().cpu()  # [batch, head, q_pos, k_pos]
        picked = pattern[rows, :, q, k]  # [batch, head]
        for head in range(ctx.model.shape.n_heads):
            per_head[f"{layer}.{head}"] = picked[:, head]
    pairs = {name: mean_and_error(value) for name, value in per_head.items()}
    scores = {name: mean for name, (mean, _) in pairs.items()}
    ranked = sorted(scores, key=lambda n: -scores[n])
    chosen = sort_heads(sorted(set(heads))) if heads else list(scores)
    shown = ranked[: min(top_k, 8)] if top_k is not None else chosen[:8]
    details = {"scores": scores, "query": query, "key": key, "n_prompts": batch,
               "by_position": attention_to_each(activations, positions, q, shown)}
    if top_k is not None:
        return Measurement(ranked[:top_k], None, {**details, "top_k": top_k})
    errors = None if batch < 2 else {name: float(pairs[name][1]) for name in chosen}
    return Measurement({name: scores[name] for name in chosen}, errors, details, unit="probability")


def attention_to_each(activations: Activations, positions: dict[str, Tensor], q: Tensor, heads: list[str]) -> dict[str, dict[str, float]]:
    """``{head: {position name: mean_b pattern[b, h, q_b, position_b]}}`` for ``heads``."""
    rows = torch.arange(q.shape[0])
    out: dict[str, dict[str, float]] = {}
    for name in heads:
        head = Head.parse(name)
        pattern = activations["pattern", head.layer][:, head.head].float().cpu()  # [batch, q_pos, k_pos]
        out[name] = {key: float(pattern[rows, q, where].mean()) for key, where in positions.items()}
    return out


# ----------------------------------------------------------------------------------------------
# per-layer attribution and the logit lens
# ----------------------------------------------------------------------------------------------


def layer_parts(ctx: MetricContext) -> dict[str, Tensor]:
    """``{"embed", ["pos_embed"], "attn.L", ["mlp.L"], "unembed_bias": [batch]}``: the direct parts grouped by layer.

    ``attn.L`` = the heads of layer ``L`` plus ``b_O[L]`` (the course's ``decompose_resid`` attention output).
    """
    answers, ends = answer_ids(ctx), end_positions(ctx)
    forward = ctx.forward()
    model, activations = ctx.model, forward.activations
    parts = logit_diff_parts(model, activations, answers, ends)
    u_eff = effective_directions(model, activations, logit_diff_directions(model, answers)[:, None], ends[:, None])[:, 0]
    b_o = model.b_O.float().cpu()  # [layer, d_model]
    grouped: dict[str, Tensor] = {"embed": parts["embed"]}
    if "pos_embed" in parts:
        grouped["pos_embed"] = parts["pos_embed"]
    for layer in range(model.shape.n_layers):
        heads = [parts[f"{layer}.{h}"] for h in range(model.shape.n_heads)]
        grouped[f"attn.{layer}"] = torch.stack(heads).sum(0) + (u_eff * b_o[layer]).sum(-1)
        if f"mlp.{layer}" in parts:
            grouped[f"mlp.{layer}"] = parts[f"mlp.{layer}"]
    grouped["unembed_bias"] = parts["unembed_bias"]
    return grouped


@metric("ioi.layer_attribution", needs_inputs=True, value=Table(names()))
def layer_attribution(ctx: MetricContext) -> Measurement:
    """Direct contribution of each layer's attention and MLP output to the logit difference at END.

    The course's ``residual_stack_to_logit_diff(cache.decompose_resid(layer=-1, pos_slice=-1))``:
    keys ``embed``, ``pos_embed`` (standard positions), ``attn.L`` (the layer's heads plus its
    ``b_O``), ``mlp.L`` and ``unembed_bias``; they sum to the logit difference. Mean over prompts
    (uncertainty: standard error). Details: the mean logit difference.
    """
    grouped = layer_parts(ctx)
    pairs = {name: mean_and_error(value) for name, value in grouped.items()}
    values = {name: mean for name, (mean, _) in pairs.items()}
    n = next(iter(grouped.values())).numel()
    errors = None if n < 2 else {name: float(error) for name, (_, error) in pairs.items()}
    actual = final_logit_diff(ctx.forward().logits, answer_ids(ctx), end_positions(ctx))
    return Measurement(values, errors, {"logit_diff_mean": float(actual.mean()), "sum": float(sum(values.values()))}, unit="logit")


@metric("ioi.logit_lens", needs_inputs=True, value=Table(names()))
def logit_lens(ctx: MetricContext) -> Measurement:
    """The logit difference read from the accumulated residual stream after each layer part.

    The course's ``cache.accumulated_resid(layer=-1, incl_mid=True, pos_slice=-1)`` projected on the
    logit-difference directions with the final norm's cached scale: keys ``"L_pre"`` (``resid_pre[L]``),
    ``"L_mid"`` (``resid_mid[L]``, models with MLPs) and ``"final_post"`` (the final residual); the
    unembedding bias is not added (as the course). Mean over prompts (uncertainty: standard error).
    """
    answers, ends = answer_ids(ctx), end_positions(ctx)
    model, activations = ctx.model, ctx.forward().activations
    u_eff = effective_directions(model, activations, logit_diff_directions(model, answers)[:, None], ends[:, None])[:, 0]
    streams: dict[str, Tensor] = {}
    for layer in range(model.shape.n_layers):
        streams[f"{layer}_pre"] = activations["resid_pre", layer]
        if not model.attn_only:
            streams[f"{layer}_mid"] = activations["resid_mid", layer]
    streams["final_post"] = activations["resid_post", model.shape.n_layers - 1]
    per_prompt = {name: (gather_positions(act, ends[:, None])[:, 0] * u_eff).sum(-1) for name, act in streams.items()}
    pairs = {name: mean_and_error(value) for name, value in per_prompt.items()}
    values = {name: mean for name, (mean, _) in pairs.items()}
    errors = None if ends.numel() < 2 else {name: float(error) for name, (_, error) in pairs.items()}
    return Measurement(values, errors, {"order": list(values)}, unit="logit")


# ----------------------------------------------------------------------------------------------
# mean ablation over the ABC distribution, then direct attribution
# ----------------------------------------------------------------------------------------------


def abc_template_means(ctx: MetricContext, layer: int) -> Tensor:
    """``z`` of ``layer`` [batch, pos, head, d_head] replaced by its mean over the ABC prompts of the same template.

    The course's ``compute_means_by_template``: for each template group, the mean over the group's
    prompts of the ABC run's ``z`` at every position (the group's prompts share a length and positions).
    """
    inputs = ctx.require_inputs()
    if inputs.kind != "ioi_dataset" or inputs.params.get("flip") is not None:
        raise ValueError(f"mean ablation over ABC needs inputs: ioi_dataset without flip, not {inputs.key}")
    abc = ctx.session.inputs(ctx.model, {"ioi_dataset": {**inputs.params, "flip": "abc"}})
    z = ctx.session.forward(ctx.model, abc).activations["z", layer].float().cpu()  # [batch, pos, head, d_head]
    templates = torch.tensor(inputs.meta["templates"])
    means = torch.empty_like(z)
    for template in templates.unique():
        group = templates == template
        means[group] = z[group].mean(0)
    return means


def ablated_activations(ctx: MetricContext, heads: list[Head], where: Tensor) -> tuple[Activations, Tensor]:
    """Activations of the run with each head's ``z`` at the positions ``where`` [batch] replaced by its ABC template mean.

    Returns the activations (embed, pos_embed, z, mlp_out, final-norm scale) and the logits' END
    logit difference [batch]. Hooks capture after the ablation, so ``z`` is the ablated one.
    """
    model, tokens = ctx.model, ctx.require_inputs().tokens
    store: dict[str, Tensor] = {}
    means = {layer: abc_template_means(ctx, layer) for layer in sorted({h.layer for h in heads})}
    rows = torch.arange(tokens.shape[0])

    def ablate(layer: int) -> Hook:
        def hook(z: Tensor, hook: Any) -> Tensor:
            for head in (h.head for h in heads if h.layer == layer):
                z[rows, where, head] = means[layer][rows, where, head].to(z.dtype)
            return z
        return hook

    def keep(z: Tensor, hook: Any) -> None:
        store[hook.name] = z.detach().clone()

    hooks = [(model.hook_name("z", layer), ablate(layer)) for layer in means]
    hooks += [(name, keep) for name in part_hooks(model)]
    logits = model.run_with_hooks(tokens, hooks)
    activations = Activations(lambda accept: {k: v for k, v in store.items() if accept(k)}, store.keys())
    return activations, final_logit_diff(logits, answer_ids(ctx), end_positions(ctx))


@metric("ioi.ablated_attribution", needs_inputs=True, value=Table(either(HEADS, names())), details=(HeadScores,))
def ablated_attribution(ctx: MetricContext, *, ablate: Annotated[list[HeadName], Field(min_length=1)], at: NamedPosition = "end") -> Measurement:
    """Mean-ablate heads at one named position, then read the logit difference and every head's direct attribution.

    The course's backup name mover experiment: ``z`` of each head in ``ablate`` at position ``at``
    is replaced by its mean over the ABC prompts of the same template (``abc_template_means``).
    Value (means over prompts): ``logit_diff`` (clean run), ``direct`` (the ablated heads' summed
    direct attribution in the clean run), ``naive`` (``logit_diff - direct``: the prediction if
    nothing compensated), ``ablated`` (the ablated run's logit difference), ``recovered``
    (``(ablated - naive) / direct``: the share of the direct effect made up by the rest of the
    model), ``ln_scale_ratio`` (mean final-norm scale at END, ablated / clean; 1 without a norm),
    and per head ``"L.H"`` the change of its direct attribution (ablated minus clean). Details:
    ``scores`` (the per-head changes), both per-head attributions.
    """
    heads = [Head.parse(name) for name in sort_heads(sorted(set(ablate)))]
    answers, ends = answer_ids(ctx), end_positions(ctx)
    where = named_positions(ctx)[at]
    model = ctx.model
    ctx.forward().prefetch(part_hooks(model), logits=True)  # the clean run's parts and logits: one pass
    clean = logit_diff_parts(model, ctx.forward().activations, answers, ends)
    activations, ablated_ld = ablated_activations(ctx, heads, where)
    after = logit_diff_parts(model, activations, answers, ends)
    ld = final_logit_diff(ctx.forward().logits, answers, ends)
    direct = float(torch.stack([clean[str(h)] for h in heads]).sum(0).mean())
    names_ = head_names(model.shape.n_layers, model.shape.n_heads)
    change = {name: float((after[name] - clean[name]).mean()) for name in names_}
    ratio = 1.0
    if model.normalization_type is not None:
        scale_clean = gather_positions(ctx.forward().activations["ln_final.hook_scale"], ends[:, None])
        scale_after = gather_positions(activations["ln_final.hook_scale"], ends[:, None])
        ratio = float((scale_after / scale_clean).mean())
    naive = float(ld.mean()) - direct
    summary = {
        "logit_diff": float(ld.mean()), "direct": direct, "naive": naive, "ablated": float(ablated_ld.mean()),
        "recovered": (float(ablated_ld.mean()) - naive) / direct if direct != 0 else float("nan"), "ln_scale_ratio": ratio,
    }
    details = {
        "scores": change, "ablated_heads": [str(h) for h in heads], "at": at,
        "clean_attribution": {name: float(clean[name].mean()) for name in names_},
        "ablated_attribution": {name: float(after[name].mean()) for name in names_},
        "top_increase": dict(sorted(change.items(), key=lambda kv: -kv[1])[:10]),
    }
    return Measurement({**summary, **change}, None, details, unit="logit")


# ----------------------------------------------------------------------------------------------
# the minimal circuit: mean-ablate every head output outside a set of (head, position)
# ----------------------------------------------------------------------------------------------


def kept_mask(ctx: MetricContext, layer: int, keep: dict[str, list[str]]) -> Tensor:
    """``mask[b, p, h]`` [batch, pos, head]: True where head ``layer.h`` is kept at position ``p`` of prompt ``b``."""
    tokens = ctx.require_inputs().tokens
    positions = named_positions(ctx)
    mask = torch.zeros(tokens.shape[0], tokens.shape[1], ctx.model.shape.n_heads, dtype=torch.bool)
    rows = torch.arange(tokens.shape[0])
    for where, heads in keep.items():
        for head in (Head.parse(name) for name in heads):
            if head.layer == layer:
                mask[rows, positions[where], head.head] = True
    return mask


@metric("ioi.circuit_mean_ablation", needs_inputs=True, value=Table(names("logit_diff", "ablated", "ratio")))
def circuit_mean_ablation(ctx: MetricContext, *, keep: dict[NamedPosition, list[HeadName]]) -> Measurement:
    """The logit difference with every head's output mean-ablated except the kept heads at their positions.

    The course's ``add_mean_ablation_hook(model, means_dataset=abc_dataset, circuit, seq_pos_to_keep)``:
    ``z[b, p, h] <- mean over the ABC prompts of b's template of z[., p, h]`` (``abc_template_means``)
    unless head ``h`` is kept at ``p``, i.e. ``p`` is prompt ``b``'s position named by a key of
    ``keep`` and the head is in its list. Value (means over prompts): ``logit_diff`` (clean run),
    ``ablated`` and ``ratio = ablated / logit_diff``. Details: how many (head, position) pairs are kept.
    """
    means = all_template_means(ctx)
    ablated = float(circuit_logit_diffs(ctx, keep, means).mean())
    clean = float(final_logit_diff(ctx.forward().logits, answer_ids(ctx), end_positions(ctx)).mean())
    value = {"logit_diff": clean, "ablated": ablated, "ratio": ablated / clean if clean != 0 else float("nan")}
    kept_pairs = sum(int(kept_mask(ctx, layer, keep).sum()) for layer in range(ctx.model.shape.n_layers))
    details = {"kept_pairs": kept_pairs, "kept_heads": {k: list(v) for k, v in keep.items()}}
    return Measurement(value, None, details, unit="logit")


def all_template_means(ctx: MetricContext) -> dict[int, Tensor]:
    """``{layer: z's ABC template means [batch, pos, head, d_head]}`` for every layer (:func:`abc_template_means`)."""
    return {layer: abc_template_means(ctx, layer) for layer in range(ctx.model.shape.n_layers)}


def circuit_logit_diffs(ctx: MetricContext, keep: dict[str, list[str]], means: dict[int, Tensor]) -> Tensor:
    """END logit difference [batch] of the run with every ``z[b, p, h]`` replaced by ``means[layer][b, p, h]``
    except the kept (head, position) pairs (:func:`kept_mask`): the course's ``add_mean_ablation_hook`` run."""
    model, tokens = ctx.model, ctx.require_inputs().tokens
    layers = range(model.shape.n_layers)
    masks = {layer: kept_mask(ctx, layer, keep) for layer in layers}

    def ablate(layer: int) -> Hook:
        def hook(z: Tensor, hook: Any) -> Tensor:
            kept = masks[layer].to(z.device)[..., None]  # [batch, pos, head, 1]
            return torch.where(kept, z, means[layer].to(z.device, z.dtype))
        return hook

    logits = model.run_with_hooks(tokens, [(model.hook_name("z", layer), ablate(layer)) for layer in layers])
    return final_logit_diff(logits, answer_ids(ctx), end_positions(ctx))


# ----------------------------------------------------------------------------------------------
# position vs token signal: heads' outputs patched from a flipped dataset
# ----------------------------------------------------------------------------------------------

Flip = Literal["random_token", "inverted_token", "inverted_position", "random_token_inverted_position", "inverted_token_inverted_position"]


@metric("ioi.heads_from_flip", needs_inputs=True, value=Table(names("logit_diff", "patched", "drop")))
def heads_from_flip(ctx: MetricContext, *, heads: Annotated[list[HeadName], Field(min_length=1)], flip: Flip) -> Measurement:
    """The logit difference with ``heads``' ``z`` (all positions) taken from a flipped twin of the dataset.

    The course's position-vs-token experiment (S141:1665-1720): the S-inhibition heads' outputs are
    patched in from a dataset whose names carry the same, random or inverted token signal and the
    same or inverted position signal (``fixtures.ioi_dataset.FLIPS``); answers and END stay the
    clean prompts'. Value (means over prompts): ``logit_diff`` (clean), ``patched``, and
    ``drop = logit_diff - patched``.
    """
    inputs = ctx.require_inputs()
    if inputs.kind != "ioi_dataset" or inputs.params.get("flip") is not None:
        raise ValueError(f"ioi.heads_from_flip needs inputs: ioi_dataset without flip, not {inputs.key}")
    chosen = [Head.parse(name) for name in sort_heads(sorted(set(heads)))]
    flipped = ctx.session.inputs(ctx.model, {"ioi_dataset": {**inputs.params, "flip": flip}})
    source = ctx.session.forward(ctx.model, flipped).activations
    layers = sorted({h.layer for h in chosen})
    z_from = {layer: source["z", layer] for layer in layers}  # read before hooks run

    def patch(layer: int) -> Hook:
        def hook(z: Tensor, hook: Any) -> Tensor:
            for head in (h.head for h in chosen if h.layer == layer):
                z[:, :, head] = z_from[layer][:, :, head].to(z.dtype)
            return z
        return hook

    model, answers, ends = ctx.model, answer_ids(ctx), end_positions(ctx)
    logits = model.run_with_hooks(inputs.tokens, [(model.hook_name("z", layer), patch(layer)) for layer in layers])
    patched = float(final_logit_diff(logits, answers, ends).mean())
    clean = float(final_logit_diff(ctx.forward().logits, answers, ends).mean())
    return Measurement({"logit_diff": clean, "patched": patched, "drop": clean - patched}, None, {"flip": flip}, unit="logit")


# ----------------------------------------------------------------------------------------------
# the writing direction: attention to a name against the head's output along that name's unembedding
# ----------------------------------------------------------------------------------------------


@metric("ioi.writing_direction", needs_inputs=True, value=Table(names("correlation", "slope")))
def writing_direction(ctx: MetricContext, *, head: HeadName) -> Measurement:
    """Pearson correlation, over prompts and the two names, of attention and writing (paper Fig. 3c).

    The course's ``calculate_and_show_scatter_embedding_vs_attn``: for prompt ``b`` and name ``n``
    in {IO (at ``IO``), S (at ``S1``)}, ``x = pattern[b, h, end_b, pos_n]`` and
    ``y = (z[b, end_b, h] W_O[h]) . W_U[:, n]`` (the head's output at END projected on the name's
    unembedding, no final norm). Value: ``correlation`` (Pearson r over the 2B points; positive for
    a head that copies the name it attends to, negative for one that writes against it) and
    ``slope`` (least squares ``y`` on ``x``). Details: the points.
    """
    chosen = Head.parse(head)
    positions, answers = named_positions(ctx), answer_ids(ctx)
    activations = ctx.forward().activations
    rows = torch.arange(answers.shape[0])
    end = positions["end"]
    z = activations["z", chosen.layer][rows, end, chosen.head].float().cpu()  # [batch, d_head]
    out = z @ ctx.model.W_O[chosen.layer, chosen.head].float().cpu()  # [batch, d_model]
    w_u = ctx.model.W_U.float().cpu()
    pattern = activations["pattern", chosen.layer][:, chosen.head].float().cpu()  # [batch, q, k]
    xs, ys = [], []
    for column, where in ((0, positions["IO"]), (1, positions["S1"])):
        xs.append(pattern[rows, end, where])
        ys.append((out * w_u[:, answers[:, column]].T).sum(-1))
    x, y = torch.cat(xs).double(), torch.cat(ys).double()
    xc, yc = x - x.mean(), y - y.mean()
    denominator = float(xc.norm() * yc.norm())
    if denominator == 0:
        raise ValueError(f"head {head}: attention or projection is constant over the prompts; no correlation")
    value = {"correlation": float((xc * yc).sum()) / denominator, "slope": float((xc * yc).sum() / (xc * xc).sum())}
    details = {"points": {"attention": [float(v) for v in x], "projection": [float(v) for v in y]}, "head": head}
    return Measurement(value, None, details)
