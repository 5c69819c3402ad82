"""The OV kernel's tiles measured on the CPU it runs on, kept on disk per CPU signature.

:func:`harness.circuits.cpu_layout.kernel_plan` sizes a tile from the L2 cache alone.  Which tile
is fastest depends on more than that: the BLAS kernel's own blocking (how many rows a product
needs before its packing of the keys pays), the SIMD width of the compiled counting loop, the
memory system.  Measured on one 2-core AVX-512 Xeon (one core, 1024 rows x 50,278 keys, r = 64,
load 5-6): the scan's CPU time per entry ranged from 2.5 ns (512 x 1024 tiles) to 4.5 ns
(512 x 8192) over nine tile shapes, while the bare products ranged over 1.6-2.8 ns; the L2 rule's
256 x 1024 gave 2.8 ns.

So for a large problem the kernel measures instead: for each candidate tile of :data:`CANDIDATES`
(and the rule's), the kernel's own scan (:func:`harness.circuits.ov_topk._scan_numpy`, row max
included) of a seeded synthetic problem of the same rank, ``CAL_ROWS`` rows per worker x
``CAL_KEYS`` keys, run by the same number of worker threads; process CPU seconds (one worker: that
thread's, on one BLAS thread, so that threads working beside it do not count), the minimum over
``REPEATS`` interleaved rounds (the rounds interleave the candidates, so a burst of load from
elsewhere hits all of them).  The fastest tile wins, unless the rule's own tile is within 5% of it
(on a loaded machine single figures spread by 5-10%: a near-tie is no reason to move).  That costs
one to three seconds of CPU (the first compilation of the counting loop for the CPU included) once
per *signature*: the CPU's model and flags, the usable CPUs and L2, the worker count, the rank
bucket (r rounded up to a power of two), the counting path and its source, the library versions,
the BLAS core OpenBLAS chose and the variables that change the libraries' kernels
(``OPENBLAS_CORETYPE``, ``NUMBA_CPU_NAME``, ...).  The choice is stored as JSON under
``$INTERP_CLAIMS_CACHE/kernel-tiles`` (:func:`fixtures.cache_root.cache_root`), so later processes
on that machine reuse it: the same tiles every run, hence the same float32 row maxima.  Counts
never depend on the tiles (the float64 recheck makes them exact), so a calibration can change
speed, never a count.

Problems under :data:`MIN_CALIBRATED_ENTRIES` entries keep the rule's tiles (calibrating would
cost more than it saves); ``$INTERP_CLAIMS_KERNEL_TILES=rule`` keeps them always.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fixtures.cache_root import cache_root
from harness.circuits import ov_tiles
from harness.core.atomic_write import write_atomic
from harness.core.cpu_identity import cpu_model
from harness.core.versions import installed_version

CANDIDATES: tuple[tuple[int, int], ...] = ((256, 1024), (512, 1024), (1024, 1024), (256, 2048), (512, 2048), (256, 4096))
"""Tile shapes tried (rows a power of two dividing the columns, columns a multiple of 1024)."""
CAL_ROWS = 1024  # rows per worker in the calibration problem (the largest candidate's row block)
CAL_KEYS = 16384  # keys (columns) of the calibration problem
REPEATS = 4
KEEP_RULE_WITHIN = 0.05  # the rule's tile stays unless a candidate is more than 5% faster (noise is not a reason)
MIN_CALIBRATED_ENTRIES = 1 << 30  # ~1e9 entries: a few seconds of scan, against the calibration's one to three seconds once
ENV_MODE = "INTERP_CLAIMS_KERNEL_TILES"
LIBRARY_VARIABLES = ("OPENBLAS_CORETYPE", "NUMBA_CPU_NAME", "NUMBA_CPU_FEATURES", "NPY_DISABLE_CPU_FEATURES",
                     "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")
FORMAT = "interp-claims-kernel-tiles-v1"

Measure = Callable[[int, int], float]
"""``measure(block_rows, block_cols)`` -> CPU seconds of one calibration scan with that tile."""


@dataclass(frozen=True)
class Calibrated:
    """The chosen tile, the seconds each candidate took, and where the choice is stored."""

    block_rows: int
    block_cols: int
    seconds: dict[str, float]
    path: Path
    measured_now: bool

    def describe(self) -> str:
        how = "measured now" if self.measured_now else "measured before"
        best = self.seconds[f"{self.block_rows}x{self.block_cols}"]
        return f"calibrated on this CPU ({how}: {best * 1e3:.0f} ms CPU of {len(self.seconds)} candidates; {self.path.name})"


def mode() -> str:
    """``calibrated`` (default) or ``rule`` (from $INTERP_CLAIMS_KERNEL_TILES); anything else is refused."""
    value = os.environ.get(ENV_MODE, "calibrated").strip().lower() or "calibrated"
    if value not in ("calibrated", "rule"):
        raise ValueError(f"${ENV_MODE}={value!r}: use 'calibrated' or 'rule'")
    return value


def rank_bucket(r: int) -> int:
    """r rounded up to a power of two (at least 4): nearby ranks share a calibration."""
    return max(4, 1 << max(0, (r - 1).bit_length()))


def signature(workers: int, r: int, fused: bool, layout: str) -> dict[str, Any]:
    """Everything the fastest tile depends on, as plain data (the stored file's key)."""
    model = cpu_model()
    return {
        "format": FORMAT, "cpu": model.name, "flags": sorted(model.flags), "layout": layout, "workers": workers,
        "rank_bucket": rank_bucket(r), "fused": fused, "blas_core": _blas_core(), "scan_code": _scan_code(),
        "versions": {name: installed_version(name) for name in ("numpy", "numba", "threadpoolctl")},
        "variables": {name: os.environ.get(name) for name in LIBRARY_VARIABLES},
        "candidates": [list(c) for c in CANDIDATES],
    }


def calibrated_tiles(sig: dict[str, Any], measure: Measure, extra: tuple[int, int] | None = None,
                     folder: Path | None = None) -> Calibrated:
    """The stored choice for ``sig``, or a new one: every candidate (and ``extra``, the rule's tile)
    measured ``REPEATS`` times interleaved, the least CPU time wins; stored atomically."""
    digest = hashlib.sha256(json.dumps(sig, sort_keys=True).encode()).hexdigest()[:24]
    path = (folder or cache_root() / "kernel-tiles") / f"{digest}.json"
    found = _MEMORY.get(path) or _read(path, sig, {*CANDIDATES, *([extra] if extra else [])})
    if found is None:
        found = _measure_and_store(path, sig, measure, extra)
    _MEMORY[path] = found
    return found


_MEMORY: dict[Path, Calibrated] = {}
"""Choices this process made or read (so a read-only cache folder still measures only once)."""


def _measure_and_store(path: Path, sig: dict[str, Any], measure: Measure, extra: tuple[int, int] | None) -> Calibrated:
    """Every candidate ``REPEATS`` times, interleaved; the least CPU time wins (ties: the smaller tile),
    unless ``extra`` (the rule's tile) is within ``KEEP_RULE_WITHIN`` of it."""
    candidates = list(dict.fromkeys([*CANDIDATES, *([extra] if extra else [])]))
    best: dict[tuple[int, int], float] = {c: float("inf") for c in candidates}
    for _ in range(REPEATS):
        for c in candidates:
            best[c] = min(best[c], measure(*c))
    rows, cols = min(candidates, key=lambda c: (best[c], c[0] * c[1]))
    if extra is not None and best[extra] <= (1 + KEEP_RULE_WITHIN) * best[(rows, cols)]:
        rows, cols = extra
    seconds = {f"{r}x{c}": s for (r, c), s in best.items()}
    record = {"signature": sig, "block_rows": rows, "block_cols": cols, "cpu_seconds": seconds,
              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "load_average": list(os.getloadavg())}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(record, indent=1, sort_keys=True))
    except OSError:
        pass  # a read-only cache: this process keeps its measurement
    return Calibrated(rows, cols, seconds, path, True)


