"""Loading claim files: strict YAML, then structure, then names, with ``file:line:column`` errors.

Every problem becomes a :class:`~harness.core.errors.SpecIssue` naming the file, line, column, the
key and the rule; unknown keys list the allowed keys and suggest the nearest. Nothing here
loads weights: model shapes come from the registry's declarations.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import re
import types
import typing
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from pydantic import BaseModel, ValidationError

from fixtures.input_params import INPUT_PARAMS
from fixtures.registry import get_model_entry, model_entries
from harness.core.errors import Location, SpecError, SpecIssue
from harness.core.heads import HEAD_PATTERN, Head
from harness.core.named_registry import did_you_mean, listed
from harness.core.spec import Claim, ClaimFile, Reference
from harness.core.value_shape import CELLS, COMPONENT_PAIRS, HEAD_GROUPS, HEAD_PAIRS, ValueShape, select_steps
from harness.metric_signatures import metric_declarations
from harness.yaml_source import PathKey, SourceMap, YamlError, decode_utf8, dotted, read_yaml


@dataclass(frozen=True)
class LoadedFile:
    """A validated claim file with where it came from."""

    path: str
    spec: ClaimFile
    source_map: SourceMap
    sha256: str

    def model_of(self, claim: Claim) -> str | None:
        """The model a claim runs on: its own ``model`` or the file's default."""
        return claim.model or self.spec.model


_PARSED: "OrderedDict[tuple[str, str], tuple[ClaimFile, SourceMap]]" = OrderedDict()
"""Files parsed in this process, by (shown path, sha256 of the bytes): a pytest worker reads each
claim file about three times (collection, the scheduler, tests that list claims), and parsing and
validating the 31 files costs about 0.3 s. The spec is frozen; the name checks, which depend on
the registry, run on every load."""
MAX_PARSED = 256


def load_claim_file(path: str | Path, *, check_names: bool = True) -> LoadedFile:
    """Read and validate one claim file; raise :class:`SpecError` listing every problem.
    The same bytes under the same path are parsed once per process (:data:`_PARSED`)."""
    shown = _display_path(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise SpecError([SpecIssue(Location(shown, 1, 1), "", f"cannot read the file: {exc.strerror or exc}")]) from None
    try:
        text = decode_utf8(raw, shown)
    except YamlError as exc:
        raise SpecError([exc.issue]) from None
    sha256 = hashlib.sha256(raw).hexdigest()
    parsed = _PARSED.get((shown, sha256))
    if parsed is None:
        return load_claim_text(text, shown, sha256=sha256, check_names=check_names)
    _PARSED.move_to_end((shown, sha256))
    return _checked(LoadedFile(shown, *parsed, sha256), check_names)


def load_claim_text(text: str, shown: str, *, sha256: str | None = None, check_names: bool = True) -> LoadedFile:
    """Validate claim-file ``text`` as if read from ``shown``."""
    try:
        data, source_map = read_yaml(shown, text)
    except YamlError as exc:
        raise SpecError([exc.issue]) from None
    if not isinstance(data, dict):
        raise SpecError([SpecIssue(source_map.locate(()), "", f"the file must be a mapping with a 'claims' list, not {_a(_kind(data))}")])
    try:
        spec = ClaimFile.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_pydantic_issues(exc, data, source_map, ClaimFile, ())) from None
    loaded = _checked(LoadedFile(shown, spec, source_map, sha256 or hashlib.sha256(text.encode()).hexdigest()), check_names)
    _PARSED[(shown, loaded.sha256)] = (spec, source_map)
    while len(_PARSED) > MAX_PARSED:
        _PARSED.popitem(last=False)
    return loaded


def _checked(loaded: LoadedFile, check_names: bool) -> LoadedFile:
    """``loaded``, or :class:`SpecError` for duplicate ids and (``check_names``) unknown names."""
    issues = _duplicate_ids(loaded)
    if check_names:
        issues += _check_names(loaded)
    if issues:
        raise SpecError(issues)
    return loaded


