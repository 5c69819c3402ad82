"""Wall time of a claims run cold (empty measurement cache) and warm (the same run again), beside
the targets: the main job cold under 3 minutes on 2 cores, warm under 30 s.

    python benchmarks/bench_cache.py                      # the main job: claims run claims/toy
    python benchmarks/bench_cache.py claims/toy/planted-ov.yaml --keep /tmp/bench-cache

Each run is a fresh process (imports, model loads and all), into a temporary cache folder (or
``--keep DIR``, which is emptied first); the warm run must reuse every measurement the cold run
stored (checked: its results.json says how many claims were ``cached``) and give the same values
and verdicts.  Prints the load average beside the figures: compare figures from one machine only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS = {"cold": 180.0, "warm": 30.0}


def run(paths: list[str], out: Path, cache: Path) -> tuple[float, dict]:
    """One ``claims run`` in a fresh process: (seconds, its results.json)."""
    command = [sys.executable, "-c", "from harness.frontends.cli import main; raise SystemExit(main())",
               "run", *paths, "--out", str(out), "--no-progress", "--cache-dir", str(cache)]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode not in (0, 1):
        raise SystemExit(f"claims run failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return seconds, json.loads((out / "results.json").read_text())


def comparable(record: dict) -> list[tuple]:
    return [(e["id"], json.dumps(e["value"]), e["verdict"]) for e in record["claims"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", default=["claims/toy"])
    parser.add_argument("--keep", metavar="DIR", default=None, help="cache folder to use (emptied first) and keep")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-cache-"))
    cache = Path(args.keep) if args.keep else work / "cache"
    shutil.rmtree(cache, ignore_errors=True)
    print(f"claims run {' '.join(args.paths)}; cache {cache}; {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    cold, cold_record = run(args.paths, work / "cold", cache)
    warm, warm_record = run(args.paths, work / "warm", cache)
    cached = sum(bool(e.get("cached")) for e in warm_record["claims"])
    total = len(warm_record["claims"])
    print(f"{'run':<6}{'seconds':>10}{'target':>10}")
    for name, seconds in (("cold", cold), ("warm", warm)):
        verdict = "met" if seconds < TARGETS[name] else "MISSED"
        print(f"{name:<6}{seconds:>10.1f}{'< ' + format(TARGETS[name], '.0f'):>10}  {verdict}")
    print(f"warm run: {cached} of {total} claims reused a cached measurement; "
          f"values and verdicts {'equal' if comparable(cold_record) == comparable(warm_record) else 'DIFFERENT'} to the cold run's")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
