"""Running a metric on a model that is not in the registry: the public entry point for metric tests.

A metric's tests compare it with a reference on models built in the test (seeded random models,
hand-built circuits). :func:`measure_metric` runs it there as the runner runs it for a claim: the
metric looked up in the real registry, its parameters validated against its schema, the inputs
built from an input spec, and the measurement cached in a :class:`~harness.session.Session`::

    from harness.testing import measure_metric
    from fixtures.random_models import random_hooked

    model = random_hooked(0, n_layers=2, n_heads=2)
    got = measure_metric(model, "attention.detect", inputs={"repeated_random": {"seq_len": 7, "batch": 2}},
                         pattern="induction", threshold=0.4)
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any

import torch

from harness.context import MetricContext
from harness.core.measurement import Measurement
from harness.core.model_handle import ModelHandle, ModelIdentity
from harness.registry import get_metric
from harness.session import Session

if TYPE_CHECKING:  # pragma: no cover
    from transformer_lens import HookedTransformer

    from fixtures.inputs import InputBatch

InputSpec = dict[str, dict[str, Any]]
"""An input spec as a claim file writes it: ``{kind: params}``, e.g. ``{"repeated_random": {"seq_len": 8}}``."""


def weights_sha256(model: "HookedTransformer") -> str:
    """The sha256 of ``model``'s state dict (names and raw bytes, in order): its weights' identity."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def ad_hoc_handle(model: "HookedTransformer", name: str = "ad-hoc", *, bos_token_id: int | None = 0) -> ModelHandle:
    """``model`` (put in eval mode) as a :class:`ModelHandle` named ``name``, source ``test``.

    Its identity carries the sha256 of its weights, so two different models never share a
    session's cache entries even under one name.
    """
    identity = ModelIdentity(name=name, source="test", weights_sha256=weights_sha256(model), config_sha256=None)
    return ModelHandle(model.eval(), identity, bos_token_id=bos_token_id)


def random_handle(seed: int, name: str | None = None, **config: Any) -> ModelHandle:
    """A seeded random model (:func:`fixtures.random_models.random_hooked` of ``config``) as a handle
    named ``name`` (``random-<seed>`` unless given)."""
    from fixtures.random_models import random_hooked

    return ad_hoc_handle(random_hooked(seed, **config), name or f"random-{seed}")


def measure_metric(
    model: "HookedTransformer | ModelHandle", metric: str, *, inputs: "InputSpec | InputBatch | None" = None,
    select: str | None = None, session: Session | None = None, **params: Any,
) -> Measurement:
    """Metric ``metric`` with ``params`` on ``model`` and ``inputs``, run as the runner runs a claim.

    ``model`` is a handle or a bare ``HookedTransformer`` (wrapped by :func:`ad_hoc_handle`);
    ``inputs`` an input spec (built by the session) or an already built input batch. Parameters are
    validated against the metric's schema (a ``pydantic.ValidationError`` when they do not fit); the
    measurement is cached in ``session`` (a fresh one unless given) and ``select``-ed. Unlike a
    claim, an exception from the metric propagates, and a non-finite value is returned as it is.
    """
    handle = model if isinstance(model, ModelHandle) else ad_hoc_handle(model)
    session = session if session is not None else Session()
    info = get_metric(metric)
    validated = info.validate_params(params)
    batch = session.inputs(handle, inputs) if isinstance(inputs, dict) else inputs
    key = (handle.identity.key, metric, json.dumps(params, sort_keys=True, default=repr), inputs_key(inputs))
    measurement = session.measurement(key)
    if measurement is None:
        measurement = info.function(MetricContext(handle, batch, session), **dict(validated))
        if not isinstance(measurement, Measurement):
            raise TypeError(f"metric {metric!r} returned {type(measurement).__name__}, not a Measurement")
        session.remember(key, measurement)
    return measurement.select(select)


def inputs_key(inputs: "InputSpec | InputBatch | None") -> str:
    """The part of a measurement's cache key that names its inputs."""
    if inputs is None or isinstance(inputs, dict):
        return json.dumps(inputs, sort_keys=True)
    return f"batch:{inputs.key}"


def fast_settings(max_examples: int) -> Any:
    """Hypothesis settings for a metric's property test: ``max_examples`` examples, no deadline.

    Everything else (whether examples are replayed or drawn fresh, the example database) comes
    from the active Hypothesis profile (``HYPOTHESIS_PROFILE``), so that a fuzzing profile fuzzes.
    """
    from hypothesis import HealthCheck, settings

    return settings(max_examples=max_examples, deadline=None, suppress_health_check=[HealthCheck.too_slow])
