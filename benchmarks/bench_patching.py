"""Patching scans on SmolLM2-135M with each patched pass started at the first block it changes,
against the same scans run from the embedding (every block of every pass), in one process.

    python benchmarks/bench_patching.py                  # paths.to_resid (layers 16-29) and patching.head_out
    python benchmarks/bench_patching.py --only paths     # or: heads

The started way runs first and also computes the clean and corrupted passes both ways share (a few
forward passes). Both ways give the same numbers up to float rounding (the blocks skipped would recompute the clean
or corrupted run's residual stream); printed: wall and CPU seconds (process time, all threads) of
each way, their ratio, and the largest difference between the two tables. The load average is
printed beside them: on a shared machine, compare figures of one sitting only.
"""

from __future__ import annotations

import argparse
import os
import time
from typing import Any, Callable

from harness.context import MetricContext
from harness.core.model_handle import ModelHandle
from harness.registry import get_metric
from harness.session import Session

SCANS: dict[str, tuple[str, dict[str, Any], dict[str, Any]]] = {
    "paths": ("paths.to_resid", {"from_layer": 16}, {"ioi_dataset": {"n": 8, "seed": 1}}),
    "heads": ("patching.head_out", {}, {"ioi_prompts": {"prompts": "course_8", "corrupted": False}}),
}


def from_embedding(self: ModelHandle, layer: int, resid: Any, tokens: Any, hooks: list, stop_at_layer: int | None = None) -> Any:
    """``residual_from`` as a pass from the embedding: every block runs (the way before)."""
    return self.residual_with_hooks(tokens, hooks, stop_at_layer)


def timed(compute: Callable[[], Any]) -> tuple[Any, float, float]:
    wall, cpu = time.perf_counter(), time.process_time()
    value = compute()
    return value, time.perf_counter() - wall, time.process_time() - cpu


def scan(session: Session, metric: str, params: dict[str, Any], inputs: dict[str, Any]) -> dict[str, float]:
    """The metric's table, computed afresh (a new session memo for each way)."""
    model = session.model("smollm2-135m")
    info = get_metric(metric)
    batch = session.inputs(model, inputs)
    session._memo.clear()
    return info.function(MetricContext(model, batch, session), **dict(info.validate_params(params))).value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=sorted(SCANS), default=None)
    args = parser.parse_args()
    session = Session()
    _, load_wall, load_cpu = timed(lambda: session.model("smollm2-135m"))
    print(f"SmolLM2-135M loaded in {load_wall:.1f} s ({load_cpu:.1f} s CPU); {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}")
    print(f"{'scan':<20}{'way':<22}{'wall s':>9}{'CPU s':>9}")
    for name in [args.only] if args.only else list(SCANS):
        metric, params, inputs = SCANS[name]
        started, wall_new, cpu_new = timed(lambda: scan(session, metric, params, inputs))
        original = ModelHandle.residual_from
        ModelHandle.residual_from = from_embedding  # type: ignore[method-assign]
        try:
            full, wall_old, cpu_old = timed(lambda: scan(session, metric, params, inputs))
        finally:
            ModelHandle.residual_from = original  # type: ignore[method-assign]
        difference = max(abs(started[k] - full[k]) for k in full)
        print(f"{metric:<20}{'from the embedding':<22}{wall_old:>9.1f}{cpu_old:>9.1f}")
        print(f"{metric:<20}{'from the first block':<22}{wall_new:>9.1f}{cpu_new:>9.1f}   "
              f"CPU {cpu_old / cpu_new:.1f}x less; largest difference {difference:.2g} over {len(full)} entries")
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
