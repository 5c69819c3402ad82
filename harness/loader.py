"""Loading claim files: strict YAML, then structure, then names, with ``file:line:column`` errors.

Every problem becomes a :class:`~harness.errors.SpecIssue` naming the file, line, column, the
key and the rule; unknown keys list the allowed keys and suggest the nearest. Nothing here
loads weights: model shapes come from the registry's declarations.
"""

from __future__ import annotations

import difflib
import hashlib
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pydantic import BaseModel, ValidationError

from harness.errors import SpecError, SpecIssue
from harness.heads import Head
from harness.registry import get_metric, metric_names
from harness.spec import Claim, ClaimFile, Reference
from harness.yaml_source import PathKey, SourceMap, YamlError, read_yaml


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


def load_claim_file(path: str | Path, *, check_names: bool = True) -> LoadedFile:
    """Read and validate one claim file; raise :class:`SpecError` listing every problem."""
    shown = _display_path(path)
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        from harness.errors import Location

        raise SpecError([SpecIssue(Location(shown, 1, 1), "", f"file is not UTF-8 text ({exc.reason})")]) from None
    return load_claim_text(text, shown, sha256=hashlib.sha256(raw).hexdigest(), check_names=check_names)


def load_claim_text(text: str, shown: str, *, sha256: str | None = None, check_names: bool = True) -> LoadedFile:
    """Validate claim-file ``text`` as if read from ``shown``."""
    try:
        data, source_map = read_yaml(shown, text)
    except YamlError as exc:
        raise SpecError([exc.issue]) from None
    if not isinstance(data, dict):
        raise SpecError([SpecIssue(source_map.locate(()), "", f"the file must be a mapping with a 'claims' list, not a {_kind(data)}")])
    try:
        spec = ClaimFile.model_validate(data)
    except ValidationError as exc:
        raise SpecError(_pydantic_issues(exc, data, source_map, ClaimFile, ())) from None
    loaded = LoadedFile(shown, spec, source_map, sha256 or hashlib.sha256(text.encode()).hexdigest())
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
    seen: dict[str, str] = {}
    issues: list[SpecIssue] = []
    for loaded in files:
        for index, claim in enumerate(loaded.spec.claims):
            location = loaded.source_map.locate(("claims", index, "id"), key=False)
            if claim.id in seen and seen[claim.id] != loaded.path:
                issues.append(SpecIssue(location, "id", f"claim id {claim.id!r} is already used in {seen[claim.id]}"))
            seen.setdefault(claim.id, loaded.path)
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
    for index, claim in enumerate(loaded.spec.claims):
        where = ("claims", index)
        model = loaded.model_of(claim)
        if model is None:
            issues.append(SpecIssue(loaded.source_map.locate(where), "model", "no model: give 'model' in the claim or at the top of the file"))
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


def _check_model(loaded: LoadedFile, name: str, where: PathKey) -> list[SpecIssue]:
    from fixtures.registry import model_entries

    names = sorted(model_entries())
    if name in names:
        return []
    return [SpecIssue(loaded.source_map.locate(where, key=False), _last(where), f"unknown model {name!r}{_suggest(name, names)}; models: {', '.join(names)}")]


def _check_measurement(
    loaded: LoadedFile, where: PathKey, metric: str, params: dict[str, Any],
    inputs: dict[str, dict[str, Any]] | None, model: str | None, select: str | None,
) -> list[SpecIssue]:
    names = metric_names()
    if metric not in names:
        location = loaded.source_map.locate(where + ("metric",), key=False)
        return [SpecIssue(location, "metric", f"unknown metric {metric!r}{_suggest(metric, names)}")]
    info = get_metric(metric)
    issues: list[SpecIssue] = []
    try:
        info.validate_params(params)
    except ValidationError as exc:
        data = _dig(loaded, where)
        issues += _pydantic_issues(exc, (data or {}).get("params", {}), loaded.source_map, info.params_model, where + ("params",))
    if info.needs_inputs and inputs is None:
        issues.append(SpecIssue(loaded.source_map.locate(where), "inputs", f"metric {metric!r} runs the model: give 'inputs' (one of {', '.join(_input_kinds())})"))
    if inputs is not None:
        issues += _check_inputs(loaded, where + ("inputs",), inputs)
    if model is not None and not issues:
        issues += _check_heads(loaded, where, info.head_params, params, model)
    return issues


def _input_kinds() -> list[str]:
    from fixtures.inputs import INPUT_KINDS

    return sorted(INPUT_KINDS)


def _check_inputs(loaded: LoadedFile, where: PathKey, inputs: dict[str, dict[str, Any]]) -> list[SpecIssue]:
    from fixtures.inputs import INPUT_KINDS

    kinds = sorted(INPUT_KINDS)
    if len(inputs) != 1:
        return [SpecIssue(loaded.source_map.locate(where), _last(where), f"give exactly one input kind, one of {', '.join(kinds)}; got {len(inputs)}")]
    (kind, params), = inputs.items()
    if kind not in INPUT_KINDS:
        return [SpecIssue(loaded.source_map.locate(where + (kind,)), kind, f"unknown input kind {kind!r}{_suggest(kind, kinds)}; kinds: {', '.join(kinds)}")]
    model = INPUT_KINDS[kind].params_model
    try:
        model.model_validate(params)
    except ValidationError as exc:
        return _pydantic_issues(exc, params, loaded.source_map, model, where + (kind,))
    return []