def load_claim_files(paths: Iterable[str | Path], *, check_names: bool = True) -> list[LoadedFile]:
    """Load many files; also reject a claim id used in two files. Raises one :class:`SpecError`."""
    loaded: list[LoadedFile] = []
    issues: list[SpecIssue] = []
    for path in paths:
        try:
            loaded.append(load_claim_file(path, check_names=check_names))
        except SpecError as exc:
            issues += exc.issues
    issues += cross_file_duplicates(loaded)
    if issues:
        raise SpecError(issues)
    return loaded


def cross_file_duplicates(files: list[LoadedFile]) -> list[SpecIssue]:
    """A claim id must be unique across the whole suite."""
    seen: dict[str, Location] = {}
    issues: list[SpecIssue] = []
    for loaded in files:
        for where, claim_id in _claim_ids(loaded):
            location = loaded.source_map.locate(where, key=False)
            first = seen.setdefault(claim_id, location)
            if first.path != loaded.path:
                issues.append(SpecIssue(location, dotted(where), f"claim id {claim_id!r} is already used in {first}"))
    return issues


def find_claim_files(paths: Iterable[str | Path]) -> list[Path]:
    """The ``*.yaml``/``*.yml`` files under ``paths`` (files or folders), sorted."""
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.suffix in {".yaml", ".yml"} and p.is_file())
        elif path.exists():
            found.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return found


# --- names: metrics, models, inputs, heads ------------------------------------------------


def _check_names(loaded: LoadedFile) -> list[SpecIssue]:
    issues: list[SpecIssue] = []
    if loaded.spec.model is not None:
        issues += _check_model(loaded, loaded.spec.model, ("model",))
    return issues + check_claim_names(loaded, {claim.id for claim in loaded.spec.claims})


def check_claim_names(loaded: LoadedFile, ids: set[str]) -> list[SpecIssue]:
    """The name checks (models, metrics, inputs, heads, selections) of the claims ``ids`` of ``loaded``:
    e.g. those a sweep re-targets to another model (``loaded`` with that top-level model)."""
    issues: list[SpecIssue] = []
    for index, claim in enumerate(loaded.spec.claims):
        if claim.id not in ids:
            continue
        where = ("claims", index)
        model = loaded.model_of(claim)
        if model is None:
            issues.append(SpecIssue(loaded.source_map.locate(where), dotted(where + ("model",)), "no model: give 'model' in the claim or at the top of the file"))
        elif claim.model is not None:
            issues += _check_model(loaded, claim.model, where + ("model",))
        issues += _check_measurement(loaded, where, claim.metric, claim.params, claim.inputs, model, claim.select)
        operand = claim.expect.operand
        if isinstance(operand, Reference):
            ref_where = where + ("expect", claim.expect.comparator)
            ref_model = operand.model or model
            if operand.model is not None:
                issues += _check_model(loaded, operand.model, ref_where + ("model",))
            inputs = operand.inputs if operand.inputs is not None else claim.inputs
            issues += _check_measurement(loaded, ref_where, operand.metric, operand.params, inputs, ref_model, operand.select)
    return issues


def _model_names() -> list[str]:
    return sorted(model_entries())


def _check_model(loaded: LoadedFile, name: str, where: PathKey) -> list[SpecIssue]:
    names = _model_names()
    if name in names:
        return []
    return [SpecIssue(loaded.source_map.locate(where, key=False), dotted(where), f"unknown model {name!r}{did_you_mean(name, names)}; models: {listed(names)}")]


def _check_measurement(
    loaded: LoadedFile, where: PathKey, metric: str, params: dict[str, Any],
    inputs: dict[str, dict[str, Any]] | None, model: str | None, select: str | None,
) -> list[SpecIssue]:
    declarations = metric_declarations()
    names = declarations.names()
    if metric not in names:
        location = loaded.source_map.locate(where + ("metric",), key=False)
        return [SpecIssue(location, dotted(where + ("metric",)), f"unknown metric {metric!r}{did_you_mean(metric, names)}; metrics: {', '.join(names)}")]
    info = declarations[metric]
    issues: list[SpecIssue] = []
    try:
        info.params_model.model_validate(params, strict=True)
    except ValidationError as exc:
        issues += _pydantic_issues(exc, params, loaded.source_map, info.params_model, where + ("params",))
    if info.needs_inputs and inputs is None:
        kinds = ", ".join(_input_kinds())
        issues.append(SpecIssue(loaded.source_map.locate(where), dotted(where + ("inputs",)), f"metric {metric!r} runs the model: give 'inputs' (one of {kinds})"))
    if inputs is not None:
        issues += _check_inputs(loaded, where + ("inputs",), inputs)
    if model is not None and model in _model_names() and not issues:
        issues += _check_heads(loaded, where, info.head_params, params, model)
        issues += _check_select(loaded, where, select, model, info.value)
    return issues


