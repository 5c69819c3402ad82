"""The model layer: the one place metrics meet TransformerLens.

Metrics see a :class:`ModelHandle`, never a ``HookedTransformer``: weights with their shapes,
a cached forward pass, hooks by (kind, layer). A later TransformerLens 4.x bridge backend
replaces this module, not the metrics. This module imports torch; what a spec is checked
against without loading a model (:class:`ModelShape`, :class:`ModelIdentity`) lives in
:mod:`harness.core.model_identity`, which imports neither torch nor TransformerLens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Callable, Iterator

import torch
from torch import Tensor

from harness.core.errors import TokenizerUnavailable
from harness.core.finite import NonFiniteModelError, first_non_finite_activation
from harness.core.model_identity import ModelIdentity, ModelShape
from harness.core.norm_once import norm_once_per_block
from harness.core.weight_layout import store_as_multiplied

__all__ = ["Activations", "Forward", "Hook", "KeyValuePrefix", "ModelHandle", "ModelIdentity", "ModelShape", "same_hook_in_every_layer"]

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer


Hook = Callable[[Tensor, Any], Tensor | None]


class Activations:
    """Activations of one forward pass on fixed tokens, read by (kind, layer) or hook name.

    ``kind`` is a TransformerLens short name: ``"pattern"`` [batch, head, query, key],
    ``"z"`` [batch, pos, head, d_head], ``"v"``, ``"q"``, ``"k"``, ``"resid_pre"`` [batch, pos, d_model],
    ``"attn_out"``, ``"embed"``, ``"pos_embed"``.

    Computed when first read: reading a hook point runs one forward pass that caches that hook
    point in every layer (``blocks.<L>.attn.hook_pattern`` for all ``L``), so a forward pass
    holds only the kinds its metrics read. Caching every hook of GPT-2 small on 50 sequences of
    101 tokens takes about 5 GB; its attention patterns alone about 0.3 GB. Every pass sees the
    same tokens in the same model, so the values are those of one pass caching everything.
    """

    def __init__(self, capture: Callable[[Callable[[str], bool]], dict[str, Tensor]], hook_names: Iterable[str]) -> None:
        self._capture = capture
        self._hook_names = frozenset(hook_names)
        self._store: dict[str, Tensor] = {}

    def hook_name(self, key: tuple[Any, ...] | str) -> str:
        """The full hook name of ``key``: ``("pattern", 1)``, ``"embed"`` or a hook name itself."""
        from transformer_lens.utilities import get_act_name  # transformer_lens.utils warns (deprecated)

        if isinstance(key, tuple):
            return get_act_name(*key)
        return key if key in self._hook_names else get_act_name(key)

    def __getitem__(self, key: tuple[Any, ...] | str) -> Tensor:
        name = self.hook_name(key)
        if name not in self._store:
            if name not in self._hook_names:
                raise KeyError(key)
            self._store.update(self._capture(same_hook_in_every_layer(name)))
            if name not in self._store:  # a hook point this model never calls (e.g. hook_result when off)
                raise KeyError(key)
        return self._store[name]

    @property
    def held(self) -> frozenset[str]:
        """The hook names computed so far."""
        return frozenset(self._store)

    def hold(self, captured: dict[str, Tensor]) -> None:
        """Keep activations captured by a pass of the same tokens (:meth:`Forward.prefetch`)."""
        self._store.update(captured)

    def __contains__(self, key: tuple[Any, ...] | str) -> bool:
        try:
            self[key]
        except (KeyError, ValueError, AssertionError, IndexError):
            return False
        return True


def same_hook_in_every_layer(name: str) -> Callable[[str], bool]:
    """A names filter for hook ``name`` and, for a block hook ``blocks.<L>.<rest>``, ``<rest>`` of every block."""
    match = _BLOCK_HOOK.match(name)
    if match is None:
        return lambda other: other == name
    rest = match.group(1)
    return lambda other: other == name or ((found := _BLOCK_HOOK.match(other)) is not None and found.group(1) == rest)


_BLOCK_HOOK = re.compile(r"^blocks\.\d+\.(.+)$")


class Forward:
    """Logits [batch, pos, d_vocab] and activations of one forward pass on ``tokens``, each computed when first read.

    Logits are not kept by the passes that cache activations (50 sequences of 101 tokens have
    1 GB of GPT-2 logits), but every such pass keeps the residual stream after the last block
    (``blocks.<L-1>.hook_resid_post``, [batch, pos, d_model]): logits read later are the final
    norm and the unembedding of it (:meth:`_logits_from_final_residual`), not a second pass
    through every block. Only a metric that reads the logits first runs the plain pass.
    """

    def __init__(self, hooked: "HookedTransformer", tokens: Tensor, model_name: str = "") -> None:
        self._hooked = hooked
        self._tokens = tokens
        self._logits: Tensor | None = None
        self._model_name = model_name
        self._final_residual = f"blocks.{hooked.cfg.n_layers - 1}.hook_resid_post"
        self.activations = Activations(self._capture, hooked.hook_dict)

    @property
    def logits(self) -> Tensor:
        if self._logits is None:
            if self._final_residual in self.activations.held:
                self._logits = self._finite(self._logits_from_final_residual())
            else:
                self._logits = self._finite(self._checked_pass(return_type="logits"))
        return self._logits

    @torch.inference_mode()
    def _logits_from_final_residual(self) -> Tensor:
        """TransformerLens's forward from after the last block (``start_at_layer = n_layers``: the
        final norm, then the unembedding) on the held residual stream: the very operations the plain
        pass applies to that same tensor, so the logits are the plain pass's bit for bit; the
        final norm's hook points are checked as in every pass."""
        resid = self.activations[self._final_residual]
        return self._hooked.run_with_hooks(resid, start_at_layer=self._hooked.cfg.n_layers, return_type="logits",
                                           fwd_hooks=[(lambda name: True, self._check_finite)])

    def _finite(self, logits: Tensor) -> Tensor:
        """``logits``, or :class:`~harness.core.finite.NonFiniteModelError` if any is NaN or infinite."""
        reason = first_non_finite_activation(logits, [])
        if reason is not None:
            raise NonFiniteModelError(self._model_name, reason)
        return logits

    def prefetch(self, names: Iterable[str], *, logits: bool = False) -> None:
        """Compute the hook points ``names`` (full hook names) not held yet, and with ``logits`` the
        logits, in one checked pass instead of one pass per kind of activation and one for the logits.

        A metric that reads several kinds (direct attribution reads the embeddings, every ``z``,
        every ``mlp_out``, the final-norm scale and the logits) calls it first. Hooks that store an
        activation change nothing in the pass, so every value equals the one its own pass gives.
        """
        wanted = frozenset(name for name in names if name not in self.activations.held)
        wants_logits = logits and self._logits is None
        if not wanted:
            if wants_logits:
                self.logits
            return
        captured, out = self._capturing_pass(lambda name: name in wanted, return_type="logits" if wants_logits else None)
        if wants_logits:
            self._logits = self._finite(out)
        self.activations.hold(captured)

    def _capture(self, names_filter: Callable[[str], bool]) -> dict[str, Tensor]:
        """The activations of the hook points ``names_filter`` accepts, from one checked pass."""
        return self._capturing_pass(names_filter, return_type=None)[0]

    def _capturing_pass(self, names_filter: Callable[[str], bool], *, return_type: str | None) -> tuple[dict[str, Tensor], Any]:
        """(the activations of the hook points ``names_filter`` accepts, the pass's output) of one checked
        pass; a pass without the logits also keeps the residual stream after the last block (see :class:`Forward`)."""
        cache: dict[str, Tensor] = {}
        keep = names_filter if return_type is not None else (lambda name: name == self._final_residual or names_filter(name))

        def store(activation: Tensor, hook: Any) -> None:
            cache[hook.name] = activation.detach()

        out = self._checked_pass(return_type=return_type, extra_hooks=[(keep, store)])
        return cache, out

    @torch.inference_mode()
    def _checked_pass(self, *, return_type: str | None, extra_hooks: list[tuple[Any, Hook]] = []) -> Any:
        """One forward pass in which every hook point is checked for NaN and infinity as it goes
        by (masked attention scores may hold ``-inf``): a pass whose values overflowed anywhere,
        even where the metric reads something downstream that hides it (TransformerLens zeroes
        the NaN that overflowing scores make in the pattern), raises
        :class:`~harness.core.finite.NonFiniteModelError`."""
        hooks = [(lambda name: True, self._check_finite), *extra_hooks]
        return self._hooked.run_with_hooks(self._tokens, return_type=return_type, fwd_hooks=hooks)

    def _check_finite(self, activation: Tensor, hook: Any) -> None:
        """A hook: :class:`~harness.core.finite.NonFiniteModelError` if ``activation`` holds NaN or infinity."""
        reason = first_non_finite_activation(None, [(hook.name, activation)])
        if reason is not None:
            raise NonFiniteModelError(self._model_name, reason)


