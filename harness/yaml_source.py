"""Strict YAML reading with positions: no duplicate keys, no custom tags, no code.

PyYAML's ``safe_load`` keeps the last of two equal keys silently and forgets where every value
came from. Here the document is composed into nodes first, then turned into plain Python data
while recording the ``(line, column)`` of every key and value under its *path* (the tuple of
mapping keys and sequence indices that leads to it), so validation errors can point at the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from harness.core.errors import Location, SpecIssue

PathKey = tuple[str | int, ...]

_STANDARD_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
}
_MAP_TAG = "tag:yaml.org,2002:map"
_SEQ_TAG = "tag:yaml.org,2002:seq"
MAX_DEPTH = 32
MAX_NODES = 100_000
_LINE_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")
_QUOTE_ME = {
    "tag:yaml.org,2002:timestamp": "a date",
    "tag:yaml.org,2002:merge": "a merge key",
    "tag:yaml.org,2002:value": "a value key",
}
"""Tags PyYAML gives some plain scalars (``2024-01-01``, ``<<``, ``=``): quoting makes them strings."""


class _ClaimResolver(yaml.resolver.Resolver):
    """YAML's core schema as PyYAML resolves it, plus ``1e-5`` and ``1.0e5`` read as numbers, as
    YAML 1.2 and editors do."""


_ClaimResolver.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


class _DepthCheckingComposer(yaml.composer.Composer):
    """PyYAML's composer that refuses collections nested deeper than ``MAX_DEPTH`` as it composes
    them (it recurses once per level: the check comes before the recursion, so one pass suffices)."""

    shown = ""
    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        # The two event classes by name: libyaml's parser matches the exact class, not a base class
        # (``CollectionStartEvent`` never matched there, so its nesting went unchecked as it composed).
        if not self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH + 1:
                mark = self.peek_event().start_mark
                raise _error(self.shown, mark.line + 1, mark.column + 1, "", f"nesting deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


class _ClaimLoader(_DepthCheckingComposer, yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser,
                   yaml.constructor.SafeConstructor, _ClaimResolver):
    """The pure-Python loader: PyYAML's reader, scanner and parser. Its error messages are the ones
    users see, so every text the fast loader refuses is read again with this one."""

    def __init__(self, stream: str) -> None:
        yaml.reader.Reader.__init__(self, stream)
        yaml.scanner.Scanner.__init__(self)
        yaml.parser.Parser.__init__(self)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        _ClaimResolver.__init__(self)


try:
    from yaml.cyaml import CParser as _FAST_PARSER
except ImportError:  # PyYAML built without libyaml
    _FAST_PARSER = None
"""libyaml's event parser when PyYAML was built with it (about 10x faster than the Python scanner)."""

if _FAST_PARSER is not None:

    class _FastClaimLoader(_DepthCheckingComposer, _FAST_PARSER, yaml.constructor.SafeConstructor, _ClaimResolver):  # type: ignore[misc, valid-type]
        """Events from libyaml, composed by the same Python composer (so nesting, marks and
        resolution are as in :class:`_ClaimLoader`). Only used for texts it accepts."""

        def __init__(self, stream: str) -> None:
            _FAST_PARSER.__init__(self, stream)
            yaml.composer.Composer.__init__(self)
            yaml.constructor.SafeConstructor.__init__(self)
            _ClaimResolver.__init__(self)


@dataclass
class SourceMap:
    """Where each path of a parsed document sits in its file."""

    path: str
    key_marks: dict[PathKey, tuple[int, int]] = field(default_factory=dict)
    value_marks: dict[PathKey, tuple[int, int]] = field(default_factory=dict)

    def locate(self, where: PathKey, *, key: bool = True) -> Location:
        """The location of ``where``: its key if it has one (or ``key=False``: its value).

        Falls back to the nearest enclosing path, then to the top of the file.
        """
        probe = tuple(where)
        while True:
            marks = (self.key_marks, self.value_marks) if key else (self.value_marks, self.key_marks)
            for table in marks:
                if probe in table:
                    line, column = table[probe]
                    return Location(self.path, line, column)
            if not probe:
                return Location(self.path, 1, 1)
            probe = probe[:-1]


class YamlError(Exception):
    """The text is not acceptable YAML for a claim file."""

    def __init__(self, issue: SpecIssue) -> None:
        self.issue = issue
        super().__init__(str(issue))


