"""Markdown reports: a summary table and one section per claim, from a results record."""

from __future__ import annotations

import re
from typing import Any

from reports.curves import curve_points, stopped_early

VERDICT_MARK = {"supported": "✅", "refuted": "❌", "inconclusive": "❔", "error": "💥", "skipped": "⏭️"}


def anchor(claim_id: str) -> str:
    """The stable anchor of a claim's section (GitHub's slug of the heading ``claim-<id>``)."""
    return "claim-" + re.sub(r"[^a-z0-9_-]", "", claim_id.lower().replace(" ", "-"))


def format_measured(entry: dict[str, Any]) -> str:
    """``0.6190 ± 0.0123``, a head set, or a short table."""
    value, uncertainty = entry.get("value"), entry.get("uncertainty")
    if isinstance(value, bool) or value is None:
        return "—" if value is None else str(value)
    if isinstance(value, (int, float)):
        text = f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"
        return text + (f" ± {uncertainty:.4f}" if isinstance(uncertainty, (int, float)) else "")
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "{" + ", ".join(value) + "}" if value else "∅"
    if isinstance(value, dict):
        items = list(value.items())[:6]
        return ", ".join(f"{k}: {v:.4f}" if isinstance(v, float) else f"{k}: {v}" for k, v in items) + (" …" if len(value) > 6 else "")
    return f"curve ({len(value)} points)" if isinstance(value, list) else str(value)


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def summary_table(record: dict[str, Any]) -> str:
    rows = ["| claim | model | measured | expectation | verdict | expected |", "|---|---|---|---|---|---|"]
    for entry in record["claims"]:
        mark = VERDICT_MARK.get(entry["verdict"], "")
        flag = "" if entry["matched"] or entry["verdict"] == "skipped" else " **(mismatch)**"
        rows.append(
            f"| [{_cell(entry['id'])}](#{anchor(entry['id'])}) | {_cell(entry['model'])} | {_cell(format_measured(entry))} "
            f"| {_cell(entry['expectation'])} | {mark} {entry['verdict']}{flag} | {entry['expected_verdict']} |"
        )
    return "\n".join(rows)


def claim_section(entry: dict[str, Any], record: dict[str, Any]) -> str:
    """One claim's section, sized to paste into an issue."""
    source = entry.get("source") or {}
    lines = [
        f"### claim-{entry['id']}",
        "",
        f"> {entry['statement']}",
        "",
        f"- **verdict**: {VERDICT_MARK.get(entry['verdict'], '')} {entry['verdict']} (expected: {entry['expected_verdict']})",
        f"- **measured**: {format_measured(entry)}",
        f"- **expectation**: {entry['expectation']}",
    ]
    if entry.get("reference"):
        lines.append(f"- **reference measurement**: {format_measured(entry['reference'])}")
    if entry.get("reason"):
        lines.append(f"- **reason**: {entry['reason']}")
    params = ", ".join(f"{k}={v}" for k, v in (entry.get("params") or {}).items())
    lines.append(f"- **metric**: `{entry['metric']}({params})`" + (f" select `{entry['select']}`" if entry.get("select") else ""))
    if entry.get("inputs"):
        lines.append(f"- **inputs**: `{entry['inputs']}`")
    if source:
        lines.append(f"- **source**: {source.get('ref')} ({source.get('provenance')})")
    model = record.get("models", {}).get(entry["model"], {})
    if model:
        sha = model.get("weights_sha256") or "—"
        lines.append(f"- **model**: {entry['model']} ({model.get('source', '?')}), weights sha256 `{sha[:16]}`, processing {model.get('processing', {})}")
    provenance = record.get("provenance", {})
    packages = provenance.get("packages", {})
    lines.append(
        f"- **run**: commit `{(provenance.get('git_commit') or '?')[:12]}`, torch {packages.get('torch')}, "
        f"transformer-lens {packages.get('transformer-lens')}, {provenance.get('device')}, {provenance.get('dtype')}"
    )
    if entry.get("notes"):
        lines.append(f"- **notes**: {entry['notes']}")
    lines += curve_table(entry)
    lines += ["", "Reproduce:", "", "```", entry["rerun"], "```"]
    return "\n".join(lines)


def curve_table(entry: dict[str, Any]) -> list[str]:
    """The curve a claim measured or selected from, as a Markdown table (no lines when there is none).

    A trained point whose fit stopped on its budget before converging is marked a lower bound.
    """
    points = curve_points(entry)
    if points is None:
        return []
    rows = ["", "| point | rank | top-1 | top-5 | |", "|---|---:|---:|---:|---|"]
    for point in points:
        mark = "lower bound (stopped on its budget)" if stopped_early(entry, point) else ""
        rows.append(f"| {point.get('label', point['rank'])} | {point.get('rank')} | {_percent(point.get('top1'))} | {_percent(point.get('top5'))} | {mark} |")
    return rows


def _percent(value: Any) -> str:
    """``0.9995 -> 99.95%``; below 0.01% two significant digits (``2/49152 -> 0.0041%``)."""
    if not isinstance(value, (int, float)):
        return "—"
    return f"{100 * value:.2f}%" if value == 0 or abs(value) >= 1e-4 else f"{100 * value:.2g}%"


def unmeasured_line(summary: dict[str, Any]) -> list[str]:
    """The count of course rows the spec files hold but do not measure (none: no line)."""
    conceptual, pending = summary.get("conceptual", 0), summary.get("pending", 0)
    if not conceptual and not pending:
        return []
    return ["", f"Not measured: {conceptual} conceptual (cannot be measured against weights), {pending} pending (measurable, not yet encoded)."]


def render_report(record: dict[str, Any]) -> str:
    """The whole Markdown report."""
    summary = record["summary"]
    counts = ", ".join(f"{summary[v]} {v}" for v in ("supported", "refuted", "inconclusive", "error", "skipped") if summary.get(v))
    head = [
        "# interp-claims report",
        "",
        f"{len(record['claims'])} claims: {counts}. {summary['matched']} as expected, {summary['mismatched']} not as expected.",
        *unmeasured_line(summary),
        "",
        summary_table(record),
        "",
        "## Claims",
        "",
    ]
    sections = [claim_section(entry, record) for entry in record["claims"]]
    return "\n".join(head) + "\n\n".join(sections) + "\n"
