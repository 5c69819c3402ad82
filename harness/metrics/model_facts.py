"""Model facts: configuration, biases, tied embeddings, tokenization, and cache consistency.

Small checks of what a course says about a model itself rather than about a mechanism:

- ``model_facts.config``: the architecture as numbers (``attn_only`` 1/0, ``has_normalization``
  1/0, ``shortformer`` 1/0, the dimensions, and ``full_circuit_entries = d_vocab^2``, the size of
  a full QK/OV circuit).
- ``model_facts.bias_norms``: ``max |b|`` of every bias the model handle exposes (``b_Q``, ``b_K``,
  ``b_V``, ``b_O``, ``b_U``) and their maximum. TransformerLens allocates bias parameters even for a
  model described as having "no biases", so that claim is checked as "every bias is (near) zero".
- ``model_facts.embed_unembed``: whether the embedding and unembedding are tied,
  ``rel_distance = ||W_E - W_U^T||_F / ||W_E||_F`` (0 when tied) and the cosine
  ``<W_E, W_U^T>_F / (||W_E||_F ||W_U||_F)``.
- ``model_facts.tokenize``: how the model's tokenizer splits a string, as position-tagged items
  ``"i:id"`` or ``"i:token"`` (compared as sets, the tags keep the order), or the decoded string.
- ``model_facts.cache_consistency``: the cached attention pattern of a layer against the one
  rebuilt from the cached queries and keys, ``A = softmax(mask(q k^T / sqrt(d_head)))`` (the
  course's check), and the cache's two names for it (``("pattern", L)`` and
  ``"blocks.L.attn.hook_pattern"``).
- ``model_facts.qk_input_decomposition``: in an attention-only model without normalization, the
  input of layer ``L``'s queries and keys is ``embed + pos_embed + sum_{l<L, h} z[l, h] W_O[l, h]``
  (ARENA 1.2 ``decompose_qk_input``); it is compared with ``resid_pre[L] + pos_embed`` (shortformer:
  positions enter only the queries and keys) or ``resid_pre[L]`` (standard positions). Attention
  biases ``b_O`` are not components, as in the course, so a nonzero ``b_O`` shows as an error.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import Tensor

from harness.context import MetricContext
from harness.core.measurement import Measurement
from harness.metrics.qk import qk_components
from harness.registry import metric
from harness.core.value_shape import NameSet, TEXT, Table, names

BIAS_NAMES = ("b_Q", "b_K", "b_V", "b_O", "b_U")
TokenForm = Literal["ids", "str_tokens", "decoded"]


@metric("model_facts.config", value=Table(names(
    "n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx", "attn_only", "has_normalization", "shortformer",
    "full_circuit_entries",
)))
def config(ctx: MetricContext) -> Measurement:
    """The architecture as a table of numbers (flags are 1/0). Weights are not read.

    Value: ``n_layers``, ``n_heads``, ``d_model``, ``d_head``, ``d_vocab``, ``n_ctx``, ``attn_only``
    (no MLPs), ``has_normalization`` (``normalization_type`` is not None), ``shortformer``
    (positions added only to the query/key inputs), ``full_circuit_entries`` (``d_vocab^2``).
    """
    model = ctx.model
    shape = model.shape
    value = {
        "n_layers": float(shape.n_layers),
        "n_heads": float(shape.n_heads),
        "d_model": float(shape.d_model),
        "d_head": float(shape.d_head),
        "d_vocab": float(shape.d_vocab),
        "n_ctx": float(shape.n_ctx),
        "attn_only": float(model.attn_only),
        "has_normalization": float(model.normalization_type is not None),
        "shortformer": float(model.positional_embedding_type == "shortformer"),
        "full_circuit_entries": float(shape.d_vocab) ** 2,
    }
    details = {"normalization_type": model.normalization_type, "positional_embedding_type": model.positional_embedding_type}
    return Measurement(value, None, details)


@metric("model_facts.bias_norms", value=Table(names("b_Q", "b_K", "b_V", "b_O", "b_U", "max")))
def bias_norms(ctx: MetricContext) -> Measurement:
    """``max |b|`` of each bias tensor the model exposes, and ``max`` over all of them. Weights only.

    Value: table ``{"b_Q", "b_K", "b_V", "b_O", "b_U", "max"}`` (a bias the model handle does not
    expose is left out and listed in ``details.not_exposed``).
    """
    value: dict[str, float] = {}
    missing: list[str] = []
    for name in BIAS_NAMES:
        try:
            tensor = getattr(ctx.model, name)
        except AttributeError:
            missing.append(name)
            continue
        value[name] = float(tensor.detach().abs().max()) if tensor.numel() else 0.0
    if not value:
        raise ValueError(f"model {ctx.model.identity.name!r} exposes none of the biases {', '.join(BIAS_NAMES)}")
    value["max"] = max(value.values())
    return Measurement(value, None, {"checked": [n for n in BIAS_NAMES if n in value], "not_exposed": missing})


@metric("model_facts.embed_unembed", value=Table(names()))
def embed_unembed(ctx: MetricContext) -> Measurement:
    """How far the unembedding is from the transposed embedding (0 for tied weights). Weights only.

    Value: ``rel_distance = ||W_E - W_U^T||_F / ||W_E||_F`` and
    ``cosine = <W_E, W_U^T>_F / (||W_E||_F ||W_U||_F)``, in float64.
    """
    W_E = ctx.model.W_E.double()  # [d_vocab, d_model]
    W_U_T = ctx.model.W_U.double().T  # [d_vocab, d_model]
    if W_E.shape != W_U_T.shape:
        raise ValueError(f"W_E {tuple(W_E.shape)} and W_U^T {tuple(W_U_T.shape)} differ in shape")
    norm_E, norm_U = float(torch.linalg.matrix_norm(W_E)), float(torch.linalg.matrix_norm(W_U_T))
    if norm_E == 0 or norm_U == 0:
        raise ValueError("W_E or W_U is all zero: the distance is undefined")
    value = {
        "rel_distance": float(torch.linalg.matrix_norm(W_E - W_U_T)) / norm_E,
        "cosine": float((W_E * W_U_T).sum()) / (norm_E * norm_U),
    }
    return Measurement(value, None, {"norm_W_E": norm_E, "norm_W_U": norm_U})


@metric("model_facts.tokenize", value=NameSet(TEXT))
def tokenize(
    ctx: MetricContext, *, text: Annotated[str, Field(min_length=1, max_length=10_000)], prepend_bos: bool = True, form: TokenForm = "ids",
) -> Measurement:
    """How the model's tokenizer splits ``text`` (BOS prepended unless ``prepend_bos: false``).

    Value: a list compared as a set: ``ids`` gives ``["0:50256", "1:70", ...]``, ``str_tokens``
    gives ``["0:<|endoftext|>", "1:g", ...]`` (position-tagged, so the set fixes the order), and
    ``decoded`` gives one item, the tokens decoded and joined (as ``to_string`` of the ids, for
    tokens that decode to whole characters). Details: ids, str tokens and their count.
    """
    model = ctx.model
    tokens = model.to_tokens(text, prepend_bos=prepend_bos)  # [1, pos]
    ids = [int(t) for t in tokens[0]]
    pieces = [str(piece) for piece in model.to_str_tokens(tokens[0])]
    if form == "ids":
        value = [f"{i}:{token}" for i, token in enumerate(ids)]
    elif form == "str_tokens":
        value = [f"{i}:{piece}" for i, piece in enumerate(pieces)]
    else:
        value = ["".join(pieces)]
    return Measurement(value, None, {"ids": ids, "str_tokens": pieces, "n_tokens": len(ids), "form": form})


def rebuilt_pattern(q: Tensor, k: Tensor) -> Tensor:
    """``softmax(mask(q k^T) / sqrt(d_head))`` as the course writes it (mask with -1e9, then scale).

    q, k: [batch, pos, head, d_head]; returns [batch, head, query, key].
    """
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k)
    n = scores.shape[-1]
    future = torch.triu(torch.ones(n, n, dtype=torch.bool, device=scores.device), diagonal=1)
    return (scores.masked_fill(future, -1e9) / math.sqrt(q.shape[-1])).softmax(dim=-1)


@metric("model_facts.cache_consistency", needs_inputs=True,
        value=Table(names("pattern_vs_qk_max_abs_diff", "alias_max_abs_diff")))
def cache_consistency(ctx: MetricContext, *, layer: Annotated[int, Field(ge=0)] = 0) -> Measurement:
    """The cached attention pattern of ``layer`` against the pattern rebuilt from the cached q and k.

    Value: ``pattern_vs_qk_max_abs_diff = max |A_cache - softmax(mask(q k^T) / sqrt(d_head))|`` and
    ``alias_max_abs_diff = max |cache["pattern", L] - cache["blocks.L.attn.hook_pattern"]|``.
    Rotary models are rejected (their cached q, k are taken before the rotation).
    """
    if layer >= ctx.model.shape.n_layers:
        raise ValueError(f"layer {layer} is outside the model ({ctx.model.shape.n_layers} layers)")
    if ctx.model.positional_embedding_type == "rotary":
        raise ValueError("rotary models: the cached q and k are taken before the rotation, so the pattern cannot be rebuilt from them")
    activations = ctx.forward().activations
    pattern = activations["pattern", layer].double()
    rebuilt = rebuilt_pattern(activations["q", layer].double(), activations["k", layer].double())
    alias = activations[f"blocks.{layer}.attn.hook_pattern"].double()
    value = {
        "pattern_vs_qk_max_abs_diff": float((pattern - rebuilt).abs().max()),
        "alias_max_abs_diff": float((pattern - alias).abs().max()),
    }
    return Measurement(value, None, {"layer": layer, "shape": list(pattern.shape)})


@metric("model_facts.qk_input_decomposition", needs_inputs=True, value=Table(names()))
def qk_input_decomposition(
    ctx: MetricContext,
    *,
    layer: Annotated[int, Field(ge=1)] = 1,
    rtol: Annotated[float, Field(ge=0)] = 0.01,
    atol: Annotated[float, Field(ge=0)] = 1e-5,
) -> Measurement:
    """The summed components of layer ``layer``'s query/key input against the cached residual stream.

    ``S = embed + pos_embed + sum_{l<layer, h} z[l, h] W_O[l, h]`` (the course's
    ``decompose_qk_input(cache).sum(0)``) against ``T = resid_pre[layer] + pos_embed`` for
    shortformer positions (``T = resid_pre[layer]`` for standard ones). Value:
    ``max_abs_error = max |S - T|``, ``assert_close_excess = max(|S - T| - (atol + rtol |T|))``
    (``<= 0`` when ``torch.testing.assert_close(S, T, rtol=rtol, atol=atol)`` passes; the course
    uses rtol 0.01, atol 1e-5), and ``pos_in_residual = max |resid_pre[0] - embed|`` (0 when the
    positional embedding does not enter the residual stream).
    """
    model = ctx.model
    if layer >= model.shape.n_layers:
        raise ValueError(f"layer {layer} is outside the model ({model.shape.n_layers} layers)")
    activations = ctx.forward().activations
    _, components = qk_components(model, activations, layer)  # [comp, batch, pos, d_model]; raises if not linear
    summed = components.double().sum(0)
    resid = activations["resid_pre", layer].double()
    target = resid + activations["pos_embed"].double() if model.positional_embedding_type == "shortformer" else resid
    error = (summed - target).abs()
    value = {
        "max_abs_error": float(error.max()),
        "assert_close_excess": float((error - (atol + rtol * target.abs())).max()),
        "pos_in_residual": float((activations["resid_pre", 0].double() - activations["embed"].double()).abs().max()),
    }
    details = {"layer": layer, "rtol": rtol, "atol": atol, "positional_embedding_type": model.positional_embedding_type}
    return Measurement(value, None, details)