class KeyValuePrefix:
    """Every block's attention keys and values of the first ``position`` positions of a run on
    ``batch`` prompts (:meth:`ModelHandle.key_value_prefix`): what a pass that starts at
    ``position`` (:meth:`ModelHandle.residual_from`) reads of the positions before it."""

    def __init__(self, position: int, batch: int, blocks: list[tuple[Tensor, Tensor]]) -> None:
        self.position = position
        self.batch = batch
        self._blocks = blocks  # per block: keys, values [batch, position, kv_heads, d_head]

    def cache(self, copies: int, blocks: range | None = None) -> Any:
        """A frozen TransformerLens key/value cache holding the prefix for ``copies`` stacked copies of the batch (copy-major rows).

        Only the entries of ``blocks`` (default: all), those a pass from block ``blocks.start`` to
        ``blocks.stop`` reads, are stacked ``copies`` times; the others hold the batch once (a pass
        that read one would fail on its batch size, never read wrong keys)."""
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
        from transformer_lens.cache.key_value_cache_entry import TransformerLensKeyValueCacheEntry

        read = range(len(self._blocks)) if blocks is None else blocks
        entries = [TransformerLensKeyValueCacheEntry(*((k.repeat(copies, 1, 1, 1), v.repeat(copies, 1, 1, 1)) if i in read else (k, v)),
                                                     frozen=True)
                   for i, (k, v) in enumerate(self._blocks)]
        mask = torch.ones(self.batch * copies, self.position, dtype=torch.int)
        return TransformerLensKeyValueCache(entries, mask, frozen=True)


