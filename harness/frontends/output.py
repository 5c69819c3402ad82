"""Writing a run's outputs: ``results.json`` (the record), ``report.md`` and ``report.html``."""

from __future__ import annotations

from pathlib import Path

from harness.loader import load_claim_file
from harness.measurement_cache import MeasurementCache, suite_source_hash
from harness.record import build_record, to_json, write_atomic
from harness.runner import ClaimResult
from harness.session import Session
from reports.html import render_html
from reports.markdown import render_report
from reports.plot_cache import PlotCache


def model_summaries(session: Session) -> dict[str, dict]:
    """Identity and load time of each model the run touched (or why it was unavailable); a model
    whose measurements all came from the measurement cache was not loaded (``loaded: false``, its
    identity the cache's)."""
    summaries: dict[str, dict] = {}
    for name, loaded in session.models.items():
        entry = {"load_seconds": round(session.load_seconds.get(name, 0.0), 3)}
        if isinstance(loaded, Exception):
            entry["unavailable"] = str(loaded)
        else:
            entry.update(loaded.identity.as_dict())
        summaries[name] = entry
    for name, identity in session.identities.items():
        if name not in summaries:
            summaries[name] = {"load_seconds": 0.0, **identity.as_dict(), "loaded": False}
    return summaries


OUTPUT_FILES = ("results.json", "report.md", "report.html")
"""The files a run writes into its output folder."""


def spec_inventory(spec_files: dict[str, str]) -> dict:
    """What the spec files hold besides the measured entries: how many ``conceptual`` (cannot be
    measured) and ``pending`` (not yet encoded) entries, and ``claim_ids``, each file's claim ids
    (so ``claims bless --update`` can tell a claim deleted from a file from one a filtered run
    left out)."""
    inventory: dict = {"conceptual": 0, "pending": 0, "claim_ids": {}}
    for path in spec_files:
        spec = load_claim_file(path, check_names=False).spec
        inventory["conceptual"] += len(spec.conceptual)
        inventory["pending"] += len(spec.pending)
        inventory["claim_ids"][path] = [claim.id for claim in spec.claims]
    return inventory


def write_outputs(out: Path, results: list[ClaimResult], spec_files: dict[str, str], session: Session) -> dict:
    """Write ``results.json``, ``report.md`` and ``report.html`` into ``out`` (each atomically); return the record."""
    cache = session.cache.summary() if session.cache is not None else None
    record = build_record(results, spec_files, model_summaries(session), spec_inventory(spec_files), cache)
    write_record(out, record, plot_cache(session.cache))
    return record


def plot_cache(cache: MeasurementCache | None) -> PlotCache | None:
    """The report's drawn plots, kept beside the measurement cache (none when it is off)."""
    return PlotCache(cache.folder / "plots", suite_source_hash()) if cache is not None else None


def write_record(out: Path, record: dict, plots: PlotCache | None = None) -> None:
    """Write a built record and its two reports into ``out`` (each atomically); the HTML report's
    plots are read from ``plots`` where it holds them."""
    write_atomic(out / "results.json", to_json(record))
    write_atomic(out / "report.md", render_report(record))
    write_atomic(out / "report.html", render_html(record, plots))