def _input_kinds() -> list[str]:
    return sorted(INPUT_PARAMS)


def _check_inputs(loaded: LoadedFile, where: PathKey, inputs: dict[str, dict[str, Any]]) -> list[SpecIssue]:
    kinds = sorted(INPUT_PARAMS)
    if len(inputs) != 1:
        return [SpecIssue(loaded.source_map.locate(where), dotted(where), f"give exactly one input kind, one of {', '.join(kinds)}; got {len(inputs)}")]
    (kind, params), = inputs.items()
    if kind not in INPUT_PARAMS:
        return [SpecIssue(loaded.source_map.locate(where + (kind,)), dotted(where + (kind,)), f"unknown input kind {kind!r}{did_you_mean(kind, kinds)}; kinds: {', '.join(kinds)}")]
    model = INPUT_PARAMS[kind]
    try:
        model.model_validate(params, strict=True)
    except ValidationError as exc:
        return _pydantic_issues(exc, params, loaded.source_map, model, where + (kind,))
    return []


def _check_heads(loaded: LoadedFile, where: PathKey, head_params: tuple[str, ...], params: dict[str, Any], model: str) -> list[SpecIssue]:
    """Every head named in a head parameter (``"L.H"``, a list of them, or a list of such lists:
    head groups) lies inside the model."""
    issues: list[SpecIssue] = []
    for name in head_params:
        for path, text in _named_heads(params.get(name), where + ("params", name)):
            problem = _outside_model(text, model)
            if problem:
                issues.append(SpecIssue(loaded.source_map.locate(path, key=False), dotted(path), problem))
    return issues


def _named_heads(value: Any, path: PathKey) -> Iterator[tuple[PathKey, str]]:
    """Each head string in ``value`` (a head, or lists of heads nested to any depth, or mappings
    whose values hold heads and whose keys may be heads), with its path."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from _named_heads(item, path + (index,))
    elif isinstance(value, dict):
        for key, item in value.items():
            if isinstance(key, str) and re.match(HEAD_PATTERN, key):
                yield path + (key,), key
            yield from _named_heads(item, path + (key,))


def _check_select(loaded: LoadedFile, where: PathKey, select: str | None, model: str, shape: ValueShape | None) -> list[SpecIssue]:
    """``select`` must pick one number from the metric's declared value shape, in the grammar of its
    keys, and every head or layer it names (``"1.4"``, ``"1.4+1.10/top1"``, ``"0.7->1.4"``,
    ``"embed|0.7"``, ``"9:14"``) must be in the model."""
    steps = select_steps(select)
    size = get_model_entry(model).shape
    problem = shape.select_problem(steps, size) if shape is not None else _undeclared_select_problem(steps, size)
    if problem is None:
        return []
    path = where + ("select",)
    if select is None:
        return [SpecIssue(loaded.source_map.locate(where), dotted(path), f"no select: {problem}")]
    return [SpecIssue(loaded.source_map.locate(path, key=False), dotted(path), f"select {select!r}: {problem}")]


def _undeclared_select_problem(steps: list[str], size: Any) -> str | None:
    """A metric without a declared shape (an ad-hoc one): range-check heads in any key syntax."""
    for step in steps:
        for grammar in (HEAD_GROUPS, HEAD_PAIRS, COMPONENT_PAIRS, CELLS):
            if grammar.problem(step) is None:
                return grammar.problem(step, size)
    return None


def _outside_model(text: str, model: str) -> str | None:
    """Why head ``text`` is not a head of ``model``, or ``None`` if it is one."""
    shape = get_model_entry(model).shape
    head = Head.parse(text)
    if head.layer < shape.n_layers and head.head < shape.n_heads:
        return None
    return f"head {text} is outside model {model!r} ({shape.n_layers} layers x {shape.n_heads} heads: 0.0 to {shape.n_layers - 1}.{shape.n_heads - 1})"


# --- pydantic errors to located issues -------------------------------------------------------

_EXPECTED: dict[str, str] = {
    "float_type": "a number", "float_parsing": "a number", "finite_number": "a finite number",
    "int_type": "an integer", "int_parsing": "an integer", "int_from_float": "a whole number",
    "string_type": "a string", "bool_type": "a boolean", "bool_parsing": "a boolean",
    "list_type": "a list", "dict_type": "a mapping", "model_type": "a mapping", "model_attributes_type": "a mapping",
}
"""Pydantic type errors, as what was expected; a union's branches merge into ``a number or a list``."""

