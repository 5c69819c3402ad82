"""Typed ``details``: the parts of a measurement's details that reports read.

A metric's ``details`` may hold anything a reader of the report should see, but the keys a plot
reads are a contract: a metric declares the kinds it returns (``@metric(..., details=(HeadScores,))``),
the runner checks that the details it returned have them (:func:`details_problem`; a metric that
breaks its declaration is an error), the record lists them (``details_kinds``), and each plot in
``reports/plots.py`` declares the one kind it reads. No torch here.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, TypeAdapter, ValidationError
from typing_extensions import NotRequired, TypedDict


class HeadScores(TypedDict):
    """Per-head scores a set of heads was chosen from: ``scores["L.H"]``; the detection
    ``threshold`` and the ``pattern`` scored when there are any."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    scores: dict[str, float]
    threshold: NotRequired[float]
    pattern: NotRequired[str]


class AttentionExamples(TypedDict):
    """The first sequence's attention pattern (query rows, key columns) of each flagged head."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    example_patterns: dict[str, list[list[float]]]


class PositionCurve(TypedDict):
    """A figure per sequence position (e.g. mean log-probability of the correct token)."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    curve: list[float]


class RankFits(TypedDict):
    """Each trained rank's fit: ``fits[str(rank)]`` with at least ``stopped_by`` (why the fit ended)."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    fits: dict[str, dict[str, Any]]


class PositionGrid(TypedDict):
    """A figure per (layer, position): ``grid[layer][position]`` (e.g. residual patching), with the
    first prompt's tokens as column labels when there are any."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    grid: list[list[float]]
    tokens_prompt_0: NotRequired[list[str] | None]


class NamedPositionAttention(TypedDict):
    """Mean attention of chosen heads from one named position to each named position:
    ``by_position["L.H"]["IO"]``, with the ``query`` position named."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    by_position: dict[str, dict[str, float]]
    query: str


class FeatureDirections(TypedDict):
    """A toy model instance's feature directions: ``directions[i]`` is column i of W (d_hidden numbers),
    with the ``instance`` and each feature's ``importance``."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    instance: int
    directions: list[list[float]]
    importance: list[float]


class DimensionalityPoints(TypedDict):
    """Per toy-model instance: its feature probability ``p[k]`` and every feature's dimensionality ``dims[k]``."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    p: list[float]
    dims: list[list[float]]


class LatentFeatureCosines(TypedDict):
    """A toy SAE instance: ``cosines[j][i]`` = cos(decoder row of latent j, true feature direction W_i), with the
    ``instance`` and the cosine above which a latent ``threshold`` matches a feature."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    instance: int
    cosines: list[list[float]]
    threshold: float


# --- modular addition (ARENA 1.5.2 grokking) ---
class FrequencyEnergy(TypedDict):
    """Energy per Fourier frequency: ``energy[k]`` for k = 0 (the constant) .. K, with the
    ``key_frequencies`` (k >= 1) the metric picked out."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    energy: list[float]
    key_frequencies: list[int]


class LossCurves(TypedDict):
    """Train and test loss at each snapshot ``epochs[i]`` of a run, and the grokking ``window``
    (first and last epoch)."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    epochs: list[int]
    train_loss: list[float]
    test_loss: list[float]
    window: list[int]


class SnapshotSeries(TypedDict):
    """A quantity at each snapshot ``epochs[i]`` of a run (``values[i]``), read on ``scale`` (``log``
    or ``linear``); ``until_epoch`` and the steepest interval ``peak_interval`` (first and last epoch)."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    epochs: list[int]
    values: list[float]
    quantity: str
    scale: str
    until_epoch: int
    peak_interval: list[int]


class ClusterSizes(TypedDict):
    """Neurons per frequency cluster: ``sizes["k=K"]`` and ``sizes["unexplained"]``."""

    __pydantic_config__ = ConfigDict(extra="allow")  # type: ignore[misc]
    sizes: dict[str, float]


DETAILS_KINDS: dict[str, type] = {kind.__name__: kind for kind in (
    HeadScores, AttentionExamples, PositionCurve, RankFits, FeatureDirections, DimensionalityPoints,
    PositionGrid, NamedPositionAttention,
    LatentFeatureCosines,
    FrequencyEnergy, LossCurves, ClusterSizes,
    SnapshotSeries,
)}
"""Every details kind by name, as the record lists them."""


def details_problem(details: dict[str, Any], kind: type) -> str | None:
    """Why ``details`` lacks what ``kind`` promises (a missing key, a wrong type), ``None`` if it has it."""
    try:
        _adapter(kind).validate_python(details, strict=False)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        return f"details {kind.__name__}: {where or 'details'}: {first['msg']}"
    return None


_ADAPTERS: dict[type, TypeAdapter[Any]] = {}


def _adapter(kind: type) -> TypeAdapter[Any]:
    if kind not in _ADAPTERS:
        _ADAPTERS[kind] = TypeAdapter(kind)
    return _ADAPTERS[kind]
