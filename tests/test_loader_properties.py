"""Property tests: whatever text a claim file holds, loading it succeeds or raises a located SpecError.

Malformed specs come from mutating a valid claim file (dropping, renaming, duplicating keys,
swapping values for wrong types, odd unicode, huge and non-finite numbers, deep nesting, tags),
from random structures over the spec's own keys, and from random text and YAML token soup.

About 1,140 examples, some 6 s of CPU time, by default; ``HYPOTHESIS_PROFILE=ci`` runs 8 times as
many (9,120) and ``HYPOTHESIS_PROFILE=thorough`` 40 times as many, fresh ones.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import fixtures.registry as model_registry
from fixtures.model_entry import ModelEntry
from harness.core.errors import SpecError
from harness.loader import load_claim_text
from harness.core.model_handle import ModelShape

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "")
SCALE = {"thorough": 40, "ci": 8}.get(PROFILE, 1)
"""Each test's example budget is scaled by the active profile (profiles in tests/conftest.py): the
default run replays the same examples every time; ``HYPOTHESIS_PROFILE=thorough`` draws new ones,
40 times as many, to hunt for new failures (the ``ci`` and ``thorough`` counts are those these
profiles ran before the default budgets were halved to keep the default test command fast)."""


def budget(examples: int):
    """Hypothesis settings for ``examples`` examples (times the profile's scale), no deadline;
    replayed or fresh as the active profile says."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
    )


MODEL = "planted-attn-2l"
SHAPE = ModelShape(n_layers=2, n_heads=4, d_model=256, d_head=128, d_vocab=64, n_ctx=128)

VALID = """\
source: {course: ARENA, chapter: "1.2 Intro to Mech Interp", section: "Finding induction heads"}
model: planted-attn-2l
claims:
  - id: prev-token-head
    statement: Head 0.0 attends to the previous token.
    source: {ref: "fixtures/planted.py", provenance: planted}
    inputs: {repeated_random: {seq_len: 20, batch: 4, seed: 0}}
    metric: attention.detect
    params: {pattern: previous, threshold: 0.4}
    expect: {equals: ["0.0"]}
  - id: prev-token-score
    statement: Head 0.0 scores higher on previous than on current tokens.
    inputs: {tokens: {ids: [[1, 2, 3, 1, 2, 3]]}}
    metric: attention.scores
    params: {pattern: previous, variant: clean}
    select: "0.0"
    expect:
      '>=':
        metric: attention.scores
        params: {pattern: current}
        select: "1.3"
    expected_verdict: supported
    notes: planted
    slow: false
  - id: approx-score
    statement: Head 1.0 scores about one.
    inputs: {text: {name: arena_superhuman}}
    metric: attention.scores
    params: {pattern: induction}
    select: "1.0"
    expect: {approx: 1.0, abs: 1.0e-6, rel: 0.01}
conceptual:
  - id: heads-compose
    statement: Heads compose across layers.
    reason: no single metric measures it
"""
VALID_DATA: dict[str, Any] = yaml.safe_load(VALID)
SPEC_KEYS = sorted(
    {"source", "model", "claims", "conceptual", "course", "chapter", "section", "version", "url", "id", "statement",
     "inputs", "metric", "params", "select", "expect", "expected_verdict", "notes", "slow", "ref", "provenance",
     "catalogue_id", "reason", ">=", "<=", ">", "<", "between", "approx", "abs", "rel", "equals", "contains",
     "subset_of", "repeated_random", "tokens", "text", "seq_len", "batch", "seed", "ids", "name", "pattern",
     "threshold", "variant"}
)
RULE_WORDS = re.compile(
    r"YAML|file|document|nesting|key|character|tag|alias|claim|mapping|digits|quote|expected|must|not allowed|unknown|duplicate|missing",
    re.IGNORECASE,
)
YAML_BREAK = re.compile("\r\n|[\n\r\x85\u2028\u2029]")


@pytest.fixture(scope="module", autouse=True)
def stand_in_models():
    """One model with the planted model's name and shape; no weights are built."""
    entry = ModelEntry(MODEL, "planted", "stand-in", lambda: SHAPE, lambda: None)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(model_registry, "_ENTRIES", {MODEL: entry})
        yield


def check(text: str) -> SpecError | None:
    """Loading ``text`` succeeds or raises a SpecError whose every issue is located and explained
    (returned, after these checks)."""
    try:
        load_claim_text(text, "spec.yaml")
    except SpecError as exc:
        assert exc.issues, "a SpecError must list its issues"
        lines = YAML_BREAK.split(text)
        for issue in exc.issues:
            where = issue.location
            assert where.path == "spec.yaml"
            assert 1 <= where.line <= len(text.splitlines()) + 1, (issue, len(lines))
            assert where.line <= len(lines)
            assert 1 <= where.column <= len(lines[where.line - 1]) + 1, issue
            assert str(issue).startswith(f"spec.yaml:{where.line}:{where.column}: ")
            assert issue.message.strip()
            assert issue.key or RULE_WORDS.search(issue.message), issue
        return exc
    return None


