"""The main job (``claims run claims``: every shipped claim) cold, then warm, beside the targets.

    python benchmarks/bench_main_job.py                         # cold (empty cache) then warm
    python benchmarks/bench_main_job.py --keep /tmp/mj-cache    # keep the cache folder
    python benchmarks/bench_main_job.py --warm-only --keep DIR  # only the warm run, on a filled cache
    python benchmarks/bench_main_job.py claims/toy/planted-ov.yaml   # any claim paths
    python benchmarks/bench_main_job.py claims/toy -k smollm2-path --cold-only   # costs of some claims
    python benchmarks/bench_main_job.py --tests-only                     # only the README's test command
    python benchmarks/bench_main_job.py --tests-only --tests-cold        # it with every cache empty (a fresh clone), then warm
    python benchmarks/bench_main_job.py --tests-only --tests-paths tests/test_model_table.py   # it, on some test paths

The README's test command (its first lines, run as written there with this interpreter, from a fresh
process: collection, every worker, the baseline check) is timed too, beside its target (90 s), unless
``--no-tests``; ``--tests-paths`` restricts it to some paths (a check of the benchmark, not a figure);
``--tests-cold`` times it first with every cache empty (temporary folders: a fresh clone's first run,
SmolLM2 converted, every claim measured), then again on the caches that run filled.

Each run is a fresh process (interpreter start, imports, model loads, reports: all of it), into a
temporary cache folder (or ``--keep DIR``; emptied first unless ``--warm-only``). Printed: wall and
CPU seconds (user + system of the run's process and its reaped workers) beside the targets (cold under 3 minutes, warm
under 30 s, on this project's 2-core CPU), each run's breakdown (start-up and imports, reading
and validating the claim files, measuring, model loads, writing the reports, and whether torch,
TransformerLens or matplotlib were imported at all), the costliest claims of each run (wall and
CPU seconds), and whether the warm run's values and verdicts equal the cold run's. The load
average is printed beside every figure: on a shared machine, compare figures of one sitting only.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"cold": 180.0, "warm": 30.0, "tests cold": 90.0, "tests": 90.0}
HEAVY = ("torch", "transformer_lens", "matplotlib")

# Runs the CLI in the child process and writes where its time went to the file named by argv[1].
DRIVER = r"""
import json, resource, sys, time
def process_cpu():  # this process and its reaped children (the report's drawing workers)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + children.ru_utime + children.ru_stime
start_wall, start_cpu = time.perf_counter(), process_cpu()
phases, claims = {}, []
def timed(name, function):
    def wrapper(*args, **kwargs):
        wall, cpu = time.perf_counter(), process_cpu()
        try:
            return function(*args, **kwargs)
        finally:
            phase = phases.setdefault(name, [0.0, 0.0])
            phase[0] += time.perf_counter() - wall
            phase[1] += process_cpu() - cpu
    return wrapper
