"""What a metric declares about the value it returns: its shape and the grammar of its keys.

A metric's value is one of four shapes (:mod:`harness.core.measurement`): a number
(:class:`Scalar`), a table of numbers (:class:`Table`), a set of names (:class:`NameSet`) or a
curve of points (:class:`Curve`). Tables, sets and curve labels are keyed by one of a few key
grammars (:class:`KeyGrammar`), the only micro-syntaxes a ``select`` path may contain:

===================  ==============  =====================================================
grammar              example         meaning
===================  ==============  =====================================================
:data:`HEADS`        ``1.4``         head 4 of layer 1
:data:`HEAD_GROUPS`  ``1.4+1.10``    several heads taken together (one head is a group of one)
:data:`HEAD_PAIRS`   ``0.7->1.4``    an earlier head feeding a later one
:data:`LAYERS`       ``3``           a layer
:data:`CELLS`        ``9:14``        layer 9 at sequence position 14
:data:`COMPONENT_PAIRS` ``embed|0.7``  a query-side component against a key-side component
:func:`names`        ``top1``        a fixed name (or any name, when none are listed)
:func:`labelled`     ``rank=64``     ``NAME=INTEGER`` labels
===================  ==============  =====================================================

A ``select`` path is checked at load time against the shape (:meth:`ValueShape.select_problem`):
each step must parse in its grammar, and every head or layer it names must lie inside the model,
whatever the syntax it appears in. At run time the runner checks the value a metric returned
against its declaration (:meth:`ValueShape.value_problem`): a metric that breaks its declaration
is an error, not a verdict. This module imports no torch.
"""

from __future__ import annotations

import numbers
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Protocol

from harness.core.heads import HEAD_PATTERN, Head

_HEAD_RE = re.compile(HEAD_PATTERN)
_INDEX_RE = re.compile(r"^(0|[1-9][0-9]{0,5})$")


class ModelSize(Protocol):
    """What a key is range-checked against: the model's declared shape."""

    n_layers: int
    n_heads: int


# --- key grammars -----------------------------------------------------------------------------

@dataclass(frozen=True)
class KeyGrammar:
    """One syntax of table keys (and ``select`` steps).

    ``parse(key)`` returns the heads and layers the key names (to range-check against a model),
    or raises ``ValueError`` saying why ``key`` is not in the grammar.
    """

    name: str
    example: str
    parse: Callable[[str], "NamedParts"] = field(compare=False, repr=False)

    def problem(self, key: str, model: ModelSize | None = None) -> str | None:
        """Why ``key`` is not a key of this grammar (or names a head or layer outside ``model``),
        ``None`` if it is one."""
        try:
            parts = self.parse(key)
        except ValueError as exc:
            return f"{key!r} is not {self.name} ({exc}; e.g. {self.example!r})"
        return parts.outside(model) if model is not None else None


@dataclass(frozen=True)
class NamedParts:
    """The heads and layers a key names."""

    heads: tuple[Head, ...] = ()
    layers: tuple[int, ...] = ()

    def outside(self, model: ModelSize) -> str | None:
        """The first head or layer that ``model`` lacks, as a sentence; ``None`` if all are in it."""
        for head in self.heads:
            if head.layer >= model.n_layers or head.head >= model.n_heads:
                return (f"head {head} is outside the model ({model.n_layers} layers x {model.n_heads} heads: "
                        f"0.0 to {model.n_layers - 1}.{model.n_heads - 1})")
        for layer in self.layers:
            if layer >= model.n_layers:
                return f"layer {layer} is outside the model (layers 0 to {model.n_layers - 1})"
        return None


def _head(text: str) -> Head:
    return Head.parse(text)


def _index(text: str, what: str) -> int:
    if not _INDEX_RE.match(text):
        raise ValueError(f"{text!r} is not a {what} (a whole number)")
    return int(text)


def _parse_head(key: str) -> NamedParts:
    return NamedParts(heads=(_head(key),))


def _parse_head_group(key: str) -> NamedParts:
    return NamedParts(heads=tuple(_head(part) for part in key.split("+")))


def _parse_head_pair(key: str) -> NamedParts:
    parts = key.split("->")
    if len(parts) != 2:
        raise ValueError("write 'EARLIER->LATER'")
    return NamedParts(heads=tuple(_head(part) for part in parts))


def _parse_layer(key: str) -> NamedParts:
    return NamedParts(layers=(_index(key, "layer"),))


