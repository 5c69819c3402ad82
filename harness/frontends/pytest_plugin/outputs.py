"""``--claims-out DIR``: write ``results.json``, ``report.md`` and ``report.html`` when the run ends
(under pytest-xdist: in the controller, from the entries its workers gathered, :mod:`.parallel`)."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.frontends.output import spec_inventory, write_outputs, write_record
from harness.frontends.pytest_plugin.parallel import GATHERED_KEY, is_controller, is_worker
from harness.frontends.pytest_plugin.state import FILES_KEY, RESULTS_KEY, SESSION_KEY
from harness.record import record_from_entries


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    out = config.getoption("--claims-out", default=None)
    if not out or is_worker(config):
        return
    if is_controller(config):
        gathered = config.stash[GATHERED_KEY]
        entries = gathered.ordered_entries()
        if entries:
            record = record_from_entries(entries, gathered.files, gathered.models, spec_inventory(gathered.files), gathered.cache)
            if gathered.torch_threads:  # the workers measured, each on its share of the CPUs
                record["provenance"]["torch_threads"] = max(gathered.torch_threads)
            write_record(Path(out), record)
        return
    results = config.stash.get(RESULTS_KEY, [])
    if results:
        write_outputs(Path(out), results, config.stash[FILES_KEY], config.stash[SESSION_KEY])