# --- values, keys and structures ---------------------------------------------------------------

odd_text = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]) | st.sampled_from("\u0085\u2028\u2029\ufeff\u200b\u202e\x00\t\r:#-[]{}&*!|>'\"%@`,?"),
    max_size=30,
)
huge_numbers = st.sampled_from([10**400, -(10**400), 2**1024, 2**63, -(2**63) - 1, 1e308, -1e308, 5e-324, 1e-5])
non_finite = st.sampled_from([float("nan"), float("inf"), float("-inf")])
scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True, allow_infinity=True), odd_text,
    huge_numbers, non_finite, st.dates(), st.binary(max_size=4),
    st.sampled_from(["0.0", "1.3", "9.9", "previous", "induction", "attention.detect", "planted-attn-2l", "", " "]),
)


def nested(depth: int, leaf: Any, mapping: bool) -> Any:
    for level in range(depth):
        leaf = {f"k{level}": leaf} if mapping else [leaf]
    return leaf


deep_values = st.builds(nested, st.integers(1, 80), scalars, st.booleans())
python_objects = st.sampled_from([(1, 2), {1, 2}, complex(1, 2), frozenset({3}), range(2)])
values = st.recursive(
    scalars | deep_values | python_objects,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.sampled_from(SPEC_KEYS) | odd_text, children, max_size=4),
    max_leaves=6,
)
keys = st.one_of(
    st.sampled_from(SPEC_KEYS), odd_text, st.integers(), st.none(), st.booleans(), st.floats(), st.dates(),
    st.just((1, 2)),
    st.sampled_from(SPEC_KEYS).map(lambda key: key[:-1] + key[-1].upper()),
    st.sampled_from(SPEC_KEYS).map(lambda key: key + "s"),
)


def dump(data: Any) -> str:
    """YAML for ``data``, Python tags and all (the loader must refuse them, never construct them)."""
    return yaml.dump(data, Dumper=DUMPER, allow_unicode=True, sort_keys=False, default_flow_style=None, width=80)


DUMPER = getattr(yaml, "CDumper", yaml.Dumper)


# --- mutations of a valid file -------------------------------------------------------------------


