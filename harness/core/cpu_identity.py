"""Which CPU this process runs on: its model name, instruction-set flags and the CPUs it may use.

One reader of ``/proc/cpuinfo`` (Linux; elsewhere :func:`platform.processor` and no flags) for
every layer that keys something on the CPU: the measurement cache's key, the trained weights'
provenance, the OV kernel's calibrated tiles.
"""

from __future__ import annotations

import functools
import os
import platform
from dataclasses import dataclass
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")
CPU_SHARE_VARIABLE = "INTERP_CLAIMS_CPU_SHARE"
"""Set by a parent that runs several of this suite's processes side by side (the pytest plugin, in
each xdist worker): how many CPUs each may keep busy.  Inherited by their child processes."""


@dataclass(frozen=True)
class CpuModel:
    """The first CPU's ``model name`` and its ``flags`` (``Features`` on ARM) from /proc/cpuinfo."""

    name: str
    flags: frozenset[str]


def parse_cpuinfo(text: str) -> CpuModel:
    """The first ``model name`` and the first ``flags``/``Features`` line of a /proc/cpuinfo text."""
    name, flags = "", frozenset[str]()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip() and not name:
            name = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
        if name and flags:
            break
    return CpuModel(name, flags)


@functools.lru_cache(maxsize=1)
def cpu_model() -> CpuModel:
    """This machine's :class:`CpuModel` (read once per process; ``platform.processor()`` and no
    flags where /proc/cpuinfo is missing or names no model)."""
    try:
        found = parse_cpuinfo(CPUINFO.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        found = CpuModel("", frozenset())
    return CpuModel(found.name or platform.processor() or "unknown", found.flags)


def usable_cpu_ids() -> set[int]:
    """The CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return set(os.sched_getaffinity(0))
    return set(range(os.cpu_count() or 1))  # pragma: no cover - not Linux


def cpu_share() -> int:
    """How many CPUs this process's own parallel work (worker threads, worker processes) should
    keep busy: the usable CPUs, capped by ``$INTERP_CLAIMS_CPU_SHARE`` where it is set.

    Raises ValueError naming the variable when it is set to anything but a positive integer.
    """
    usable = max(1, len(usable_cpu_ids()))
    raw = os.environ.get(CPU_SHARE_VARIABLE, "").strip()
    if not raw:
        return usable
    try:
        share = int(raw)
    except ValueError:
        share = 0
    if share < 1:
        raise ValueError(f"${CPU_SHARE_VARIABLE} must be a positive integer (CPUs per process), got {raw!r}")
    return min(usable, share)
