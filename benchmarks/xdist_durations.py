"""Measure ``tests/xdist_durations.json`` again: the seconds of each pytest-xdist work unit, per unit
the larger of a cold run's and a warm run's.

    python benchmarks/xdist_durations.py            # writes tests/xdist_durations.json
    python benchmarks/xdist_durations.py --dry-run  # prints what it would write

The README's test command runs twice with ``--claims-xdist-durations-out``: first with every cache
empty (a fresh clone's run: SmolLM2's converted weights, the untrained controls' weights and every
claim measured afresh), then again on the caches the first run filled. The scheduler hands out
the units longest first (``harness.frontends.pytest_plugin.durations``); the order only matters
where a long unit would otherwise come last. A model's claims are long only when measured
afresh (SmolLM2's claims about 7 s, read from the measurement cache 0.2 s) and a test module's
seconds vary by a third between runs, so each unit is given the larger of its two times: the
order for the slower, cold run, which the warm run, well inside its target, can afford.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_main_job import ROOT, run_tests  # noqa: E402

OUTPUT = ROOT / "tests" / "xdist_durations.json"


def measured_run(caches: Path, out: Path, label: str) -> dict[str, float]:
    """The README's test command with every cache under ``caches``: each work unit's seconds."""
    done = run_tests([], caches, ("--claims-xdist-durations-out", str(out)))
    print(f"{label}: {done['summary']} ({done['wall']:.1f} s)")
    if done["code"] != 0:
        raise SystemExit(f"{label} run failed (exit {done['code']}): durations not written")
    return json.loads(out.read_text())


def larger_of(cold: dict[str, float], warm: dict[str, float]) -> dict[str, float]:
    """Per unit, the larger of its cold and warm seconds (a unit only one run saw keeps its time)."""
    return {unit: max(cold.get(unit, 0.0), warm.get(unit, 0.0)) for unit in sorted(cold.keys() | warm.keys())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="print the durations instead of writing them")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="xdist-durations-") as folder:
        caches = Path(folder)
        cold = measured_run(caches, caches / "cold.json", "cold (every cache empty)")
        warm = measured_run(caches, caches / "warm.json", "warm (the caches the cold run filled)")
    durations = larger_of(cold, warm)
    print(f"\n{'unit':<58}{'cold s':>8}{'warm s':>8}")
    for unit in sorted(durations, key=lambda u: -durations[u])[:20]:
        print(f"{unit:<58}{cold.get(unit, 0.0):>8.2f}{warm.get(unit, 0.0):>8.2f}")
    text = json.dumps(durations, indent=1) + "\n"
    if args.dry_run:
        print(text)
    else:
        OUTPUT.write_text(text, encoding="utf-8")
        print(f"\nwrote {OUTPUT.relative_to(ROOT)} ({len(durations)} units)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