def read_yaml(path: str | Path, text: str | None = None) -> tuple[Any, SourceMap]:
    """Parse one YAML document strictly; return ``(data, source_map)``.

    Raises ``YamlError`` naming file, line and column for: syntax errors, several documents,
    an empty document, duplicate keys, non-scalar or non-string keys, tags outside YAML's core
    schema (``!!python/...`` and custom tags), nesting deeper than ``MAX_DEPTH`` and documents
    of more than ``MAX_NODES`` nodes (alias bombs).
    """
    shown = str(path)
    if text is None:
        text = decode_utf8(Path(path).read_bytes(), shown)
    nodes = _compose(shown, text)
    nodes = [node for node in nodes if node is not None]
    if all(_is_blank(node) for node in nodes):
        raise _error(shown, 1, 1, "", "file is empty: expected a mapping with a 'claims' list")
    if len(nodes) > 1:
        second = nodes[1].start_mark
        raise _error(shown, second.line + 1, second.column + 1, "", "several YAML documents in one file; keep one")
    source_map = SourceMap(shown)
    builder = _Builder(source_map)
    return builder.build(nodes[0], (), 0), source_map


def decode_utf8(raw: bytes, shown: str) -> str:
    """``raw`` decoded as UTF-8, or a :class:`YamlError` at the line and column of the first bad byte.

    The column counts characters, as the other errors do; a byte that cannot start or continue a
    character is reported where its character would begin.
    """
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        before = raw[: exc.start].decode("utf-8")  # everything before the first bad byte is valid
        line, column = _position(before, len(before))
        raise _error(shown, line, column, "", f"file is not UTF-8 text: byte 0x{raw[exc.start]:02X} ({exc.reason})") from None


def _compose(shown: str, text: str) -> list[yaml.Node | None]:
    """Compose every document of ``text`` in one pass, nesting checked as it goes: with libyaml's
    parser where it is there and the text is plain printable YAML, else (and for every text libyaml
    refuses, so that errors read the same everywhere) with PyYAML's Python parser."""
    if _FAST_PARSER is not None and not yaml.reader.Reader.NON_PRINTABLE.search(text):
        try:
            return _compose_with(_FastClaimLoader(text), shown)
        except YamlError:
            raise
        except Exception:  # noqa: BLE001 - refused by libyaml: let the Python parser say why
            pass
    try:
        loader = _ClaimLoader(text)  # the reader checks every character here
    except yaml.YAMLError as exc:
        raise _yaml_error(shown, text, exc) from None
    try:
        return _compose_with(loader, shown)
    except yaml.YAMLError as exc:
        raise _yaml_error(shown, text, exc) from None
    except (ValueError, OverflowError):  # PyYAML's scanner hands ``"\UFFFFFFFF"`` to ``chr``
        mark = loader.get_mark()  # at the escape's hex digits, just after "\U" (or "\u", "\x")
        raise _error(shown, mark.line + 1, max(1, mark.column - 1), "",
                     "YAML syntax error: an escape in a double-quoted string names no Unicode character") from None


def _compose_with(loader: _DepthCheckingComposer, shown: str) -> list[yaml.Node | None]:
    loader.shown = shown
    try:
        nodes = []
        while loader.check_node():
            nodes.append(loader.get_node())
        return nodes
    finally:
        loader.dispose()


