"""The ``claims`` command: ``run``, ``sweep``, ``validate``, ``list``, ``schema``, ``bless``, ``diff``, ``report``, ``cache``.

``run`` measures claims and writes ``results.json``, ``report.md`` and ``report.html``; ``sweep``
does the same on a Ray cluster, one task per (model, claims file), optionally over other models
(:mod:`harness.frontends.sweep`);
``validate`` and ``list`` check and show claim files without importing torch or TransformerLens
(the engine is imported by ``run`` when it runs); ``schema`` prints the claim files' JSON Schema;
``bless`` writes a baseline from a results file, ``diff`` compares a results file with a
baseline, ``report`` prints one claim's report section, ``cache info`` / ``cache clear`` show or
empty the measurement cache (:mod:`harness.measurement_cache`) that ``run`` reads and writes unless
``--no-cache``.

Exit codes: 0 every verdict matched its expectation (``validate``: every file is valid;
``diff``: no difference); 1 some claim did not come out as expected (``diff``: a flip, drift,
new or missing claim); 2 invalid claim files, unreadable results or baseline, usage errors
(a path with no claim files, ``-k`` selecting no claim, an output folder that cannot be written).

``claims run`` on a terminal draws a progress bar; otherwise (CI logs, ``| tee``) it prints one
line per finished claim as it finishes: its verdict, measured value and seconds.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path
from typing import Sequence

from harness.core.collector import collect_young_less_often
from harness.core.errors import SpecError
from harness.frontends.preflight import PreflightError
from harness.frontends.sweep.command import add_sweep_parser

DEFAULT_PATHS = ["claims"]
EXIT_OK, EXIT_MISMATCH, EXIT_INVALID = 0, 1, 2


def console_main() -> int:
    """The ``claims`` command: :func:`main` in a process of its own, where a closed pipe
    (``claims list | head``) ends it quietly (SIGPIPE's default action), and the cyclic garbage
    collector collects its youngest generation less often
    (:func:`~harness.core.collector.collect_young_less_often`). Process-wide, so only here:
    :func:`main` called inside another program (a test, a benchmark) leaves both alone."""
    if hasattr(signal, "SIGPIPE"):
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    collect_young_less_often()
    return main()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``claims`` command line ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.handler(args)
    except SpecError as exc:
        print(exc, file=sys.stderr)
        print(f"{len(exc.issues)} problem(s) in claim files", file=sys.stderr)
        return EXIT_INVALID
    except PreflightError as exc:
        print(f"claims {args.command}: {exc}", file=sys.stderr)
        return EXIT_INVALID
    except OSError as exc:  # a file that cannot be read or written: a clear message, no traceback
        print(f"claims {args.command}: {exc.strerror or exc}{f': {exc.filename}' if exc.filename else ''}", file=sys.stderr)
        return EXIT_INVALID


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="claims", description="Measure the claims of interpretability course material against model weights.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run claims, write results.json, report.md and report.html")
    run.add_argument("paths", nargs="*", default=DEFAULT_PATHS)
    run.add_argument("--out", default="claims-out", help="output folder (default: claims-out)")
    run.add_argument("-k", dest="select", default=None, help="only claims whose id contains this text")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--weights", metavar="NAME=PATH", action="append", default=[], help="load model NAME from the local weights file PATH; repeatable")
    run.add_argument("--tokenizer", metavar="NAME=PATH", action="append", default=[],
                     help="tokenize for model NAME with the local tokenizer.json file or tokenizer folder PATH; repeatable")
    run.add_argument("--no-cache", action="store_true", help="measure everything afresh: neither read nor write the measurement cache")
    run.add_argument("--cache-dir", metavar="DIR", default=None,
                     help="measurement cache folder (default: $INTERP_CLAIMS_MEASUREMENT_CACHE, else $XDG_CACHE_HOME/interp-claims/measurements)")
    run.set_defaults(handler=_run)
    # --- claims sweep: claims files over models on Ray (harness/frontends/sweep/) ---
    add_sweep_parser(commands)
    # --- end claims sweep ---
    cache = commands.add_parser("cache", help="show or clear the measurement cache and the untrained controls' weights cache")
    cache.add_argument("action", choices=("info", "clear"), help="info: where they are and how many entries; clear: remove every entry of both")
    cache.add_argument("--cache-dir", metavar="DIR", default=None, help="the cache folder (default as for run)")
    cache.set_defaults(handler=_cache)
    validate = commands.add_parser("validate", help="check claim files without running anything")
    validate.add_argument("paths", nargs="*", default=DEFAULT_PATHS)
    validate.set_defaults(handler=_validate)
    listing = commands.add_parser("list", help="list claims with their models and metrics")
    listing.add_argument("paths", nargs="*", default=DEFAULT_PATHS)
    listing.set_defaults(handler=_list)
    schema = commands.add_parser("schema", help="print the JSON Schema of claim files")
    schema.set_defaults(handler=_schema)
    bless = commands.add_parser("bless", help="write a baseline from a results file (explicit, never automatic)")
    bless.add_argument("results", help="results.json of a run")
    bless.add_argument("baseline", help="baseline file to write")
    bless.add_argument("--update", action="store_true",
                       help="replace the claims this run measured; keep the others unless deleted from a file this run read")
    bless.set_defaults(handler=_bless)
    compare = commands.add_parser("diff", help="report verdict flips and metric drift of a run against a baseline")
    compare.add_argument("baseline")
    compare.add_argument("results")
    compare.set_defaults(handler=_diff)
    report = commands.add_parser("report", help="print one claim's report section (to paste into an issue)")
    report.add_argument("claim_id")
    report.add_argument("--results", default="claims-out/results.json", help="results file (default: claims-out/results.json)")
    report.set_defaults(handler=_report)
    return parser


def _load(paths: list[str]):
    from harness.loader import load_claim_files
    from harness.frontends.preflight import claim_files

    return load_claim_files(claim_files(paths))


def _validate(args: argparse.Namespace) -> int:
    files = _load(args.paths)
    count = sum(len(f.spec.claims) for f in files)
    print(f"{len(files)} file(s), {count} claim(s): valid")
    return EXIT_OK


def _list(args: argparse.Namespace) -> int:
    files = _load(args.paths)
    for loaded in files:
        print(f"{loaded.path}  [{loaded.spec.source.course}{' ' + loaded.spec.source.chapter if loaded.spec.source.chapter else ''}]")
        for claim in loaded.spec.claims:
            tag = "" if claim.expected_verdict == "supported" else f"  (expected {claim.expected_verdict})"
            print(f"  {claim.id:<48} {loaded.model_of(claim):<24} {claim.metric}{tag}")
        for conceptual in loaded.spec.conceptual:
            print(f"  {conceptual.id:<48} {'(conceptual)':<24} not measurable: {conceptual.reason}")
        for pending in loaded.spec.pending:
            print(f"  {pending.id:<48} {'(pending)':<24} measurable, not yet encoded: needs {pending.needs}")
    return EXIT_OK


def _schema(args: argparse.Namespace) -> int:
    from harness.core.spec import claim_file_json_schema

    print(json.dumps(claim_file_json_schema(), indent=2))
    return EXIT_OK


def _bless(args: argparse.Namespace) -> int:
    from harness.record import to_json, write_atomic
    from reports.baseline import BaselineError, load_baseline, load_json, make_baseline, update_baseline

    if Path(args.baseline).is_dir():
        print(f"claims bless: baseline {args.baseline} is a folder; give the file to write", file=sys.stderr)
        return EXIT_INVALID
    try:
        record = load_json(args.results, "results")
        baseline = make_baseline(record)
        if args.update:
            claim_ids = (record.get("provenance") or {}).get("spec_claim_ids")
            baseline = update_baseline(load_baseline(args.baseline), baseline, claim_ids)
    except BaselineError as exc:
        print(f"claims bless: {exc}", file=sys.stderr)
        return EXIT_INVALID
    write_atomic(args.baseline, to_json(baseline))
    print(f"blessed {len(baseline['claims'])} claims into {args.baseline}")
    return EXIT_OK


def _diff(args: argparse.Namespace) -> int:
    from reports.baseline import BaselineError, diff, load_baseline, load_json

    try:
        report = diff(load_baseline(args.baseline), load_json(args.results, "results"))
    except BaselineError as exc:
        print(f"claims diff: {exc}", file=sys.stderr)
        return EXIT_INVALID
    print(report.render())
    return report.exit_code


def _report(args: argparse.Namespace) -> int:
    from reports.baseline import BaselineError, load_json
    from reports.markdown import claim_section

    try:
        record = load_json(args.results, "results")
    except BaselineError as exc:
        print(f"claims report: {exc}", file=sys.stderr)
        return EXIT_INVALID
    for entry in record.get("claims", []):
        if entry.get("id") == args.claim_id:
            print(claim_section(entry, record))
            return EXIT_OK
    print(f"claims report: no claim {args.claim_id!r} in {args.results}", file=sys.stderr)
    return EXIT_INVALID


def _run(args: argparse.Namespace) -> int:
    from harness.frontends.output import OUTPUT_FILES, write_outputs
    from harness.frontends.preflight import writable_out
    from harness.runner import run_claim
    from harness.session import Session
    from harness.verdicts import format_value
    from harness.frontends.weights_option import apply_tokenizer_option, apply_weights_option
    from fixtures.control_weights_cache import cache_disabled
    from harness.measurement_cache import open_cache

    for items, apply in ((args.weights, apply_weights_option), (args.tokenizer, apply_tokenizer_option)):
        for item in items:
            try:
                apply(item)
            except ValueError as exc:
                print(f"claims run: {exc}", file=sys.stderr)
                return EXIT_INVALID
    files = _load(args.paths)
    work = [(f, c) for f in files for c in f.spec.claims if args.select is None or args.select in c.id]
    if not work:
        selected = "no claims to measure" if args.select is None else f"no claim id contains {args.select!r}"
        raise PreflightError(f"{selected} in {' '.join(args.paths)}")
    writable_out(Path(args.out), OUTPUT_FILES)  # before measuring: a bad --out must not cost the run
    bar = not args.no_progress and _on_terminal()
    session = Session(progress=bar, cache=open_cache(args.no_cache, args.cache_dir))
    results = []
    with cache_disabled(args.no_cache):  # --no-cache: the untrained controls' weights are drawn afresh too
        for index, (loaded, claim) in enumerate(_progress(work, disable=not bar), start=1):
            results.append(run_claim(loaded, claim, session))
            if not _on_terminal():
                print(_finished_line(index, len(work), results[-1], format_value), flush=True)
    _print_table(results, format_value)
    record = write_outputs(Path(args.out), results, {f.path: f.sha256 for f in files}, session)
    summary = record["summary"]
    print(f"\n{summary['matched']} as expected, {summary['mismatched']} not as expected, {summary['skipped']} skipped; wrote {args.out}/results.json, report.md and report.html")
    if session.cache is not None:
        reused = sum(result.cached for result in results)
        print(f"measurement cache {session.cache.root}: {reused} of {len(results)} claims reused a cached measurement (--no-cache to measure afresh)")
    return EXIT_OK if summary["mismatched"] == 0 else EXIT_MISMATCH


def _cache(args: argparse.Namespace) -> int:
    from fixtures import control_weights_cache
    from harness.measurement_cache import MeasurementCache, default_cache_dir

    cache = MeasurementCache(Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir())
    if args.action == "clear":
        print(f"removed {cache.clear()} cached measurement(s) from {cache.root}")
        print(f"removed {control_weights_cache.clear()} cached untrained control(s) from {control_weights_cache.cache_root()}")
    else:
        entries = cache.entries()
        size = sum(path.stat().st_size for path in entries)
        print(f"measurement cache {cache.root}: {len(entries)} entries, {size / 1e6:.1f} MB")
        controls = control_weights_cache.entries()
        size = sum(path.stat().st_size for folder in controls for path in folder.iterdir())
        print(f"untrained controls' weights {control_weights_cache.cache_root()}: {len(controls)} entries, {size / 1e6:.1f} MB")
    return EXIT_OK


def _on_terminal() -> bool:
    """Both output streams are terminals: a progress bar can redraw in place without mixing into a log."""
    return sys.stdout.isatty() and sys.stderr.isatty()


def _progress(items: list, *, disable: bool):
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return items
    return tqdm(items, desc="claims", unit="claim", disable=disable, leave=False)


def _finished_line(index: int, total: int, result, format_value) -> str:
    """One log line for a finished claim: position, verdict, id, measured value (or reason), seconds."""
    measured = format_value(result.measurement) if result.measurement is not None else (result.reason or "")
    flag = "" if result.passed or result.verdict.value == "skipped" else f"  NOT AS EXPECTED (expected {result.claim.expected_verdict})"
    width = len(str(total))
    return f"[{index:>{width}}/{total}] {result.verdict.value:<12} {result.claim.id}  {measured[:80]}  ({result.duration_s:.2f} s){flag}"


def _print_table(results: list, format_value) -> None:
    width = max((len(r.claim.id) for r in results), default=10)
    print(f"{'claim':<{width}}  {'verdict':<12} {'expected':<12} measured")
    for result in results:
        measured = format_value(result.measurement) if result.measurement is not None else (result.reason or "")
        flag = "" if result.passed or result.verdict.value == "skipped" else "  <-- NOT AS EXPECTED"
        print(f"{result.claim.id:<{width}}  {result.verdict.value:<12} {result.claim.expected_verdict:<12} {measured[:80]}{flag}")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(console_main())