def paths(data: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path into ``data`` (mapping keys and list indices)."""
    found = [prefix]
    if isinstance(data, dict):
        for key, value in data.items():
            found += paths(value, prefix + (key,))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += paths(value, prefix + (index,))
    return found


def parent_and_key(data: Any, path: tuple) -> tuple[Any, Any]:
    node = data
    for part in path[:-1]:
        node = node[part]
    return node, path[-1]


@st.composite
def mutated_data(draw: st.DrawFn) -> Any:
    data = copy.deepcopy(VALID_DATA)  # parsed once at import: the same document every time
    for _ in range(draw(st.integers(1, 4))):
        targets = [p for p in paths(data) if p]
        if not targets:
            break
        parent, key = parent_and_key(data, draw(st.sampled_from(targets)))
        action = draw(st.sampled_from(["drop", "rename", "replace", "add", "wrap"]))
        if action == "drop":
            del parent[key]
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(keys)] = parent.pop(key)
        elif action == "replace":
            parent[key] = draw(values)
        elif action == "add" and isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        elif action == "wrap":
            parent[key] = nested(draw(st.integers(1, 40)), parent[key], draw(st.booleans()))
    if draw(st.integers(0, 9)) == 0:
        data = draw(values)
    return data


def text_mutation(draw: st.DrawFn, text: str) -> str:
    lines = text.split("\n")
    index = draw(st.integers(0, max(len(lines) - 1, 0)))
    position = draw(st.integers(0, len(text)))
    action = draw(st.sampled_from(["duplicate", "delete", "insert", "swap", "indent", "truncate", "splice", "flow"]))
    if action == "duplicate":
        lines.insert(index, lines[index])
    elif action == "delete":
        del lines[index]
    elif action == "swap":
        other = draw(st.integers(0, max(len(lines) - 1, 0)))
        lines[index], lines[other] = lines[other], lines[index]
    elif action == "indent":
        lines[index] = draw(st.sampled_from(["", " ", "  ", "\t", "      "])) + lines[index].lstrip(" ")
    elif action == "truncate":
        return text[:position]
    elif action == "insert":
        return text[:position] + draw(odd_text) + text[position:]
    elif action == "splice":
        return text[:position] + draw(st.sampled_from(SPLICES)) + text[position:]
    else:
        depth = draw(st.integers(1, 300))
        return text[:position] + "[" * depth + "]" * draw(st.sampled_from([depth, 0, depth // 2])) + text[position:]
    return "\n".join(lines)


SPLICES = [
    "9" * 5000, str(10**400), "1e400", "-1e400", ".nan", ".inf", "0x", "0b12", "1:2:3", "2024-01-01", "2024-01-01T10:00:00Z",
    "!!python/object/apply:os.system ['true']", "!!python/name:os.system", "!custom", "!!binary aGk=", "!!set {a}",
    "!!int x", "!!float y", "!!bool z", "!!timestamp 2020-01-01", "&a [*a]", "*nowhere", "<<: {a: 1}", "=", "? [a]\n: 1",
    "{", "}", "[", "]", "'", '"', "|", ">", "- ", ": ", "---\n", "...\n", "%YAML 1.1\n", "%TAG ! tag:x,2000:\n", "\t",
    "\x00", "\x07", "\ud7ff", "\ud800", "\ufeff", "\U0001f600", "\u202e", "claims: []\n", "source: {}\n", "id: dup\n",
]


@st.composite
def mutated_text(draw: st.DrawFn) -> str:
    text = VALID if draw(st.booleans()) else dump(draw(mutated_data()))
    for _ in range(draw(st.integers(1 if text == VALID else 0, 3))):
        text = text_mutation(draw, text)
    return text


yaml_tokens = st.sampled_from(
    [":", ": ", "- ", "{", "}", "[", "]", ",", "\n", "  ", "    ", "&a ", "*a", "!!python/object:os.system ", "!x ", "'",
     '"', "# ", "? ", "---", "...", "|", ">", "\t", "\ufeff", "\x00", "\x85", "\u2028", "%YAML 1.1", "%TAG ! !x", "<<", "=",
     "~", "null", ".nan", ".inf", "1e400", str(10**400), "2024-01-01", "yes", "0.0", "claims", "source", "course", "id",
     "statement", "metric", "expect", "'>='", "equals", "params", "model", "planted-attn-2l", "attention.detect", "x", "é"]
)


# --- properties ------------------------------------------------------------------------------------


def test_the_valid_file_loads():
    load_claim_text(VALID, "spec.yaml")


@budget(250)
@given(mutated_text())
@example("!!float y")  # found by this test in CI: an explicit tag on a value it cannot read
@example("!!int x")
@example('a: "\\UFFFFFFFF"')  # found by the thorough profile: PyYAML's scanner raises a bare ValueError
def test_mutated_claim_files_fail_cleanly(text):
    check(text)


@budget(175)
@given(mutated_data())
def test_mutated_claim_data_fails_cleanly(data):
    check(dump(data))


@budget(125)
@given(st.dictionaries(st.sampled_from(["source", "model", "claims", "conceptual"]) | keys, values, max_size=5))
def test_random_structures_over_spec_keys_fail_cleanly(data):
    check(dump(data))


@budget(300)
@given(st.lists(yaml_tokens, max_size=60).map("".join))
def test_yaml_token_soup_fails_cleanly(text):
    check(text)


@budget(200)
@given(st.text(max_size=200))
def test_random_text_fails_cleanly(text):
    check(text)


@budget(15)
@given(st.integers(0, 3000), st.booleans(), st.sampled_from(["a: ", "claims:\n  - ", "", "source: {course: A}\nclaims: "]))
def test_deep_nesting_fails_cleanly(depth, flow, prefix):
    if flow:
        text = prefix + "[" * depth + "]" * depth
    else:
        text = prefix.rstrip() + "\n" + "".join("  " * (level + 1) + f"k{level}:\n" for level in range(min(depth, 1500)))
    check(text)


@budget(75)
@given(st.sampled_from(sorted(set(p for p in paths(VALID_DATA) if p))), st.sampled_from(["dup", "swap"]))
def test_every_key_duplicated_or_given_the_wrong_type_is_an_error(path, how):
    data = copy.deepcopy(VALID_DATA)  # parsed once at import: the same document every time
    parent, key = parent_and_key(data, path)
    if how == "swap":
        value = parent[key]
        parent[key] = [value] if not isinstance(value, list) else {"x": value}
        text = dump(data)
    else:
        text = dump(data)
        lines = text.split("\n")
        line = next((i for i, line in enumerate(lines) if line.lstrip(" -").startswith(f"{key}:")), None)
        if not isinstance(key, str) or line is None:
            return
        lines.insert(line + 1, lines[line])
        text = "\n".join(lines)
    assert check(text) is not None  # an error (loaded once, its issues checked as everywhere)
