"""Loading claim files: structure, names and heads, each error at ``file:line:column`` with key and rule.

Models come from a stand-in registry (the planted model's name and shape, no weights), so these
tests run without building any model.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import fixtures.registry as model_registry
from fixtures.model_entry import ModelEntry
from harness import registry as metric_registry
from harness.context import MetricContext
from harness.core.errors import SpecError, SpecIssue
from harness.core.heads import HeadName
from harness.loader import load_claim_file, load_claim_files, load_claim_text
from harness.core.measurement import Measurement
from harness.core.model_handle import ModelShape

MODEL = "planted-attn-2l"
SHAPE = ModelShape(n_layers=2, n_heads=4, d_model=256, d_head=128, d_vocab=64, n_ctx=128)

VALID = """\
source: {course: ARENA, chapter: "1.2 Intro to Mech Interp"}
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
    inputs: {repeated_random: {seq_len: 20}}
    metric: attention.scores
    params: {pattern: previous}
    select: "0.0"
    expect:
      '>=':
        metric: attention.scores
        params: {pattern: current}
        select: "0.0"
conceptual:
  - id: heads-compose
    statement: Heads compose across layers.
    reason: no single metric measures it
"""

ISSUE_FORMAT = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+):(?P<column>\d+): (\[(?P<key>[^\]]*(\][^\]]*)*)\] )?\S")


@pytest.fixture(autouse=True)
def stand_in_models(monkeypatch):
    """The registry holds one model with the planted model's name and shape."""
    entry = ModelEntry(MODEL, "planted", "stand-in", lambda: SHAPE, _no_weights)
    monkeypatch.setattr(model_registry, "_ENTRIES", {MODEL: entry})


def _no_weights():
    raise AssertionError("loading a claim file must not load weights")


def edit(old: str, new: str, text: str = VALID) -> str:
    assert old in text, old
    return text.replace(old, new, 1)


def issues_of(text: str, **kwargs) -> list[SpecIssue]:
    with pytest.raises(SpecError) as caught:
        load_claim_text(text, "c.yaml", **kwargs)
    issues = caught.value.issues
    assert issues
    for issue in issues:
        assert ISSUE_FORMAT.match(str(issue)), str(issue)
        assert issue.location.path == "c.yaml"
    return issues


def only_issue(text: str, **kwargs) -> SpecIssue:
    issues = issues_of(text, **kwargs)
    assert len(issues) == 1, "\n".join(map(str, issues))
    return issues[0]


def at(issue: SpecIssue) -> tuple[int, int]:
    return issue.location.line, issue.location.column


# --- a valid file --------------------------------------------------------------------------------


def test_valid_file_loads():
    loaded = load_claim_text(VALID, "c.yaml")
    assert [claim.id for claim in loaded.spec.claims] == ["prev-token-head", "prev-token-score"]
    assert loaded.model_of(loaded.spec.claims[0]) == MODEL
    assert loaded.spec.claims[1].expect.comparator == ">="
    assert loaded.spec.conceptual[0].id == "heads-compose"
    assert len(loaded.sha256) == 64


def test_load_claim_file_reads_from_disk(tmp_path: Path):
    path = tmp_path / "ok.yaml"
    path.write_text(VALID, encoding="utf-8")
    loaded = load_claim_file(path)
    assert loaded.path.endswith("ok.yaml")
    assert loaded.source_map.locate(("claims", 1, "select"), key=False).line == 16


def test_a_file_is_parsed_once_per_content_and_its_names_checked_on_every_load(tmp_path: Path):
    path = tmp_path / "ok.yaml"
    path.write_text(edit("model: planted-attn-2l", "model: planted-attn-3l"), encoding="utf-8")
    first = load_claim_file(path, check_names=False)
    assert load_claim_file(path, check_names=False).spec is first.spec  # the same bytes: parsed once
    with pytest.raises(SpecError, match="planted-attn-3l"):  # the cached parse still meets the name checks
        load_claim_file(path)
    path.write_text(VALID, encoding="utf-8")
    changed = load_claim_file(path)
    assert changed.spec is not first.spec and changed.spec.model == MODEL and changed.sha256 != first.sha256


