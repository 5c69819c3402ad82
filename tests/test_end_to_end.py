"""The pytest plugin and the CLI end to end, on the planted model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import transformer_lens  # noqa: F401  (imported once here: pytester's in-process runs must not re-import it)

import fixtures.planted  # noqa: F401
from harness.frontends.cli import main as claims_main
from harness.context import MetricContext
from harness.loader import load_claim_text
from harness.core.measurement import Measurement
from harness.registry import metric
from harness.runner import run_claim
from harness.session import Session

pytest_plugins = ["pytester"]


@metric("testing.nan")
def nan_metric(ctx: MetricContext) -> Measurement:
    """A broken metric: returns NaN (the verdict must be 'error')."""
    return Measurement(float("nan"))


HEADER = """\
source: {course: project, chapter: tests}
model: planted-attn-2l
claims:
"""

INDUCTION = """\
  - id: {id}
    statement: Head 1.0 is an induction head.
    inputs: {{repeated_random: {{seq_len: 12, batch: 2, seed: 0}}}}
    metric: attention.scores
    params: {{pattern: induction}}
    select: "{head}"
    expect: {{">": 0.4}}
    expected_verdict: {expected}
"""


def claim_file(*claims: str) -> str:
    return HEADER + "".join(claims)


def write_claims(pytester: pytest.Pytester, text: str, name: str = "claims/demo.yaml") -> Path:
    path = pytester.path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_supported_and_refuted_claims_pass_when_expected(pytester: pytest.Pytester) -> None:
    write_claims(pytester, claim_file(
        INDUCTION.format(id="true-claim", head="1.0", expected="supported"),
        INDUCTION.format(id="false-claim", head="0.0", expected="refuted"),
    ))
    result = pytester.runpytest_inprocess("claims", "-q")
    result.assert_outcomes(passed=2)


def test_refuted_claim_expected_supported_fails_readably(pytester: pytest.Pytester) -> None:
    write_claims(pytester, claim_file(INDUCTION.format(id="wrong", head="0.0", expected="supported")))
    result = pytester.runpytest_inprocess("claims", "-q")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([
        "*claim wrong: verdict REFUTED, expected supported*",
        "*measured  : 0.0000*",
        "*expected  : > 0.4*",
        "*rerun     : pytest 'claims/demo.yaml::wrong'*",
    ])
    assert "Traceback" not in result.stdout.str()


def test_expected_refuted_but_supported_fails(pytester: pytest.Pytester) -> None:
    write_claims(pytester, claim_file(INDUCTION.format(id="surprise", head="1.0", expected="refuted")))
    result = pytester.runpytest_inprocess("claims", "-q")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*claim surprise: verdict SUPPORTED, expected refuted*"])


def test_nan_metric_is_an_error_verdict(pytester: pytest.Pytester) -> None:
    write_claims(pytester, claim_file(
        "  - id: broken\n    statement: x\n    metric: testing.nan\n    expect: {'>=': 0}\n"
    ))
    result = pytester.runpytest_inprocess("claims", "-q")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*verdict ERROR*", "*reason    : metric 'testing.nan': the metric returned nan*"])


def test_invalid_file_is_a_collection_error_with_location(pytester: pytest.Pytester) -> None:
    text = claim_file(INDUCTION.format(id="typo", head="1.0", expected="supported")).replace("select:", "selcet:")
    write_claims(pytester, text)
    result = pytester.runpytest_inprocess("claims", "-q")
    assert result.ret != 0
    expected = "claims/demo.yaml:9:5: [claims[0].selcet] unknown key 'selcet' (did you mean 'select'?); allowed keys: id,"
    assert expected in result.stdout.str()
    assert "Traceback" not in result.stdout.str()


def test_duplicate_id_across_files_is_an_error(pytester: pytest.Pytester) -> None:
    write_claims(pytester, claim_file(INDUCTION.format(id="same", head="1.0", expected="supported")), "claims/a.yaml")
    write_claims(pytester, claim_file(INDUCTION.format(id="same", head="1.0", expected="supported")), "claims/b.yaml")
    result = pytester.runpytest_inprocess("claims", "-q")
    result.stdout.fnmatch_lines(["*claim id 'same' is already used in*"])
    assert result.ret != 0


def test_claims_out_writes_record_and_report(pytester: pytest.Pytester) -> None:
    write_claims(pytester, claim_file(INDUCTION.format(id="c1", head="1.0", expected="supported")))
    result = pytester.runpytest_inprocess("claims", "-q", "--claims-out", "out", "--junitxml", "junit.xml")
    result.assert_outcomes(passed=1)
    record = json.loads((pytester.path / "out" / "results.json").read_text())
    assert record["schema_version"] == 1
    (entry,) = record["claims"]
    assert entry["id"] == "c1" and entry["verdict"] == "supported" and entry["value"] > 0.4
    assert record["provenance"]["spec_files"]
    assert "#claim-c1" in (pytester.path / "out" / "report.md").read_text()
    junit = (pytester.path / "junit.xml").read_text()
    assert 'name="verdict" value="supported"' in junit and 'name="measured"' in junit


def test_cli_run_exit_code_and_outputs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "claims").mkdir()
    (tmp_path / "claims" / "ok.yaml").write_text(claim_file(INDUCTION.format(id="ok", head="1.0", expected="supported")))
    assert claims_main(["run", "claims", "--out", "out", "--no-progress"]) == 0
    assert (tmp_path / "out" / "results.json").exists() and (tmp_path / "out" / "report.md").exists()
    (tmp_path / "claims" / "bad.yaml").write_text(
        claim_file("  - id: nan\n    statement: x\n    metric: testing.nan\n    expect: {'>=': 0}\n").replace("source: {course: project, chapter: tests}", "source: {course: project}")
    )
    assert claims_main(["run", "claims", "--out", "out", "--no-progress"]) == 1
    assert "NOT AS EXPECTED" in capsys.readouterr().out


def test_forward_pass_is_shared_between_claims() -> None:
    text = claim_file(
        INDUCTION.format(id="a", head="1.0", expected="supported"),
        INDUCTION.format(id="b", head="0.0", expected="refuted"),
        INDUCTION.replace("pattern: induction", "pattern: previous").format(id="c", head="0.0", expected="supported"),
    )
    loaded = load_claim_text(text, "claims/inline.yaml")
    session = Session()
    results = [run_claim(loaded, claim, session) for claim in loaded.spec.claims]
    assert [r.passed for r in results] == [True, True, True]
    assert session.forward_count == 1


def test_claims_weights_option_rejects_bad_values(pytester: pytest.Pytester) -> None:
    write_claims(pytester, claim_file(INDUCTION.format(id="w", head="1.0", expected="supported")))
    result = pytester.runpytest_inprocess("claims", "-q", "--claims-weights", "no-equals-sign")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "expects NAME=PATH" in result.stderr.str()
    result = pytester.runpytest_inprocess("claims", "-q", "--claims-weights", "arena-attn-only-2l=missing.pth")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "no such file" in result.stderr.str()
