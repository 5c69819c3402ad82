"""The HTML report: one self-contained file (inline CSS and SVG, no scripts, no network).

Same content as the Markdown report, plus plots (:mod:`reports.plots`). Rendered with jinja2
(autoescaping on: claim text can never inject markup). Every optional field of the record is
read here (:mod:`reports.context`, :mod:`reports.values`); the template only lays out the view.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reports.context import model_entry, model_text, params_text, run_text, source_text
from reports.markdown import CACHED_TEXT, VERDICT_MARK, anchors, cached_line, is_mismatch, unmeasured_line
from reports.plot_cache import PlotCache
from reports.plots import draw_plots
from reports.values import format_measured

TEMPLATES = Path(__file__).parent / "templates"


def render_html(record: dict[str, Any], plot_cache: PlotCache | None = None) -> str:
    """The whole HTML report of a results record (plots read from ``plot_cache`` where it has them,
    the others drawn in parallel: :func:`reports.plots.draw_plots`)."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined,
    )
    entries = record["claims"]
    plots = draw_plots(entries, plot_cache)
    claims = [_view(entry, record, slug, svgs) for entry, slug, svgs in zip(entries, anchors([e["id"] for e in entries]), plots)]
    summary = record.get("summary") or {}
    counts = [(v, summary[v]) for v in VERDICT_MARK if summary.get(v)]
    return environment.get_template("report.html.j2").render(
        claims=claims, counts=counts, matched=summary.get("matched", 0), mismatched=summary.get("mismatched", 0),
        run=run_text(record.get("provenance")), created=record.get("created") or "?",
        not_measured=" ".join(unmeasured_line(summary)).strip(),
        cached_note=" ".join(cached_line(record)).strip().replace("`", ""),
    )


def _view(entry: dict[str, Any], record: dict[str, Any], slug: str, plots: list[str]) -> dict[str, Any]:
    """What the template shows of one claim entry (its drawn ``plots`` beside), every field present (``None`` when absent)."""
    reference = entry.get("reference")
    return {
        "id": entry["id"],
        "anchor": slug,
        "statement": entry["statement"],
        "model": entry["model"],
        "model_text": model_text(model_entry(record, entry["model"]), entry.get("reason")),
        "measured": format_measured(entry),
        "reference": format_measured(reference) if isinstance(reference, dict) else None,
        "expectation": entry["expectation"],
        "verdict": entry["verdict"],
        "expected_verdict": entry["expected_verdict"],
        "mismatch": is_mismatch(entry),
        "cached": CACHED_TEXT.replace("`", "") if entry.get("cached") else None,
        "reason": entry.get("reason"),
        "metric": entry["metric"],
        "params": params_text(entry.get("params")),
        "select": entry.get("select"),
        "inputs": entry.get("inputs"),
        "source": source_text(entry.get("source")),
        "notes": entry.get("notes"),
        "rerun": entry["rerun"],
        "plots": plots,
    }
