"""One sweep task in a worker: the claims of one file on one model, measured by the engine's
:func:`~harness.runner.run_claim` in a :class:`~harness.session.Session` of its own (what
``claims run`` does for every claim), returned as the record's claim entries.

The payload a task returns is JSON-ready and has the shape the pytest-xdist workers hand their
controller (:class:`~harness.frontends.pytest_plugin.parallel.Gathered` adds them up): ``entries``
(``[position, claim entry]``), ``files``, ``models``, ``cache``, ``missing``; plus ``suite`` (the
sha256 of the worker's own source, :func:`~harness.measurement_cache.suite_source_hash`) so that a
driver can refuse results measured by other code than its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.frontends.output import model_summaries
from harness.frontends.sweep.plan import SweepTask, task_claims
from harness.frontends.weights_option import apply_tokenizer_option, apply_weights_option, parse_tokenizer_option, parse_weights_option
from harness.loader import load_claim_text
from harness.measurement_cache import open_cache, suite_source_hash
from harness.record import claim_entry
from harness.runner import ClaimResult, run_claim
from harness.session import Session
from fixtures.registry import set_tokenizer_override, set_weights_override


@dataclass(frozen=True)
class TaskOptions:
    """The run options every task of a sweep shares (``claims run``'s, applied in the worker)."""

    weights: tuple[str, ...] = ()
    tokenizer: tuple[str, ...] = ()
    no_cache: bool = False
    cache_dir: str | None = None


class TaskFailed(RuntimeError):
    """A task failed outside any claim's measurement (a claim's own failure is its verdict
    ``error``); the message is the original exception's type and text, which pickles as it is."""


def run_task(task: SweepTask, options: TaskOptions) -> dict[str, Any]:
    """Measure ``task``'s claims and return its payload (see the module's docstring); a failure
    outside the claims' measurements is :class:`TaskFailed`."""
    try:
        return _run_task(task, options)
    except Exception as exc:
        raise TaskFailed(f"{type(exc).__name__}: {exc}") from None


def _run_task(task: SweepTask, options: TaskOptions) -> dict[str, Any]:
    apply_overrides(options)
    try:
        loaded = load_claim_text(task.text, task.path, sha256=task.sha256)
        target, claims = task_claims(loaded, task.model, [claim_id for _, claim_id in task.claims])
        session = Session(cache=open_cache(options.no_cache, options.cache_dir))
        entries = []
        for (position, _), claim in zip(task.claims, claims):
            entries.append([position, swept_entry(run_claim(target, claim, session), task)])
        return {
            "entries": entries,
            "files": {task.path: task.sha256},
            "models": model_summaries(session),
            "cache": session.cache.summary() if session.cache is not None else None,
            "missing": [],
            "suite": suite_source_hash(),
        }
    finally:
        remove_overrides(options)


def swept_entry(result: ClaimResult, task: SweepTask) -> dict[str, Any]:
    """The claim's record entry; a re-targeted claim's ``rerun`` is the sweep that measures it alone."""
    entry = claim_entry(result)
    if task.model is not None and entry["id"] != _original_id(task, entry["id"]):
        entry["rerun"] = f"claims sweep '{task.path}' --models '{task.model}' -k '{_original_id(task, entry['id'])}'"
    return entry


def _original_id(task: SweepTask, swept: str) -> str:
    suffix = f"[{task.model}]"
    return swept[: -len(suffix)] if task.model is not None and swept.endswith(suffix) else swept


def apply_overrides(options: TaskOptions) -> None:
    """``--weights`` / ``--tokenizer`` in this worker (checked by the driver before it sent the tasks)."""
    for item in options.weights:
        apply_weights_option(item)
    for item in options.tokenizer:
        apply_tokenizer_option(item)


def remove_overrides(options: TaskOptions) -> None:
    """Undo :func:`apply_overrides`: a worker process may run another sweep's tasks next."""
    for item in options.weights:
        set_weights_override(parse_weights_option(item)[0], None)
    for item in options.tokenizer:
        set_tokenizer_override(parse_tokenizer_option(item)[0], None)