class ModelHandle:
    """A loaded model as metrics see it."""

    def __init__(self, hooked: "HookedTransformer", identity: ModelIdentity, *, bos_token_id: int | None) -> None:
        store_as_multiplied(hooked)  # same values; no weight copies in every block of every pass
        norm_once_per_block(hooked)  # same values; one attention-input norm per block, not three
        self._hooked = hooked
        self.identity = identity
        self.bos_token_id = bos_token_id
        cfg = hooked.cfg
        self.shape = ModelShape(cfg.n_layers, cfg.n_heads, cfg.d_model, cfg.d_head, cfg.d_vocab, cfg.n_ctx)
        self.positional_embedding_type: str = cfg.positional_embedding_type
        self.attn_only: bool = bool(cfg.attn_only)
        #: Why the model has no tokenizer, where the loader knows (shown when text is given).
        self.no_tokenizer_reason: str | None = None

    # --- weights -----------------------------------------------------------------------
    @property
    def W_E(self) -> Tensor:
        """Token embedding [d_vocab, d_model]."""
        return self._hooked.W_E.detach()

    @property
    def W_pos(self) -> Tensor:
        """Positional embedding [n_ctx, d_model] (absent for rotary models)."""
        return self._hooked.W_pos.detach()

    @property
    def W_U(self) -> Tensor:
        """Unembedding [d_model, d_vocab]."""
        return self._hooked.W_U.detach()

    @property
    def W_Q(self) -> Tensor:
        """Query weights [n_layers, n_heads, d_model, d_head]."""
        return self._hooked.W_Q.detach()

    @property
    def W_K(self) -> Tensor:
        """Key weights [n_layers, n_heads, d_model, d_head] (key/value groups expanded)."""
        return self._hooked.W_K.detach()

    @property
    def W_V(self) -> Tensor:
        """Value weights [n_layers, n_heads, d_model, d_head] (key/value groups expanded)."""
        return self._hooked.W_V.detach()

    @property
    def b_V(self) -> Tensor:
        """Value biases [n_layers, n_heads, d_head] (key/value groups expanded)."""
        return self._hooked.b_V.detach()

    @property
    def W_O(self) -> Tensor:
        """Output weights [n_layers, n_heads, d_head, d_model]."""
        return self._hooked.W_O.detach()

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        """Every parameter with its TransformerLens name (``blocks.0.attn.W_Q``), detached and contiguous
        (:mod:`~harness.core.weight_layout` stores some transposed)."""
        return ((name, parameter.detach().contiguous()) for name, parameter in self._hooked.named_parameters())

    # --- running -----------------------------------------------------------------------
    def run_with_cache(self, tokens: Tensor) -> Forward:
        """The forward pass on ``tokens`` [batch, pos]: logits and every activation, each computed when first read."""
        return Forward(self._hooked, tokens, self.identity.name)

    @torch.inference_mode()
    def run_with_hooks(self, tokens: Tensor, hooks: list[tuple[str, Hook]]) -> Tensor:
        """Logits [batch, pos, d_vocab] of a forward pass with ``hooks`` (name, function) attached."""
        return self._hooked.run_with_hooks(tokens, fwd_hooks=hooks)

    @torch.inference_mode()
    def residual_with_hooks(self, tokens: Tensor, hooks: list[tuple[str, Hook]], stop_at_layer: int | None = None) -> Tensor:
        """The residual stream [batch, pos, d_model] entering block ``stop_at_layer`` (default: after the
        last block, before the final norm) of a forward pass with ``hooks``; no logits are computed."""
        stop = self.shape.n_layers if stop_at_layer is None else stop_at_layer
        return self._hooked.run_with_hooks(tokens, fwd_hooks=hooks, stop_at_layer=stop)

    @torch.inference_mode()
    def residual_from(
        self, layer: int, resid: Tensor | None, tokens: Tensor, hooks: list[tuple[str, Hook]], stop_at_layer: int | None = None,
        prefix: "KeyValuePrefix | None" = None,
    ) -> Tensor:
        """:meth:`residual_with_hooks` of a pass on ``tokens`` [batch, pos] that starts at block ``layer``
        from ``resid`` [batch, pos, d_model], the residual stream entering that block (``None`` for block 0; a pass whose
        hooks change nothing before block ``layer`` equals an earlier pass up to there, so its first
        blocks need not run again). ``tokens`` give the attention mask and positional inputs; hooks
        on blocks before ``layer`` do not run.

        With a ``prefix`` (:meth:`key_value_prefix` of a run of the same tokens' first ``P =
        prefix.position`` positions), the pass also starts at position ``P``: ``resid`` is
        [batch, pos - P, d_model] (positions ``P ..``), every block's attention reads the prefix's
        keys and values for positions ``< P``, hooks see positions ``P ..`` only (an attention
        pattern [batch, head, pos - P, pos]) and the stream of positions ``P ..`` is returned. The
        model is causal, so a pass whose hooks change nothing at positions before ``P`` equals the
        prefix's run there; the positions before ``P`` need not run again.
        """
        stop = self.shape.n_layers if stop_at_layer is None else stop_at_layer
        if prefix is not None:
            if resid is None:
                raise ValueError("a pass that starts after a prefix needs the residual stream of its positions")
            copies = resid.shape[0] // prefix.batch
            _embedded, _tokens, shortformer, mask = self._hooked.input_to_embed(tokens)
            if shortformer is not None:
                shortformer = shortformer[:, prefix.position :]
            return self._hooked.run_with_hooks(resid, fwd_hooks=hooks, start_at_layer=layer, stop_at_layer=stop,
                                               shortformer_pos_embed=shortformer, attention_mask=mask,
                                               past_kv_cache=prefix.cache(copies, range(layer, stop)))
        if layer == 0:
            return self.residual_with_hooks(tokens, hooks, stop_at_layer)
        _embedded, _tokens, shortformer, mask = self._hooked.input_to_embed(tokens)
        return self._hooked.run_with_hooks(resid, fwd_hooks=hooks, start_at_layer=layer, stop_at_layer=stop,
                                           shortformer_pos_embed=shortformer, attention_mask=mask)

    @torch.inference_mode()
    def positionwise_from(self, layer: int, resid: Tensor, hooks: list[tuple[str, Hook]], stop_at_layer: int | None = None) -> Tensor:
        """Blocks ``layer .. stop_at_layer - 1`` (default: to the end, before the final norm) on residual
        vectors resid [batch, n, d_model], each row's positions read as a sequence of their own
        (positions ``0 .. n-1``, no mask).

        Only for passes in which every attention head's output is set by ``hooks`` (path patching's
        frozen heads): then no block mixes positions (norms and MLPs act on each position alone,
        and attention's output does not depend on its pattern), so any positions of a run, e.g.
        one per prompt, give the values the whole run gives there."""
        stop = self.shape.n_layers if stop_at_layer is None else stop_at_layer
        return self._hooked.run_with_hooks(resid, fwd_hooks=hooks, start_at_layer=layer, stop_at_layer=stop)

    @torch.inference_mode()
    def key_value_prefix(self, tokens: Tensor, position: int) -> "KeyValuePrefix":
        """Every block's attention keys and values [batch, position, kv_heads, d_head] at positions
        ``< position`` (``0 < position < pos``) of a plain pass on ``tokens`` [batch, pos], for
        :meth:`residual_from`'s ``prefix``: those TransformerLens's attention appends to a cache as
        it runs (after any key norm). The pass runs every position, as the plain pass does, so the
        keys and values are bit for bit the plain pass's (a matrix product over fewer rows may
        round differently)."""
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache

        if not 0 < position < tokens.shape[1]:
            raise ValueError(f"a key/value prefix needs 0 < position < {tokens.shape[1]}, not {position}")
        embedded, _tokens, shortformer, mask = self._hooked.input_to_embed(tokens)
        cache = TransformerLensKeyValueCache.init_cache(self._hooked.cfg, embedded.device, tokens.shape[0])
        self._hooked(embedded, start_at_layer=0, return_type=None, past_kv_cache=cache,
                     shortformer_pos_embed=shortformer, attention_mask=mask)
        blocks = [(e.past_keys[:, :position], e.past_values[:, :position]) for e in cache.entries]
        return KeyValuePrefix(position, tokens.shape[0], blocks)

    def hook_name(self, kind: str, layer: int | None = None) -> str:
        """The hook point name of activation ``kind`` in ``layer`` (e.g. ``("z", 1)``)."""
        from transformer_lens.utilities import get_act_name  # transformer_lens.utils warns (deprecated)

        return get_act_name(kind, layer)

    def require_tokenizer(self) -> None:
        """Raise unless the model has a tokenizer.

        :class:`~harness.core.errors.TokenizerUnavailable` (the claim is skipped) where the loader looked
        for one and could not find it (``no_tokenizer_reason`` says how to supply it); ``ValueError``
        (an error) for a model that has none by construction, e.g. a planted model.
        """
        if self._hooked.tokenizer is not None:
            return
        if self.no_tokenizer_reason:

            raise TokenizerUnavailable(self.identity.name, self.no_tokenizer_reason)
        raise ValueError(f"model {self.identity.name!r} has no tokenizer: give token ids instead of text")

    def to_tokens(self, text: str | list[str], *, prepend_bos: bool = True) -> Tensor:
        """Token ids [batch, pos] for ``text`` with the model's tokenizer (see :meth:`require_tokenizer`)."""
        self.require_tokenizer()
        return self._hooked.to_tokens(text, prepend_bos=prepend_bos)

    @property
    def has_tokenizer(self) -> bool:
        return self._hooked.tokenizer is not None

    def to_str_tokens(self, tokens: Tensor) -> list[str]:
        return self._hooked.to_str_tokens(tokens)

    # --- biases and normalization (for direct logit attribution) ------------------------
    @property
    def b_O(self) -> Tensor:
        """Attention output bias [n_layers, d_model]."""
        return self._hooked.b_O.detach()

    @property
    def b_U(self) -> Tensor:
        """Unembedding bias [d_vocab]."""
        return self._hooked.b_U.detach()

    @property
    def attn_scale(self) -> float:
        """What the attention scores ``q . k`` are divided by (``cfg.attn_scale``, 1 if unscaled)."""
        cfg = self._hooked.cfg
        return float(cfg.attn_scale) if cfg.use_attn_scale else 1.0

    @property
    def normalization_type(self) -> str | None:
        """``cfg.normalization_type``: ``None``, ``"LN"``, ``"LNPre"``, ``"RMS"`` or ``"RMSPre"``."""
        return self._hooked.cfg.normalization_type

    # --- query/key biases (positional QK with biases) ------------------------------------
    @property
    def b_Q(self) -> Tensor:
        """Query bias [n_layers, n_heads, d_head]."""
        return self._hooked.b_Q.detach()

    @property
    def b_K(self) -> Tensor:
        """Key bias [n_layers, n_heads, d_head] (key/value groups expanded)."""
        return self._hooked.b_K.detach()

    # --- single blocks read in isolation (copy scores) ----------------------------------
    @torch.inference_mode()
    def mlp_on(self, layer: int, resid: Tensor) -> Tensor:
        """MLP ``layer``'s output on residual vectors resid [batch, pos, d_model], read alone:
        ``mlp(ln2(resid))`` [batch, pos, d_model] (LayerNorm or RMSNorm, plain or gated MLP).

        Refused where the block's MLP does not read ``ln2(resid_mid)`` that way (attention-only,
        parallel attention/MLP, post-norm or extra norms after the MLP).
        """
        from transformer_lens.utilities.architectures import POST_NORM_ARCHITECTURES

        cfg = self._hooked.cfg
        unusual = [flag for flag in ("parallel_attn_mlp", "use_normalization_before_and_after") if getattr(cfg, flag, False)]
        if cfg.original_architecture in POST_NORM_ARCHITECTURES:
            unusual.append(f"post-norm {cfg.original_architecture}")
        if cfg.attn_only or unusual:
            why = "it is attention-only" if cfg.attn_only else f"its block is not pre-norm ln2 -> MLP ({', '.join(unusual)})"
            raise ValueError(f"model {self.identity.name!r}: cannot apply MLP {layer} alone: {why}")
        block = self._hooked.blocks[layer]
        return block.mlp(block.ln2(resid))

    @torch.inference_mode()
    def final_norm(self, resid: Tensor) -> Tensor:
        """``ln_final(resid)`` [..., d_model] (the identity for a model without normalization)."""
        if self._hooked.cfg.normalization_type is None:
            return resid
        return self._hooked.ln_final(resid)
