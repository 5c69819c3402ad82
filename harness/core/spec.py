"""The claim spec: the pydantic models a claim file must satisfy.

A claim file::

    source: {course: ARENA, chapter: "1.2 Intro to Mech Interp", section: "Finding induction heads"}
    model: planted-attn-2l
    claims:
      - id: planted-prev-token-head
        statement: Head 0.0 attends to the previous token.
        source: {ref: "fixtures/planted.py", provenance: planted}
        inputs: {repeated_random: {seq_len: 20, batch: 4, seed: 0}}
        metric: attention.detect
        params: {pattern: previous, threshold: 0.4}
        expect: {equals: ["0.0"]}

Structure is checked here; names (metrics, models, input kinds, heads) in :mod:`harness.loader`.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

ClaimId = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+\-]{0,199}$")]
Text = Annotated[str, StringConstraints(min_length=1, max_length=10_000)]
Provenance = Literal["text", "printed", "plot", "code", "derived", "third_party", "planted", "measured"]
"""Where an expected value comes from: the course's ``text``, a ``printed`` output, a reference
run's ``plot`` data, the reference ``code``, a value ``derived`` from those; ``third_party``: a
figure someone else published about the course (an issue, a post; ``ref`` cites it, ``notes`` say
what is unverified about it); for the project's own models, ``planted`` (true by construction) or
``measured`` (measured by this suite, explained in the claim's ``notes``)."""
VerdictName = Literal["supported", "refuted", "inconclusive"]


class Strict(BaseModel):
    """Unknown keys are errors; values are never coerced from another type."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, populate_by_name=False)


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise ValueError("must be a finite number")
    return value


Number = Annotated[float, Field(allow_inf_nan=False)]


class FileSource(Strict):
    """Where the claims of a file come from."""

    course: Text
    chapter: Text | None = None
    section: Text | None = None
    version: Text | None = None
    url: Text | None = None


class ClaimSource(Strict):
    """Where one claim is stated: ``ref`` is ``file:line`` (or a code path), with a provenance tag."""

    ref: Text
    provenance: Provenance
    catalogue_id: Text | None = None


class Reference(Strict):
    """Another measurement to compare against, on the same model unless ``model`` says otherwise."""

    metric: Text
    params: dict[str, Any] = Field(default_factory=dict)
    select: Text | None = None
    inputs: dict[str, dict[str, Any]] | None = None
    model: Text | None = None


Operand = Number | Reference
HeadOrName = Annotated[str, StringConstraints(min_length=1, max_length=200)]


class Expect(Strict):
    """One comparator. Exactly one of the comparator keys is given.

    ``approx`` takes ``abs`` and/or ``rel`` tolerances: ``|v - x| <= max(abs, rel*|x|)``.
    """

    ge: Operand | None = Field(None, alias=">=")
    le: Operand | None = Field(None, alias="<=")
    gt: Operand | None = Field(None, alias=">")
    lt: Operand | None = Field(None, alias="<")
    between: Annotated[list[Number], Field(min_length=2, max_length=2)] | None = None
    approx: Operand | None = None
    abs: Annotated[Number, Field(ge=0)] | None = None
    rel: Annotated[Number, Field(ge=0)] | None = None
    equals: list[HeadOrName] | Number | None = None
    contains: list[HeadOrName] | None = None
    subset_of: list[HeadOrName] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> "Expect":
        given = [name for name in COMPARATOR_KEYS if getattr(self, COMPARATOR_FIELDS[name]) is not None]
        if len(given) != 1:
            listed = ", ".join(repr(name) for name in COMPARATOR_KEYS)
            raise ValueError(f"give exactly one comparator of {listed}; got {len(given)}: {given}")
        if (self.abs is not None or self.rel is not None) and self.approx is None:
            raise ValueError("'abs' and 'rel' are tolerances of 'approx' only")
        if self.approx is not None and self.abs is None and self.rel is None:
            raise ValueError("'approx' needs a tolerance: 'abs', 'rel' or both")
        if self.between is not None and not self.between[0] <= self.between[1]:
            raise ValueError(f"'between' needs [low, high] with low <= high, got {self.between}")
        return self

    @field_validator("abs", "rel", "between", mode="after")
    @classmethod
    def _finite_numbers(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [_finite(float(v)) for v in value]
        return value if value is None else _finite(float(value))

    @property
    def comparator(self) -> str:
        """The comparator key given (``">="``, ``"approx"``, ``"equals"``...)."""
        return next(name for name in COMPARATOR_KEYS if getattr(self, COMPARATOR_FIELDS[name]) is not None)

    @property
    def operand(self) -> Any:
        return getattr(self, COMPARATOR_FIELDS[self.comparator])

    def describe(self) -> str:
        """Human form, e.g. ``>= 0.4`` or ``approx 0.3079 (abs 0.005)``."""
        operand = self.operand
        shown = _describe_operand(operand)
        if self.comparator == "approx":
            tolerances = ", ".join(f"{k} {getattr(self, k)}" for k in ("abs", "rel") if getattr(self, k) is not None)
            return f"approx {shown} ({tolerances})"
        return f"{self.comparator} {shown}"


def _describe_operand(operand: Any) -> str:
    if isinstance(operand, Reference):
        selected = f"[{operand.select}]" if operand.select else ""
        params = ", ".join(f"{k}={v}" for k, v in operand.params.items())
        return f"{operand.metric}({params}){selected}"
    return str(operand)


COMPARATOR_FIELDS: dict[str, str] = {
    ">=": "ge", "<=": "le", ">": "gt", "<": "lt", "between": "between", "approx": "approx",
    "equals": "equals", "contains": "contains", "subset_of": "subset_of",
}
COMPARATOR_KEYS: tuple[str, ...] = tuple(COMPARATOR_FIELDS)


class DriftTolerance(Strict):
    """How far a value may move between runs before a baseline comparison calls it drift."""

    abs: Annotated[Number, Field(ge=0)] = 0.0
    rel: Annotated[Number, Field(ge=0)] = 0.0


class Claim(Strict):
    """One claim: a statement, the metric that measures it, and what is expected.

    ``baseline_tolerance`` is for metrics whose value depends on float summation order beyond
    rounding (e.g. a trained fit): by default a baseline allows float noise only.
    """

    id: ClaimId
    statement: Text
    source: ClaimSource | None = None
    model: Text | None = None
    inputs: dict[str, dict[str, Any]] | None = None
    metric: Text
    params: dict[str, Any] = Field(default_factory=dict)
    select: Text | None = None
    expect: Expect
    expected_verdict: VerdictName = "supported"
    notes: Text | None = None
    slow: bool = False
    baseline_tolerance: DriftTolerance | None = None


class Conceptual(Strict):
    """A claim of the course that cannot be measured against weights, kept with the reason."""

    id: ClaimId
    statement: Text
    reason: Text
    source: ClaimSource | None = None


class Pending(Strict):
    """A claim of the course that can be measured but is not encoded yet, kept with what it needs.

    Unlike :class:`Conceptual` (cannot be measured against weights), a pending entry is a to-do:
    ``needs`` names the metric, input or model that is missing.
    """

    id: ClaimId
    statement: Text
    needs: Text
    source: ClaimSource | None = None


class ClaimFile(Strict):
    """A claim file: where its claims come from, their default model, the claims, and the unmeasured rows."""

    source: FileSource
    model: Text | None = None
    claims: list[Claim] = Field(default_factory=list)
    conceptual: list[Conceptual] = Field(default_factory=list)
    pending: list[Pending] = Field(default_factory=list)

    @model_validator(mode="after")
    def _has_claims(self) -> "ClaimFile":
        if not self.claims and not self.conceptual and not self.pending:
            raise ValueError("a claim file needs at least one entry in 'claims' (or 'conceptual', or 'pending')")
        return self


def claim_file_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a claim file, for editors and for ``claims schema``."""
    schema = ClaimFile.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "interp-claims claim file"
    return schema
