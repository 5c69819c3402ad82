"""The CPU the OV kernel runs on, and the tiles and worker threads it should use there.

:func:`cpu_layout` reads, once per process, the CPUs this process may use (its affinity mask) and
the size of the L2 cache that each of them has (``/sys/devices/system/cpu/cpu*/cache``; where
that is missing, ``lscpu -C``; else an assumed 1 MiB) with how many of the usable CPUs share one
L2 (SMT siblings share it).

:func:`kernel_plan` turns that into the kernel's tile ``block_rows x block_cols`` and its worker
count.  A tile costs 6 bytes per entry while a worker counts it (the float32 product and two
boolean masks); the counting passes read the product three times, so the tile should stay in
the worker's share of L2 after the product is written:

    entries_L2  = (3/4) * L2 / sharers / 6

Each tile also costs a fixed ``GIL_SECONDS_PER_TILE`` of Python work (about 15 numpy calls) that
holds the interpreter lock, while its arithmetic (``SECONDS_PER_ENTRY``, product and counting)
runs in parallel; with ``workers`` threads the lock stays below half busy when

    entries_GIL = 2 * workers * GIL_SECONDS_PER_TILE / SECONDS_PER_ENTRY

The tile holds ``max(entries_L2, entries_GIL)`` entries (at least 64 x 1024, at most the former
fixed 512 x 8192), ``block_cols`` a multiple of 1024 (the counting chunk), ``block_rows`` a power
of two dividing it (so a row block's diagonal lies in one column tile).  Workers: one per usable
CPU.  The two per-tile constants were measured on one 2-core AVX-512 Xeon; the interpreter-lock
floor is a model, not yet measured on a many-core CPU.  There (2 MiB L2 per core, 256 x 1024 tiles;
benchmarks/bench_ov_topk.py, three runs at load average 11-19 on 2 cores): the kernel took 7.8, 8.9
and 9.8 CPU seconds against 9.5, 10.1 and 9.8 with 512 x 8192 tiles (0-18% less, within the
machine's noise), the bare products 3.5-4.0 against 4.4-5.1.  The counts never depend on the tiles
(the float64 recheck makes them exact); only the float32 row maximum's last bits can.
For large scans the kernel measures instead of trusting this rule
(:mod:`harness.circuits.kernel_calibration`); the rule's tile is one of the candidates there.
"""

from __future__ import annotations

import functools
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from harness.core.cpu_identity import usable_cpu_ids

SYS_CPU = Path("/sys/devices/system/cpu")
ASSUMED_L2_BYTES = 1 << 20
BYTES_PER_ENTRY = 6  # float32 product + two boolean masks
CHUNK = 1024  # the kernel's counting chunk (harness.circuits.ov_topk._CHUNK)
GIL_SECONDS_PER_TILE = 40e-6
SECONDS_PER_ENTRY = 2.3e-9
MIN_ENTRIES, MAX_ENTRIES = 64 * 1024, 512 * 8192


@dataclass(frozen=True)
class CpuLayout:
    """The usable CPUs, the L2 size of one of them, how many usable CPUs share that L2, and where the size came from."""

    usable_cpus: int
    l2_bytes: int
    l2_sharers: int
    source: str

    def describe(self) -> str:
        return (f"{self.usable_cpus} usable CPU(s), L2 {self.l2_bytes / 2**20:g} MiB shared by "
                f"{self.l2_sharers} of them (from {self.source})")


@dataclass(frozen=True)
class KernelPlan:
    """Tile shape and worker threads for the CPU kernel, and why."""

    block_rows: int
    block_cols: int
    workers: int
    reason: str


@functools.lru_cache(maxsize=1)
def cpu_layout() -> CpuLayout:
    """This machine's :class:`CpuLayout` (read once per process)."""
    usable = usable_cpu_ids()
    found = read_sys_l2(SYS_CPU, min(usable)) or read_lscpu_l2()
    if found is None:
        return CpuLayout(len(usable), ASSUMED_L2_BYTES, 1, "an assumed size: no /sys cache entries, no lscpu")
    size, sharing, source = found
    sharers = len(sharing & usable) if sharing else 1
    return CpuLayout(len(usable), size, max(1, sharers), source)


def read_sys_l2(root: Path, cpu: int) -> tuple[int, set[int], str] | None:
    """The L2 cache of ``cpu`` from ``root/cpuN/cache/index*``: size in bytes, the CPUs sharing it, the source."""
    for index in sorted((root / f"cpu{cpu}" / "cache").glob("index*")):
        try:
            level = (index / "level").read_text().strip()
            kind = (index / "type").read_text().strip()
            size = parse_size((index / "size").read_text())
            shared = parse_cpu_list((index / "shared_cpu_list").read_text())
        except (OSError, ValueError):
            continue
        if level == "2" and kind in ("Unified", "Data"):
            return size, shared, str(index)
    return None


def read_lscpu_l2() -> tuple[int, set[int], str] | None:
    """The L2 size per instance from ``lscpu -C=NAME,ONE-SIZE`` (no sharing information)."""
    try:
        out = subprocess.run(["lscpu", "-C=NAME,ONE-SIZE", "--bytes"], capture_output=True, text=True, timeout=5, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        name, _, size = line.strip().partition(" ")
        if name == "L2" and size.strip().isdigit():
            return int(size.strip()), set(), "lscpu"
    return None


def parse_size(text: str) -> int:
    """``"2048K"``, ``"2M"``, ``"512"`` -> bytes."""
    match = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, re.IGNORECASE)
    if match is None:
        raise ValueError(f"not a cache size: {text!r}")
    return int(match[1]) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[match[2].upper()]


def parse_cpu_list(text: str) -> set[int]:
    """``"0-3,8,10-11"`` -> {0, 1, 2, 3, 8, 10, 11}."""
    cpus: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def kernel_plan(layout: CpuLayout, workers: int) -> KernelPlan:
    """Tiles for ``workers`` threads on ``layout`` (see the module's docstring)."""
    by_cache = int(0.75 * layout.l2_bytes / layout.l2_sharers / BYTES_PER_ENTRY)
    by_gil = int(2 * workers * GIL_SECONDS_PER_TILE / SECONDS_PER_ENTRY)
    entries = min(MAX_ENTRIES, max(MIN_ENTRIES, by_cache, by_gil))
    cols = CHUNK if entries < 512 * CHUNK else 2 * CHUNK if entries < 2048 * CHUNK else 8 * CHUNK
    rows = 1 << max(0, (entries // cols).bit_length() - 1)  # a power of two, so it divides cols
    rows = min(rows, 512)
    bound = "L2" if by_cache >= by_gil else "the interpreter lock"
    return KernelPlan(rows, cols, workers, f"{layout.describe()}; {workers} worker(s); tiles {rows} x {cols} "
                                           f"({rows * cols * BYTES_PER_ENTRY / 2**20:.2f} MiB with masks; sized by {bound})")
