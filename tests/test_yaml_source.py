"""The strict YAML reader: positions, duplicate keys, tags, limits, and never running code."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from harness.yaml_source import MAX_DEPTH, MAX_NODES, YamlError, read_yaml


def read(text: str):
    return read_yaml("f.yaml", text)


def issue_of(text: str):
    with pytest.raises(YamlError) as caught:
        read(text)
    return caught.value.issue


# --- data and positions ----------------------------------------------------------------------


def test_plain_data_and_marks_of_keys_and_values():
    text = "source:\n  course: ARENA\nclaims:\n  - id: a\n    n: [1, 2.5]\n"
    data, source_map = read(text)
    assert data == {"source": {"course": "ARENA"}, "claims": [{"id": "a", "n": [1, 2.5]}]}
    assert source_map.key_marks[("source", "course")] == (2, 3)
    assert source_map.value_marks[("source", "course")] == (2, 11)
    assert source_map.key_marks[("claims", 0, "n")] == (5, 5)
    assert source_map.value_marks[("claims", 0, "n", 1)] == (5, 12)


def test_locate_prefers_key_then_falls_back_to_enclosing_path():
    _, source_map = read("a:\n  b: 1\n")
    assert str(source_map.locate(("a", "b"))) == "f.yaml:2:3"
    assert str(source_map.locate(("a", "b"), key=False)) == "f.yaml:2:6"
    assert str(source_map.locate(("a", "missing"))) == "f.yaml:1:1"
    assert str(source_map.locate(("nowhere", 3))) == "f.yaml:1:1"


def test_flow_mapping_marks():
    _, source_map = read("expect: {'>=': 0.4}\n")
    assert source_map.key_marks[("expect", ">=")] == (1, 10)
    assert source_map.value_marks[("expect", ">=")] == (1, 16)


def test_byte_order_mark_is_accepted():
    data, _ = read("\ufeffa: 1\n")
    assert data == {"a": 1}


@pytest.mark.parametrize(
    ("text", "value"),
    [("1e-5", 1e-5), ("1.0e5", 1e5), ("-2E+3", -2000.0), ("1.0e-6", 1e-6), ("0.5", 0.5), ("1e400", math.inf)],
)
def test_exponent_numbers_are_floats_as_in_yaml_1_2(text, value):
    data, _ = read(f"x: {text}\n")
    assert isinstance(data["x"], float) and data["x"] == value


@pytest.mark.parametrize(("text", "value"), [("1e", "1e"), ("e5", "e5"), ("12", 12), ("0x1F", 31), ("1_000", 1000), (".nan", None)])
def test_other_scalars_keep_their_yaml_meaning(text, value):
    data, _ = read(f"x: {text}\n")
    if value is None:
        assert math.isnan(data["x"])
    else:
        assert data["x"] == value and type(data["x"]) is type(value)


def test_explicit_core_tags_are_allowed():
    data, _ = read("a: !!str 1\nb: !!float 2\n")
    assert data == {"a": "1", "b": 2.0}


# --- keys --------------------------------------------------------------------------------------


def test_duplicate_key_names_both_places():
    issue = issue_of("source: {course: A}\nclaims: []\nsource: {course: B}\n")
    assert (issue.location.line, issue.location.column) == (3, 1)
    assert issue.key == "source"
    assert "duplicate key 'source'" in issue.message and "line 1, column 1" in issue.message


def test_duplicate_key_nested_in_a_list():
    issue = issue_of("claims:\n  - id: a\n    id: b\n")
    assert str(issue.location) == "f.yaml:3:5"
    assert issue.key == "claims[0].id"


@pytest.mark.parametrize(("key", "kind"), [("1", "an integer"), ("null", "null"), ("yes", "a boolean"), ("1.5", "a number")])
def test_non_string_keys_suggest_quoting_the_text_as_written(key, kind):
    issue = issue_of(f"params:\n  {key}: 2\n")
    assert str(issue.location) == "f.yaml:2:3"
    assert issue.key == f"params.{key}"
    assert f"reads as {kind}" in issue.message and f"quote it: '{key}'" in issue.message


def test_complex_key_is_rejected():
    issue = issue_of("? [a, b]\n: 1\n")
    assert "key must be a plain string" in issue.message
    assert issue.location.line == 1


# --- tags and code -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        "!!python/object/apply:os.system ['echo hi']",
        "!!python/name:os.system",
        "!!python/tuple [1, 2]",
        "!custom 3",
        "!!binary aGVsbG8=",
        "!!set {a, b}",
        "!!omap [a: 1]",
    ],
)
def test_tags_outside_the_core_schema_are_errors(value):
    issue = issue_of(f"a:\n  b: {value}\n")
    assert issue.key == "a.b"
    assert str(issue.location) == "f.yaml:2:6"
    assert "is not allowed" in issue.message


def test_yaml_never_runs_code(tmp_path):
    marker = tmp_path / "ran"
    text = f"a: !!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]\n"
    with pytest.raises(YamlError):
        read(text)
    assert not marker.exists()


@pytest.mark.parametrize(("text", "what"), [("x: 2024-01-01\n", "a date"), ("x: 2024-01-01 10:00:00\n", "a date"), ("x: {<<: {a: 1}}\n", "a merge key"), ("=: 1\n", "a value key")])
def test_scalars_with_special_meaning_suggest_quoting(text, what):
    issue = issue_of(text)
    assert f"reads as {what}" in issue.message and "quote it" in issue.message


def test_date_location_is_the_value():
    issue = issue_of("claims:\n  - statement: 2024-01-01\n")
    assert str(issue.location) == "f.yaml:2:16"
    assert issue.key == "claims[0].statement"


@pytest.mark.parametrize("value", ["!!int x", "!!float x", "!!bool maybe", "!!int 0x"])
def test_explicit_tags_on_bad_scalars_are_located_errors(value):
    issue = issue_of(f"a: {value}\n")
    assert str(issue.location) == "f.yaml:1:4"
    assert "cannot read" in issue.message


def test_integer_with_too_many_digits_is_a_located_error():
    issue = issue_of("a: 1\nb: " + "9" * 5000 + "\n")
    assert str(issue.location) == "f.yaml:2:4"
    assert "too many digits" in issue.message


def test_huge_integer_within_the_digit_limit_is_read():
    data, _ = read(f"a: {10**400}\n")
    assert data["a"] == 10**400


# --- documents and syntax ------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "   \n", "# only a comment\n", "---\n", "---\n...\n"])
def test_empty_documents_are_errors(text):
    issue = issue_of(text)
    assert "empty" in issue.message
    assert (issue.location.line, issue.location.column) == (1, 1)


def test_several_documents_are_an_error_at_the_second():
    issue = issue_of("a: 1\n---\nb: 2\n")
    assert issue.location.line == 3
    assert "several YAML documents" in issue.message


def test_one_document_with_markers_is_fine():
    data, _ = read("---\na: 1\n...\n")
    assert data == {"a": 1}


def test_syntax_error_is_located():
    issue = issue_of("a: 1\nb: [1, 2\nc: 3\n")
    assert issue.message.startswith("YAML syntax error")
    assert issue.location.line >= 2


def test_tab_indentation_is_located():
    issue = issue_of("a:\n\t b: 1\n")
    assert issue.location.line == 2
    assert "YAML syntax error" in issue.message


@pytest.mark.parametrize(("text", "where"), [("a: \x00\n", (1, 4)), ("a: 1\r\nb: x\x01\n", (2, 5)), ("a: \u2028b\x07", (2, 2))])
def test_unprintable_characters_are_located(text, where):
    issue = issue_of(text)
    assert (issue.location.line, issue.location.column) == where
    assert "is not allowed" in issue.message


def test_file_that_is_not_utf8(tmp_path: Path):
    path = tmp_path / "latin.yaml"
    path.write_bytes("a: caf\xe9\n".encode("latin-1"))
    with pytest.raises(YamlError) as caught:
        read_yaml(path)
    assert "not UTF-8" in caught.value.issue.message
    assert (caught.value.issue.location.line, caught.value.issue.location.column) == (1, 7)


@pytest.mark.parametrize(
    ("raw", "where", "byte"),
    [
        (b"\xff", (1, 1), 0xFF),
        (b"a: 1\nb: 2\nc: d\xe9j\xe0\n", (3, 5), 0xE9),  # latin-1 on line 3: the first bad byte
        (b"a: caf\xc3\xa9\nb: \xc3\xa9t\xc3\xa9 \xfe\n", (2, 8), 0xFE),  # valid UTF-8 before it counts as characters
        (b"a: 1\r\nb: \xe2\x82\n", (2, 4), 0xE2),  # a truncated sequence after a CRLF line
        (b"a: 1\rb: \x80\n", (2, 4), 0x80),  # a lone CR is a line break in YAML
    ],
)
def test_first_bad_byte_is_located(tmp_path: Path, raw: bytes, where: tuple[int, int], byte: int):
    path = tmp_path / "bad.yaml"
    path.write_bytes(raw)
    with pytest.raises(YamlError) as caught:
        read_yaml(path)
    issue = caught.value.issue
    assert (issue.location.line, issue.location.column) == where
    assert issue.message.startswith(f"file is not UTF-8 text: byte 0x{byte:02X} (")


# --- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [MAX_DEPTH + 1, 200, 5000])
def test_deep_flow_nesting_is_an_error_not_a_crash(depth):
    issue = issue_of("a: " + "[" * depth + "]" * depth + "\n")
    assert "nesting deeper" in issue.message
    assert issue.location.line == 1 and issue.location.column > MAX_DEPTH


def test_deep_block_nesting_is_an_error_not_a_crash():
    text = "".join("  " * level + f"k{level}:\n" for level in range(2000)) + "  " * 2000 + "v\n"
    issue = issue_of(text)
    assert "nesting deeper" in issue.message
    assert issue.location.line <= MAX_DEPTH + 2


def test_nesting_at_the_limit_is_fine():
    data, _ = read("a: " + "[" * (MAX_DEPTH - 1) + "]" * (MAX_DEPTH - 1) + "\n")
    assert isinstance(data["a"], list)


def test_deep_nesting_through_aliases_is_an_error():
    half = MAX_DEPTH - 2
    text = "a: &deep " + "[" * half + "1" + "]" * half + "\nb: " + "[" * half + "*deep" + "]" * half + "\n"
    issue = issue_of(text)
    assert "nesting deeper" in issue.message
    assert issue.key.startswith("b")


@pytest.mark.parametrize("limit", [
    1_000,  # the same check on a smaller limit: the 10**9-node bomb is stopped after 1,000 nodes, not 100,000 (~0.6 s)
    pytest.param(MAX_NODES, marks=pytest.mark.slow, id="shipped-limit"),
])
def test_alias_bomb_is_stopped(monkeypatch: pytest.MonkeyPatch, limit: int):
    import harness.yaml_source as yaml_source

    monkeypatch.setattr(yaml_source, "MAX_NODES", limit)
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    issue = issue_of("\n".join(lines) + "\n")
    assert f"more than {limit} nodes" in issue.message


def test_recursive_alias_is_an_error():
    issue = issue_of("a: &loop [*loop]\n")
    assert "recursive alias" in issue.message


def test_small_aliases_are_fine():
    data, _ = read("base: &b {x: 1}\nuse: *b\n")
    assert data == {"base": {"x": 1}, "use": {"x": 1}}


@pytest.mark.parametrize("escape", ["\\UFFFFFFFF", "\\U99999999"])
def test_an_escape_outside_unicode_is_a_located_error(escape):
    """PyYAML's scanner passes such an escape to ``chr`` and raises a bare ValueError/OverflowError."""
    with pytest.raises(YamlError) as info:
        read_yaml("c.yaml", f'a: 1\nb: "x{escape}"\n')
    issue = info.value.issue
    assert (issue.location.line, issue.location.column) == (2, 6)  # the backslash
    assert "escape in a double-quoted string names no Unicode character" in issue.message


