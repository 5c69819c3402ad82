"""Wall time of ``claims validate claims/`` (and ``claims list claims/``), each run in a fresh process.

Validation reads claim files, the model table (declared shapes) and the metrics' signatures (read
from their source): it imports neither torch nor TransformerLens. Prints min and median over
``--runs`` runs, with the load average beside them; asserts nothing (compare figures from one
machine only).

    .venv/bin/python benchmarks/bench_validate.py            # 7 runs of each
    .venv/bin/python benchmarks/bench_validate.py --runs 3 claims/toy

Figures on the 2-core development machine, shared (load average about 7 throughout, so every
figure is inflated several times): `claims validate claims/` min 2.46 s, median 3.22 s (5 runs);
`claims list claims/` min 3.81 s, median 4.17 s. Before the layering (torch and TransformerLens
imported by validation), interleaved with the new code at the same load: 43-54 s against 4.2-4.4 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def wall_seconds(command: list[str]) -> float:
    """Seconds from starting ``command`` in a fresh process to its exit (which must be 0)."""
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", default=["claims/"])
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    baseline = [wall_seconds([sys.executable, "-c", "pass"]) for _ in range(args.runs)]
    print(f"{'python -c pass':<32} min {min(baseline):6.3f} s   median {statistics.median(baseline):6.3f} s")
    for command in ("validate", "list"):
        times = [wall_seconds([sys.executable, "-m", "harness.frontends.cli", command, *args.paths]) for _ in range(args.runs)]
        label = f"claims {command} {' '.join(args.paths)}"
        print(f"{label:<32} min {min(times):6.3f} s   median {statistics.median(times):6.3f} s   ({args.runs} runs)")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
