"""Blessed baselines and the diff of a run against one.

A baseline is written only on request (``claims bless``), from a results record::

    {"format": "interp-claims-baseline", "version": 1, "created": ..., "from_commit": ...,
     "claims": {id: {"file", "model", "metric", "value", "uncertainty", "verdict",
                     "expected_verdict", "tolerance": {"abs", "rel"}}}}

Drift. A value has drifted when it moved further than the claim's tolerance: its declared
``baseline_tolerance``, else the ``abs``/``rel`` of an ``approx`` expectation if it has one, else ``DEFAULT_ABS + DEFAULT_REL * |baseline|``
(float noise across BLAS builds), widened by ``Z_BAND`` combined standard errors for sampled
metrics. Tables drift when any entry drifts; head sets and other values when they differ.

Exit codes of ``claims diff`` (and what ``--claims-baseline`` fails on): 0 no difference;
1 a verdict flipped, a value drifted, a claim is new (not in the baseline) or disappeared;
2 the baseline or results file is unreadable or not of this format.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.measurement import Z_BAND
from harness.core.record_schema import SCHEMA_VERSION
from reports.baseline_checks import baseline_entry_problem, is_number, record_entry_problem

FORMAT = "interp-claims-baseline"
VERSION = 1
DEFAULT_ABS = 1e-6
DEFAULT_REL = 1e-5


class BaselineError(Exception):
    """A baseline or results file that cannot be used (unreadable, corrupt, foreign)."""


@dataclass
class Difference:
    claim_id: str
    kind: str  # "flip" | "drift" | "new" | "missing"
    message: str


@dataclass
class DiffReport:
    differences: list[Difference] = field(default_factory=list)
    compared: int = 0

    @property
    def exit_code(self) -> int:
        return 1 if self.differences else 0

    def of_kind(self, kind: str) -> list[Difference]:
        return [d for d in self.differences if d.kind == kind]

    def render(self) -> str:
        if not self.differences:
            return f"baseline: {self.compared} claims compared, no flips, no drift"
        lines = [f"baseline: {self.compared} claims compared, {len(self.differences)} difference(s):"]
        lines += [f"  {d.kind.upper():<8} {d.claim_id}: {d.message}" for d in self.differences]
        return "\n".join(lines)


def claim_tolerance(entry: dict[str, Any]) -> dict[str, float]:
    """The drift tolerance of one claim entry: its ``baseline_tolerance``, else ``approx``'s, else float noise."""
    declared = entry.get("baseline_tolerance")
    if isinstance(declared, dict):
        return {"abs": _as_float(declared.get("abs", 0.0)), "rel": _as_float(declared.get("rel", 0.0))}
    expect = entry.get("expect") or {}
    if "approx" in expect and ("abs" in expect or "rel" in expect):
        return {"abs": _as_float(expect.get("abs", 0.0)), "rel": _as_float(expect.get("rel", 0.0))}
    return {"abs": DEFAULT_ABS, "rel": DEFAULT_REL}


def _as_float(value: Any) -> Any:
    """``float(value)`` for a number; anything else unchanged, for the baseline check to refuse by name."""
    return float(value) if is_number(value) else value


def make_baseline(record: dict[str, Any]) -> dict[str, Any]:
    """A baseline from a results record (skipped claims are left out: nothing was measured)."""
    _check_record(record)
    claims = {}
    for entry in record["claims"]:
        if entry["verdict"] == "skipped":
            continue
        claims[entry["id"]] = {
            "file": entry.get("file"), "model": entry.get("model"), "metric": entry.get("metric"),
            "value": entry.get("value"), "uncertainty": entry.get("uncertainty"), "verdict": entry["verdict"],
            "expected_verdict": entry.get("expected_verdict"), "tolerance": claim_tolerance(entry),
        }
        _check_baseline_entry("results record", entry["id"], claims[entry["id"]])
    return {
        "format": FORMAT, "version": VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "from_commit": record.get("provenance", {}).get("git_commit"),
        "claims": dict(sorted(claims.items())),
    }


