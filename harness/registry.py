"""The metric registry: a metric is one function plus ``@metric(...)``.

A metric function takes a :class:`~harness.context.MetricContext` and keyword-only parameters,
each annotated with its type (use ``typing.Annotated`` with ``pydantic.Field`` for ranges) and
given a default unless required::

    @metric("attention.prev_token", needs_inputs=True)
    def prev_token(ctx: MetricContext, *, threshold: Annotated[float, Field(ge=0, le=1)] = 0.4) -> Measurement:
        \"\"\"Mean attention to the previous token, per head.\"\"\"

The registry turns the signature into a strict pydantic model (unknown parameters are errors),
so specs are validated at load time and the JSON Schema lists every metric's parameters.
Parameters typed :data:`~harness.core.heads.HeadName` (or lists of them) are checked against the
model's shape.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import typing
from dataclasses import dataclass
from typing import Any, Callable

from pydantic import BaseModel, ConfigDict, create_model

from harness.core.heads import HeadName
from harness.core.measurement import Measurement
from harness.core.named_registry import NamedRegistry
from harness.core.value_shape import ValueShape

MetricFunction = Callable[..., Measurement]


@dataclass(frozen=True)
class MetricInfo:
    """A registered metric."""

    name: str
    function: MetricFunction
    params_model: type[BaseModel]
    needs_inputs: bool
    head_params: tuple[str, ...]
    description: str
    fitted: bool = False
    """Its value is what an optimiser found: it moves with the seed and with the BLAS kernels of the
    machine, so a claim on it declares a ``baseline_tolerance`` derived from that spread
    (``benchmarks/fit_spread.py``)."""
    heavy: bool = False
    """It sweeps a model's whole vocabulary (a V x V circuit, or a map trained over it): minutes on a
    real model's 50k tokens, so a claim on it on a real model is marked ``slow: true``."""
    value: ValueShape | None = None
    """The declared shape of its value (:mod:`harness.core.value_shape`): ``select`` paths are checked
    against it at load time, the returned value at run time. ``None`` only for ad-hoc metrics (tests)."""
    details: tuple[type, ...] = ()
    """The typed details it returns (:mod:`harness.core.details`), which the report's plots read."""

    def validate_params(self, params: dict[str, Any]) -> BaseModel:
        """Validate ``params`` (raises ``pydantic.ValidationError``)."""
        return self.params_model.model_validate(params)


_METRICS: NamedRegistry[MetricInfo] = NamedRegistry("metric")
_LOADED = False


def metric(
    name: str, *, needs_inputs: bool = False, fitted: bool = False, heavy: bool = False,
    value: ValueShape | None = None, details: tuple[type, ...] = (),
) -> Callable[[MetricFunction], MetricFunction]:
    """Register ``function`` under ``name``; ``needs_inputs`` says the claim must give ``inputs``;
    ``fitted`` that the value comes from an optimiser (see :attr:`MetricInfo.fitted`); ``heavy``
    that it sweeps the whole vocabulary (see :attr:`MetricInfo.heavy`); ``value`` the shape of what
    it returns and ``details`` the typed details kinds it fills (see :attr:`MetricInfo.value`)."""

    def register(function: MetricFunction) -> MetricFunction:
        if name in _METRICS and _METRICS[name].function is function:
            return function
        params_model, head_params = _params_model(name, function)
        doc = inspect.getdoc(function) or ""
        _METRICS.add(name, MetricInfo(
            name=name,
            function=function,
            params_model=params_model,
            needs_inputs=needs_inputs,
            fitted=fitted,
            heavy=heavy,
            value=value,
            details=tuple(details),
            head_params=head_params,
            description=doc.split("\n\n")[0].replace("\n", " "),
        ))
        return function

    return register


def get_metric(name: str) -> MetricInfo:
    """The metric registered as ``name`` (:class:`~harness.core.named_registry.UnknownName`, a ``KeyError`` with a did-you-mean, if none)."""
    load_builtin_metrics()
    return _METRICS[name]


def registered_metrics() -> list[MetricInfo]:
    """The metrics registered so far, without importing ``harness.metrics`` (and torch)."""
    return list(_METRICS.values())


def metric_names() -> list[str]:
    """Every registered metric name, sorted."""
    load_builtin_metrics()
    return _METRICS.names()


def load_builtin_metrics() -> None:
    """Import every module of ``harness.metrics`` once, so their ``@metric`` calls run."""
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    package = importlib.import_module("harness.metrics")
    for module in pkgutil.iter_modules(package.__path__):
        if not module.name.startswith("_"):
            importlib.import_module(f"{package.__name__}.{module.name}")


def _params_model(name: str, function: MetricFunction) -> tuple[type[BaseModel], tuple[str, ...]]:
    """Build the strict parameter model from ``function``'s keyword-only parameters."""
    hints = typing.get_type_hints(function, include_extras=True)
    parameters = [
        (parameter.name, hints.get(parameter.name, Any), ... if parameter.default is inspect.Parameter.empty else parameter.default)
        for parameter in inspect.signature(function).parameters.values()
        if parameter.kind is inspect.Parameter.KEYWORD_ONLY
    ]
    return params_model(name, parameters)


def params_model(name: str, parameters: list[tuple[str, Any, Any]]) -> tuple[type[BaseModel], tuple[str, ...]]:
    """The strict parameter model of metric ``name`` from its keyword-only ``(name, annotation, default)``
    (``...``: required), and the names of the parameters that hold heads."""
    fields = {parameter: (annotation, default) for parameter, annotation, default in parameters}
    head_params = tuple(parameter for parameter, annotation, _ in parameters if _mentions_head(annotation))
    model_name = "Params_" + name.replace(".", "_")
    config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    return create_model(model_name, __config__=config, **fields), head_params


def _mentions_head(annotation: Any) -> bool:
    """True if ``annotation`` is ``HeadName`` or contains it (``list[HeadName] | None``...)."""
    if annotation == HeadName:
        return True
    return any(_mentions_head(arg) for arg in typing.get_args(annotation))
