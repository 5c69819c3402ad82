"""The HTML report: one self-contained file (inline CSS and SVG, no scripts, no network).

Same content as the Markdown report, plus plots (:mod:`reports.plots`). Rendered with jinja2
(autoescaping on: claim text can never inject markup).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reports.markdown import anchor, format_measured
from reports.plots import plots_for

TEMPLATES = Path(__file__).parent / "templates"


def render_html(record: dict[str, Any]) -> str:
    """The whole HTML report of a results record."""
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), autoescape=True, undefined=jinja2.StrictUndefined,
    )
    claims = [_view(entry, record) for entry in record["claims"]]
    summary = record["summary"]
    counts = [(v, summary[v]) for v in ("supported", "refuted", "inconclusive", "error", "skipped") if summary.get(v)]
    return environment.get_template("report.html.j2").render(
        claims=claims, summary=summary, counts=counts, provenance=record["provenance"], created=record["created"],
    )


def _view(entry: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    params = ", ".join(f"{k}={v}" for k, v in (entry.get("params") or {}).items())
    return {
        **entry,
        "anchor": anchor(entry["id"]),
        "measured": format_measured(entry),
        "params": f"({params})" if params else "",
        "model_info": record.get("models", {}).get(entry["model"]),
        "plots": plots_for(entry),
    }