from harness.frontends import cli, output
import harness.runner as runner
phases["start-up and CLI import"] = [time.perf_counter() - start_wall, process_cpu() - start_cpu]
run_claim = runner.run_claim
def measured(loaded, claim, session):
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_claim(loaded, claim, session)
    claims.append({"id": claim.id, "model": result.model, "metric": claim.metric, "cached": result.cached,
                   "wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu})
    return result
runner.run_claim = timed("measuring (claims, model loads included)", measured)
cli._load = timed("reading and validating claim files", cli._load)
output.write_outputs = timed("writing results.json and the reports", output.write_outputs)
report, argv = sys.argv[1], sys.argv[2:]
try:
    code = cli.main(argv)
finally:
    with open(report, "w") as handle:
        json.dump({"phases": phases, "claims": claims, "imported": [m for m in ("torch", "transformer_lens", "matplotlib") if m in sys.modules],
                   "wall": time.perf_counter() - start_wall, "cpu": process_cpu() - start_cpu}, handle)
raise SystemExit(code)
"""


def run(paths: list[str], out: Path, cache: Path, select: str | None = None) -> dict:
    """One ``claims run`` in a fresh process: its wall and CPU seconds, load averages, record and timings."""
    timings = out.with_suffix(".timings.json")
    command = [sys.executable, "-c", DRIVER, str(timings), "run", *paths, "--out", str(out), "--no-progress",
               "--cache-dir", str(cache), *(["-k", select] if select else [])]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode not in (0, 1):
        raise SystemExit(f"claims run failed ({done.returncode}):\n{done.stderr[-3000:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall": wall, "cpu": cpu, "load": (load_before, os.getloadavg()[0]),
            "record": json.loads((out / "results.json").read_text()), "timings": json.loads(timings.read_text())}


def readme_test_command() -> list[str]:
    """The README's test command (the first ``pytest`` line of its opening code block) as arguments,
    with this interpreter for ``.venv/bin/python``."""
    for line in (ROOT / "README.md").read_text().splitlines()[:12]:
        if "-m pytest" in line:
            command = shlex.split(line.split("&&")[-1], comments=True)
            return [sys.executable if part.endswith("/python") else part for part in command]
    raise SystemExit("README.md: no test command (a '-m pytest' line) in its first lines")


def run_tests(paths: list[str], caches: Path | None = None, extra: tuple[str, ...] = ()) -> dict:
    """The README's test command in a fresh process (on ``paths`` when given, with ``extra`` options):
    wall, CPU of it and its workers (user + system), load averages, exit status and the last line of
    its summary. ``caches``: a folder for every cache the run writes (SmolLM2's converted weights, the
    untrained controls, the measurements), empty for a fresh clone's first run; else the user's."""
    command = [*readme_test_command(), *paths, *extra]
    env = dict(os.environ)
    if caches is not None:
        env.update(INTERP_CLAIMS_CACHE=str(caches / "weights"), INTERP_CLAIMS_MEASUREMENT_CACHE=str(caches / "measurements"))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return {"wall": wall, "cpu": cpu, "load": (load_before, os.getloadavg()[0]), "code": done.returncode,
            "summary": lines[-1] if lines else done.stderr[-500:], "command": shlex.join(command[1:]), "subset": bool(paths)}


def comparable(record: dict) -> list[tuple]:
    return [(e["id"], json.dumps(e["value"]), json.dumps(e.get("reference")), e["verdict"]) for e in record["claims"]]


def print_targets(runs: dict[str, dict]) -> None:
    print(f"\n{'run':<11}{'wall s':>9}{'CPU s':>9}{'target':>9}  {'':<7} load average (start -> end)")
    for name, result in runs.items():
        met = "met" if result["wall"] < TARGETS[name] and result.get("code", 0) == 0 else "MISSED"
        met = "subset" if result.get("subset") else met  # a check of the benchmark, not the figure
        print(f"{name:<11}{result['wall']:>9.1f}{result['cpu']:>9.1f}{'< ' + format(TARGETS[name], '.0f'):>9}  {met:<7} "
              f"{result['load'][0]:.1f} -> {result['load'][1]:.1f}")


def print_breakdown(name: str, result: dict) -> None:
    timings, record = result["timings"], result["record"]
    print(f"\n{name} run, where the time went (wall s / CPU s of the run's process and its workers):")
    for phase, (wall, cpu) in timings["phases"].items():
        print(f"  {phase:<44}{wall:>8.2f}{cpu:>8.2f}")
    loads = {n: m.get("load_seconds", 0.0) for n, m in record.get("models", {}).items() if m.get("load_seconds")}
    print(f"  {'of which model loads (wall)':<44}{sum(loads.values()):>8.2f}  {', '.join(f'{n} {s:.1f}' for n, s in loads.items()) or 'none'}")
    not_loaded = [n for n, m in record.get("models", {}).items() if m.get("loaded") is False]
    print(f"  models identified from the cache, not loaded: {len(not_loaded)}; imported: {', '.join(timings['imported']) or 'none of ' + ', '.join(HEAVY)}")
    cached = sum(bool(e.get("cached")) for e in record["claims"])
    print(f"  claims: {len(record['claims'])}, {cached} read from the measurement cache; cache {record['provenance'].get('measurement_cache')}")


def print_top(name: str, result: dict, count: int) -> None:
    claims = sorted(result["timings"]["claims"], key=lambda c: -c["wall"])[:count]
    print(f"\n{name} run, costliest claims (wall s, CPU s; a model's first claim includes its load):")
    for claim in claims:
        print(f"  {claim['wall']:>8.1f}{claim['cpu']:>8.1f}  {claim['id']}  ({claim['metric']} on {claim['model']}{', cached' if claim['cached'] else ''})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=["claims"])
    parser.add_argument("--keep", metavar="DIR", default=None, help="cache folder to use (emptied first, unless --warm-only) and keep")
    parser.add_argument("--warm-only", action="store_true", help="only the warm run, on the cache in --keep DIR")
    parser.add_argument("--top", type=int, default=12, help="how many of the costliest claims to list (default 12)")
    parser.add_argument("-k", dest="select", default=None, help="only claims whose id contains this text (as claims run -k)")
    parser.add_argument("--cold-only", action="store_true", help="only the cold run (per-claim costs of a change)")
    parser.add_argument("--no-tests", action="store_true", help="do not time the README's test command")
    parser.add_argument("--tests-only", action="store_true", help="only time the README's test command")
    parser.add_argument("--tests-paths", nargs="+", default=[], metavar="PATH", help="run the test command on these paths only")
    parser.add_argument("--tests-cold", action="store_true",
                        help="time the test command with every cache empty (a fresh clone's first run), then again on the caches it filled")
    args = parser.parse_args()
    if args.warm_only and not args.keep:
        parser.error("--warm-only needs --keep DIR (a filled cache)")
    work = Path(tempfile.mkdtemp(prefix="bench-main-job-"))
    cache = Path(args.keep) if args.keep else work / "cache"
    if not args.warm_only:
        shutil.rmtree(cache, ignore_errors=True)
    what = "the README's test command" if args.tests_only else f"claims run {' '.join(args.paths)}; cache {cache}"
    print(f"{what}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    runs: dict[str, dict] = {}
    if not args.warm_only and not args.tests_only:
        runs["cold"] = run(args.paths, work / "cold", cache, args.select)
    if not args.cold_only and not args.tests_only:
        runs["warm"] = run(args.paths, work / "warm", cache, args.select)
    for name in ("cold", "warm"):
        if name in runs:
            runs[name]["subset"] = args.paths != ["claims"] or bool(args.select)  # not the main job's figure
    if args.tests_only or not (args.no_tests or args.warm_only or args.cold_only):
        caches = work / "test-caches" if args.tests_cold else None
        if caches is not None:
            runs["tests cold"] = run_tests(args.tests_paths, caches)
        runs["tests"] = run_tests(args.tests_paths, caches)
    print_targets(runs)
    for name in ("tests cold", "tests"):
        if name in runs:
            tests = runs[name]
            print(f"\n{name}: {tests['command']}\n  exit {tests['code']}: {tests['summary']}"
                  f"{' (some paths only: not the figure)' if args.tests_paths else ''}")
    for name in ("cold", "warm"):
        if name in runs:
            print_breakdown(name, runs[name])
    for name, result in runs.items():
        if name in ("cold", "warm"):
            print_top(name, result, args.top)
    if "cold" in runs and "warm" in runs:
        same = comparable(runs["cold"]["record"]) == comparable(runs["warm"]["record"])
        print(f"\nwarm run's values and verdicts: {'equal to' if same else 'DIFFERENT from'} the cold run's")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
