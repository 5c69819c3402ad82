"""Running a sweep's tasks on Ray: one Ray task per :class:`~harness.frontends.sweep.plan.SweepTask`.

Ray does the scheduling (placement, CPUs, retries of crashed workers); this module only starts or
joins a cluster, submits :func:`~harness.frontends.sweep.task.run_task` once per task and hands each
outcome back as it finishes.  ``address`` ``None`` starts a local instance with the CPUs this
process may use (``os.sched_getaffinity``) or ``num_cpus``; its workers import the same source as
this process (its folder goes first on their ``PYTHONPATH``).  With ``address`` (``auto``,
``ray://host:10001``, ``host:6379``) the cluster's nodes must have the same interp-claims installed:
every payload carries the sha256 of the worker's source, and the driver refuses a mismatch.
A Ray session already open in this process (``ray.init`` called by the caller) is used as it is.
"""

from __future__ import annotations

import logging
import os
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from harness.core.cpu_identity import usable_cpu_ids
from harness.frontends.sweep.plan import SweepTask
from harness.frontends.sweep.task import TaskFailed, TaskOptions, run_task

EXTRA = "sweep"
RAY_PIN = "ray==2.60.0"


class SweepRayError(RuntimeError):
    """Ray is missing, or the cluster cannot be started or reached; the message says what to do."""


@dataclass
class TaskOutcome:
    """A finished task: its payload, or the error that ended it (``payload`` then ``None``)."""

    task: SweepTask
    payload: dict[str, Any] | None
    error: str | None = None


def import_ray() -> Any:
    """The ``ray`` module, or :class:`SweepRayError` naming the extra that installs it."""
    try:
        import ray
    except ImportError as exc:
        raise SweepRayError(
            f"claims sweep runs its tasks on Ray, which is not installed here ({exc}); install the "
            f"'{EXTRA}' extra: pip install -e '.[{EXTRA}]' (or pip install '{RAY_PIN}'); install.sh installs it"
        ) from None
    return ray


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask), else the machine's count."""
    return max(1, len(usable_cpu_ids()))


def source_root() -> str:
    """The folder holding this process's ``harness`` package (local workers import from it)."""
    return str(Path(__file__).resolve().parents[3])


@contextmanager
def ray_session(address: str | None, num_cpus: int | None) -> Iterator[Any]:
    """Ray, initialised for the sweep (and shut down after it, unless the caller had opened it)."""
    ray = import_ray()
    if address is not None:
        _check_reachable(address)
    if ray.is_initialized():
        if address is not None or num_cpus is not None:
            raise SweepRayError("Ray is already initialised in this process: its cluster runs the sweep; leave out --address and --num-cpus")
        yield ray
        return
    try:
        if address is None:
            path = os.pathsep.join(p for p in (source_root(), os.environ.get("PYTHONPATH", "")) if p)
            # "local": a new instance even where `ray start` left one (ray.init() would join that)
            ray.init(address="local", num_cpus=num_cpus or usable_cpus(), include_dashboard=False, logging_level=logging.ERROR,
                     runtime_env={"env_vars": {"PYTHONPATH": path}})
        else:
            ray.init(address=address)
    except Exception as exc:  # ConnectionError, ValueError, RuntimeError, TimeoutError: all mean "no cluster"
        where = "start a local Ray instance" if address is None else f"connect to the Ray cluster at {address!r}"
        raise SweepRayError(f"cannot {where}: {type(exc).__name__}: {exc}{_auth_hint(address)}") from None
    try:
        yield ray
    finally:
        ray.shutdown()


def _auth_hint(address: str | None) -> str:
    """Ray 2.60's clusters started by ``ray start`` require a token, which a driver sends only with
    ``RAY_AUTH_MODE=token`` (the token from ``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``)."""
    if address is None or os.environ.get("RAY_AUTH_MODE"):
        return ""
    return ("; if the cluster uses token authentication (the default of `ray start`), set RAY_AUTH_MODE=token "
            "with the cluster's token in ~/.ray/auth_token or RAY_AUTH_TOKEN")


def _check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """A ``HOST:PORT`` (or ``ray://HOST:PORT``) address answers a TCP connection within ``timeout_s``:
    Ray itself retries an address where nothing listens for minutes.  ``auto`` is left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        if address == "auto":
            return
        raise SweepRayError(f"--address {address!r}: give auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise SweepRayError(f"cannot connect to the Ray cluster at {address!r}: nothing answers there "
                            f"({exc.strerror or type(exc).__name__}); start one with `ray start --head` or leave out --address") from None


def run_on_ray(
    tasks: list[SweepTask], options: TaskOptions, *, address: str | None = None, num_cpus: int | None = None,
    cpus_per_task: int = 1, on_done: Callable[[TaskOutcome], None] = lambda outcome: None,
) -> list[TaskOutcome]:
    """Run every task on Ray (``cpus_per_task`` CPUs each); outcomes in the tasks' order.
    ``on_done`` sees each outcome as it finishes.  A task that raised or whose worker died is an
    outcome with ``error`` (after Ray's own retries of crashed workers), not an exception."""
    with ray_session(address, num_cpus) as ray:
        remote = ray.remote(num_cpus=cpus_per_task)(run_task)
        refs = {remote.remote(task, options): index for index, task in enumerate(tasks)}
        outcomes: list[TaskOutcome | None] = [None] * len(tasks)
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            for ref in done:
                task = tasks[refs[ref]]
                try:
                    outcome = TaskOutcome(task, ray.get(ref))
                except ray.exceptions.RayError as exc:
                    outcome = TaskOutcome(task, None, _short(exc))
                outcomes[refs[ref]] = outcome
                on_done(outcome)
        return [outcome for outcome in outcomes if outcome is not None]


def _short(exc: BaseException) -> str:
    """A task's failure in one line: the worker's own exception where Ray wraps one."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, TaskFailed):
        return str(cause)
    if isinstance(cause, BaseException):
        return f"{type(cause).__name__}: {cause}"
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
