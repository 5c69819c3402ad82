"""Every metric's name and parameters, read from the source of ``harness/metrics/`` without importing it.

The metric modules import torch (seconds), but validating a claim needs only what ``@metric(...)``
and the keyword-only parameters say. This module parses each module, evaluates the parameter
annotations and defaults against the module's own type aliases and its imports from ``typing``,
``pydantic``, :mod:`harness.core.heads` and the other metric and circuit modules (read from
their source as well), and builds the same strict
parameter model as :func:`harness.registry.metric` does (:func:`harness.registry.params_model`).

A metric whose parameters cannot be read this way (an annotation that needs torch) is taken from
the imported module instead: correct, only slower. ``tests/test_metric_signatures.py`` checks that
every metric is read from source and that each declaration equals the registered metric's.
"""

from __future__ import annotations

import ast
import importlib
import inspect
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from harness.core.named_registry import NamedRegistry
from harness.registry import MetricInfo, get_metric, params_model, registered_metrics

HARNESS_DIR = Path(__file__).resolve().parent
METRICS_DIR = HARNESS_DIR / "metrics"
#: Packages whose modules' names are read from their source, never imported (they import torch).
SOURCE_READ_PACKAGES = ("harness.metrics", "harness.circuits")
#: Modules whose names metric signatures may use; importing them costs milliseconds.
LIGHT_MODULES = ("typing", "typing_extensions", "collections.abc", "pydantic", "harness.core.heads",
                 "harness.core.value_shape", "harness.core.details")


@dataclass(frozen=True)
class MetricDeclaration:
    """What validation needs of a metric: its parameter model, whether it needs inputs, its head parameters."""

    name: str
    params_model: type[BaseModel]
    needs_inputs: bool
    head_params: tuple[str, ...]
    description: str
    fitted: bool = False
    value: Any = None
    details: tuple[type, ...] = ()
    #: ``"source"``: read from the module's text; ``"import"``: from the imported module;
    #: ``"registry"``: registered with ``@metric`` outside ``harness/metrics/``.
    read_from: str = "source"
    #: The file that defines the metric (its sha256 is part of the measurement cache's key).
    source_file: str | None = None


class _Unreadable(Exception):
    """A signature that cannot be evaluated without importing its module."""


def metric_declarations() -> NamedRegistry[MetricDeclaration]:
    """Every metric of ``harness/metrics/`` by name, and any other metric registered so far
    (``@metric`` outside that package, e.g. in tests)."""
    registry = NamedRegistry("metric", _source_declarations().items())
    for info in registered_metrics():
        if info.name not in registry:
            registry.add(info.name, _declaration_of(info, read_from="registry"))
    return registry


@cache
def _source_declarations() -> dict[str, MetricDeclaration]:
    declarations: NamedRegistry[MetricDeclaration] = NamedRegistry("metric")
    for path in sorted(METRICS_DIR.glob("*.py")):
        if not path.name.startswith("_"):
            for declaration in module_declarations(f"harness.metrics.{path.stem}"):
                declarations.add(declaration.name, declaration)
    return dict(declarations)


def module_declarations(module: str) -> list[MetricDeclaration]:
    """The metrics that ``module`` (``harness.metrics.<name>``) registers, in file order."""
    tree = _tree(module)
    namespace = _namespace(module)
    declarations = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            call = _metric_call(node)
            if call is not None:
                declarations.append(_declaration(node, call, namespace, _module_path(module)))
    return declarations


def metric_declaration(name: str) -> MetricDeclaration:
    """The declaration of metric ``name`` without importing the metric modules where it can be:
    the registered metric when its module is already imported (that is the function that would
    run), else the one read from ``harness/metrics/``, else the registry's after importing the
    metric modules (:class:`~harness.core.named_registry.UnknownName` if there is none)."""
    for info in registered_metrics():
        if info.name == name:
            return _declaration_of(info, read_from="registry")
    declared = _source_declarations().get(name)
    return declared if declared is not None else _imported_declaration(name)


def _module_path(module: str) -> Path:
    return HARNESS_DIR.joinpath(*module.split(".")[1:]).with_suffix(".py")


