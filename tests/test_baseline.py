"""Baselines: bless, diff, --claims-baseline; flips, drift, new and disappeared claims."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformer_lens  # noqa: F401  (imported once: pytester's in-process runs must not re-import it)

import fixtures.planted  # noqa: F401
from harness.cli import main as claims_main
from reports.baseline import diff, make_baseline, value_drift

pytest_plugins = ["pytester"]

CLAIMS = """\
source: {course: project}
model: planted-attn-2l
claims:
  - id: prev-score
    statement: Head 0.0 attends to the previous token.
    inputs: {repeated_random: {seq_len: 12, batch: 2, seed: 0}}
    metric: attention.scores
    params: {pattern: previous}
    select: "0.0"
    expect: {">=": THRESHOLD}
  - id: induction-heads
    statement: Head 1.0 is the induction head.
    inputs: {repeated_random: {seq_len: 12, batch: 2, seed: 0}}
    metric: attention.detect
    params: {pattern: induction}
    expect: {equals: ["1.0"]}
"""


def write(root: Path, threshold: str = "0.9", extra: str = "") -> None:
    (root / "claims").mkdir(exist_ok=True)
    (root / "claims" / "demo.yaml").write_text(CLAIMS.replace("THRESHOLD", threshold) + extra)


def run(root: Path, out: str) -> dict:
    code = claims_main(["run", "claims", "--out", out, "--no-progress"])
    assert code in (0, 1)
    return json.loads((root / out / "results.json").read_text())


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    write(tmp_path)
    return tmp_path


def test_two_runs_give_identical_values(workdir: Path) -> None:
    first, second = run(workdir, "a"), run(workdir, "b")
    strip = lambda record: [{k: v for k, v in e.items() if k != "duration_s"} for e in record["claims"]]
    assert strip(first) == strip(second)


def test_bless_then_diff_clean_then_flip(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(workdir, "a")
    assert claims_main(["bless", "a/results.json", "baseline.json"]) == 0
    assert claims_main(["diff", "baseline.json", "a/results.json"]) == 0
    write(workdir, threshold="1.5")  # 0.0's score is 1.0: now refuted
    run(workdir, "b")
    capsys.readouterr()
    assert claims_main(["diff", "baseline.json", "b/results.json"]) == 1
    out = capsys.readouterr().out
    assert "FLIP     prev-score: verdict supported -> refuted" in out


def test_new_and_missing_claims_are_reported(workdir: Path) -> None:
    record = run(workdir, "a")
    baseline = make_baseline(record)
    del baseline["claims"]["induction-heads"]
    baseline["claims"]["gone"] = dict(baseline["claims"]["prev-score"])
    report = diff(baseline, record)
    assert [d.claim_id for d in report.of_kind("new")] == ["induction-heads"]
    assert [d.claim_id for d in report.of_kind("missing")] == ["gone"]
    assert report.exit_code == 1


def test_corrupt_and_foreign_baselines_are_clear_errors(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(workdir, "a")
    (workdir / "corrupt.json").write_text('{"format": "interp-claims-baseline", "vers')
    (workdir / "foreign.json").write_text('{"some": "other tool"}')
    assert claims_main(["diff", "corrupt.json", "a/results.json"]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    assert claims_main(["diff", "foreign.json", "a/results.json"]) == 2
    assert "not an interp-claims baseline" in capsys.readouterr().err


def test_drift_rules() -> None:
    assert value_drift(0.5, 0.5, None, None, {"abs": 1e-6, "rel": 1e-5}) is None
    assert value_drift(0.51, 0.5, None, None, {"abs": 1e-6, "rel": 1e-5}) is not None
    assert value_drift(0.51, 0.5, None, None, {"abs": 0.02, "rel": 0}) is None
    assert value_drift(0.51, 0.5, 0.01, 0.0, {"abs": 0.0, "rel": 0}) is None  # within 2 SE
    assert value_drift(["1.4", "1.10"], ["1.10", "1.4"], None, None, {}) is None
    assert value_drift(["1.4"], ["1.10", "1.4"], None, None, {}) is not None
    assert value_drift({"top1": 0.3}, {"top1": 0.31}, None, None, {"abs": 1e-6, "rel": 1e-5}).startswith("[top1]")


def test_pytest_baseline_option_fails_and_names_flipped_claim(pytester: pytest.Pytester) -> None:
    write(pytester.path)
    pytester.runpytest_inprocess("claims", "-q", "--claims-out", "a").assert_outcomes(passed=2)
    assert claims_main(["bless", str(pytester.path / "a/results.json"), str(pytester.path / "baseline.json")]) == 0
    pytester.runpytest_inprocess("claims", "-q", "--claims-baseline", "baseline.json").assert_outcomes(passed=2)
    write(pytester.path, threshold="1.5")
    result = pytester.runpytest_inprocess("claims", "-q", "--claims-baseline", "baseline.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*claim prev-score: verdict REFUTED, expected supported*"])
    # The spec now expects the refutation, so only the baseline can catch the flip.
    text = CLAIMS.replace("THRESHOLD", "1.5").replace('expect: {">=": 1.5}', 'expect: {">=": 1.5}\n    expected_verdict: refuted')
    (pytester.path / "claims" / "demo.yaml").write_text(text)
    result = pytester.runpytest_inprocess("claims", "-q", "--claims-baseline", "baseline.json")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*baseline  : FLIP: verdict supported -> refuted*"])
    write(pytester.path, threshold="0.95", extra="")  # verdict unchanged, value unchanged: passes
    pytester.runpytest_inprocess("claims", "-q", "--claims-baseline", "baseline.json").assert_outcomes(passed=2)


def test_pytest_baseline_reports_disappeared_claim(pytester: pytest.Pytester) -> None:
    write(pytester.path)
    pytester.runpytest_inprocess("claims", "-q", "--claims-out", "a").assert_outcomes(passed=2)
    claims_main(["bless", str(pytester.path / "a/results.json"), str(pytester.path / "baseline.json")])
    text = CLAIMS.replace("THRESHOLD", "0.9").split("  - id: induction-heads")[0]
    (pytester.path / "claims" / "demo.yaml").write_text(text)
    result = pytester.runpytest_inprocess("claims", "-q", "--claims-baseline", "baseline.json")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*MISSING induction-heads*"])
