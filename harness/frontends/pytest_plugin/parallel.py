"""pytest-xdist (``pytest -n auto``): claims grouped by model, the workers' records gathered.

``-n`` without an explicit ``--dist`` schedules by model (:func:`model_scheduling`), the longest work units first
(:mod:`.durations`): all the
claims on one model run in one worker, which loads that model once (claim items also carry
``xdist_group(<model>)`` for ``--dist loadgroup`` where xdist can honour it).  Each worker
measures its claims in its own :class:`~harness.session.Session`; when it finishes it hands the controller its claim entries (JSON, with their place in the
collection order), the models it loaded, the claim files' sha256, its measurement cache counts
and the baseline claims it found missing.  The controller, which collects nothing itself, writes
``--claims-out`` from the gathered entries in collection order (the same ``results.json``
values and verdicts as a serial run) and fails the run on missing baseline claims.  Baseline
differences of a claim are judged in its worker, as in a serial run.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from harness.frontends.output import model_summaries
from harness.frontends.pytest_plugin.durations import longest_first, read_durations, remember_split
from harness.loader import load_claim_file
from harness.frontends.pytest_plugin.state import FILES_KEY, MISSING_KEY, RESULTS_KEY, SESSION_KEY
from harness.record import claim_entry, to_json

WORKER_OUTPUT = "interp_claims"
"""The key of this plugin's payload in an xdist worker's ``workeroutput``."""


@dataclass
class Gathered:
    """What the controller received from its workers."""

    entries: list[tuple[int, dict[str, Any]]] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    cache: dict[str, Any] | None = None
    missing: list[str] = field(default_factory=list)
    #: The workers' torch thread counts (the record's ``provenance.torch_threads``: the workers
    #: measured, not the controller).
    torch_threads: set[int] = field(default_factory=set)

    def add(self, payload: dict[str, Any]) -> None:
        self.entries += [(position, entry) for position, entry in payload["entries"]]
        self.files.update(payload["files"])
        for name, model in payload["models"].items():
            self.models.setdefault(name, model)
        self.cache = _add_counts(self.cache, payload["cache"])
        self.missing += [claim_id for claim_id in payload["missing"] if claim_id not in self.missing]
        if payload.get("torch_threads") is not None:
            self.torch_threads.add(payload["torch_threads"])

    def ordered_entries(self) -> list[dict[str, Any]]:
        """The claim entries in collection order (a serial run's order)."""
        return [entry for _, entry in sorted(self.entries, key=lambda pair: pair[0])]


GATHERED_KEY = pytest.StashKey[Gathered]()


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def is_controller(config: pytest.Config) -> bool:
    """An xdist controller: it runs no test itself, its workers do."""
    return config.pluginmanager.has_plugin("dsession")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xdist_group(name): claims on one model run in one pytest-xdist worker")
    config.stash[GATHERED_KEY] = Gathered()
    if is_worker(config):
        share_cpus(int(config.workerinput.get("workercount", 1)))  # type: ignore[attr-defined]


def worker_threads(workers: int, cpus: int) -> int:
    """Torch threads for each of ``workers`` workers on ``cpus`` CPUs: an equal share, at least one."""
    return max(1, cpus // max(1, workers))


def share_cpus(workers: int) -> None:
    """Give this worker its share of the CPUs this process may use: torch's intra-op threads, and
    ``$INTERP_CLAIMS_CPU_SHARE`` for the suite's own parallel work (the OV kernel's worker threads,
    the report's plot processes; :func:`harness.core.cpu_identity.cpu_share`).

    torch starts one thread per CPU in every process: ``-n 2`` on two cores would run four threads
    on two cores, and a small model's operations cost several times more CPU on threads that wait
    for a core (the toy's evaluation loss: 23.5 s of CPU on two threads, 3.9 s on one, on a loaded
    2-core machine).  The thread count changes no claim's verdict; values move by float rounding
    at most, which the baseline's tolerances hold (serial runs of the claims on one thread pass it).
    """
    import torch

    from harness.core.cpu_identity import CPU_SHARE_VARIABLE, usable_cpu_ids

    threads = worker_threads(workers, len(usable_cpu_ids()))
    torch.set_num_threads(threads)
    os.environ[CPU_SHARE_VARIABLE] = str(threads)  # the OV kernel's threads, the report's plot processes


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``-n`` without an explicit ``--dist``: schedule by model (:func:`model_scheduling`)."""
    if config.getoption("dist", default="no") != "load" or _dist_given(config):
        return None
    return model_scheduling(config, log)


def model_scheduling(config: pytest.Config, log: Any) -> Any:
    """xdist's scope scheduler with one scope per model: a claim's scope is its model (read from
    its claim file, without torch), so one worker measures every claim on that model and loads it
    once; any other test's scope is its module (``--dist loadscope``).  xdist's own ``loadgroup``
    reads the group from a suffix of the node id, which it cannot set under pytest 9."""
    from xdist.scheduler import LoadScopeScheduling

    models = _ClaimModels(config.rootpath)
    durations = read_durations(config)

    class ModelScheduling(LoadScopeScheduling):  # type: ignore[misc, valid-type]
        ordered = False

        def _split_scope(self, nodeid: str) -> str:
            return models.scope(nodeid) or super()._split_scope(nodeid)

        def _assign_work_unit(self, node: Any) -> None:
            if not self.ordered:  # the first assignment: the queue is complete, longest units first
                self.workqueue = longest_first(self.workqueue, durations)
                self.ordered = True
            super()._assign_work_unit(node)

    scheduler = ModelScheduling(config, log)
    remember_split(config, scheduler._split_scope)
    return scheduler


class _ClaimModels:
    """The model of each claim, by node id ``<claim file>::<claim id>`` (each file read once)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.files: dict[str, dict[str, str]] = {}

    def scope(self, nodeid: str) -> str | None:
        path, _, claim_id = nodeid.partition("::")
        if not path.endswith((".yaml", ".yml")):
            return None
        if path not in self.files:
            try:
                loaded = load_claim_file(self.root / path, check_names=False)  # its worker checks the names
                self.files[path] = {claim.id: loaded.model_of(claim) or "" for claim in loaded.spec.claims}
            except Exception:  # an invalid file fails in its worker, where it is collected
                self.files[path] = {}
        model = self.files[path].get(claim_id)
        return None if model is None else f"model:{model}"


def _dist_given(config: pytest.Config) -> bool:
    args = [str(arg) for arg in config.invocation_params.args]
    return any(arg == "--dist" or arg.startswith("--dist=") or arg in ("-d",) for arg in args)


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In a worker: hand this worker's results to the controller.  In the controller: fail the
    run on baseline claims the workers found missing."""
    config = session.config
    if is_worker(config):
        config.workeroutput[WORKER_OUTPUT] = _payload(session)  # type: ignore[attr-defined]
    elif is_controller(config):
        missing = config.stash[GATHERED_KEY].missing
        if missing:
            config.stash[MISSING_KEY] = missing
            session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: Any) -> None:
    """The controller receives one worker's payload when that worker finishes."""
    payload = getattr(node, "workeroutput", {}).get(WORKER_OUTPUT)
    if payload:
        node.config.stash[GATHERED_KEY].add(json.loads(payload))


def _payload(session: pytest.Session) -> str:
    """This worker's claim entries (with their collection position), models, files, cache counts, missing claims."""
    config = session.config
    position = {item.claim.id: index for index, item in enumerate(session.items) if hasattr(item, "claim")}
    state = config.stash[SESSION_KEY]
    results = config.stash.get(RESULTS_KEY, [])
    return to_json({
        "entries": [[position.get(result.claim.id, len(position)), claim_entry(result)] for result in results],
        "files": dict(config.stash.get(FILES_KEY, {})),
        "models": model_summaries(state),
        "cache": state.cache.summary() if state.cache is not None else None,
        "missing": list(config.stash.get(MISSING_KEY, [])),
        "torch_threads": torch.get_num_threads() if (torch := sys.modules.get("torch")) is not None else None,
    })


def _add_counts(total: dict[str, Any] | None, part: dict[str, Any] | None) -> dict[str, Any] | None:
    """Two workers' measurement cache summaries added (counts summed)."""
    if part is None:
        return total
    if total is None:
        return dict(part)
    return {key: total[key] + value if isinstance(value, int) and not isinstance(value, bool) else value
            for key, value in part.items()}