def test_scientific_notation_tolerance_is_a_number():
    loaded = load_claim_text(edit('expect: {equals: ["0.0"]}', "expect: {approx: 1, abs: 1e-6}"), "c.yaml")
    assert loaded.spec.claims[0].expect.abs == 1e-6


# --- unknown and duplicate keys -------------------------------------------------------------------


def test_misspelt_claim_key_is_one_issue_at_the_key():
    issue = only_issue(edit("    statement: Head 0.0 attends", "    statment: Head 0.0 attends"))
    assert at(issue) == (5, 5)
    assert issue.key == "claims[0].statment"
    assert "unknown key 'statment'" in issue.message
    assert "did you mean 'statement'?" in issue.message
    assert "allowed keys: id, statement, source, model, inputs, metric, params, select, expect" in issue.message


@pytest.mark.parametrize(
    ("old", "new", "where", "key", "suggestion", "allowed"),
    [
        ("source: {course:", "sources: {course:", (1, 1), "sources", "source", "source, model, claims, conceptual, pending"),
        ("{ref: ", "{reff: ", (6, 14), "claims[0].source.reff", "ref", "ref, provenance, catalogue_id"),
        ("threshold: 0.4", "treshold: 0.4", (9, 33), "claims[0].params.treshold", "threshold", "pattern, threshold, variant"),
        ("seq_len: 20, batch", "seqlen: 20, batch", (7, 32), "claims[0].inputs.repeated_random.seqlen", "seq_len", "seq_len, batch, seed, prepend_bos"),
        ("        select:", "        selct:", (21, 9), "claims[1].expect.>=.selct", "select", "metric, params, select, inputs, model"),
        ("    reason:", "    reasn:", (25, 5), "conceptual[0].reasn", "reason", "id, statement, reason, source"),
    ],
)
def test_unknown_key_names_its_position_the_allowed_keys_and_the_nearest(old, new, where, key, suggestion, allowed):
    issue = only_issue(edit(old, new))
    assert at(issue) == where
    assert issue.key == key
    assert f"(did you mean {suggestion!r}?)" in issue.message
    assert issue.message.endswith(f"allowed keys: {allowed}")


def test_unknown_key_without_a_near_name_has_no_suggestion():
    issue = only_issue(edit("    metric: attention.detect", "    metric: attention.detect\n    zzzqqq: 1"))
    assert "did you mean" not in issue.message
    assert "unknown key 'zzzqqq'" in issue.message
    assert at(issue) == (9, 5)


def test_unknown_comparator_suggests_the_operator():
    issue = only_issue(edit('expect: {equals: ["0.0"]}', 'expect: {equal: ["0.0"]}'))
    assert "did you mean 'equals'?" in issue.message
    assert issue.message.endswith("allowed keys: >=, <=, >, <, between, approx, abs, rel, equals, contains, subset_of")


def test_missing_key_is_named():
    issues = issues_of(edit("    statement: Head 0.0 attends to the previous token.\n", ""))
    assert [issue.key for issue in issues] == ["claims[0].statement"]
    assert "required key 'statement' is missing" in issues[0].message
    assert at(issues[0]) == (4, 5)


def test_duplicate_key_is_an_error():
    issue = only_issue(edit("    metric: attention.detect\n", "    metric: attention.detect\n    metric: attention.scores\n"))
    assert at(issue) == (9, 5)
    assert "duplicate key 'metric'" in issue.message and "line 8" in issue.message