def _parse_cell(key: str) -> NamedParts:
    parts = key.split(":")
    if len(parts) != 2:
        raise ValueError("write 'LAYER:POSITION'")
    layer = _index(parts[0], "layer")
    _index(parts[1], "position")
    return NamedParts(layers=(layer,))


COMPONENT_NAMES = ("embed", "pos")
"""Residual-stream components that are not heads, as the QK decomposition names them."""


def _parse_component(text: str) -> NamedParts:
    if text in COMPONENT_NAMES:
        return NamedParts()
    if _HEAD_RE.match(text):
        return _parse_head(text)
    raise ValueError(f"{text!r} is neither a head nor one of {', '.join(COMPONENT_NAMES)}")


def _parse_component_pair(key: str) -> NamedParts:
    parts = key.split("|")
    if len(parts) != 2:
        raise ValueError("write 'QUERY_SIDE|KEY_SIDE'")
    query, key_side = (_parse_component(part) for part in parts)
    return NamedParts(heads=query.heads + key_side.heads)


HEADS = KeyGrammar("a head 'LAYER.HEAD'", "1.4", _parse_head)
HEAD_GROUPS = KeyGrammar("heads joined with '+'", "1.4+1.10", _parse_head_group)
HEAD_PAIRS = KeyGrammar("a head pair 'EARLIER->LATER'", "0.7->1.4", _parse_head_pair)
LAYERS = KeyGrammar("a layer index", "3", _parse_layer)
CELLS = KeyGrammar("a cell 'LAYER:POSITION'", "9:14", _parse_cell)
COMPONENT_PAIRS = KeyGrammar("a component pair 'QUERY|KEY' (heads, embed, pos)", "embed|0.7", _parse_component_pair)
POSITIONS = KeyGrammar("a sequence position", "4", lambda key: (_index(key, "position"), NamedParts())[1])


def names(*allowed: str) -> KeyGrammar:
    """Fixed names (``names("top1", "top5")``); with none listed, any name without select syntax."""

    def parse(key: str) -> NamedParts:
        if allowed and key not in allowed:
            raise ValueError(f"the names are {', '.join(allowed)}")
        if not allowed and ("/" in key or not key):
            raise ValueError("a name is a non-empty string without '/'")
        return NamedParts()

    return KeyGrammar(f"one of {', '.join(allowed)}" if allowed else "a name", allowed[0] if allowed else "mean", parse)


def labelled(stem: str) -> KeyGrammar:
    """Labels ``STEM=INTEGER`` (``labelled("rank")``: ``rank=64``)."""

    def parse(key: str) -> NamedParts:
        prefix, equals, number = key.partition("=")
        if prefix != stem or not equals:
            raise ValueError(f"write '{stem}=N'")
        _index(number, stem)
        return NamedParts()

    return KeyGrammar(f"a label '{stem}=N'", f"{stem}=1", parse)


def either(*grammars: KeyGrammar) -> KeyGrammar:
    """Keys of any of ``grammars`` (the first that parses names the heads and layers)."""

    def parse(key: str) -> NamedParts:
        reasons = []
        for grammar in grammars:
            try:
                return grammar.parse(key)
            except ValueError as exc:
                reasons.append(str(exc))
        raise ValueError("; ".join(reasons))

    return KeyGrammar(" or ".join(grammar.name for grammar in grammars), grammars[0].example, parse)


# --- value shapes -----------------------------------------------------------------------------

class ValueShape(Protocol):
    """A declared value shape."""

    def select_problem(self, steps: list[str], model: ModelSize | None) -> str | None:
        """Why the ``select`` path ``steps`` cannot pick a number from this shape, ``None`` if it can."""

    def value_problem(self, value: Any) -> str | None:
        """Why ``value`` is not of this shape, ``None`` if it is."""

    def describe(self) -> str:
        """The shape in words, for messages and docs."""


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass(frozen=True)
class Scalar:
    """One number: nothing to select."""

    def select_problem(self, steps: list[str], model: ModelSize | None) -> str | None:
        return None if not steps else "the metric returns one number: remove 'select'"

    def value_problem(self, value: Any) -> str | None:
        return None if _is_number(value) or isinstance(value, bool) else f"expected a number, got {type(value).__name__}"

    def describe(self) -> str:
        return "a number"


