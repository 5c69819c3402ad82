"""``--claims-out DIR``: write ``results.json``, ``report.md`` and ``report.html`` when the run ends."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.frontends.output import write_outputs
from harness.frontends.pytest_plugin.state import FILES_KEY, RESULTS_KEY, SESSION_KEY


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    out = config.getoption("--claims-out", default=None)
    results = config.stash.get(RESULTS_KEY, [])
    if out and results:
        write_outputs(Path(out), results, config.stash[FILES_KEY], config.stash[SESSION_KEY])
