"""``claims sweep``: claims files over models on a Ray cluster, one record like ``claims run``'s.

    claims sweep claims/toy --out sweep-out                           # every claim as written
    claims sweep claims/toy/grokking.yaml --models 'grokking-repro@epoch=*'
    claims sweep claims/arena/1.5.4-1-five-features-2d.yaml --models 'tms-5f2d@seed=*' --address auto

One Ray task per (model, claims file) (:mod:`harness.frontends.sweep.plan`); each measures its
claims with the engine in a session of its own (:mod:`harness.frontends.sweep.task`); the driver
gathers the claim entries in the serial order and writes ``results.json``, ``report.md`` and
``report.html`` as ``claims run`` does (:func:`harness.frontends.output.write_record`).  A task that
fails turns its claims into ``error`` entries naming the failure.  Exit codes as ``claims run``:
0 every verdict as expected, 1 some not, 2 invalid options, claim files or cluster.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from harness.frontends.preflight import PreflightError

EXIT_OK, EXIT_MISMATCH, EXIT_INVALID = 0, 1, 2


def add_sweep_parser(commands: Any) -> None:
    """The ``sweep`` sub-command's options (``commands``: the CLI's sub-parsers)."""
    sweep = commands.add_parser("sweep", help="run claims files over models on a Ray cluster, one task per (model, claims file)")
    sweep.add_argument("paths", nargs="*", default=["claims"])
    sweep.add_argument("--models", metavar="SPEC", default=None,
                       help="run each file's claims on these models instead of the file's own: names and patterns, comma-separated "
                            "(e.g. 'grokking-repro@epoch=*' or tms-5f2d@seed=0,tms-5f2d@seed=1); claims naming their own model are left out")
    sweep.add_argument("--address", default=None,
                       help="an existing Ray cluster (auto, HOST:PORT, ray://HOST:10001); default: start a local instance")
    sweep.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local instance (default: the CPUs this process may use)")
    sweep.add_argument("--cpus-per-task", type=int, default=1, help="CPUs Ray reserves for each task (default 1); torch uses as many threads")
    sweep.add_argument("--out", default="claims-out", help="output folder (default: claims-out)")
    sweep.add_argument("-k", dest="select", default=None, help="only claims whose id contains this text")
    sweep.add_argument("--weights", metavar="NAME=PATH", action="append", default=[], help="as for run; the path must exist on every node")
    sweep.add_argument("--tokenizer", metavar="NAME=PATH", action="append", default=[], help="as for run; the path must exist on every node")
    sweep.add_argument("--no-cache", action="store_true", help="measure everything afresh: neither read nor write the measurement cache")
    sweep.add_argument("--cache-dir", metavar="DIR", default=None, help="measurement cache folder on the nodes (default as for run)")
    sweep.set_defaults(handler=sweep_command)


def sweep_command(args: argparse.Namespace) -> int:
    """Plan, run on Ray, gather, write; see the module's docstring."""
    from harness.frontends.sweep.plan import SweepOptionError
    from harness.frontends.sweep.ray_runner import SweepRayError

    try:
        _check_numbers(args)
        return _sweep(args)
    except (SweepOptionError, SweepRayError, SuiteMismatch) as exc:
        print(f"claims sweep: {exc}", file=sys.stderr)
        return EXIT_INVALID


class SuiteMismatch(RuntimeError):
    """A worker measured with other source code than the driver's."""


def _check_numbers(args: argparse.Namespace) -> None:
    from harness.frontends.sweep.plan import SweepOptionError

    if args.num_cpus is not None and args.address is not None:
        raise SweepOptionError("--num-cpus sizes the local instance; an existing cluster (--address) has its own CPUs")
    for option, value in (("--num-cpus", args.num_cpus), ("--cpus-per-task", args.cpus_per_task)):
        if value is not None and value < 1:
            raise SweepOptionError(f"{option} must be at least 1, got {value}")
    if args.num_cpus is not None and args.cpus_per_task > args.num_cpus:
        raise SweepOptionError(f"--cpus-per-task {args.cpus_per_task} is more than the local instance's --num-cpus {args.num_cpus}: no task could start")


