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
import warnings
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Sequence, TypeVar

from harness.core.cpu_identity import cpu_share

Job = TypeVar("Job")
Result = TypeVar("Result")

MIN_JOBS_PER_WORKER = 8
"""A worker is worth starting for this many plots (about 0.15 s of CPU each against its ~1 s start)."""


def pool_size(jobs: int, cpus: int | None = None) -> int:
    """Workers for ``jobs`` jobs: one per CPU of this process's share (:func:`cpu_share`: the usable
    CPUs, fewer in a pytest-xdist worker), at most one per ``MIN_JOBS_PER_WORKER`` jobs; below 2 the
    jobs run in this process (returns 1)."""
    workers = min(cpu_share() if cpus is None else cpus, jobs // MIN_JOBS_PER_WORKER)
    return workers if workers >= 2 else 1


def map_in_processes(function: Callable[[Job], Result], jobs: Sequence[Job], *, workers: int | None = None,
                     preload: Sequence[str] = ()) -> list[Result]:
    """``[function(job) for job in jobs]``, computed by ``workers`` processes (``None``:
    :func:`pool_size`; 1: in this process). ``function`` and the jobs must pickle (a module-level
    function, plain data); ``preload`` names the modules each worker imports when it starts.

    Workers that cannot start (OSError) or die (BrokenProcessPool) leave the jobs to this process,
    with a RuntimeWarning; an exception a job raises is raised here, as it would be serially."""
    workers = pool_size(len(jobs)) if workers is None else min(workers, len(jobs))
    if workers < 2 or multiprocessing.current_process().daemon:  # a daemonic process may not start children
        return [function(job) for job in jobs]
    try:
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_import,
                                   initargs=(tuple(preload),))
    except OSError as exc:
        return _here(function, jobs, exc)
    with pool:
        try:  # the workers start with the first submissions
            futures = [pool.submit(function, job) for job in jobs]
        except (OSError, BrokenProcessPool) as exc:
            return _here(function, jobs, exc)
        try:
            return [future.result() for future in futures]
        except BrokenProcessPool as exc:
            return _here(function, jobs, exc)


def _here(function: Callable[[Job], Result], jobs: Sequence[Job], exc: BaseException) -> list[Result]:
    """The jobs run in this process after the workers failed (``exc``), said with a RuntimeWarning."""
    warnings.warn(f"worker processes failed ({type(exc).__name__}: {exc}); running {len(jobs)} jobs in this process",
                  RuntimeWarning, stacklevel=3)
    return [function(job) for job in jobs]


def _import(modules: tuple[str, ...]) -> None:
    """A worker's start: import ``modules`` (the drawing code) once, before its first job."""
    for module in modules:
        importlib.import_module(module)