# --- wrong types -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("old", "new", "key", "words"),
    [
        ("id: prev-token-head", "id: 12", "claims[0].id", "expected a string, got an integer (12) (quote it"),
        ("    statement: Head 0.0 attends to the previous token.", "    statement: no", "claims[0].statement", "got a boolean (false)"),
        ("threshold: 0.4", "threshold: '0.4'", "claims[0].params.threshold", "expected a number, got a string ('0.4')"),
        ("seed: 0", "seed: true", "claims[0].inputs.repeated_random.seed", "expected an integer, got a boolean (true)"),
        ("seed: 0", "seed: 1.5", "claims[0].inputs.repeated_random.seed", "expected an integer, got a number (1.5)"),
        ('expect: {equals: ["0.0"]}', "expect: {equals: [1]}", "claims[0].expect.equals[0]", "expected a string, got an integer (1)"),
        ('expect: {equals: ["0.0"]}', "expect: {equals: '0.0'}", "claims[0].expect.equals", "expected a list or a number, got a string"),
        ('expect: {equals: ["0.0"]}', "expect: {'>=': high}", "claims[0].expect.>=", "expected a number or a Reference mapping, got a string ('high')"),
        ('expect: {equals: ["0.0"]}', "expect: {'<': [1]}", "claims[0].expect.<", "expected a number or a Reference mapping, got a list"),
    ],
)
def test_wrong_types_say_what_was_expected_and_what_came(old, new, key, words):
    issue = only_issue(edit(old, new))
    assert issue.key == key
    assert words in issue.message
    assert "Input should be" not in issue.message


def test_claims_must_be_a_list_of_mappings():
    issue = only_issue("source: {course: A}\nclaims: 3\n")
    assert issue.key == "claims" and at(issue) == (2, 9)
    assert issue.message == "expected a list, got an integer (3)"
    issue = only_issue("source: {course: A}\nclaims: [3]\n")
    assert issue.key == "claims[0]" and "expected a Claim mapping, got an integer (3)" in issue.message


@pytest.mark.parametrize(("text", "words"), [("- a\n- b\n", "not a list"), ("42\n", "not an integer"), ("just text\n", "not a string")])
def test_root_must_be_a_mapping(text, words):
    issue = only_issue(text)
    assert at(issue) == (1, 1) and words in issue.message


def test_reference_with_a_problem_inside_reports_only_that_problem():
    issue = only_issue(edit("        metric: attention.scores\n", ""))
    assert issue.key == "claims[1].expect.>=.metric"
    assert "required key 'metric' is missing" in issue.message


def test_reference_with_an_unknown_key_reports_only_that_key():
    issue = only_issue(edit("        select: \"0.0\"\n", "        selekt: \"0.0\"\n"))
    assert issue.key == "claims[1].expect.>=.selekt"


# --- numbers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expect", "key", "words"),
    [
        ("{approx: .nan, abs: 0.1}", "claims[0].expect.approx", "expected a finite number or a Reference mapping, got nan"),
        ("{'>=': .inf}", "claims[0].expect.>=", "got inf"),
        ("{'>=': 1e400}", "claims[0].expect.>=", "got inf"),
        (f"{{'<=': {10**400}}}", "claims[0].expect.<=", "got an integer too large for a number (about 10^400)"),
        (f"{{between: [0, {10**400}]}}", "claims[0].expect.between[1]", "an integer too large for a number"),
        ("{between: [0, .nan]}", "claims[0].expect.between[1]", "expected a finite number, got nan"),
        ("{approx: 1, abs: -.inf}", "claims[0].expect.abs", "finite"),
        ("{equals: .nan}", "claims[0].expect.equals", "expected a list or a finite number, got nan"),
    ],
)
def test_non_finite_and_huge_numbers_are_errors(expect, key, words):
    issue = only_issue(edit('expect: {equals: ["0.0"]}', f"expect: {expect}"))
    assert issue.key == key
    assert words in issue.message


def test_nan_metric_parameter_is_not_reported_as_a_bound():
    issue = only_issue(edit("threshold: 0.4", "threshold: .nan"))
    assert issue.key == "claims[0].params.threshold"
    assert issue.message == "expected a finite number, got nan"