@cache
def _tree(module: str) -> ast.Module:
    path = _module_path(module)
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@cache
def _namespace(module: str) -> dict[str, Any]:
    """The names a metric module defines at top level that can be evaluated without heavy imports."""
    namespace: dict[str, Any] = {"__builtins__": __builtins__}
    for node in _tree(module).body:
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module is not None:
            namespace.update(_imported_names(node))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            try:
                value = eval(compile(ast.Expression(node.value), module, "eval"), namespace)  # noqa: S307  (the project's own source)
            except Exception:  # needs torch or another heavy name: not a signature's business
                continue
            for target in targets:
                if isinstance(target, ast.Name):
                    namespace[target.id] = value
    return namespace


def _imported_names(node: ast.ImportFrom) -> dict[str, Any]:
    """The names ``from X import ...`` binds, for light modules and other metric modules; none otherwise."""
    source = node.module or ""
    if source.startswith(tuple(package + "." for package in SOURCE_READ_PACKAGES)):
        get = _namespace(source).get
    elif source in LIGHT_MODULES:
        imported = importlib.import_module(source)
        get = lambda name: getattr(imported, name, None)  # noqa: E731
    else:
        return {}
    bound = {}
    for alias in node.names:
        value = get(alias.name)
        if value is not None:
            bound[alias.asname or alias.name] = value
    return bound


def _metric_call(node: ast.FunctionDef | ast.AsyncFunctionDef) -> ast.Call | None:
    """The ``@metric("name", ...)`` decorator of ``node``, if it has one."""
    for decorator in node.decorator_list:
        if isinstance(decorator, ast.Call):
            func = decorator.func
            called = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else None
            if called == "metric":
                return decorator
    return None


def _declaration(node: ast.FunctionDef | ast.AsyncFunctionDef, call: ast.Call, namespace: dict[str, Any], path: Path) -> MetricDeclaration:
    name = ast.literal_eval(call.args[0])
    try:
        flags = {keyword.arg: _evaluate(keyword.value, namespace) for keyword in call.keywords if keyword.arg is not None}
        parameters = _parameters(node, namespace)
    except _Unreadable:
        return _imported_declaration(name)
    model, head_params = params_model(name, parameters)
    doc = ast.get_docstring(node) or ""
    return MetricDeclaration(
        name=name, params_model=model, needs_inputs=bool(flags.get("needs_inputs", False)), head_params=head_params,
        description=doc.split("\n\n")[0].replace("\n", " "), fitted=bool(flags.get("fitted", False)),
        value=flags.get("value"), details=tuple(flags.get("details", ())), source_file=str(path),
    )


def _parameters(node: ast.FunctionDef | ast.AsyncFunctionDef, namespace: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """``(name, annotation, default)`` of each keyword-only parameter (``...``: no default)."""
    parameters = []
    for argument, default in zip(node.args.kwonlyargs, node.args.kw_defaults):
        annotation = _evaluate(_unquoted(argument.annotation), namespace) if argument.annotation is not None else Any
        parameters.append((argument.arg, annotation, ... if default is None else _evaluate(default, namespace)))
    return parameters


def _unquoted(annotation: ast.expr) -> ast.expr:
    """A quoted annotation (``"list[HeadName]"``) as the expression it quotes."""
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        try:
            return ast.parse(annotation.value, mode="eval").body
        except SyntaxError:
            return annotation
    return annotation


def _evaluate(expression: ast.expr, namespace: dict[str, Any]) -> Any:
    try:
        return eval(compile(ast.Expression(expression), "<signature>", "eval"), namespace)  # noqa: S307
    except Exception as exc:
        raise _Unreadable(ast.unparse(expression)) from exc


def _imported_declaration(name: str) -> MetricDeclaration:
    """The declaration of a registered metric, importing the metric modules (and torch)."""
    return _declaration_of(get_metric(name), read_from="import")


def _declaration_of(info: MetricInfo, *, read_from: str) -> MetricDeclaration:
    return MetricDeclaration(
        name=info.name, params_model=info.params_model, needs_inputs=info.needs_inputs, head_params=info.head_params,
        description=info.description, fitted=info.fitted, value=info.value, details=info.details, read_from=read_from,
        source_file=_source_file(info.function),
    )


def _source_file(function: Any) -> str | None:
    try:
        return inspect.getsourcefile(function)
    except TypeError:
        return None
