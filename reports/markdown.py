"""Markdown reports: a summary table and one section per claim, from a results record."""

from __future__ import annotations

import re
from typing import Any

from reports.context import model_entry, model_text, params_text, run_text, source_text
from reports.curves import BOUND_MARK, curve_points, point_bound, stopped_early
from reports.values import as_number, format_measured

VERDICT_MARK = {"supported": "✅", "refuted": "❌", "inconclusive": "❔", "error": "💥", "skipped": "⏭️"}


def anchor(claim_id: str) -> str:
    """The stable anchor of a claim's section (GitHub's slug of the heading ``claim-<id>``)."""
    return "claim-" + re.sub(r"[^a-z0-9_-]", "", claim_id.lower().replace(" ", "-"))


def anchors(claim_ids: list[str]) -> list[str]:
    """The anchors of a report's sections in order: :func:`anchor`, and for ids that slug to the
    same anchor (``1.2.a`` and ``12.a``) ``-1``, ``-2``, ... after the first, as GitHub numbers
    repeated headings."""
    seen: dict[str, int] = {}
    slugs = []
    for claim_id in claim_ids:
        slug = anchor(claim_id)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        slugs.append(slug if count == 0 else f"{slug}-{count}")
    return slugs


def _cell(text: Any) -> str:
    """Text safe inside a table cell (no column breaks, one line)."""
    return _line(text).replace("|", "\\|")


def _line(text: Any) -> str:
    """Text on one line (a statement or reason with newlines must not break a list item)."""
    return " ".join(str(text).splitlines())


def is_mismatch(entry: dict[str, Any]) -> bool:
    """The verdict differs from the expected one (skips are never mismatches)."""
    return not entry.get("matched") and entry.get("verdict") != "skipped"


def summary_table(record: dict[str, Any]) -> str:
    """One row per claim: id (linked to its section), model, measured, expectation, verdict, expected."""
    rows = ["| claim | model | measured | expectation | verdict | expected |", "|---|---|---|---|---|---|"]
    entries = record["claims"]
    for entry, slug in zip(entries, anchors([e["id"] for e in entries])):
        flag = " **(mismatch)**" if is_mismatch(entry) else ""
        rows.append(
            f"| [{_cell(entry['id'])}](#{slug}) | {_cell(entry['model'])} | {_cell(format_measured(entry))}{CACHED_MARK if entry.get('cached') else ''} "
            f"| {_cell(entry['expectation'])} | {_cell(_verdict(entry['verdict']))}{flag} | {_cell(entry['expected_verdict'])} |"
        )
    return "\n".join(rows)


def _verdict(verdict: Any) -> str:
    """``✅ supported``: the verdict with its mark."""
    return f"{VERDICT_MARK.get(verdict, '')} {verdict}".strip()


def claim_section(entry: dict[str, Any], record: dict[str, Any]) -> str:
    """One claim's section, sized to paste into an issue."""
    lines = [
        f"### claim-{_line(entry['id'])}",
        "",
        f"> {_line(entry['statement'])}",
        "",
        f"- **verdict**: {_verdict(entry['verdict'])} (expected: {_line(entry['expected_verdict'])})",
        f"- **measured**: {_line(format_measured(entry))}",
        f"- **expectation**: {_line(entry['expectation'])}",
    ]
    if entry.get("cached"):
        lines.append(f"- **cached**: {CACHED_TEXT}")
    if entry.get("reference"):
        lines.append(f"- **reference measurement**: {_line(format_measured(entry['reference']))}")
    if entry.get("reason"):
        lines.append(f"- **reason**: {_line(entry['reason'])}")
    select = f" select `{_line(entry['select'])}`" if entry.get("select") else ""
    lines.append(f"- **metric**: `{_line(entry['metric'])}{_line(params_text(entry.get('params')))}`{select}")
    if entry.get("inputs"):
        lines.append(f"- **inputs**: `{_line(entry['inputs'])}`")
    if source_text(entry.get("source")):
        lines.append(f"- **source**: {_line(source_text(entry.get('source')))}")
    model = model_text(model_entry(record, entry["model"]), entry.get("reason"))
    lines.append(f"- **model**: {_line(entry['model'])}" + (f" {_line(model)}" if model else ""))
    lines.append(f"- **run**: {_line(run_text(record.get('provenance')))}")
    if entry.get("notes"):
        lines.append(f"- **notes**: {_line(entry['notes'])}")
    lines += curve_table(entry)
    lines += ["", "Reproduce:", "", "```", str(entry["rerun"]), "```"]
    return "\n".join(lines)