def test_huge_integer_metric_parameter():
    issue = only_issue(edit("threshold: 0.4", f"threshold: {10**400}"))
    assert "too large for a number" in issue.message


def test_date_suggests_quoting():
    issue = only_issue(edit("    statement: Head 0.0 attends to the previous token.", "    statement: 2024-01-01"))
    assert at(issue) == (5, 16)
    assert issue.key == "claims[0].statement"
    assert "quote it" in issue.message


def test_non_string_key_suggests_quoting():
    issue = only_issue(edit("params: {pattern: previous,", "params: {1: 2, pattern: previous,"))
    assert at(issue) == (9, 14)
    assert "quote it: '1'" in issue.message


# --- comparators ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expect", "words"),
    [
        ("{}", "give exactly one comparator"),
        ("{equals: ['0.0'], contains: ['0.0']}", "got 2: ['equals', 'contains']"),
        ("{approx: 0.5}", "'approx' needs a tolerance"),
        ("{'>=': 0.5, abs: 0.1}", "tolerances of 'approx' only"),
        ("{between: [2, 1]}", "low <= high"),
    ],
)
def test_comparator_rules(expect, words):
    issue = only_issue(edit('expect: {equals: ["0.0"]}', f"expect: {expect}"))
    assert issue.key == "claims[0].expect"
    assert at(issue) == (10, 13)
    assert words in issue.message


def test_file_needs_claims():
    issue = only_issue("source: {course: A}\nclaims: []\n")
    assert "needs at least one entry" in issue.message


# --- names: metrics, models, inputs, heads ------------------------------------------------------------


def test_unknown_metric():
    issue = only_issue(edit("metric: attention.detect", "metric: attention.detekt"))
    assert at(issue) == (8, 13)
    assert issue.key == "claims[0].metric"
    assert "unknown metric 'attention.detekt' (did you mean 'attention.detect'?)" in issue.message


def test_unknown_metric_in_a_reference():
    issue = only_issue(edit("        metric: attention.scores", "        metric: attention.scorez"))
    assert issue.key == "claims[1].expect.>=.metric"
    assert at(issue) == (19, 17)


@pytest.mark.parametrize(
    ("old", "new", "key", "where"),
    [
        ("model: planted-attn-2l", "model: planted-attn-3l", "model", (2, 8)),
        ("    metric: attention.detect", "    model: planted-atn-2l\n    metric: attention.detect", "claims[0].model", (8, 12)),
        ("        select: \"0.0\"", "        select: \"0.0\"\n        model: plantd-attn-2l", "claims[1].expect.>=.model", (22, 16)),
    ],
)
def test_unknown_model(old, new, key, where):
    issues = issues_of(edit(old, new))
    issue = next(i for i in issues if i.key == key)
    assert at(issue) == where
    assert "did you mean 'planted-attn-2l'?" in issue.message and "models: planted-attn-2l" in issue.message


def test_no_model_anywhere():
    issues = issues_of(edit("model: planted-attn-2l\n", ""))
    assert [i.key for i in issues] == ["claims[0].model", "claims[1].model"]
    assert "no model" in issues[0].message


def test_unknown_input_kind():
    issue = only_issue(edit("{repeated_random: {seq_len: 20, batch", "{repeted_random: {seq_len: 20, batch"))
    assert at(issue) == (7, 14)
    assert issue.key == "claims[0].inputs.repeted_random"
    from fixtures.inputs import INPUT_KINDS

    assert "did you mean 'repeated_random'?" in issue.message and f"kinds: {', '.join(sorted(INPUT_KINDS))}" in issue.message
    assert "ioi_prompts" in issue.message  # the listing is the registry's, not a copy


def test_two_input_kinds():
    issue = only_issue(edit("inputs: {repeated_random: {seq_len: 20, batch: 4, seed: 0}}", "inputs: {repeated_random: {}, text: {name: arena_superhuman}}"))
    assert issue.key == "claims[0].inputs" and "give exactly one input kind" in issue.message


