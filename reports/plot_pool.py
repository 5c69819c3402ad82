"""Running independent jobs (drawing plots) in worker processes, one per usable CPU.

matplotlib is not thread-safe, and drawing is pure Python holding the interpreter lock, so the
report's plots are drawn in processes. The workers are forked from a ``forkserver`` process
(``spawn`` where the platform has none) that imports the ``preload`` modules once, so a worker
starts ready to draw without the parent's state (its threads, its loaded models). Below
``MIN_JOBS_PER_WORKER`` jobs per worker, or on one CPU, the jobs run in this process: starting
workers costs about a second of CPU (importing matplotlib), which a few plots do not repay.

Results come back in the jobs' order; what each job gives depends on the job alone, never on the
worker that ran it. A job that raises fails the whole map (as it would serially); a pool that
cannot start or loses a worker (killed, out of memory) is said with a warning and the jobs run
here instead.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Sequence, TypeVar

Job = TypeVar("Job")
Result = TypeVar("Result")

MIN_JOBS_PER_WORKER = 8
"""A worker is worth starting for this many plots (about 0.15 s of CPU each against its ~1 s start)."""


def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - not Linux


def pool_size(jobs: int, cpus: int | None = None) -> int:
    """Workers for ``jobs`` jobs: one per usable CPU, at most one per ``MIN_JOBS_PER_WORKER`` jobs;
    below 2 the jobs run in this process (returns 1)."""
    workers = min(usable_cpus() if cpus is None else cpus, jobs // MIN_JOBS_PER_WORKER)
    return workers if workers >= 2 else 1


def map_in_processes(function: Callable[[Job], Result], jobs: Sequence[Job], *, workers: int | None = None,
                     preload: Sequence[str] = ()) -> list[Result]:
    """``[function(job) for job in jobs]``, computed by ``workers`` processes (``None``:
    :func:`pool_size`; 1: in this process). ``function`` and the jobs must pickle (a module-level
    function, plain data); ``preload`` names the modules the workers import before forking."""
    workers = pool_size(len(jobs)) if workers is None else min(workers, len(jobs))
    if workers < 2:
        return [function(job) for job in jobs]
    try:
        with ProcessPoolExecutor(workers, mp_context=_context(preload)) as pool:
            return list(pool.map(function, jobs))
    except (OSError, BrokenProcessPool) as exc:
        warnings.warn(f"worker processes failed ({type(exc).__name__}: {exc}); running {len(jobs)} jobs in this process",
                      RuntimeWarning, stacklevel=2)
        return [function(job) for job in jobs]


def _context(preload: Sequence[str]) -> multiprocessing.context.BaseContext:
    """A ``forkserver`` context whose server imports ``preload`` (``spawn`` where there is no forkserver)."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")  # pragma: no cover - Windows
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(preload))
    return context