Errors = list[dict[str, Any]]


def _pydantic_issues(exc: ValidationError, data: Any, source_map: SourceMap, model: type[BaseModel], prefix: PathKey) -> list[SpecIssue]:
    """One issue per data path: union branches merged, shadowed and redundant errors dropped."""
    grouped = _without_shadowed(_group_by_path(exc.errors(), data))
    for path in _misspelt_missing(grouped, model):
        del grouped[path]
    issues: list[SpecIssue] = []
    for path, errors in grouped.items():
        full = prefix + path
        if any(error["type"] == "extra_forbidden" for error in errors):
            allowed = _allowed_keys(model, path[:-1])
            name = str(path[-1])
            message = f"unknown key {name!r}{did_you_mean(name, allowed)}; allowed keys: {', '.join(allowed)}"
            issues.append(SpecIssue(source_map.locate(full), dotted(full), message))
            continue
        missing = all(error["type"] == "missing" for error in errors)
        issues.append(SpecIssue(source_map.locate(full, key=missing), dotted(full), _merged_message(errors)))
    return issues


def _group_by_path(errors: Errors, data: Any) -> dict[PathKey, Errors]:
    grouped: dict[PathKey, Errors] = {}
    for error in errors:
        grouped.setdefault(_data_path(data, error), []).append(error)
    return grouped


def _without_shadowed(grouped: dict[PathKey, Errors]) -> dict[PathKey, Errors]:
    """Drop a type error at a path with errors inside its value: another union branch took the value."""
    kept: dict[PathKey, Errors] = {}
    for path, errors in grouped.items():
        inner = any(len(other) > len(path) and other[: len(path)] == path for other in grouped)
        left = [error for error in errors if not (inner and error["type"] in _EXPECTED)]
        if left:
            kept[path] = left
    return kept


def _misspelt_missing(grouped: dict[PathKey, Errors], model: type[BaseModel]) -> list[PathKey]:
    """Missing keys that an unknown key beside them misspells: the unknown-key issue says it all."""
    found: list[PathKey] = []
    for path, errors in grouped.items():
        if path and any(error["type"] == "extra_forbidden" for error in errors):
            close = difflib.get_close_matches(str(path[-1]), _allowed_keys(model, path[:-1]), n=1, cutoff=0.6)
            target = path[:-1] + tuple(close[:1])
            if close and all(error["type"] == "missing" for error in grouped.get(target, [{"type": ""}])):
                found.append(target)
    return list(dict.fromkeys(found))


def _merged_message(errors: Errors) -> str:
    """``expected a number or a Reference mapping, got a string ('x')``, then any other rules."""
    expected = [_expected(error) for error in errors if error["type"] in _EXPECTED]
    parts = [_message(error) for error in errors if error["type"] not in _EXPECTED]
    if expected:
        value = errors[0].get("input")
        hint = " (quote it to make it a string)" if "a string" in expected and isinstance(value, (bool, int, float)) else ""
        parts.insert(0, f"expected {' or '.join(dict.fromkeys(expected))}, got {_describe(value)}{hint}")
    return "; or ".join(dict.fromkeys(parts))


def _expected(error: dict[str, Any]) -> str:
    """What a type error expected: ``a number``, or ``a Reference mapping`` for a model."""
    name = (error.get("ctx") or {}).get("class_name")
    return f"a {name} mapping" if error["type"] == "model_type" and name else _EXPECTED[error["type"]]