def test_input_parameter_rule():
    issue = only_issue(edit("inputs: {repeated_random: {seq_len: 20, batch: 4, seed: 0}}", "inputs: {tokens: {ids: [[1, 2], [3]]}}"))
    assert issue.key == "claims[0].inputs.tokens" and "same length" in issue.message


def test_metric_that_runs_the_model_needs_inputs():
    issue = only_issue(edit("    inputs: {repeated_random: {seq_len: 20, batch: 4, seed: 0}}\n", ""))
    assert issue.key == "claims[0].inputs" and "give 'inputs'" in issue.message


def test_metric_parameter_literal():
    issue = only_issue(edit("pattern: previous, threshold", "pattern: prev, threshold"))
    assert issue.key == "claims[0].params.pattern" and "'previous'" in issue.message


OUTSIDE = "is outside the model (2 layers x 4 heads: 0.0 to 1.3)"


@pytest.mark.parametrize(("select", "problem"), [
    ("1.3", None), ("0.0", None),
    ("2.0", f"head 2.0 {OUTSIDE}"), ("0.4", f"head 0.4 {OUTSIDE}"),
    ("scores", "'scores' is not a head 'LAYER.HEAD'"),
    ("1.3/top1", "the metric returns a table keyed by a head 'LAYER.HEAD': select one key (e.g. select: '1.4')"),
])
def test_select_follows_the_metric_s_declared_shape(select, problem):
    """``attention.scores`` declares a table keyed by heads: one step, a head inside the model."""
    text = edit('    select: "0.0"\n', f'    select: "{select}"\n')
    if problem is None:
        load_claim_text(text, "c.yaml")
        return
    issue = only_issue(text)
    assert issue.key == "claims[1].select" and at(issue) == (16, 13)
    assert issue.message.startswith(f"select {select!r}: {problem}")


@pytest.mark.parametrize(("metric", "params", "select", "problem"), [
    ("composition.scores", "{kind: q}", "0.0->1.3", None),
    ("composition.scores", "{kind: q}", "0.7->1.3", f"head 0.7 {OUTSIDE}"),
    ("composition.scores", "{kind: q}", "0.0-1.3", "'0.0-1.3' is not a head pair"),
    ("patching.resid_pre", "{}", "1:5", None),
    ("patching.resid_pre", "{}", "2:5", "layer 2 is outside the model (layers 0 to 1)"),
    ("qk.attention_decomposition", "{head: '1.0'}", "embed|0.2", None),
    ("qk.attention_decomposition", "{head: '1.0'}", "embed|0.9", f"head 0.9 {OUTSIDE}"),
    ("qk.attention_decomposition", "{head: '1.0'}", "token|0.2", "'token|0.2' is not a component pair"),
    ("low_rank.rank_curve", "{ranks: [2], heads: [['1.0']]}", "rank=2/top1", None),
    ("low_rank.rank_curve", "{ranks: [2], heads: [['1.0']]}", "0.0+1.9/top1", f"curve label head 1.9 {OUTSIDE}"),
    ("low_rank.rank_curve", "{ranks: [2], heads: [['1.0']]}", "rank=2/top3", "'top3' is not a field of the curve's points"),
    ("copying.ov_rank", "{heads: ['1.0']}", "top1", "the metric returns one number: remove 'select'"),
    ("attention.detect", "{pattern: induction}", "1.0", "the metric returns a set of a head 'LAYER.HEAD': remove 'select'"),
])
def test_every_select_syntax_is_parsed_and_range_checked(metric, params, select, problem):
    """Heads and layers are range-checked in every key syntax (``->``, ``|``, ``:``, ``+``), and a
    path that does not fit the declared shape is refused at load time."""
    inputs = "    inputs: {ioi_prompts: {}}\n" if metric in ("patching.resid_pre", "qk.attention_decomposition", "attention.detect") else ""
    text = (f"source: {{course: A}}\nmodel: {MODEL}\nclaims:\n  - id: c\n    statement: s\n    metric: {metric}\n"
            f"    params: {params}\n{inputs}    select: \"{select}\"\n    expect: {{'>=': 0}}\n")
    if problem is None:
        load_claim_text(text, "c.yaml")
        return
    issue = only_issue(text)
    assert issue.key == "claims[0].select"
    assert problem in issue.message, issue.message


