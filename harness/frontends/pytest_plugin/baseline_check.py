"""``--claims-baseline FILE``: fail claims that flipped or drifted, report claims that are new or gone."""

from __future__ import annotations

from typing import Any

import pytest

from harness.frontends.pytest_plugin.state import BASELINE_KEY, FILES_KEY, IDS_KEY, MISSING_KEY, RESULTS_KEY
from harness.record import claim_entry
from harness.runner import ClaimResult
from reports.baseline import BaselineError, Difference, compare_entry, load_baseline


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    """Read and check the baseline before anything runs (a bad baseline is a usage error)."""
    path = config.getoption("--claims-baseline", default=None)
    if path:
        try:
            config.stash[BASELINE_KEY] = load_baseline(path)
        except BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None


def baseline_differences(config: pytest.Config, result: ClaimResult) -> list[Difference]:
    """How ``result`` differs from its baseline entry (none without ``--claims-baseline``)."""
    baseline = config.stash.get(BASELINE_KEY, None)
    if baseline is None:
        return []
    claim_id = result.claim.id
    base = baseline["claims"].get(claim_id)
    if base is None:
        return [Difference(claim_id, "new", "not in the baseline (bless a new baseline to accept it)")]
    return compare_entry(claim_id, claim_entry(result), base)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when baseline claims disappeared from their claim files."""
    _report_missing_from_baseline(session)


def _report_missing_from_baseline(session: pytest.Session) -> None:
    """Baseline claims whose file was collected but which did not run: they disappeared."""
    config = session.config
    baseline = config.stash.get(BASELINE_KEY, None)
    if baseline is None:
        return
    files = set(config.stash[FILES_KEY])
    ran = {result.claim.id for result in config.stash[RESULTS_KEY]}
    collected = set(config.stash[IDS_KEY])
    missing = [
        claim_id for claim_id, base in baseline["claims"].items()
        if base.get("file") in files and claim_id not in collected and claim_id not in ran
    ]
    if missing:
        config.stash[MISSING_KEY] = missing
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    missing = config.stash.get(MISSING_KEY, [])
    if missing:
        terminalreporter.section("interp-claims baseline", sep="=", red=True)
        for claim_id in missing:
            terminalreporter.line(f"MISSING {claim_id}: in the baseline but no longer in its claim file")