def curve_table(entry: dict[str, Any]) -> list[str]:
    """The curve a claim measured or selected from, as a Markdown table (no lines when there is none).

    A point that is a bound is marked so: its own ``bound``, or for a trained fit without one,
    a fit that stopped on its budget before converging (a lower bound).
    """
    points = curve_points(entry)
    if points is None:
        return []
    rows = ["", "| point | rank | top-1 | top-5 | |", "|---|---:|---:|---:|---|"]
    for point in points:
        rows.append(
            f"| {_cell(point.get('label', point['rank']))} | {_cell(point.get('rank'))} | {_percent(point.get('top1'))} "
            f"| {_percent(point.get('top5'))} | {_bound_mark(entry, point)} |"
        )
    return rows


def _bound_mark(entry: dict[str, Any], point: dict[str, Any]) -> str:
    """``lower bound (stopped on its budget)``, ``upper bound``, or nothing for an estimate."""
    bound = point_bound(entry, point)
    if bound is None:
        return ""
    mark = BOUND_MARK.get(bound, f"{bound} bound")
    return _cell(mark + (" (stopped on its budget)" if stopped_early(entry, point) else ""))


def _percent(value: Any) -> str:
    """``0.9995 -> 99.95%``; below 0.01% two significant digits (``2/49152 -> 0.0041%``)."""
    value = as_number(value)
    if value is None:
        return "—"
    return f"{100 * value:.2f}%" if value == 0 or abs(value) >= 1e-4 else f"{100 * value:.2g}%"


CACHED_MARK = " (cached)"
CACHED_TEXT = ("reused from the measurement cache: measured by an earlier run on the same weights, code, "
               "parameters, inputs and library versions (`--no-cache` measures afresh)")


def cached_line(record: dict[str, Any]) -> list[str]:
    """How many claims reused a cached measurement (none: no line)."""
    claims = record.get("claims") or []
    cached = sum(bool(entry.get("cached")) for entry in claims)
    if not cached:
        return []
    return ["", f"{cached} of {len(claims)} claims reused a cached measurement (marked \"cached\"; `--no-cache` measures afresh)."]


def unmeasured_line(summary: dict[str, Any]) -> list[str]:
    """The count of course rows the spec files hold but do not measure (none: no line)."""
    conceptual, pending = summary.get("conceptual", 0), summary.get("pending", 0)
    if not conceptual and not pending:
        return []
    return ["", f"Not measured: {conceptual} conceptual (cannot be measured against weights), {pending} pending (measurable, not yet encoded)."]


def render_report(record: dict[str, Any]) -> str:
    """The whole Markdown report."""
    summary = record.get("summary") or {}
    claims = record["claims"]
    counts = ", ".join(f"{summary[v]} {v}" for v in VERDICT_MARK if summary.get(v))
    head = [
        "# interp-claims report",
        "",
        f"{len(claims)} claims{': ' + counts if counts else ''}. "
        f"{summary.get('matched', 0)} as expected, {summary.get('mismatched', 0)} not as expected.",
        *unmeasured_line(summary),
        *cached_line(record),
        "",
        summary_table(record),
        "",
        "## Claims",
        "",
    ]
    sections = [claim_section(entry, record) for entry in claims]
    return "\n".join(head) + "\n\n".join(sections) + "\n"
