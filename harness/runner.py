"""Run one claim: resolve model and inputs, measure, compare, give a verdict."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from typing import TYPE_CHECKING

from harness.context import MetricContext
from harness.core.errors import ModelUnavailable
from harness.loader import LoadedFile
from harness.core.measurement import Measurement, measurement_non_finite_reason
from harness.core.details import details_problem
from harness.measurement_cache import cache_key
from harness.metric_signatures import MetricDeclaration, metric_declaration
from harness.registry import MetricInfo, get_metric
from harness.session import Session
from harness.core.spec import Claim, Reference
from harness.verdicts import ComparisonError, Verdict, judge

if TYPE_CHECKING:  # pragma: no cover  (torch: imported when a model is loaded)
    from harness.core.model_handle import ModelHandle


@dataclass
class ClaimResult:
    """Everything the reports and the JSON record say about one claim."""

    file: str
    claim: Claim
    model: str
    verdict: Verdict
    measurement: Measurement | None = None
    reference: Measurement | None = None
    reason: str | None = None
    duration_s: float = 0.0
    model_identity: dict[str, Any] | None = None
    cached: bool = False
    """The measurement (and the reference, if any) came from the measurement cache, not this run."""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        """The verdict is what the suite expects (skips are neither passed nor failed)."""
        return self.verdict.value == self.claim.expected_verdict

    @property
    def node_id(self) -> str:
        return f"{self.file}::{self.claim.id}"


def run_claim(loaded: LoadedFile, claim: Claim, session: Session) -> ClaimResult:
    """Measure ``claim`` and judge it. Never raises for a metric failure: that is verdict ``error``."""
    start = time.perf_counter()
    model_name = loaded.model_of(claim) or ""
    result = ClaimResult(loaded.path, claim, model_name, Verdict.ERROR)
    try:
        result.model_identity = session.identity(model_name).as_dict()
        result.measurement, cached = _measure(session, model_name, claim.metric, claim.params, claim.inputs, claim.select)
        operand = claim.expect.operand
        if isinstance(operand, Reference):
            inputs = operand.inputs if operand.inputs is not None else claim.inputs
            result.reference, reference_cached = _measure(
                session, operand.model or model_name, operand.metric, operand.params, inputs, operand.select)
            cached = cached and reference_cached
        result.cached = cached
        result.verdict = judge(claim.expect, result.measurement, result.reference)
    except ModelUnavailable as exc:
        result.verdict, result.reason = Verdict.SKIPPED, str(exc)
    except _NotJudgeable as exc:
        result.verdict, result.reason = Verdict.ERROR, str(exc)
    except ComparisonError as exc:
        result.verdict, result.reason = Verdict.ERROR, f"cannot compare: {exc}"
    except Exception as exc:  # a metric failure is a verdict, not a crash: fail closed
        result.verdict, result.reason = Verdict.ERROR, f"{type(exc).__name__}: {exc}"
    result.duration_s = time.perf_counter() - start
    return result


def declaration_problem(info: MetricInfo | MetricDeclaration, measurement: Measurement) -> str | None:
    """How ``measurement`` differs from what metric ``info`` declares (its value's shape, its
    typed details), ``None`` when it matches. Non-finite numbers are judged separately."""
    if info.value is not None:
        problem = info.value.value_problem(measurement.value)
        if problem is not None:
            return f"{problem} (declared: {info.value.describe()})"
    for kind in info.details:
        problem = details_problem(measurement.details, kind)
        if problem is not None:
            return problem
    return None


class _NotJudgeable(Exception):
    """The metric returned nothing, NaN or infinity."""


def measure(
    session: Session, model_name: str, metric: str, params: dict[str, Any],
    inputs: dict[str, dict[str, Any]] | None, select: str | None,
) -> Measurement:
    """One metric on one model and inputs, cached in ``session`` (and in its measurement cache on
    disk, if it has one), then ``select``-ed."""
    return _measure(session, model_name, metric, params, inputs, select)[0]


def _measure(
    session: Session, model_name: str, metric: str, params: dict[str, Any],
    inputs: dict[str, dict[str, Any]] | None, select: str | None,
) -> tuple[Measurement, bool]:
    """:func:`measure`, and whether the measurement was read from the cache on disk.

    The model is loaded, and the metric's module imported, only when the measurement is not
    cached: the cache key names the metric's source file, read without importing it."""
    identity = session.identity(model_name)
    key = (identity.key, metric, json.dumps(params, sort_keys=True), json.dumps(inputs, sort_keys=True))
    measurement = session.measurement(key)
    if measurement is None:
        disk_key, declared = None, None
        if session.cache is not None:
            declared = metric_declaration(metric)
            disk_key = cache_key(identity.key, metric, params, inputs, metric_file=declared.source_file,
                                 related=session.related_models(model_name))
        stored = session.cache.get(disk_key) if disk_key is not None else None
        if stored is not None and declared is not None and declaration_problem(declared, stored) is None:
            session.remember(key, stored, from_cache=True)
            measurement = stored
        else:
            model = session.model(model_name)
            if model.identity.key != identity.key:  # the cached identity was stale (warned): key by the loaded one
                return _measure(session, model_name, metric, params, inputs, select)
            info = get_metric(metric)
            start = time.perf_counter()
            measurement = _compute(session, model, info, metric, params, inputs)
            session.remember(key, measurement)
            if disk_key is not None:
                session.cache.put(disk_key, measurement, time.perf_counter() - start)
    reason = measurement_non_finite_reason(measurement)
    if reason is not None:
        raise _NotJudgeable(f"metric {metric!r}: {reason}")
    try:
        selected = measurement.select(select)
    except KeyError as exc:
        raise _NotJudgeable(str(exc.args[0])) from None
    reason = measurement_non_finite_reason(selected)
    if reason is not None:
        raise _NotJudgeable(f"metric {metric!r}: {reason}")
    return selected, session.from_cache(key)


def _compute(
    session: Session, model: ModelHandle, info: MetricInfo, metric: str, params: dict[str, Any],
    inputs: dict[str, dict[str, Any]] | None,
) -> Measurement:
    """Run the metric and check what it returned against its declaration."""
    batch = session.inputs(model, inputs) if inputs is not None else None
    validated = info.validate_params(params)
    measurement = info.function(MetricContext(model, batch, session), **dict(validated))
    if not isinstance(measurement, Measurement):
        raise _NotJudgeable(f"metric {metric!r} returned {type(measurement).__name__}, not a Measurement")
    reason = declaration_problem(info, measurement)
    if reason is not None:
        raise _NotJudgeable(f"metric {metric!r} broke its declaration: {reason}")
    return measurement
