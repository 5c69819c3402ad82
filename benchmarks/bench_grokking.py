"""Speed of the grokking chapter: the trainer's epoch, every snapshot-level claim on one snapshot, each dynamics claim.

Targets (the chapter's speed requirements): training to the stopping rule in at most 20 minutes,
all snapshot-level claims of the chapter on one snapshot under 5 s, a dynamics claim across all
committed snapshots under 60 s. Every figure is printed as wall and CPU (user + sys) seconds with
the load average, since the development machine is shared: on a loaded machine the wall time is
several times the CPU time, which is what an idle machine would take.

- ``train``: ``--epochs`` epochs of :func:`fixtures.train_grokking.train` (no snapshots written,
  one thread), ms per epoch, and the projection to the shipped run's epoch count.
- ``snapshot``: the claims of ``claims/toy/grokking.yaml`` on the final model whose metric is not a
  dynamics metric, in a fresh session without the measurement cache (model load included; the
  import of TransformerLens, paid once by any process that loads a model, is timed and printed apart).
- ``dynamics``: each claim whose metric reads every snapshot, one fresh session each (each pays
  for every snapshot's load and all-pairs pass), then all of them in one session, as a run of the
  claim files has them (the snapshots' summaries shared).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_grokking.py [--epochs 200] [--skip-train]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fixtures.sources.grokking import REPRO_DIR, REPRO_NAME  # noqa: E402
from harness.loader import load_claim_file  # noqa: E402
from harness.runner import run_claim  # noqa: E402
from harness.session import Session  # noqa: E402

CLAIMS = ROOT / "claims" / "toy" / "grokking.yaml"
DYNAMICS = {"modular.snapshot_series", "modular.orders_of_magnitude_drop", "modular.first_epoch_below", "modular.grokking_window",
            "modular.series_rise"}
TARGETS = {"train": 20 * 60.0, "snapshot": 5.0, "dynamics": 60.0}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def timed(work: Callable[[], object]) -> tuple[float, float]:
    """(wall, CPU) seconds of ``work()``."""
    wall, cpu = time.perf_counter(), cpu_seconds()
    work()
    return time.perf_counter() - wall, cpu_seconds() - cpu


def line(label: str, wall: float, cpu: float, target: float) -> str:
    verdict = "within" if cpu <= target else "OVER"
    return f"{label:<64} wall {wall:7.2f} s  cpu {cpu:7.2f} s  target {target:5.0f} s ({verdict} on CPU time)  load {os.getloadavg()[0]:.1f}"


def bench_train(epochs: int) -> None:
    from fixtures.train_grokking import GrokTrainConfig, train

    wall, cpu = timed(lambda: train(GrokTrainConfig(), None, epochs=epochs))
    final = json.loads((REPRO_DIR / "model.json").read_text())["final_epoch"]
    print(f"train: {epochs} epochs, {1e3 * wall / epochs:.1f} ms/epoch wall, {1e3 * cpu / epochs:.1f} ms/epoch CPU "
          f"(load {os.getloadavg()[0]:.1f})")
    print(line(f"train: projected to the shipped run's {final} epochs", wall * final / epochs, cpu * final / epochs, TARGETS["train"]))


def forget_measurements() -> None:
    """Empty the in-process caches of the modular metrics, so each figure pays for its own passes."""
    from harness.metrics import modular, modular_clusters, modular_dynamics

    modular._RUNS.clear()
    modular._FREQS.clear()
    modular_clusters._LOSSES.clear()
    modular_dynamics._SUMMARIES.clear()


def run_all(claims: list, loaded) -> None:
    forget_measurements()
    session = Session()
    for claim in claims:
        result = run_claim(loaded, claim, session)
        if not result.passed:
            print(f"  note: {claim.id} gave {result.verdict.value} ({result.reason})")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--skip-train", action="store_true")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"{os.cpu_count()} CPUs, torch {torch.__version__}, load average {os.getloadavg()[0]:.1f}")
    if not args.skip_train:
        bench_train(args.epochs)
    loaded = load_claim_file(CLAIMS)
    wall, cpu = timed(lambda: __import__("transformer_lens"))  # once per process, whatever it runs
    print(f"import of TransformerLens: {wall:.2f} s wall, {cpu:.2f} s CPU (once per process; not in the figures below)")
    on_final = [c for c in loaded.spec.claims if c.metric not in DYNAMICS and loaded.model_of(c) == REPRO_NAME]
    wall, cpu = timed(lambda: run_all(on_final, loaded))
    print(line(f"snapshot: {len(on_final)} claims on {REPRO_NAME} (load included)", wall, cpu, TARGETS["snapshot"]))
    for claim in (c for c in loaded.spec.claims if c.metric in DYNAMICS):
        wall, cpu = timed(lambda: run_all([claim], loaded))
        print(line(f"dynamics: {claim.id}", wall, cpu, TARGETS["dynamics"]))
    dynamics = [c for c in loaded.spec.claims if c.metric in DYNAMICS]
    wall, cpu = timed(lambda: run_all(dynamics, loaded))
    print(line(f"dynamics: all {len(dynamics)} in one session (each claim's share)", wall / len(dynamics), cpu / len(dynamics), TARGETS["dynamics"]))
    print(f"dynamics: all {len(dynamics)} in one session: wall {wall:.2f} s, cpu {cpu:.2f} s in all")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
