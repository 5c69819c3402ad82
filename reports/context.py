"""What a claim was measured on and where it comes from, as text for both report renderers.

Every field read here is optional in some record a run can write: a model that could not be
loaded has only ``unavailable`` (the reason) and ``load_seconds``; a claim that never reached
its model has no model entry at all; a claim without a ``source`` has ``null``; a provenance
field the run could not determine (no git checkout, a package not installed) is ``null``.
"""

from __future__ import annotations

from typing import Any

UNKNOWN = "?"
SHA_SHOWN = 16
COMMIT_SHOWN = 12


def model_entry(record: dict[str, Any], name: Any) -> dict[str, Any]:
    """The record's entry for model ``name`` (``{}`` when the run has none)."""
    models = record.get("models") or {}
    entry = models.get(name) if isinstance(name, str) else None
    return entry if isinstance(entry, dict) else {}


def model_text(info: dict[str, Any], claim_reason: Any = None) -> str:
    """``(source, weights sha256 0123…, processing {...})`` for a loaded model,
    ``(unavailable: reason)`` for one that was not (``(unavailable, see the reason)`` when
    ``claim_reason``, the claim's own reason, already says it), ``""`` when the run has no entry."""
    if "unavailable" in info:
        reason = str(info["unavailable"])
        return "(unavailable, see the reason)" if claim_reason and reason in str(claim_reason) else f"(unavailable: {reason})"
    if not info:
        return ""
    sha = str(info.get("weights_sha256") or "—")[:SHA_SHOWN]
    return f"({info.get('source') or UNKNOWN}, weights sha256 {sha}, processing {info.get('processing') or {}})"


def source_text(source: Any) -> str | None:
    """``ref (provenance)`` of a claim's source, ``None`` when it has none."""
    if not isinstance(source, dict) or not source:
        return None
    return f"{source.get('ref') or UNKNOWN} ({source.get('provenance') or UNKNOWN})"


def run_text(provenance: dict[str, Any] | None) -> str:
    """``commit 0123456789ab, torch 2.13.0, transformer-lens 3.9.0, cpu, float32`` of a run."""
    provenance = provenance or {}
    packages = provenance.get("packages") or {}
    commit = str(provenance.get("git_commit") or UNKNOWN)[:COMMIT_SHOWN]
    return (
        f"commit {commit}, torch {packages.get('torch') or UNKNOWN}, "
        f"transformer-lens {packages.get('transformer-lens') or UNKNOWN}, "
        f"{provenance.get('device') or UNKNOWN}, {provenance.get('dtype') or UNKNOWN}"
    )


def params_text(params: Any) -> str:
    """``(pattern=induction, threshold=0.4)``, ``""`` without parameters."""
    if not isinstance(params, dict) or not params:
        return ""
    return "(" + ", ".join(f"{key}={value}" for key, value in params.items()) + ")"