def _sweep(args: argparse.Namespace) -> int:
    from harness.frontends.output import OUTPUT_FILES, spec_inventory, write_record
    from harness.frontends.preflight import claim_files, writable_out
    from harness.frontends.sweep.plan import plan_sweep, resolve_models
    from harness.frontends.sweep.ray_runner import import_ray, run_on_ray
    from harness.frontends.sweep.task import TaskOptions
    from harness.loader import load_claim_files
    from harness.measurement_cache import suite_source_hash
    from harness.record import record_from_entries

    ray = import_ray()  # first: without Ray nothing else is worth checking
    options = TaskOptions(tuple(args.weights), tuple(args.tokenizer), args.no_cache, args.cache_dir)
    _check_overrides(options)
    models = resolve_models(args.models) if args.models is not None else None
    paths = claim_files(args.paths)
    files = load_claim_files(paths)
    texts = {loaded.path: path.read_bytes().decode("utf-8") for loaded, path in zip(files, paths)}
    plan = plan_sweep(files, texts, models, args.select)
    if not plan.claim_count:
        what = "no claims to measure" if args.select is None else f"no claim id contains {args.select!r}"
        raise PreflightError(f"{what} in {' '.join(args.paths)}{' (claims naming their own model are not swept)' if plan.pinned else ''}")
    writable_out(Path(args.out), OUTPUT_FILES)
    if plan.pinned:
        print(f"--models: {len(plan.pinned)} claim(s) name their own model and are not swept: {', '.join(plan.pinned[:5])}{' ...' if len(plan.pinned) > 5 else ''}")
    print(f"sweep: {plan.claim_count} claim(s) in {len(plan.tasks)} task(s) (model, claims file) on Ray {ray.__version__}", flush=True)
    start = time.perf_counter()
    progress = _Progress(len(plan.tasks), start)
    outcomes = run_on_ray(plan.tasks, options, address=args.address, num_cpus=args.num_cpus,
                          cpus_per_task=args.cpus_per_task, on_done=progress)
    gathered = gather(outcomes, suite_source_hash())
    record = record_from_entries(gathered.ordered_entries(), plan.files, gathered.models, spec_inventory(plan.files), gathered.cache)
    record["provenance"]["sweep"] = {"ray": ray.__version__, "address": args.address or "local", "tasks": len(plan.tasks),
                                     "failed_tasks": sum(o.error is not None for o in outcomes), "models": models,
                                     "seconds": round(time.perf_counter() - start, 3)}
    write_record(Path(args.out), record)
    _print_table(record["claims"])
    summary = record["summary"]
    print(f"\n{summary['matched']} as expected, {summary['mismatched']} not as expected, {summary['skipped']} skipped; "
          f"wrote {args.out}/results.json, report.md and report.html")
    return EXIT_OK if summary["mismatched"] == 0 else EXIT_MISMATCH


def _check_overrides(options: Any) -> None:
    """``--weights`` / ``--tokenizer`` checked here (unknown model, missing file) before any task is sent."""
    from harness.frontends.sweep.plan import SweepOptionError
    from harness.frontends.sweep.task import apply_overrides, remove_overrides

    try:
        apply_overrides(options)
    except ValueError as exc:
        raise SweepOptionError(str(exc)) from None
    finally:
        remove_overrides(options)


def gather(outcomes: list[Any], suite: str) -> Any:
    """The tasks' payloads added up (:class:`~harness.frontends.pytest_plugin.parallel.Gathered`);
    a failed task's claims as ``error`` entries; :class:`SuiteMismatch` when a worker's source
    (sha256 ``payload["suite"]``) is not the driver's ``suite``."""
    from harness.frontends.pytest_plugin.parallel import Gathered

    gathered = Gathered()
    for outcome in outcomes:
        payload = outcome.payload if outcome.payload is not None else _failed_payload(outcome)
        if payload.get("suite", suite) != suite:
            raise SuiteMismatch(f"the task {outcome.task.path} on {outcome.task.runs_on} ran interp-claims source {payload['suite'][:12]}, "
                                f"this driver {suite[:12]}: install the same interp-claims on every node of the cluster")
        gathered.add(payload)
    return gathered


def _failed_payload(outcome: Any) -> dict[str, Any]:
    """Claim entries with verdict ``error`` for each claim of a task that failed (fail closed)."""
    from harness.frontends.sweep.plan import task_claims
    from harness.frontends.sweep.task import swept_entry
    from harness.loader import load_claim_text
    from harness.runner import ClaimResult
    from harness.verdicts import Verdict

    task = outcome.task
    target, claims = task_claims(load_claim_text(task.text, task.path, sha256=task.sha256), task.model, [c for _, c in task.claims])
    entries = []
    for (position, _), claim in zip(task.claims, claims):
        result = ClaimResult(task.path, claim, target.model_of(claim) or "", Verdict.ERROR, reason=f"sweep task failed: {outcome.error}")
        entries.append([position, swept_entry(result, task)])
    return {"entries": entries, "files": {task.path: task.sha256}, "models": {}, "cache": None, "missing": []}


class _Progress:
    """One line per finished task: how many done, the file, the model, its claims' verdicts."""

    def __init__(self, total: int, start: float) -> None:
        self.total, self.start, self.done = total, start, 0

    def __call__(self, outcome: Any) -> None:
        self.done += 1
        task = outcome.task
        if outcome.error is not None:
            what = f"FAILED: {outcome.error}"
        else:
            matched = sum(bool(entry["matched"]) for _, entry in outcome.payload["entries"])
            what = f"{matched}/{len(task.claims)} as expected"
        width = len(str(self.total))
        print(f"[{self.done:>{width}}/{self.total}] {task.path} on {task.runs_on}: {what}  ({time.perf_counter() - self.start:.1f} s)", flush=True)


def _print_table(entries: list[dict[str, Any]]) -> None:
    """The claims table ``claims run`` prints, from the record's entries."""
    from harness.core.formatting import format_value

    width = max((len(entry["id"]) for entry in entries), default=10)
    print(f"{'claim':<{width}}  {'verdict':<12} {'expected':<12} measured")
    for entry in entries:
        measured = (entry["reason"] or "") if entry["value"] is None else format_value(entry["value"], entry["uncertainty"], entry["bound"])
        flag = "" if entry["matched"] or entry["verdict"] == "skipped" else "  <-- NOT AS EXPECTED"
        print(f"{entry['id']:<{width}}  {entry['verdict']:<12} {entry['expected_verdict']:<12} {measured[:80]}{flag}")