def _yaml_error(shown: str, text: str, exc: yaml.YAMLError) -> YamlError:
    """PyYAML's error as a :class:`YamlError` at its line and column."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        return _error(shown, line, column, "", f"YAML syntax error: {exc.problem or exc}")
    if isinstance(exc, yaml.reader.ReaderError):
        line, column = _position(text, exc.position)
        code = exc.character if isinstance(exc.character, int) else ord(exc.character[:1] or "\0")
        return _error(shown, line, column, "", f"character U+{code:04X} is not allowed in YAML text")
    return _error(shown, 1, 1, "", f"YAML error: {exc}")


def _position(text: str, index: int) -> tuple[int, int]:
    """1-based ``(line, column)`` of character ``index``, counting line breaks as YAML does."""
    breaks = list(_LINE_BREAK.finditer(text, 0, index))
    start = breaks[-1].end() if breaks else 0
    return len(breaks) + 1, index - start + 1


def _is_blank(node: yaml.Node) -> bool:
    """A document with nothing in it (``---`` alone composes to an empty null scalar)."""
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null" and node.value == ""


def _error(path: str, line: int, column: int, key: str, message: str) -> YamlError:
    return YamlError(SpecIssue(Location(path, line, column), key, message))


class _Builder:
    """Turns a composed node tree into plain data, recording marks and enforcing the rules."""

    def __init__(self, source_map: SourceMap) -> None:
        self.source_map = source_map
        self.constructor = _ClaimLoader("")
        self.count = 0
        self.active: set[int] = set()

    def build(self, node: yaml.Node, where: PathKey, depth: int) -> Any:
        self.count += 1
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        key = dotted(where)
        if self.count > MAX_NODES:
            raise _error(self.source_map.path, line, column, key, f"document has more than {MAX_NODES} nodes")
        if depth > MAX_DEPTH:
            raise _error(self.source_map.path, line, column, key, f"nesting deeper than {MAX_DEPTH} levels")
        self.source_map.value_marks.setdefault(where, (line, column))
        if id(node) in self.active:
            raise _error(self.source_map.path, line, column, key, "recursive alias")
        self.active.add(id(node))
        try:
            if isinstance(node, yaml.MappingNode):
                return self._mapping(node, where, depth)
            if isinstance(node, yaml.SequenceNode):
                return self._sequence(node, where, depth)
            return self._scalar(node, where)
        finally:
            self.active.discard(id(node))

    def _mapping(self, node: yaml.MappingNode, where: PathKey, depth: int) -> dict[str, Any]:
        self._check_tag(node, _MAP_TAG, where)
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            line, column = key_node.start_mark.line + 1, key_node.start_mark.column + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise _error(self.source_map.path, line, column, dotted(where), "a key must be a plain string")
            written = where + (_shorten(key_node.value),)
            name = self._scalar(key_node, written)
            if not isinstance(name, str):
                raise _error(
                    self.source_map.path, line, column, dotted(written),
                    f"key {_shorten(key_node.value)!r} reads as {_kind(name)}; a key must be a string (quote it: '{_shorten(key_node.value)}')",
                )
            if name in result:
                first_line, first_column = self.source_map.key_marks[where + (name,)]
                raise _error(
                    self.source_map.path, line, column, dotted(where + (name,)),
                    f"duplicate key {name!r} (first defined at line {first_line}, column {first_column})",
                )
            self.source_map.key_marks[where + (name,)] = (line, column)
            result[name] = self.build(value_node, where + (name,), depth + 1)
        return result

    def _sequence(self, node: yaml.SequenceNode, where: PathKey, depth: int) -> list[Any]:
        self._check_tag(node, _SEQ_TAG, where)
        return [self.build(item, where + (index,), depth + 1) for index, item in enumerate(node.value)]

    def _scalar(self, node: yaml.Node, where: PathKey) -> Any:
        if node.tag not in _STANDARD_SCALAR_TAGS:
            self._reject_tag(node, where)
        try:
            return self.constructor.construct_object(node, deep=True)
        except (ValueError, KeyError, TypeError, OverflowError, yaml.YAMLError) as exc:
            line, column = node.start_mark.line + 1, node.start_mark.column + 1
            kind = node.tag.rsplit(":", 1)[-1]
            # Plain scalars are only resolved to int/float when they look like one, so a value
            # that does not parse carries an explicit tag (``!!float y``); say so.
            reason = "it has too many digits" if "digits" in str(exc) else f"not a valid {kind}, as its tag !!{kind} asks"
            raise _error(self.source_map.path, line, column, dotted(where), f"cannot read {_shorten(node.value)!r} as {kind}: {reason}") from None

    def _check_tag(self, node: yaml.Node, expected: str, where: PathKey) -> None:
        if node.tag != expected:
            self._reject_tag(node, where)

    def _reject_tag(self, node: yaml.Node, where: PathKey) -> None:
        line, column = node.start_mark.line + 1, node.start_mark.column + 1
        if isinstance(node, yaml.ScalarNode) and node.tag in _QUOTE_ME:
            raise _error(
                self.source_map.path, line, column, dotted(where),
                f"{_shorten(node.value)!r} reads as {_QUOTE_ME[node.tag]}; quote it to make it a string: '{_shorten(node.value)}'",
            )
        raise _error(
            self.source_map.path, line, column, dotted(where),
            f"tag {node.tag!r} is not allowed: claim files hold plain strings, numbers, booleans, lists and mappings",
        )


def _shorten(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _kind(value: Any) -> str:
    """``"an integer"``, ``"null"``... for messages."""
    kinds = {bool: "a boolean", int: "an integer", float: "a number", type(None): "null"}
    return kinds.get(type(value), f"a {type(value).__name__}")


def dotted(where: PathKey) -> str:
    """``("claims", 0, "params")`` -> ``"claims[0].params"``."""
    text = ""
    for part in where:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text