def _message(error: dict[str, Any]) -> str:
    value = error.get("input")
    if error["type"] == "missing":
        return f"required key {str(error['loc'][-1])!r} is missing"
    if isinstance(value, float) and not math.isfinite(value):
        return f"expected a finite number, got {value}"
    return str(error["msg"]).removeprefix("Value error, ")


def _describe(value: Any) -> str:
    """``a string ('abc')``, ``an integer (3)``, ``an integer too large for a number (about 10^400)``."""
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, int) and value.bit_length() > 64:
        return f"an integer too large for a number (about 10^{int(value.bit_length() * 0.30103)})"
    if isinstance(value, (int, float)):
        return f"{_a(_kind(value))} ({value})"
    if isinstance(value, str):
        return f"a string ({value if len(value) <= 40 else value[:37] + '...'!r})"
    return _a(_kind(value))


def _data_path(data: Any, error: dict[str, Any]) -> PathKey:
    """The path in ``data`` that a pydantic error's ``loc`` points at.

    A ``loc`` also names union branches (``float``, ``Reference``...) and validator steps,
    which are not keys of the data: a part is kept only where the data at that level has it,
    or where it is the key that a ``missing`` error names.
    """
    loc = error["loc"]
    path: list[Any] = []
    node = data
    for index, part in enumerate(loc):
        if isinstance(node, dict) and isinstance(part, str) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif not (error["type"] == "missing" and index == len(loc) - 1):
            continue
        path.append(part)
    return tuple(path)


def _allowed_keys(model: type[BaseModel], path: PathKey) -> list[str]:
    """The keys allowed at ``path`` (relative to ``model``), aliases as written in YAML."""
    current: Any = model
    for part in path:
        current = _field_type(current, part)
        if current is None:
            return []
    return _model_keys(current)


def _field_type(annotation: Any, part: Any) -> Any:
    for candidate in _candidates(annotation):
        if isinstance(part, int) and typing.get_origin(candidate) is list:
            return typing.get_args(candidate)[0]
        if isinstance(part, str) and isinstance(candidate, type) and issubclass(candidate, BaseModel):
            for name, field in candidate.model_fields.items():
                if (field.alias or name) == part:
                    return field.annotation
        if isinstance(part, str) and typing.get_origin(candidate) is dict:
            return typing.get_args(candidate)[1]
    return None


def _candidates(annotation: Any) -> list[Any]:
    """``A | B | None`` and ``Annotated[X, ...]`` unwrapped into their members."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _candidates(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return [member for arg in typing.get_args(annotation) for member in _candidates(arg)]
    return [annotation]


def _model_keys(annotation: Any) -> list[str]:
    for candidate in _candidates(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return [field.alias or name for name, field in candidate.model_fields.items()]
    return []


# --- small helpers ---------------------------------------------------------------------------



def _claim_ids(loaded: LoadedFile) -> list[tuple[PathKey, str]]:
    """``(path of the id, id)`` of every claim, conceptual and pending entry of a file."""
    claims = [(("claims", index, "id"), claim.id) for index, claim in enumerate(loaded.spec.claims)]
    unmeasured = [((key, index, "id"), entry.id) for key in ("conceptual", "pending")
                  for index, entry in enumerate(getattr(loaded.spec, key))]
    return claims + unmeasured


def _duplicate_ids(loaded: LoadedFile) -> list[SpecIssue]:
    seen: dict[str, int] = {}
    issues: list[SpecIssue] = []
    for where, claim_id in _claim_ids(loaded):
        location = loaded.source_map.locate(where, key=False)
        if claim_id in seen:
            issues.append(SpecIssue(location, dotted(where), f"duplicate claim id {claim_id!r} (first at line {seen[claim_id]})"))
        else:
            seen[claim_id] = location.line
    return issues


def _kind(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _a(noun: str) -> str:
    """``"an integer"``, ``"a list"``; ``"null"`` stays bare."""
    return noun if noun == "null" else f"{'an' if noun[:1] in 'aeiou' else 'a'} {noun}"


def _display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it is inside it."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
