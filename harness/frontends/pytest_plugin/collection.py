"""Collecting claim files: one :class:`ClaimItem` per claim, run through the engine and judged."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from fixtures.registry import model_entries
from harness.core.errors import SpecError, SpecIssue
from harness.core.spec import Claim
from harness.frontends.pytest_plugin.baseline_check import baseline_differences
from harness.frontends.pytest_plugin.state import FILES_KEY, IDS_KEY, RESULTS_KEY, SESSION_KEY
from harness.loader import LoadedFile, load_claim_file
from harness.runner import ClaimResult, run_claim
from harness.verdicts import Verdict, format_value


def pytest_collect_file(file_path: Path, parent: pytest.Collector) -> pytest.Collector | None:
    if file_path.suffix in {".yaml", ".yml"} and "claims" in file_path.parts[:-1]:
        return ClaimYamlFile.from_parent(parent, path=file_path)
    return None


class ClaimYamlFile(pytest.File):
    """A claim file: validated at collection, one item per claim."""

    def collect(self) -> Iterator["ClaimItem"]:
        loaded = load_claim_file(self.path)
        ids = self.config.stash[IDS_KEY]
        self.config.stash[FILES_KEY][loaded.path] = loaded.sha256
        duplicates = []
        for index, claim in enumerate(loaded.spec.claims):
            first = ids.setdefault(claim.id, loaded.path)
            if first != loaded.path:
                location = loaded.source_map.locate(("claims", index, "id"), key=False)
                duplicates.append(SpecIssue(location, "id", f"claim id {claim.id!r} is already used in {first}"))
        if duplicates:
            raise SpecError(duplicates)
        for index, claim in enumerate(loaded.spec.claims):
            yield ClaimItem.from_parent(self, name=claim.id, loaded=loaded, claim=claim, index=index)

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:  # type: ignore[override]
        if isinstance(excinfo.value, SpecError):
            return f"invalid claim file:\n{excinfo.value}"
        return super().repr_failure(excinfo)


class ClaimFailure(Exception):
    """The verdict differs from the claim's expected verdict."""

    def __init__(self, result: ClaimResult, baseline_differences: list | None = None) -> None:
        self.result = result
        self.baseline_differences = baseline_differences or []
        super().__init__(result.claim.id)


class ClaimItem(pytest.Item):
    """One claim: measure, judge, compare with ``expected_verdict``."""

    def __init__(self, *, loaded: LoadedFile, claim: Claim, index: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.loaded = loaded
        self.claim = claim
        self.index = index
        self.model_name = loaded.model_of(claim) or ""
        self._add_markers()

    def _add_markers(self) -> None:
        entry = model_entries().get(self.model_name)
        for marker in entry.markers if entry else ():
            self.add_marker(marker)
        course = self.loaded.spec.source.course.lower()
        self.add_marker("arena" if course == "arena" else "project")
        if self.claim.slow:
            self.add_marker("slow")
        # one worker per model under -n (xdist reads the group after the last "@" of a node id)
        self.add_marker(pytest.mark.xdist_group((self.model_name or "no-model").replace("@", "%")))
        self.extra_keyword_matches.add(self.model_name)
        self.extra_keyword_matches.add(self.claim.metric)

    def runtest(self) -> None:
        session = self.config.stash[SESSION_KEY]
        result = run_claim(self.loaded, self.claim, session)
        self.config.stash[RESULTS_KEY].append(result)
        self._record(result)
        if result.verdict is Verdict.SKIPPED and self.claim.expected_verdict != "skipped":
            pytest.skip(result.reason or "skipped")
        if not result.passed:
            raise ClaimFailure(result)
        differences = baseline_differences(self.config, result)
        if differences:
            raise ClaimFailure(result, baseline_differences=differences)

    def _record(self, result: ClaimResult) -> None:
        self.user_properties.append(("verdict", result.verdict.value))
        self.user_properties.append(("expected_verdict", self.claim.expected_verdict))
        if result.measurement is not None:
            self.user_properties.append(("measured", format_value(result.measurement)))
        self.user_properties.append(("expectation", self.claim.expect.describe()))
        self.user_properties.append(("model", result.model))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> str:  # type: ignore[override]
        if isinstance(excinfo.value, ClaimFailure):
            message = failure_message(excinfo.value.result)
            for difference in excinfo.value.baseline_differences:
                message += f"\n  baseline  : {difference.kind.upper()}: {difference.message}"
            return message
        return super().repr_failure(excinfo)

    def reportinfo(self) -> tuple[Path, int, str]:
        line = self.loaded.source_map.locate(("claims", self.index)).line
        return self.path, line - 1, f"claim {self.claim.id}"


def failure_message(result: ClaimResult) -> str:
    """What a researcher needs when a claim does not come out as expected; no traceback."""
    claim = result.claim
    measured = format_value(result.measurement) if result.measurement is not None else "(no measurement)"
    lines = [
        f"claim {claim.id}: verdict {result.verdict.value.upper()}, expected {claim.expected_verdict}",
        f"  statement : {claim.statement}",
        f"  model     : {result.model}",
        f"  metric    : {claim.metric}{_params(claim.params)}{f' [select {claim.select}]' if claim.select else ''}",
        f"  measured  : {measured}",
    ]
    if result.reference is not None:
        lines.append(f"  reference : {format_value(result.reference)}")
    lines.append(f"  expected  : {claim.expect.describe()}")
    if result.reason:
        lines.append(f"  reason    : {result.reason}")
    if claim.source:
        lines.append(f"  source    : {claim.source.ref} ({claim.source.provenance})")
    lines.append(f"  rerun     : pytest '{result.node_id}'")
    return "\n".join(lines)


def _params(params: dict[str, Any]) -> str:
    return "(" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else ""