def update_baseline(
    old: dict[str, Any], new: dict[str, Any], claim_ids: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """``new`` merged into ``old`` by claim file, so one claims file can be re-blessed without
    re-running the rest of the suite: every claim ``new`` measured comes from ``new``; a claim of a
    file ``new`` did not measure stays as ``old`` had it.  A claim ``old`` holds from a file ``new``
    measured stays unless that file no longer has it: ``claim_ids`` (the run's
    ``provenance.spec_claim_ids``, each file's claim ids when it ran) tells a claim deleted from the
    file (it leaves the baseline) from one a filtered run (``-k``, ``-m "not slow"``) left out (it
    stays).  A record without ``claim_ids`` (written before they were recorded) replaces each file
    it measured whole."""
    if claim_ids is not None and not (
        isinstance(claim_ids, dict) and all(isinstance(ids, list) for ids in claim_ids.values())
    ):
        raise BaselineError("results: key 'provenance.spec_claim_ids' must map each claim file to a list of claim ids")
    measured_files = {entry.get("file") for entry in new["claims"].values()}

    def kept(claim_id: str, entry: dict[str, Any]) -> bool:
        file = entry.get("file")
        if file not in measured_files:
            return True
        return claim_ids is not None and claim_id in claim_ids.get(file, ())

    carried = {claim_id: entry for claim_id, entry in old["claims"].items() if kept(claim_id, entry)}
    return {**new, "claims": dict(sorted({**carried, **new["claims"]}.items()))}


def load_json(path: str | Path, what: str) -> dict[str, Any]:
    """Read a JSON object, or raise :class:`BaselineError` saying what is wrong with the file."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaselineError(f"{what} {path}: no such file") from None
    except IsADirectoryError:
        raise BaselineError(f"{what} {path}: is a folder, not a file") from None
    except OSError as exc:
        raise BaselineError(f"{what} {path}: cannot be read ({exc.strerror or exc})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BaselineError(f"{what} {path}: not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BaselineError(f"{what} {path}: expected a JSON object")
    return data


def load_baseline(path: str | Path) -> dict[str, Any]:
    """Read a baseline written by ``claims bless``; raise :class:`BaselineError` naming the file, the
    claim and the key of anything unusable (no verdict, a tolerance that is not a finite number >= 0,
    NaN or infinity in a value or uncertainty)."""
    data = load_json(path, "baseline")
    if data.get("format") != FORMAT:
        raise BaselineError(f"baseline {path}: not an interp-claims baseline (format {data.get('format')!r}); write one with 'claims bless'")
    if data.get("version") != VERSION:
        raise BaselineError(f"baseline {path}: version {data.get('version')!r}, this interp-claims reads version {VERSION}")
    if not isinstance(data.get("claims"), dict):
        raise BaselineError(f"baseline {path}: 'claims' must be an object")
    for claim_id, entry in data["claims"].items():
        _check_baseline_entry(f"baseline {path}", claim_id, entry)
    return data


def _check_baseline_entry(where: str, claim_id: str, entry: Any) -> None:
    problem = baseline_entry_problem(claim_id, entry)
    if problem is not None:
        raise BaselineError(f"{where}: {problem}")


def _check_record(record: dict[str, Any]) -> None:
    if record.get("tool") != "interp-claims" or not isinstance(record.get("claims"), list):
        raise BaselineError("not an interp-claims results record (no 'claims' list)")
    if record.get("schema_version") != SCHEMA_VERSION:
        raise BaselineError(
            f"results record schema_version {record.get('schema_version')!r} is not {SCHEMA_VERSION}"
        )
    for index, entry in enumerate(record["claims"]):
        problem = record_entry_problem(index, entry)
        if problem is not None:
            raise BaselineError(f"results record: {problem}")


def compare_entry(claim_id: str, entry: dict[str, Any], base: dict[str, Any]) -> list[Difference]:
    """Flip and drift of one claim against its baseline entry."""
    found: list[Difference] = []
    if entry["verdict"] == "skipped":
        return found
    if entry["verdict"] != base["verdict"]:
        found.append(Difference(claim_id, "flip", f"verdict {base['verdict']} -> {entry['verdict']}"))
    drift = value_drift(entry.get("value"), base.get("value"), entry.get("uncertainty"), base.get("uncertainty"), base.get("tolerance") or {})
    if drift:
        found.append(Difference(claim_id, "drift", drift))
    return found


def value_drift(new: Any, old: Any, new_se: Any, old_se: Any, tolerance: dict[str, float]) -> str | None:
    """Why ``new`` is not within tolerance of ``old``, or ``None``."""
    if _is_number(new) and _is_number(old):
        if not (math.isfinite(new) and math.isfinite(old)):
            return f"value {old!r} -> {new!r} (not finite: no drift check can pass)"
        allowed = tolerance.get("abs", DEFAULT_ABS) + tolerance.get("rel", DEFAULT_REL) * abs(old)
        allowed += Z_BAND * math.hypot(_se(new_se), _se(old_se))
        if abs(new - old) > allowed:
            return f"value {old:.6g} -> {new:.6g} (moved {abs(new - old):.3g}, tolerance {allowed:.3g})"
        return None
    if isinstance(new, dict) and isinstance(old, dict):
        if set(new) != set(old):
            return f"table keys changed: {sorted(set(old) ^ set(new))[:8]}"
        for key in old:
            inner = value_drift(new[key], old[key], _pick(new_se, key), _pick(old_se, key), tolerance)
            if inner:
                return f"[{key}] {inner}"
        return None
    if isinstance(new, list) and isinstance(old, list) and all(isinstance(v, str) for v in new + old):
        return None if sorted(new) == sorted(old) else f"set {sorted(old)} -> {sorted(new)}"
    if isinstance(new, list) and isinstance(old, list) and len(new) == len(old):
        for index, (a, b) in enumerate(zip(new, old)):
            inner = value_drift(a, b, None, None, tolerance)
            if inner:
                return f"[{index}] {inner}"
        return None
    return None if new == old else f"value {old!r} -> {new!r}"


def diff(baseline: dict[str, Any], record: dict[str, Any], *, run_files: set[str] | None = None) -> DiffReport:
    """Every flip, drift, new claim and disappeared claim of ``record`` against ``baseline``.

    A baseline claim is reported missing when its file was part of the run (``run_files``, by
    default every file of the record) but the claim was not.
    """
    _check_record(record)
    report = DiffReport()
    base_claims = baseline["claims"]
    seen: set[str] = set()
    for entry in record["claims"]:
        seen.add(entry["id"])
        base = base_claims.get(entry["id"])
        if base is None:
            if entry["verdict"] != "skipped":
                report.differences.append(Difference(entry["id"], "new", "not in the baseline (bless a new baseline to accept it)"))
            continue
        report.compared += 1
        report.differences += compare_entry(entry["id"], entry, base)
    files = run_files if run_files is not None else {entry.get("file") for entry in record["claims"]}
    for claim_id, base in base_claims.items():
        if claim_id not in seen and base.get("file") in files:
            report.differences.append(Difference(claim_id, "missing", f"in the baseline ({base.get('file')}) but not in this run"))
    return report


_is_number = is_number


def _se(value: Any) -> float:
    return float(value) if _is_number(value) else 0.0


def _pick(value: Any, key: str) -> Any:
    return value.get(key) if isinstance(value, dict) else None