@pytest.fixture
def head_metric():
    """A metric with head parameters, registered for one test."""

    @metric_registry.metric("test.heads")
    def heads(
        ctx: MetricContext, *, head: HeadName = "0.0", among: list[HeadName] | None = None,
        groups: list[list[HeadName]] = [], sets: dict[HeadName, list[HeadName]] = {},
    ) -> Measurement:
        """Test metric."""
        raise AssertionError("not run")

    metric_registry.load_builtin_metrics()
    yield "test.heads"
    del metric_registry._METRICS["test.heads"]


def claim_with(params: str, model: str = MODEL) -> str:
    return f"source: {{course: A}}\nmodel: {model}\nclaims:\n  - id: h\n    statement: s\n    metric: test.heads\n    params: {params}\n    expect: {{'>=': 0}}\n"


def test_head_parameters_inside_the_model(head_metric):
    load_claim_text(claim_with("{head: '1.3', among: ['0.0', '1.1']}"), "c.yaml")


def test_head_parameter_outside_the_model(head_metric):
    issues = issues_of(claim_with("{head: '2.0', among: ['0.0', '1.9']}"))
    assert [(i.key, at(i)) for i in issues] == [("claims[0].params.head", (7, 20)), ("claims[0].params.among[1]", (7, 42))]
    assert "head 2.0 is outside" in issues[0].message and "head 1.9 is outside" in issues[1].message


def test_heads_in_head_groups_are_range_checked(head_metric):
    issues = issues_of(claim_with("{groups: [['0.0'], ['1.3', '4.0'], ['0.7']]}"))
    assert [(i.key, at(i)) for i in issues] == [("claims[0].params.groups[1][1]", (7, 40)), ("claims[0].params.groups[2][0]", (7, 49))]
    assert "head 4.0 is outside" in issues[0].message and "head 0.7 is outside" in issues[1].message


def test_heads_in_mappings_are_range_checked_keys_and_values(head_metric):
    issues = issues_of(claim_with("{sets: {'1.3': ['0.0', '3.1'], '2.2': []}}"))
    assert [i.key for i in issues] == ["claims[0].params.sets.1.3[1]", "claims[0].params.sets.2.2"]
    assert "head 3.1 is outside" in issues[0].message and "head 2.2 is outside" in issues[1].message


def test_head_parameter_malformed(head_metric):
    issue = only_issue(claim_with("{head: 'L1H2'}"))
    assert issue.key == "claims[0].params.head" and "pattern" in issue.message


def test_head_parameters_with_an_unknown_model_report_the_model(head_metric):
    issue = only_issue(claim_with("{head: '9.9'}", model="nope"))
    assert issue.key == "model" and "unknown model 'nope'" in issue.message


def test_check_names_false_skips_names():
    loaded = load_claim_text(edit("metric: attention.detect", "metric: no.such"), "c.yaml", check_names=False)
    assert loaded.spec.claims[0].metric == "no.such"


# --- claim ids ------------------------------------------------------------------------------------------


def test_duplicate_claim_id_in_one_file():
    issue = only_issue(edit("id: prev-token-score", "id: prev-token-head"))
    assert issue.key == "claims[1].id"
    assert at(issue) == (11, 9)
    assert "duplicate claim id 'prev-token-head' (first at line 4)" in issue.message


def test_conceptual_id_clashing_with_a_claim():
    issue = only_issue(edit("id: heads-compose", "id: prev-token-head"))
    assert issue.key == "conceptual[0].id"


