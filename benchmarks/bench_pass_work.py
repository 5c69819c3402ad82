"""The work of claims' forward passes as counts that do not move with the machine's load: aten
operations dispatched and matrix-product FLOPs, per claim and in total.

    python benchmarks/bench_pass_work.py claims/toy/smollm2-ioi.yaml            # every claim of the files
    python benchmarks/bench_pass_work.py claims/toy/smollm2*.yaml --skip smollm2-one-rank-64-matrix-copies-nearly-every-token
    python benchmarks/bench_pass_work.py claims/toy/planted-forward.yaml --json out.json

On a shared 2-core machine wall and even CPU seconds follow the load more than the code (two
intra-op threads waiting for each other on small passes): the same main job took 828 s and 622 s
within an hour. These counts are the same on every run of the same code, so a change's effect on
the work done can be read from one run of each side. Operations are counted with a
``TorchDispatchMode`` (every aten call, views included: their number, not their size, is what a
small pass pays for under load), FLOPs with ``torch.utils.flop_counter.FlopCounterMode``
(products only: mm, addmm, bmm, ...). Claims run in file order in one session, as ``claims run``
runs them (a claim on runs an earlier claim made costs nothing again), no measurement cache, one
torch thread (the counts do not depend on it; the run is faster). Each claim's models are loaded
before its count starts, so loads are not counted. Printed per claim: operations, GFLOP, verdict;
then the totals.

Measured: SmolLM2's 35 claims outside the rank curve (smollm2-ioi-circuit, -ioi-heads, -ioi,
smollm2.yaml; ``--skip smollm2-one-rank-64-matrix-copies-nearly-every-token``): 9d90d0a 425,293
operations and 4,621.6 GFLOP; with the shared runs' passes prefetched (62b4934) and the attention
input's norm once per block (fa46918, c319a74) 359,917 (-15.4%) and 4,390.9 GFLOP (-5.0%), the
same verdicts (and the same values bit for bit: ``claims diff``).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="+", help="claim files or folders")
    parser.add_argument("--skip", action="append", default=[], metavar="ID", help="a claim id not to run (repeatable)")
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the per-claim counts here")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(ROOT))

    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import FlopCounterMode

    from harness.loader import find_claim_files, load_claim_files
    from harness.runner import run_claim
    from harness.session import Session

    torch.set_num_threads(1)

    class Operations(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.count: collections.Counter[str] = collections.Counter()

        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
            self.count[str(func.overloadpacket)] += 1
            return func(*args, **(kwargs or {}))

    files = load_claim_files(find_claim_files(args.paths))
    session = Session()
    rows: dict[str, dict[str, Any]] = {}
    for loaded in files:
        for claim in loaded.spec.claims:
            if claim.id in args.skip:
                continue
            models = {loaded.model_of(claim), getattr(claim.expect.operand, "model", None)} - {None, ""}
            for name in sorted(models):
                try:
                    session.model(name)  # loads are not the passes' work
                except Exception:  # noqa: BLE001  (unavailable or broken: the claim says so below)
                    pass
            operations, flops = Operations(), FlopCounterMode(display=False)
            with flops, operations:
                result = run_claim(loaded, claim, session)
            rows[claim.id] = {"operations": sum(operations.count.values()), "flops": flops.get_total_flops(),
                              "verdict": result.verdict.value}
            print(f"{rows[claim.id]['operations']:>9} ops {rows[claim.id]['flops'] / 1e9:>10.2f} GFLOP  "
                  f"{result.verdict.value:<12} {claim.id}", flush=True)
    total_ops = sum(r["operations"] for r in rows.values())
    total_flops = sum(r["flops"] for r in rows.values())
    print(f"\n{len(rows)} claims: {total_ops} aten operations, {total_flops / 1e9:.1f} GFLOP in matrix products")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
