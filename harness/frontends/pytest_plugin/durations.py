"""Longest scopes first under pytest-xdist: the scheduler's work units ordered by measured time.

xdist's scope scheduler hands each worker the next work unit (a model's claims, a test module)
in the order of its queue, by default the units with the most items first.  A unit's item
count says little about its time (two end-to-end tests can take longer than two hundred claims
read from the measurement cache), and a long unit handed out last leaves the other workers idle
while it runs.  With a file of measured times per unit (ini option ``claims_xdist_durations``,
JSON ``{scope: seconds}``), the queue is ordered longest first (the "longest processing time"
rule: the tail is then made of the shortest units); a unit the file does not name counts
:data:`SECONDS_PER_ITEM` per item.  The order changes which worker runs a unit and when, never
what runs: the collection, every item's outcome and the gathered ``results.json`` are the same.

``--claims-xdist-durations-out FILE`` (in the controller of an ``-n`` run) writes the times this
run measured per unit (setup + call + teardown of its items, seconds), to refresh that file.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from pathlib import Path
from typing import Callable, Mapping

import pytest

SECONDS_PER_ITEM = 0.05
"""The time assumed for each item of a unit the durations file does not name (a typical small test)."""

DURATIONS_KEY = pytest.StashKey[dict[str, float]]()
SPLIT_KEY = pytest.StashKey[Callable[[str], str]]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini("claims_xdist_durations", "JSON file of measured seconds per xdist work unit (scope): "
                  "units are handed to workers longest first", default="")
    parser.getgroup("interp-claims").addoption(
        "--claims-xdist-durations-out", metavar="FILE", default=None,
        help="under -n: write the seconds each xdist work unit (a model's claims, a test module) took to FILE")


def read_durations(config: pytest.Config) -> dict[str, float]:
    """The ini option's file (relative to the rootdir); empty when unset or missing.  A file that
    is not a JSON object of numbers is an error naming it."""
    name = str(config.getini("claims_xdist_durations") or "")
    if not name:
        return {}
    path = Path(config.rootpath) / name
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise pytest.UsageError(f"{path}: line {error.lineno}: not JSON ({error.msg})") from error
    if not isinstance(data, dict) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in data.values()):
        raise pytest.UsageError(f"{path}: expected a JSON object of scope -> seconds")
    return {str(scope): float(seconds) for scope, seconds in data.items()}


def longest_first(queue: Mapping[str, Mapping[str, bool]], durations: Mapping[str, float]) -> "OrderedDict[str, dict[str, bool]]":
    """The work units of ``queue`` (scope -> {node id: done}) ordered by expected time, longest
    first; ties keep the queue's order (Python's sort is stable)."""
    def expected(scope: str) -> float:
        return durations.get(scope, SECONDS_PER_ITEM * len(queue[scope]))

    return OrderedDict((scope, dict(queue[scope])) for scope in sorted(queue, key=lambda scope: -expected(scope)))


def remember_split(config: pytest.Config, split: Callable[[str], str]) -> None:
    """The scheduler's node id -> scope rule, for :class:`DurationRecorder` in the controller."""
    config.stash[SPLIT_KEY] = split
    config.stash[DURATIONS_KEY] = {}


class DurationRecorder:
    """Sums the reported durations of each scope in the controller (which receives every worker's
    reports) and writes them at the end; without the scheduler's rule (no ``-n``) it records nothing."""

    def __init__(self, config: pytest.Config, path: Path) -> None:
        self.config = config
        self.path = path

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        split = self.config.stash.get(SPLIT_KEY, None)
        if split is None:
            return
        totals = self.config.stash[DURATIONS_KEY]
        scope = split(report.nodeid)
        totals[scope] = totals.get(scope, 0.0) + float(report.duration)

    def pytest_sessionfinish(self) -> None:
        totals = self.config.stash.get(DURATIONS_KEY, {})
        if totals:
            rounded = {scope: round(seconds, 2) for scope, seconds in sorted(totals.items())}
            self.path.write_text(json.dumps(rounded, indent=1) + "\n", encoding="utf-8")


def pytest_configure(config: pytest.Config) -> None:
    out = config.getoption("--claims-xdist-durations-out", default=None)
    if out and not hasattr(config, "workerinput"):
        config.pluginmanager.register(DurationRecorder(config, Path(out)), "claims-xdist-durations-out")