@dataclass(frozen=True)
class Table:
    """Numbers keyed by ``keys``: ``select`` is one key."""

    keys: KeyGrammar

    def select_problem(self, steps: list[str], model: ModelSize | None) -> str | None:
        if len(steps) != 1:
            return f"the metric returns a table keyed by {self.keys.name}: select one key (e.g. select: {self.keys.example!r})"
        return self.keys.problem(steps[0], model)

    def value_problem(self, value: Any) -> str | None:
        if not isinstance(value, dict):
            return f"expected a table, got {type(value).__name__}"
        for key, item in value.items():
            problem = self.keys.problem(str(key))
            if problem:
                return f"table key {problem}"
            if not (_is_number(item) or isinstance(item, bool)):
                return f"table entry {key!r} is {type(item).__name__}, not a number"
        return None

    def describe(self) -> str:
        return f"a table keyed by {self.keys.name}"


@dataclass(frozen=True)
class NameSet:
    """A set of names (heads found by a detector, pairs, positions): compared with
    ``equals`` / ``contains`` / ``subset_of``, never selected from."""

    items: KeyGrammar

    def select_problem(self, steps: list[str], model: ModelSize | None) -> str | None:
        return None if not steps else f"the metric returns a set of {self.items.name}: remove 'select'"

    def value_problem(self, value: Any) -> str | None:
        if not isinstance(value, list):
            return f"expected a list of names, got {type(value).__name__}"
        for item in value:
            if not isinstance(item, str):
                return f"set item {item!r} is not a name"
            problem = self.items.problem(item)
            if problem:
                return f"set item {problem}"
        return None

    def describe(self) -> str:
        return f"a set of {self.items.name}"


@dataclass(frozen=True)
class Curve:
    """Points with a ``label`` (in ``labels``) and numeric ``fields``: ``select`` is ``LABEL/FIELD``."""

    labels: KeyGrammar
    fields: tuple[str, ...]

    def select_problem(self, steps: list[str], model: ModelSize | None) -> str | None:
        if len(steps) != 2:
            return f"the metric returns a curve: select 'LABEL/FIELD' (e.g. '{self.labels.example}/{self.fields[0]}')"
        label_problem = self.labels.problem(steps[0], model)
        if label_problem:
            return f"curve label {label_problem}"
        if steps[1] not in self.fields:
            return f"{steps[1]!r} is not a field of the curve's points; fields: {', '.join(self.fields)}"
        return None

    def value_problem(self, value: Any) -> str | None:
        if not isinstance(value, list) or not all(isinstance(point, dict) for point in value):
            return f"expected a curve (a list of points), got {type(value).__name__}"
        for point in value:
            problem = self.labels.problem(str(point.get("label")))
            if problem:
                return f"curve label {problem}"
        return None

    def describe(self) -> str:
        return f"a curve labelled by {self.labels.name} with fields {', '.join(self.fields)}"


@dataclass(frozen=True)
class OneOf:
    """One of several shapes, chosen by the metric's parameters (a table, or with ``top_k`` a set)."""

    shapes: tuple[Any, ...]

    def __init__(self, *shapes: Any) -> None:
        object.__setattr__(self, "shapes", shapes)

    def select_problem(self, steps: list[str], model: ModelSize | None) -> str | None:
        problems = [shape.select_problem(steps, model) for shape in self.shapes]
        return None if any(problem is None for problem in problems) else problems[0]

    def value_problem(self, value: Any) -> str | None:
        problems = [shape.value_problem(value) for shape in self.shapes]
        return None if any(problem is None for problem in problems) else " / ".join(p for p in problems if p)

    def describe(self) -> str:
        return " or ".join(shape.describe() for shape in self.shapes)


def select_steps(path: str | None) -> list[str]:
    """A ``select`` path's steps (``"rank=64/top1"`` -> ``["rank=64", "top1"]``; ``None`` -> ``[]``)."""
    return [] if path is None else path.split("/")


def names_in(keys: Iterable[str]) -> KeyGrammar:
    """Fixed names given as an iterable (a convenience for declarations built from constants)."""
    return names(*keys)


def numbered(stem: str) -> KeyGrammar:
    """Names ``STEM`` followed by a positive integer (``numbered("top")``: ``top1``, ``top5``)."""

    def parse(key: str) -> NamedParts:
        if not key.startswith(stem):
            raise ValueError(f"write '{stem}N'")
        _index(key[len(stem):], stem)
        return NamedParts()

    return KeyGrammar(f"'{stem}N'", f"{stem}1", parse)


TEXT = KeyGrammar("any text", "3: the", lambda key: NamedParts())
"""Items that are free text (tokens as the tokenizer prints them): never selected, never parsed."""
COMPONENTS = KeyGrammar("a component (a head, embed or pos)", "embed", _parse_component)
"""A residual-stream component feeding attention: a head's output, the token or positional embedding."""