def test_invalid_claim_id():
    issue = only_issue(edit("id: prev-token-head", "id: 'prev token head'"))
    assert issue.key == "claims[0].id" and at(issue) == (4, 9)


def test_duplicate_claim_id_across_files(tmp_path: Path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(VALID, encoding="utf-8")
    second.write_text(edit("id: prev-token-score", "id: other").replace("id: heads-compose", "id: heads-compose-2"), encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load_claim_files([first, second])
    (issue,) = caught.value.issues
    assert issue.location.path.endswith("b.yaml") and at(issue) == (4, 9)
    assert issue.key == "claims[0].id"
    assert "'prev-token-head' is already used in" in issue.message and "a.yaml:4:9" in issue.message


def test_duplicate_conceptual_id_across_files(tmp_path: Path):
    first, second = tmp_path / "a.yaml", tmp_path / "b.yaml"
    first.write_text(VALID, encoding="utf-8")
    second.write_text("source: {course: A}\nconceptual:\n  - {id: heads-compose, statement: s, reason: r}\n", encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load_claim_files([first, second])
    (issue,) = caught.value.issues
    assert issue.key == "conceptual[0].id"


def test_several_files_report_every_problem(tmp_path: Path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(VALID, encoding="utf-8")
    bad.write_text("source: {course: A}\nclaims: [{id: x, statment: s}]\n", encoding="utf-8")
    with pytest.raises(SpecError) as caught:
        load_claim_files([good, bad])
    assert {issue.location.path.rsplit("/", 1)[-1] for issue in caught.value.issues} == {"bad.yaml"}
    assert len(caught.value.issues) >= 3


def test_file_that_is_not_utf8(tmp_path: Path):
    path = tmp_path / "latin.yaml"
    path.write_bytes(VALID.replace("ARENA", "AR\xc9NA").encode("latin-1"))
    with pytest.raises(SpecError) as caught:
        load_claim_file(path)
    assert "not UTF-8" in str(caught.value)


def test_error_message_is_one_line_per_issue():
    with pytest.raises(SpecError) as caught:
        load_claim_text(edit("metric: attention.detect", "metric: x").replace("threshold", "treshold"), "c.yaml")
    lines = str(caught.value).splitlines()
    assert len(lines) == len(caught.value.issues) >= 1
    assert all(line.startswith("c.yaml:") for line in lines)


def test_pending_entries_load_and_share_the_id_space() -> None:
    """``pending:`` (measurable, not yet encoded) sits beside ``conceptual:``; ids stay unique across all three."""
    from harness.core.errors import SpecError
    from harness.loader import load_claim_text

    text = (
        "source: {course: ARENA}\n"
        "pending:\n  - {id: a.b, statement: s, needs: a metric}\n"
        "conceptual:\n  - {id: c.d, statement: s, reason: r}\n"
    )
    loaded = load_claim_text(text, "x.yaml")
    assert [p.id for p in loaded.spec.pending] == ["a.b"] and loaded.spec.pending[0].needs == "a metric"
    with pytest.raises(SpecError, match="a.b"):
        load_claim_text(text.replace("c.d", "a.b"), "x.yaml")
    with pytest.raises(SpecError, match="needs"):
        load_claim_text("source: {course: ARENA}\npending:\n  - {id: a.b, statement: s}\n", "x.yaml")


@pytest.mark.parametrize(("select", "problem"), [
    ("0.0->1.3", None), ("0.0->1.7", "head 1.7"), ("embed|2.0", "head 2.0"), ("5:0", "layer 5"), ("0.0+0.9", "head 0.9"),
    ("anything/else", None),
])
def test_a_metric_without_a_declared_shape_still_range_checks_heads_in_every_syntax(head_metric, select, problem):
    text = claim_with("{head: '0.0'}").replace("    expect:", f"    select: \"{select}\"\n    expect:")
    if problem is None:
        load_claim_text(text, "c.yaml")
        return
    issue = only_issue(text)
    assert issue.key == "claims[0].select" and problem in issue.message