def _check_heads(loaded: LoadedFile, where: PathKey, head_params: tuple[str, ...], params: dict[str, Any], model: str) -> list[SpecIssue]:
    from fixtures.registry import get_model_entry

    if not head_params or not any(params.get(name) for name in head_params):
        return []
    shape = get_model_entry(model).shape
    issues: list[SpecIssue] = []
    for name in head_params:
        value = params.get(name)
        heads = value if isinstance(value, list) else [value] if value is not None else []
        for index, text in enumerate(heads):
            head = Head.parse(text)
            if head.layer >= shape.n_layers or head.head >= shape.n_heads:
                path = where + ("params", name) + ((index,) if isinstance(value, list) else ())
                issues.append(SpecIssue(
                    loaded.source_map.locate(path, key=False), f"params.{name}",
                    f"head {text} is outside model {model!r} ({shape.n_layers} layers x {shape.n_heads} heads: 0.0 to {shape.n_layers - 1}.{shape.n_heads - 1})",
                ))
    return issues


# --- pydantic errors to located issues -------------------------------------------------------


def _pydantic_issues(exc: ValidationError, data: Any, source_map: SourceMap, model: type[BaseModel], prefix: PathKey) -> list[SpecIssue]:
    """One issue per data path; union branch errors at one path are merged."""
    grouped: dict[PathKey, list[dict[str, Any]]] = {}
    for error in exc.errors():
        path = _data_path(data, error["loc"])
        grouped.setdefault(path, []).append(error)
    issues: list[SpecIssue] = []
    for path, errors in grouped.items():
        full = prefix + path
        key = _dotted(full)
        if any(error["type"] == "extra_forbidden" for error in errors):
            allowed = _allowed_keys(model, path[:-1], data)
            name = str(path[-1])
            suggestion = _suggest(name, allowed)
            message = f"unknown key {name!r}{suggestion}; allowed keys: {', '.join(allowed)}"
            issues.append(SpecIssue(source_map.locate(full), key, message))
            continue
        message = "; or ".join(dict.fromkeys(_message(error) for error in errors))
        issues.append(SpecIssue(source_map.locate(full, key=not _is_value_error(errors)), key, message))
    return issues


def _is_value_error(errors: list[dict[str, Any]]) -> bool:
    return all(error["type"] != "missing" for error in errors)


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind == "missing":
        return "required key is missing"
    message = str(error["msg"]).removeprefix("Value error, ")
    if kind.endswith("_type") or kind in {"model_type", "dict_type", "list_type"}:
        message += f" (got {_kind(error.get('input'))})"
    return message


def _data_path(data: Any, loc: tuple[Any, ...]) -> PathKey:
    """Keep the parts of a pydantic ``loc`` that exist in ``data`` (drops union branch tags)."""
    path: list[Any] = []
    node = data
    for part in loc:
        if isinstance(node, dict) and isinstance(part, str) and (part in node or part not in _UNION_TAGS):
            path.append(part)
            node = node.get(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            path.append(part)
            node = node[part]
    return tuple(path)


_UNION_TAGS = {"float", "int", "str", "bool", "Reference", "list[str]", "list[float]", "function-after[_same_length(), TokensParams]"}


def _allowed_keys(model: type[BaseModel], path: PathKey, data: Any) -> list[str]:
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
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return [member for arg in typing.get_args(annotation) for member in _candidates(arg)]
    return [annotation]


def _model_keys(annotation: Any) -> list[str]:
    for candidate in _candidates(annotation):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return [field.alias or name for name, field in candidate.model_fields.items()]
    return []


# --- small helpers ---------------------------------------------------------------------------


def _duplicate_ids(loaded: LoadedFile) -> list[SpecIssue]:
    seen: dict[str, int] = {}
    issues: list[SpecIssue] = []
    entries = [("claims", c.id) for c in loaded.spec.claims] + [("conceptual", c.id) for c in loaded.spec.conceptual]
    counters = {"claims": 0, "conceptual": 0}
    for section, claim_id in entries:
        index = counters[section]
        counters[section] += 1
        location = loaded.source_map.locate((section, index, "id"), key=False)
        if claim_id in seen:
            issues.append(SpecIssue(location, "id", f"duplicate claim id {claim_id!r} (first at line {seen[claim_id]})"))
        else:
            seen[claim_id] = location.line
    return issues


def _dig(loaded: LoadedFile, where: PathKey) -> Any:
    """The raw spec data at ``where`` (pydantic dump, aliases as in YAML)."""
    node: Any = loaded.spec.model_dump(by_alias=True)
    for part in where:
        node = node[part] if isinstance(node, (dict, list)) else None
    return node


def _suggest(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _kind(value: Any) -> str:
    return {dict: "mapping", list: "list", str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null"}.get(type(value), type(value).__name__)


def _last(where: PathKey) -> str:
    return str(where[-1]) if where else ""


def _dotted(where: PathKey) -> str:
    text = ""
    for part in where:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


def _display_path(path: str | Path) -> str:
    """``path`` relative to the working directory when it is inside it."""
    resolved = Path(path).resolve()
    try:
        return str(resolved.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
