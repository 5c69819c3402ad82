"""One run's caches: each model loaded once, each forward pass and measurement computed once.

Cache keys start with the model's :attr:`~harness.core.model_identity.ModelIdentity.key`, so two models
(or one model under two processing flags) never share an entry.

A model is loaded only when something must be computed on it. With a measurement cache on disk,
:meth:`Session.identity` first looks the model's identity up under its source's fingerprint
(:attr:`fixtures.model_entry.ModelEntry.fingerprint`): a run whose measurements of a model are
all cached never loads it (nor imports torch or TransformerLens for it). A model loaded later in
the run is checked against the identity the cache gave (a difference is warned about).
"""

from __future__ import annotations

import hashlib
import json
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from fixtures.registry import get_model_entry, model_entries
from harness.core.errors import ModelUnavailable
from harness.core.input_batch import InputBatch
from harness.core.measurement import Measurement
from harness.core.model_identity import ModelIdentity
from harness.measurement_cache import CacheEntryWarning, CacheKey, MeasurementCache, identity_key

if TYPE_CHECKING:  # pragma: no cover  (torch: imported when a model is loaded)
    from harness.core.model_handle import Forward, ModelHandle

MAX_FORWARDS = 8
T = TypeVar("T")


@dataclass
class Session:
    """Models, inputs, forward passes and measurements of one pytest session or CLI run."""

    progress: bool = False
    """Whether long metrics (trained fits) may draw progress bars on stderr (the CLI on a terminal)."""
    cache: MeasurementCache | None = None
    """The measurement cache on disk that measurements are read from and stored in (``None``: off)."""
    models: dict[str, ModelHandle | Exception] = field(default_factory=dict)
    load_seconds: dict[str, float] = field(default_factory=dict)
    forward_count: int = 0
    _inputs: dict[tuple[str, str], InputBatch] = field(default_factory=dict)
    _forwards: "OrderedDict[tuple[str, str], Forward]" = field(default_factory=OrderedDict)
    _measurements: dict[tuple[str, ...], Measurement] = field(default_factory=dict)
    _from_cache: set[tuple[str, ...]] = field(default_factory=set)
    _memo: dict[tuple[str, ...], Any] = field(default_factory=dict)
    identities: dict[str, ModelIdentity] = field(default_factory=dict)
    """Identities read from the measurement cache of models this run has not loaded."""
    _identity_keys: dict[str, CacheKey | None] = field(default_factory=dict)
    _related: dict[str, str] = field(default_factory=dict)

    def identity(self, name: str) -> ModelIdentity:
        """The identity of model ``name``: the loaded model's, else the one the measurement cache
        holds under the model's fingerprint, else that of the model loaded now. Raises what
        loading raises (:class:`ModelUnavailable` and any load failure, remembered)."""
        if name in self.models:
            return self.model(name).identity
        if name not in self.identities:
            stored = self._stored_identity(name)
            if stored is None:
                return self.model(name).identity
            self.identities[name] = stored
        return self.identities[name]

    def _identity_key(self, name: str) -> CacheKey | None:
        """The cache key of model ``name``'s identity (``None``: no cache, or no fingerprint)."""
        if name not in self._identity_keys:
            entry = get_model_entry(name)
            key = None
            if self.cache is not None and entry.fingerprint is not None:
                entry.ensure_available()  # an unavailable model is a skip, as its load would be
                try:
                    key = identity_key(name, entry.source, entry.fingerprint())
                except Exception:  # noqa: BLE001  (a file that cannot be read...: loading says what is wrong)
                    key = None
            self._identity_keys[name] = key
        return self._identity_keys[name]

    def related_models(self, name: str) -> str:
        """sha256 over the fingerprints of the other models of ``name``'s family (the names
        ``BASE`` and ``BASE@...`` with ``name``'s ``BASE``: a training run's snapshots, which
        :mod:`harness.metrics.modular_dynamics` loads), ``"none"`` without any; a member without a
        fingerprint counts by its name and source (its files are its family's: one Hub file)."""
        if name not in self._related:
            base = name.partition("@")[0]
            family = {}
            for other, entry in model_entries().items():
                if other != name and other.partition("@")[0] == base:
                    try:
                        family[other] = [entry.source, entry.fingerprint() if entry.fingerprint is not None else None]
                    except Exception as exc:  # noqa: BLE001  (unreadable: its load says why; the key says it changed)
                        family[other] = [entry.source, f"unreadable: {type(exc).__name__}"]
            self._related[name] = hashlib.sha256(json.dumps(family, sort_keys=True).encode()).hexdigest() if family else "none"
        return self._related[name]

    def _stored_identity(self, name: str) -> ModelIdentity | None:
        try:
            key = self._identity_key(name)
        except ModelUnavailable as exc:
            self.models[name], self.load_seconds[name] = exc, 0.0
            raise
        stored = self.cache.get_identity(key) if key is not None and self.cache is not None else None
        if stored is None:
            return None
        try:
            return ModelIdentity(**stored)
        except TypeError:
            return None

    def model(self, name: str) -> ModelHandle:
        """The model ``name``, loaded on first use.

        A failed load is remembered and raised again for every claim on the model:
        :class:`ModelUnavailable` (a skip) or any other error, e.g. a weights integrity error or
        a :class:`~harness.core.finite.NonFiniteModelError` (a parameter holds NaN or infinity).
        """
        if name not in self.models:
            start = time.perf_counter()
            try:
                entry = get_model_entry(name)
                entry.ensure_available()  # an unavailable model is refused before torch or TransformerLens is imported
                self.models[name] = checked_finite(name, entry.load())
            except Exception as exc:  # remembered: one failing load, not one per claim
                self.models[name] = exc
            self.load_seconds[name] = time.perf_counter() - start
            if not isinstance(self.models[name], Exception):
                self._store_identity(name, self.models[name].identity)
        loaded = self.models[name]
        if isinstance(loaded, Exception):
            raise loaded
        return loaded

    def _store_identity(self, name: str, loaded: ModelIdentity) -> None:
        """Keep a loaded model's identity in the cache under its fingerprint; warn when it differs
        from the identity the cache gave earlier in this run (the fingerprint missed something)."""
        served = self.identities.pop(name, None)
        if served is not None and served != loaded:
            warnings.warn(
                f"model {name!r}: the measurement cache gave identity {served.key} but the model loads as {loaded.key}; "
                "measurements read under the cached identity in this run may be stale (run with --no-cache)",
                CacheEntryWarning, stacklevel=3)
        try:
            key = self._identity_key(name)
        except ModelUnavailable:
            return
        if key is not None and self.cache is not None and (served != loaded or self.cache.get_identity(key) is None):
            self.cache.put_identity(key, loaded.as_dict())

    def inputs(self, model: ModelHandle, spec: dict[str, dict[str, Any]]) -> InputBatch:
        """The :class:`~harness.core.input_batch.InputBatch` that ``spec`` (``{kind: params}``) gives for ``model``."""
        from fixtures.inputs import INPUT_KINDS  # torch: only when something is computed

        key = (model.identity.key, json.dumps(spec, sort_keys=True))
        if key not in self._inputs:
            (kind, params), = spec.items()
            input_kind = INPUT_KINDS[kind]
            self._inputs[key] = input_kind.build(model, input_kind.params_model.model_validate(params))
        return self._inputs[key]

    def forward(self, model: ModelHandle, inputs: InputBatch) -> Forward:
        """The forward pass of ``model`` on ``inputs``, run once (LRU of ``MAX_FORWARDS``).

        Its activations and logits are computed when first read, and reading one that holds NaN or
        infinity raises :class:`~harness.core.finite.NonFiniteModelError` (finite weights can still
        overflow): a metric on such a pass is an ``error``.
        """
        key = (model.identity.key, inputs.key)
        if key in self._forwards:
            self._forwards.move_to_end(key)
            return self._forwards[key]
        forward = model.run_with_cache(inputs.tokens)
        self.forward_count += 1
        self._forwards[key] = forward
        while len(self._forwards) > MAX_FORWARDS:
            self._forwards.popitem(last=False)
        return forward

    def measurement(self, key: tuple[str, ...]) -> Measurement | None:
        return self._measurements.get(key)

    def remember(self, key: tuple[str, ...], measurement: Measurement, *, from_cache: bool = False) -> None:
        """Keep ``measurement`` for this run; ``from_cache``: it was read from the cache on disk."""
        self._measurements[key] = measurement
        if from_cache:
            self._from_cache.add(key)

    def from_cache(self, key: tuple[str, ...]) -> bool:
        """Whether the measurement under ``key`` was read from the cache on disk (not computed in this run)."""
        return key in self._from_cache

    def memoised(self, key: tuple[str, ...], compute: Callable[[], T]) -> T:
        """``compute()`` once per ``key`` in this session: work that several metrics report, such as
        a trained low-rank fit that both a curve and a single-rank claim use.  ``key`` must start
        with the model's identity key."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]


def checked_finite(name: str, model: ModelHandle) -> ModelHandle:
    """``model`` (registered as ``name``), or :class:`~harness.core.finite.NonFiniteModelError` naming its first non-finite parameter."""
    from harness.core.finite import NonFiniteModelError, first_non_finite_parameter  # torch: only when a model is loaded

    reason = first_non_finite_parameter(model.named_parameters())
    if reason is not None:
        raise NonFiniteModelError(name, reason)
    return model
