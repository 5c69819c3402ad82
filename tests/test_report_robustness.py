"""The Markdown and HTML reports render every record a run can produce.

Hand-built edge cases (unavailable models, errors, skips, non-finite numbers, empty runs, bounds,
plots whose data has the wrong shape) and property tests over generated records (the schema of
``docs/record.md``). The default profile replays fixed examples; ``HYPOTHESIS_PROFILE=thorough``
draws fresh ones, ten times as many (profiles in ``tests/conftest.py``).
"""

from __future__ import annotations

import math
import os
from html.parser import HTMLParser
from typing import Any

import pytest
from markupsafe import escape
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reports.html import render_html
from reports.markdown import anchors, claim_section, render_report
from reports.plots import plots_for
from reports.values import as_number, format_measured

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tiny models: one thread is 5-10x cheaper in CPU time

VERDICTS = ("supported", "refuted", "inconclusive", "error", "skipped")
SCALE = 10 if os.environ.get("HYPOTHESIS_PROFILE") == "thorough" else 1
VOID_ELEMENTS = {"meta", "br", "hr", "img", "input", "link", "area", "base", "col", "embed", "source", "track", "wbr"}


def budget(examples: int) -> settings:
    """``examples`` examples (times the profile's scale), no deadline (plots take a while);
    replayed or fuzzed as the loaded profile says."""
    return settings(max_examples=examples * SCALE, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- records ----------------------------------------------------------------------------------


def claim(claim_id: str = "demo.claim", **fields: Any) -> dict[str, Any]:
    """A claim entry with every key ``harness.record.claim_entry`` writes; ``fields`` override."""
    entry = {
        "id": claim_id, "file": "claims/demo.yaml", "statement": "Head 1.4 is an induction head.",
        "source": {"ref": "ARENA 1.2", "provenance": "printed", "catalogue_id": None},
        "model": "demo-model", "metric": "attention.scores", "params": {"pattern": "induction"},
        "inputs": {"repeated_random": {"seq_len": 12, "batch": 2, "seed": 0}}, "select": None,
        "value": 0.5, "uncertainty": None, "unit": None, "details": {}, "expect": {">": 0.4},
        "expectation": "> 0.4", "baseline_tolerance": None, "reference": None, "verdict": "supported",
        "expected_verdict": "supported", "matched": True, "reason": None, "duration_s": 0.1,
        "notes": None, "rerun": f"pytest 'claims/demo.yaml::{claim_id}'", "bound": None,
    }
    entry.update(fields)
    return entry


LOADED_MODEL = {
    "name": "demo-model", "source": "file", "weights_sha256": "ab" * 32, "config_sha256": "cd" * 32,
    "processing": {"fold_ln": False}, "dtype": "float32", "device": "cpu", "origin": "/tmp/demo.safetensors",
    "load_seconds": 0.2,
}
PROVENANCE = {
    "git_commit": "0123456789abcdef", "git_dirty": False, "python": "3.11.0",
    "packages": {"torch": "2.13.0", "transformer-lens": "3.9.0"}, "platform": "Linux", "device": "cpu",
    "dtype": "float32", "torch_threads": 2, "spec_files": {"claims/demo.yaml": "00" * 32},
}


def record(claims: list[dict[str, Any]], models: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None) -> dict[str, Any]:
    """A record around ``claims`` with the summary counted as ``harness.record.build_record`` counts it."""
    summary = {verdict: sum(c["verdict"] == verdict for c in claims) for verdict in VERDICTS}
    summary["matched"] = sum(bool(c["matched"]) for c in claims)
    summary["mismatched"] = sum(not c["matched"] and c["verdict"] != "skipped" for c in claims)
    return {
        "schema_version": 1, "tool": "interp-claims", "created": "2025-01-01T00:00:00+00:00",
        "provenance": PROVENANCE if provenance is None else provenance,
        "models": {"demo-model": LOADED_MODEL} if models is None else models,
        "summary": summary, "claims": claims,
    }


# --- checks on the rendered reports -----------------------------------------------------------


class TagBalance(HTMLParser):
    """Records elements that close without opening, or open without closing (void elements aside),
    and the ``id`` attributes of the document."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.open: list[str] = []
        self.problems: list[str] = []
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids += [value for name, value in attrs if name == "id" and value is not None]
        if tag not in VOID_ELEMENTS:
            self.open.append(tag)

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.ids += [value for name, value in attrs if name == "id" and value is not None]

    def handle_endtag(self, tag: str) -> None:
        if not self.open or self.open[-1] != tag:
            self.problems.append(f"</{tag}> closes <{self.open[-1] if self.open else 'nothing'}>")
            return
        self.open.pop()


def parse_html(text: str) -> TagBalance:
    """The parsed report; fails the test when its elements do not nest."""
    parser = TagBalance()
    parser.feed(text)
    parser.close()
    assert parser.problems == [] and parser.open == [], (parser.problems[:5], parser.open[-5:])
    return parser


def render_both(data: dict[str, Any]) -> tuple[str, str]:
    """Markdown and HTML of ``data``, with the checks every report must pass: well-formed HTML, one
    section per claim under its own anchor, no script, no plot that failed."""
    markdown, page = render_report(data), render_html(data)
    parsed = parse_html(page)
    slugs = anchors([entry["id"] for entry in data["claims"]])
    section_ids = [i for i in parsed.ids if i.startswith("claim-")]
    assert section_ids == slugs and len(set(slugs)) == len(slugs)
    assert "<script" not in page and "plot-error" not in page
    assert markdown.count("\n### claim-") == len(data["claims"])
    summary_rows = [line for line in markdown.split("\n## Claims\n")[0].splitlines() if line.startswith("| [")]
    assert len(summary_rows) == len(data["claims"])
    for entry in data["claims"]:
        assert str(escape(format_measured(entry))) in page
    return markdown, page


def section(markdown: str, claim_id: str) -> str:
    """The Markdown section of one claim."""
    return markdown.split(f"### claim-{claim_id}\n", 1)[1].split("\n### claim-", 1)[0]


# --- hand-built edge cases --------------------------------------------------------------------


def test_an_unavailable_model_is_shown_with_its_reason() -> None:
    reason = "model 'demo-model' unavailable: weights not in the local cache"
    skipped = claim(value=None, verdict="skipped", matched=False, reason=reason)
    unrelated = claim("other", model="other-model", value=None, verdict="skipped", matched=False, reason="not here")
    models = {"demo-model": {"load_seconds": 0.0, "unavailable": reason}, "other-model": {"load_seconds": 0.0, "unavailable": "gone"}}
    markdown, page = render_both(record([skipped, unrelated], models))
    assert "- **model**: demo-model (unavailable, see the reason)" in section(markdown, "demo.claim")
    assert f"- **reason**: {reason}" in section(markdown, "demo.claim")
    assert "- **model**: other-model (unavailable: gone)" in section(markdown, "other")
    assert "other-model (unavailable: gone)" in page and str(escape(reason)) in page
    assert "2 claims: 2 skipped. 0 as expected, 0 not as expected." in markdown


def test_a_claim_whose_model_the_run_never_reached_names_only_the_model() -> None:
    entry = claim(value=None, verdict="error", matched=False, reason="KeyError: select '9.9'", source=None, params=None)
    markdown, page = render_both(record([entry], models={}))
    assert "- **model**: demo-model\n" in markdown
    assert "**source**" not in markdown and "<b>source</b>" not in page
    assert "- **metric**: `attention.scores`" in markdown


def test_an_empty_run_renders() -> None:
    markdown, page = render_both(record([]))
    assert "0 claims. 0 as expected, 0 not as expected." in markdown
    assert "0 claims." in page


def test_all_five_verdicts_at_once() -> None:
    entries = [
        claim(f"c-{verdict}", verdict=verdict, matched=verdict == "supported", value=None if verdict in ("error", "skipped") else 0.5,
              reason="why" if verdict in ("error", "skipped") else None)
        for verdict in VERDICTS
    ]
    markdown, page = render_both(record(entries))
    assert "5 claims: 1 supported, 1 refuted, 1 inconclusive, 1 error, 1 skipped. 1 as expected, 3 not as expected." in markdown
    assert markdown.count("**(mismatch)**") == 3
    assert page.count('class="mismatch"') == 3
    for verdict in VERDICTS:
        assert f'<td class="{verdict}">{verdict}</td>' in page


@pytest.mark.parametrize("value, uncertainty, shown", [
    (math.nan, None, "nan"),
    ("nan", "inf", "nan ± inf"),  # as results.json holds them
    (math.inf, math.nan, "inf ± nan"),
    (-math.inf, None, "-inf"),
    (None, None, "—"),
    (123456.0, 0.5, "1.235e+05 ± 0.5000"),
])
def test_non_finite_and_missing_numbers(value: Any, uncertainty: Any, shown: str) -> None:
    entry = claim(value=value, uncertainty=uncertainty, verdict="error", matched=False, reason="metric returned NaN")
    markdown, page = render_both(record([entry]))
    assert f"- **measured**: {shown}\n" in markdown
    assert f"<li><b>measured</b>: {shown}</li>" in page


def test_tables_head_sets_and_curves() -> None:
    table = {f"0.{h}": h / 10 for h in range(8)}
    curve = [{"label": f"rank={r}", "rank": r, "top1": r / 64, "top5": min(1.0, r / 32)} for r in (1, 8, 64)]
    entries = [
        claim("table", value=table, uncertainty={k: 0.01 for k in table}),
        claim("heads", value=["1.4", "1.10"], details={"scores": table, "threshold": 0.4}),
        claim("no-heads", value=[], details={"scores": table, "threshold": 0.4}),
        claim("curve", metric="low_rank.rank_curve", value=curve),
    ]
    markdown, page = render_both(record(entries))
    assert "0.0: 0.0000, 0.1: 0.1000, 0.2: 0.2000, 0.3: 0.3000, 0.4: 0.4000, 0.5: 0.5000 …" in markdown
    assert "- **measured**: {1.4, 1.10}" in markdown and "- **measured**: ∅" in markdown
    assert "- **measured**: curve (3 points)" in markdown
    assert "| rank=64 | 64 | 100.00% | 100.00% |  |" in section(markdown, "curve")
    assert page.count("<svg") == 4  # three per-head tables, one curve


def test_plots_whose_data_has_the_wrong_shape_are_left_out() -> None:
    details = {
        "example_patterns": {"1.4": [[0.1], [0.2, 0.3]], "1.10": "not a matrix", "0.7": [[[0.1]]], "0.1": []},
        "scores": {"embed": 0.1, "1.4": 0.2},
        "per_position": [0.1, None, "x"],
        "threshold": "high",
        "fits": ["not", "a", "table"],
    }
    entries = [
        claim("patterns", details=details),
        claim("composition", metric="composition.scores", value={"0.7->1.4": "strong", "embed->1.4": 0.1, "0.7-1.4": 0.2}),
        claim("bad-ranks", metric="low_rank.rank_curve", value=[{"label": "a", "rank": 0, "top1": 0.5}, {"label": "b", "rank": None}, {"label": "c", "rank": "x"}]),
        claim("table-of-text", value={"1.4": "high", "1.10": None}),
    ]
    for entry in entries:
        assert plots_for(entry) == [], entry["id"]
    render_both(record(entries))


def test_plots_draw_what_is_valid_and_skip_non_finite_numbers() -> None:
    patterns = {"1.4": [[1.0, 0.0], [0.5, 0.5]], "1.10": [[0.1], [0.2, 0.3]]}
    entry = claim(value=["1.4"], details={"example_patterns": patterns, "scores": {"0.0": math.nan, "1.4": "inf", "1.10": 0.9}, "threshold": 0.4})
    svgs = plots_for(entry)
    assert len(svgs) == 2 and "head 1.4" in svgs[1] and "head 1.10" not in svgs[1]
    curve = [{"label": "rank=1", "rank": 1, "top1": math.nan}, {"label": "rank=4", "rank": 4, "top1": 0.5}, {"label": "h", "rank": 2, "kind": "head", "top1": "nan", "heads": ["1.4"]}]
    assert len(plots_for(claim(metric="low_rank.rank_curve", value=curve))) == 1
    selected = claim(metric="composition.scores", select="0.7->1.4", value=0.3, details={"selected_from": {"0.7->1.4": 0.3, "0.7->1.10": 0.1}})
    assert len(plots_for(selected)) == 1


def test_long_ids_and_statements_and_non_ascii_text() -> None:
    long_id = "a" + "b.c-d_e+" * 24
    statement = "Kopf 1.4 ist ein Induktionskopf — 注意力头 ≥ 0.5 😀\nsecond line | with a pipe " + "x" * 3000
    entries = [
        claim(long_id, statement=statement, reason="naïve | reason\nover lines", notes="ünïcödé"),
        claim("1.2.a", value="Ω"), claim("12.a"), claim("12-a", metric="$x^2$ ünïcödé", details={"per_position": [0.1, 0.2]}),
    ]
    markdown, page = render_both(record(entries))
    assert f"> {' '.join(statement.splitlines())}\n" in markdown
    assert "- **reason**: naïve | reason over lines" in markdown
    assert anchors(["1.2.a", "12.a"]) == ["claim-12a", "claim-12a-1"]
    assert "注意力头" in page and "😀" in page


def test_claim_text_cannot_inject_markup() -> None:
    entry = claim("x", statement="<script>alert(1)</script>", reason="<img src=x onerror=alert(1)>", value="<b>", notes="</section>")
    markdown, page = render_both(record([entry], models={"demo-model": {"load_seconds": 0, "unavailable": "<i>no</i>"}}))
    assert "&lt;script&gt;" in page and "&lt;img" in page and "&lt;/section&gt;" in page


def test_provenance_fields_the_run_could_not_determine() -> None:
    provenance = {"git_commit": None, "git_dirty": None, "packages": {"torch": None}, "device": "cpu"}
    markdown, page = render_both(record([claim()], provenance=provenance))
    assert "- **run**: commit ?, torch ?, transformer-lens ?, cpu, ?" in markdown
    assert "Run: commit ?, torch ?, transformer-lens ?, cpu, ?." in page


def test_a_model_entry_with_fields_missing() -> None:
    models = {"demo-model": {"name": "demo-model", "load_seconds": 0.1}}
    markdown, _ = render_both(record([claim()], models))
    assert "- **model**: demo-model (?, weights sha256 —, processing {})" in markdown


# --- bounds -----------------------------------------------------------------------------------


def test_a_lower_bound_is_shown_wherever_the_value_is() -> None:
    entry = claim(value=0.34765, bound="lower", reference={"value": 0.5, "uncertainty": 0.01, "bound": "upper"})
    markdown, page = render_both(record([entry]))
    row = next(line for line in markdown.splitlines() if line.startswith("| [demo.claim]"))
    assert "| ≥ 0.3477 (lower bound) |" in row
    assert "- **measured**: ≥ 0.3477 (lower bound)" in markdown
    assert "- **reference measurement**: ≤ 0.5000 ± 0.0100 (upper bound)" in markdown
    assert "<td>≥ 0.3477 (lower bound)</td>" in page
    assert "<li><b>measured</b>: ≥ 0.3477 (lower bound)</li>" in page
    assert "<li><b>reference measurement</b>: ≤ 0.5000 ± 0.0100 (upper bound)</li>" in page


@pytest.mark.parametrize("fields", [{}, {"bound": None}], ids=["old record without the key", "null"])
def test_no_bound_is_an_estimate(fields: dict[str, Any]) -> None:
    entry = claim(value=0.34765, reference={"value": 0.5, "uncertainty": None})
    entry.pop("bound")
    entry.update(fields)
    markdown, page = render_both(record([entry]))
    assert "- **measured**: 0.3477\n" in markdown and "bound" not in markdown
    assert "- **reference measurement**: 0.5000\n" in markdown and "bound" not in page


def test_a_bound_on_a_head_set_or_table_is_named_without_a_sign() -> None:
    assert format_measured({"value": ["1.4"], "bound": "lower"}) == "{1.4} (lower bound)"
    assert format_measured({"value": {"a": 0.5}, "bound": "upper"}) == "a: 0.5000 (upper bound)"
    assert format_measured({"value": None, "bound": "lower"}) == "—"


def test_curve_points_prefer_their_own_bound_to_the_fits() -> None:
    curve = [
        {"label": "rank=1", "rank": 1, "top1": 0.1, "bound": "lower"},  # its own bound, fits say converged
        {"label": "rank=8", "rank": 8, "top1": 0.5, "bound": None},  # its own: an estimate, fits say stopped
        {"label": "rank=64", "rank": 64, "top1": 0.9},  # no key: the fits decide (stopped)
        {"label": "rank=128", "rank": 128, "top1": 0.95, "bound": "upper"},
    ]
    fits = {"1": {"stopped_by": "converged"}, "8": {"stopped_by": "steps"}, "64": {"stopped_by": "time"}, "128": {"stopped_by": "converged"}}
    entry = claim("curve", metric="low_rank.rank_curve", value=0.9, select="rank=64/top1", details={"selected_from": curve, "fits": fits})
    markdown, page = render_both(record([entry]))
    rows = {line.split(" | ")[0][2:]: line for line in section(markdown, "curve").splitlines() if line.startswith("| rank=")}
    assert rows["rank=1"].endswith("| lower bound |")
    assert rows["rank=8"].endswith("|  |")
    assert rows["rank=64"].endswith("| lower bound (stopped on its budget) |")
    assert rows["rank=128"].endswith("| upper bound |")
    assert page.count("<svg") == 1  # the curve's plot, drawn once (for the page): its legend names both bounds
    svg = page[page.index("<svg"):page.index("</svg>")]
    assert "lower bound" in svg and "upper bound" in svg


# --- property tests ---------------------------------------------------------------------------

numbers = st.one_of(
    st.floats(-1e6, 1e6), st.integers(-10**6, 10**6), st.sampled_from([math.nan, math.inf, -math.inf, "nan", "inf", "-inf"]),
)
texts = st.text(max_size=40)
long_texts = st.one_of(texts, st.text(min_size=200, max_size=2000))
head_names = st.builds("{}.{}".format, st.integers(0, 31), st.integers(0, 31))
head_tables = st.dictionaries(head_names, numbers, min_size=1, max_size=60)
head_sets = st.lists(head_names, max_size=6, unique=True)
bounds = st.sampled_from(["lower", "upper", None])
matrices = st.integers(1, 5).flatmap(lambda n: st.lists(st.lists(st.one_of(st.floats(0, 1), st.just(math.nan)), min_size=n, max_size=n), min_size=1, max_size=5))
junk = st.one_of(st.none(), texts, numbers, st.lists(st.one_of(numbers, texts, st.none()), max_size=4), st.booleans())
curve_points = st.fixed_dictionaries({"label": st.one_of(texts, st.builds("rank={}".format, st.integers(1, 512)))}, optional={
    "rank": st.one_of(st.integers(-2, 4096), numbers, st.none(), texts),
    "top1": st.one_of(numbers, st.none()), "top5": st.one_of(numbers, st.none()),
    "kind": st.sampled_from(["trained", "head", "random"]), "heads": st.one_of(head_sets, junk), "bound": bounds,
})
curves = st.lists(curve_points, min_size=1, max_size=8)
composition_tables = st.dictionaries(st.builds("{}->{}".format, head_names, head_names) | texts, numbers | junk, min_size=1, max_size=12)
values = st.one_of(st.none(), numbers, head_tables, head_sets, curves, composition_tables, junk)
fits = st.dictionaries(st.integers(1, 4096).map(str), st.fixed_dictionaries({}, optional={"stopped_by": st.sampled_from(["converged", "steps", "time"])}) | junk, max_size=6)
details = st.fixed_dictionaries({}, optional={
    "scores": head_tables | junk, "threshold": numbers | junk, "pattern": texts,
    "example_patterns": st.dictionaries(head_names, matrices | junk, max_size=3) | junk,
    "selected_from": curves | head_tables | composition_tables | junk, "fits": fits | junk,
    "per_position": st.lists(numbers, max_size=20) | junk, "curve": st.lists(numbers, max_size=20), "baseline": numbers | junk,
})
claim_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.+\-]{0,199}", fullmatch=True)
model_names = st.sampled_from(["arena-attn-only-2l", "gpt2-small", "planted-attn-2l", "", "ünïcödé-model"])
sources = st.one_of(st.none(), st.fixed_dictionaries({}, optional={"ref": texts | st.none(), "provenance": texts | st.none(), "catalogue_id": texts | st.none()}))
references = st.one_of(st.none(), st.fixed_dictionaries({"value": values, "uncertainty": st.one_of(st.none(), numbers)}, optional={"bound": bounds}))


@st.composite
def claim_entries(draw: st.DrawFn, claim_id: str) -> dict[str, Any]:
    """A claim entry of any shape a run can write (``bound`` sometimes absent, as in old records)."""
    verdict = draw(st.sampled_from(VERDICTS))
    entry = claim(
        claim_id, statement=draw(long_texts), source=draw(sources), model=draw(model_names),
        metric=draw(st.sampled_from(["attention.detect", "composition.scores", "low_rank.rank_curve", "loss.logprob_halves"]) | texts),
        params=draw(st.one_of(st.none(), st.dictionaries(texts, junk, max_size=3))), select=draw(st.one_of(st.none(), head_names, texts)),
        value=draw(values), uncertainty=draw(st.one_of(st.none(), numbers, head_tables)), details=draw(details),
        expectation=draw(texts), reference=draw(references), verdict=verdict, expected_verdict=draw(st.sampled_from(VERDICTS)),
        matched=draw(st.booleans()), reason=draw(st.one_of(st.none(), long_texts)), notes=draw(st.one_of(st.none(), texts)),
        bound=draw(bounds),
    )
    if draw(st.booleans()):
        del entry["bound"]
    return entry


model_entries = st.one_of(
    st.fixed_dictionaries({"load_seconds": st.floats(0, 100), "unavailable": long_texts}),
    st.fixed_dictionaries({"load_seconds": st.floats(0, 100)}, optional={
        "name": texts, "source": st.sampled_from(["planted", "trained", "package", "file", "hub", "transformer_lens"]) | st.none(),
        "weights_sha256": st.text("0123456789abcdef", min_size=64, max_size=64) | st.none(), "config_sha256": st.none(),
        "processing": st.dictionaries(texts, st.booleans(), max_size=3), "dtype": texts, "device": texts,
    }),
)
provenances = st.fixed_dictionaries({}, optional={
    "git_commit": st.none() | st.text("0123456789abcdef", min_size=40, max_size=40), "git_dirty": st.none() | st.booleans(),
    "packages": st.dictionaries(st.sampled_from(["torch", "transformer-lens", "numpy"]), st.none() | texts),
    "device": st.none() | texts, "dtype": st.none() | texts,
})


@st.composite
def records(draw: st.DrawFn, max_claims: int = 6) -> dict[str, Any]:
    """A whole record: unique claim ids, an entry (or none) for each model, provenance with gaps."""
    ids = draw(st.lists(claim_ids, max_size=max_claims, unique=True))
    entries = [draw(claim_entries(claim_id)) for claim_id in ids]
    names = sorted({entry["model"] for entry in entries})
    models = {name: draw(model_entries) for name in names if draw(st.booleans())}
    return record(entries, models, draw(provenances))


@budget(40)
@given(records(max_claims=8))
def test_markdown_renders_every_record(data: dict[str, Any]) -> None:
    markdown = render_report(data)
    assert markdown.count("\n### claim-") == len(data["claims"])
    for entry in data["claims"]:
        text = claim_section(entry, data)
        assert text.startswith(f"### claim-{entry['id']}\n")
        assert f"\n- **measured**: {' '.join(format_measured(entry).splitlines())}\n" in text


@budget(40)
@given(claim_entries("bounded"))
def test_a_bound_adds_its_sign_and_name_to_the_estimate(entry: dict[str, Any]) -> None:
    estimate = format_measured({"value": entry["value"], "uncertainty": entry["uncertainty"]})
    bound = entry.get("bound")
    if bound is None or entry["value"] is None:
        assert format_measured(entry) == estimate
    elif as_number(entry["value"]) is not None:
        assert format_measured(entry) == f"{'≥' if bound == 'lower' else '≤'} {estimate} ({bound} bound)"
    else:
        assert format_measured(entry) == f"{estimate} ({bound} bound)"


@budget(15)
@given(records(max_claims=4))
def test_html_renders_every_record(data: dict[str, Any]) -> None:
    render_both(data)


@budget(15)
@given(claim_entries("plot-me"))
def test_no_plot_fails_on_any_claim_entry(entry: dict[str, Any]) -> None:
    for svg in plots_for(entry):
        assert svg.startswith("<svg") and "plot-error" not in svg