def _read(path: Path, sig: dict[str, Any], allowed: set[tuple[int, int]]) -> Calibrated | None:
    """The stored choice if the file is there, parses and holds this signature and one of the
    ``allowed`` tiles (the candidates and the rule's) with its measured seconds."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        rows, cols = int(record["block_rows"]), int(record["block_cols"])
        seconds = {str(k): float(v) for k, v in dict(record["cpu_seconds"]).items()}
        same = record["signature"] == json.loads(json.dumps(sig))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not same or (rows, cols) not in allowed or f"{rows}x{cols}" not in seconds:
        return None
    return Calibrated(rows, cols, seconds, path, False)


@functools.lru_cache(maxsize=1)
def _scan_code() -> str:
    """sha256 of the tile-counting module's source: a new counting loop is measured afresh."""
    return hashlib.sha256(Path(ov_tiles.__file__).read_bytes()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def _blas_core() -> str | None:
    """The core type OpenBLAS picked for this CPU (threadpoolctl's report), if it tells."""
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return None
    return next((str(i.get("architecture")) for i in threadpool_info() if i.get("user_api") == "blas"), None)


def cpu_seconds(run: Callable[[], object], own_thread: bool = False) -> float:
    """CPU seconds of ``run()``: the process's (every thread), or with ``own_thread`` the calling
    thread's alone, for a run that works in the calling thread only (a one-worker scan on one BLAS
    thread), so that other threads of the process, such as a rank curve's fits side by side
    (:func:`harness.metrics.low_rank.rank_curve`), are not charged to it."""
    clock = time.thread_time if own_thread else time.process_time
    start = clock()
    run()
    return clock() - start