# --- libyaml's parser and PyYAML's agree ----------------------------------------------------------


def _read_both(monkeypatch: pytest.MonkeyPatch, text: str):
    import harness.yaml_source as yaml_source

    fast = read(text)
    monkeypatch.setattr(yaml_source, "_FAST_PARSER", None)
    pure = read(text)
    monkeypatch.undo()
    return fast, pure


@pytest.mark.parametrize("path", sorted(str(p) for p in (Path(__file__).parents[1] / "claims").rglob("*.yaml")))
def test_fast_and_pure_parsers_give_the_same_data_and_marks(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    import harness.yaml_source as yaml_source

    assert yaml_source._FAST_PARSER is not None, "PyYAML without libyaml: the fast path is not tested"
    (fast_data, fast_map), (pure_data, pure_map) = _read_both(monkeypatch, Path(path).read_text(encoding="utf-8"))
    assert fast_data == pure_data
    assert (fast_map.key_marks, fast_map.value_marks) == (pure_map.key_marks, pure_map.value_marks)


@pytest.mark.parametrize("text", ["a: [1, 2\n", "a: b: c\n", "a:\n\t- 1\n", 'a: "\\UFFFFFFFF"\n', "a: 1\na: 2\n", "a: !!python/none x\n"])
def test_a_text_libyaml_refuses_gets_the_pure_parsers_message(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    import harness.yaml_source as yaml_source

    fast = issue_of(text)
    monkeypatch.setattr(yaml_source, "_FAST_PARSER", None)
    assert str(issue_of(text)) == str(fast)


@pytest.mark.parametrize("text", [
    "a: " + "[" * 100 + "]" * 100 + "\n",  # flow sequences
    "".join("  " * level + f"k{level}:\n" for level in range(60)) + "  " * 60 + "v\n",  # block mappings
    "- " * 50 + "z\n",  # block sequences
    "x: " + "{a: [" * 20 + "1" + "]}" * 20 + "\n",  # both, in flow
], ids=["flow", "block-mappings", "block-sequences", "mixed"])
def test_nesting_too_deep_is_stopped_as_it_composes_whichever_parser_reads_it(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    """Both parsers stop at the collection start past ``MAX_DEPTH``, with the same message (libyaml's
    parser matches event classes exactly, so the check names sequences and mappings, not their base)."""
    import harness.yaml_source as yaml_source

    fast = issue_of(text)
    assert "nesting deeper" in fast.message and fast.key == ""  # the composer's check, not the data builder's
    monkeypatch.setattr(yaml_source, "_FAST_PARSER", None)
    assert str(issue_of(text)) == str(fast)
