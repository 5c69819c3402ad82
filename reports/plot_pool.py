"""Running independent jobs (drawing plots) in worker processes, one per usable CPU.

matplotlib is not thread-safe, and drawing is pure Python holding the interpreter lock, so the
report's plots are drawn in processes. The workers are fresh interpreters (``spawn``: none of the
parent's state, its threads or its loaded models, is copied) that import the ``preload`` modules
once; they are children of this process, so their CPU time is counted in its ``RUSAGE_CHILDREN``
when the pool closes. Below ``MIN_JOBS_PER_WORKER`` jobs per worker, or on one CPU, the jobs run in
this process: starting a worker costs about a second of CPU (importing matplotlib), which a few
plots do not repay.

Results come back in the jobs' order; what each job gives depends on the job alone, never on the
worker that ran it. A job that raises fails the whole map (as it would serially); a pool that
cannot start or loses a worker (killed, out of memory) is said with a warning and the jobs run
here instead.
"""

from __future__ import annotations

import importlib
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

_cpu_share: int | None = None
"""The CPUs this process may draw on when other processes of the same run share its CPUs (a
pytest-xdist worker's share); ``None``: all of :func:`usable_cpus`."""


def share_cpus(cpus: int | None) -> None:
    """Draw on at most ``cpus`` CPUs from now on (``None``: every usable CPU). A process that
    shares the machine with its siblings (``-n 2`` on two cores) and has a share of one draws in
    this process: workers there would only wait for a core, after each paid its ~1 s start."""
    global _cpu_share
    _cpu_share = None if cpus is None else max(1, cpus)


def available_cpus() -> int:
    """The CPUs to draw on: :func:`usable_cpus`, at most this process's share (:func:`share_cpus`)."""
    return usable_cpus() if _cpu_share is None else min(usable_cpus(), _cpu_share)


def usable_cpus() -> int:
    """How many CPUs this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1  # pragma: no cover - not Linux


def pool_size(jobs: int, cpus: int | None = None) -> int:
    """Workers for ``jobs`` jobs: one per available CPU (``cpus``; ``None``: :func:`available_cpus`),
    at most one per ``MIN_JOBS_PER_WORKER`` jobs; below 2 the jobs run in this process (returns 1)."""
    workers = min(available_cpus() if cpus is None else cpus, jobs // MIN_JOBS_PER_WORKER)
    return workers if workers >= 2 else 1


def map_in_processes(function: Callable[[Job], Result], jobs: Sequence[Job], *, workers: int | None = None,
                     preload: Sequence[str] = ()) -> list[Result]:
    """``[function(job) for job in jobs]``, computed by ``workers`` processes (``None``:
    :func:`pool_size`; 1: in this process). ``function`` and the jobs must pickle (a module-level
    function, plain data); ``preload`` names the modules each worker imports when it starts."""
    workers = pool_size(len(jobs)) if workers is None else min(workers, len(jobs))
    if workers < 2:
        return [function(job) for job in jobs]
    try:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_import,
                                 initargs=(tuple(preload),)) as pool:
            return list(pool.map(function, jobs))
    except (OSError, BrokenProcessPool) as exc:
        warnings.warn(f"worker processes failed ({type(exc).__name__}: {exc}); running {len(jobs)} jobs in this process",
                      RuntimeWarning, stacklevel=2)
        return [function(job) for job in jobs]


def _import(modules: tuple[str, ...]) -> None:
    """A worker's start: import ``modules`` (the drawing code) once, before its first job."""
    for module in modules:
        importlib.import_module(module)
