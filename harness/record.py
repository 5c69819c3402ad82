"""The JSON record of a run: one entry per claim, plus the run's provenance.

Schema (``schema_version`` 1; documented in ``docs/record.md``)::

    {"schema_version": 1, "tool": "interp-claims", "created": ISO-8601,
     "provenance": {git_commit, git_dirty, python, packages{torch, transformer_lens, numpy, ...},
                    platform, device, dtype, torch_threads, spec_files{path: sha256},
                    spec_claim_ids{path: [claim id, ...]},
                    measurement_cache{enabled, dir, hits, misses, stored, ignored, not_storable}},
     "models": {name: {identity..., load_seconds}},
     "summary": {verdict: count, "matched": n, "mismatched": n, "skipped": n,
                 "conceptual": n, "pending": n},   # entries of the spec files that are not measured
     "claims": [{id, file, statement, source, model, metric, params, inputs, select, value,
                 uncertainty, bound, unit, details, expect, expectation, baseline_tolerance,
                 reference{value, uncertainty, bound}, verdict, expected_verdict, matched,
                 reason, duration_s, cached, notes, rerun}]}

``bound``: ``"lower"`` / ``"upper"`` when the value only bounds the quantity (an optimiser's best
figure is a lower bound on what is achievable), else ``null``.

Files are written atomically (temporary file in the same folder, fsync, ``os.replace``).
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterable

from harness.core.atomic_write import write_atomic  # noqa: F401  (re-exported: callers import it from here)
from harness.core.record_schema import SCHEMA_VERSION
from harness.core.versions import installed_version
from harness.metric_signatures import metric_declaration
from harness.runner import ClaimResult
from harness.verdicts import Verdict

PACKAGES = ("interp-claims", "torch", "transformer-lens", "numpy", "transformers", "pydantic", "pyyaml", "pytest")


def to_json(data: Any) -> str:
    """JSON text; NaN and infinity become strings so the file stays valid JSON."""
    return json.dumps(_finite(data), indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def _finite(data: Any) -> Any:
    if isinstance(data, float) and not math.isfinite(data):
        return str(data)
    if isinstance(data, dict):
        return {str(k): _finite(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_finite(v) for v in data]
    if hasattr(data, "item") and callable(data.item):  # numpy / torch scalars
        return _finite(data.item())
    return data


def provenance(spec_files: dict[str, str]) -> dict[str, Any]:
    """Where and with what this run measured: git, versions, device, dtype, threads, spec hashes.

    ``device`` and ``torch_threads`` are ``None`` when the run imported no torch (every
    measurement came from the measurement cache: nothing was computed on any device)."""
    torch = sys.modules.get("torch")
    commit, dirty = _git_state()
    return {
        "git_commit": commit,
        "git_dirty": dirty,
        "python": sys.version.split()[0],
        "packages": {name: installed_version(name) for name in PACKAGES},
        "platform": platform.platform(),
        "device": None if torch is None else "cuda" if torch.cuda.is_available() else "cpu",
        "dtype": "float32",
        "torch_threads": None if torch is None else torch.get_num_threads(),
        "spec_files": dict(sorted(spec_files.items())),
    }


def declared_details_kinds(metric: str) -> list[str]:
    """The typed details kinds ``metric`` declares (:mod:`harness.core.details`), by name; none
    for a metric that is not registered."""
    try:
        return [kind.__name__ for kind in metric_declaration(metric).details]
    except KeyError:
        return []


def claim_entry(result: ClaimResult) -> dict[str, Any]:
    """One claim's record."""
    claim = result.claim
    measurement = result.measurement
    reference = result.reference
    return {
        "id": claim.id,
        "file": result.file,
        "statement": claim.statement,
        "source": claim.source.model_dump() if claim.source else None,
        "model": result.model,
        "metric": claim.metric,
        "params": claim.params,
        "inputs": claim.inputs,
        "select": claim.select,
        "value": measurement.value if measurement else None,
        "uncertainty": measurement.uncertainty if measurement else None,
        "bound": measurement.bound if measurement else None,
        "unit": measurement.unit if measurement else None,
        "details": measurement.details if measurement else {},
        "details_kinds": declared_details_kinds(claim.metric),
        "expect": claim.expect.model_dump(by_alias=True, exclude_none=True),
        "expectation": claim.expect.describe(),
        "baseline_tolerance": claim.baseline_tolerance.model_dump() if claim.baseline_tolerance else None,
        "reference": None if reference is None else {
            "value": reference.value, "uncertainty": reference.uncertainty, "bound": reference.bound,
        },
        "verdict": result.verdict.value,
        "expected_verdict": claim.expected_verdict,
        "matched": result.passed,
        "reason": result.reason,
        "duration_s": round(result.duration_s, 4),
        "cached": result.cached,
        "notes": claim.notes,
        "rerun": f"pytest '{result.node_id}'",
    }


def build_record(
    results: Iterable[ClaimResult], spec_files: dict[str, str], models: dict[str, Any],
    inventory: dict[str, Any] | None = None, cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole run's record; ``inventory`` counts the
    spec files' ``conceptual`` and ``pending`` entries and lists each file's claim ids (``claim_ids``, recorded as ``provenance.spec_claim_ids``); ``cache`` is the measurement cache's use in this run (``provenance.measurement_cache``)."""
    entries = [claim_entry(result) for result in results]
    return record_from_entries(entries, spec_files, models, inventory, cache)


def record_from_entries(
    entries: list[dict[str, Any]], spec_files: dict[str, str], models: dict[str, Any],
    inventory: dict[str, Any] | None = None, cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The whole run's record from its claim entries (:func:`claim_entry`), e.g. gathered from
    pytest-xdist workers; the summary counts the entries' verdicts."""
    summary: dict[str, int] = {verdict.value: 0 for verdict in Verdict}
    for entry in entries:
        summary[entry["verdict"]] += 1
    summary["matched"] = sum(bool(entry["matched"]) for entry in entries)
    summary["mismatched"] = sum(not entry["matched"] and entry["verdict"] != Verdict.SKIPPED.value for entry in entries)
    summary.update({key: (inventory or {}).get(key, 0) for key in ("conceptual", "pending")})
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "interp-claims",
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "provenance": {**provenance(spec_files), "spec_claim_ids": (inventory or {}).get("claim_ids"),
                       "measurement_cache": cache or {"enabled": False}},
        "models": models,
        "summary": summary,
        "claims": entries,
    }


def _git_state() -> tuple[str | None, bool | None]:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5, check=True).stdout
        return commit, bool(status.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None
