"""Baselines: bless, diff, --claims-baseline; flips, drift, new and disappeared claims."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import transformer_lens  # noqa: F401  (imported once: pytester's in-process runs must not re-import it)

import fixtures.planted  # noqa: F401
from harness.frontends.cli import main as claims_main
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


@pytest.fixture(scope="module")
def blessed_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One real run of the demo claims (``a/``) and the baseline blessed from it, in a folder of its
    own; the tests that damage them work on copies (:func:`blessed`)."""
    root = tmp_path_factory.mktemp("blessed")
    write(root)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        run(root, "a")
        assert claims_main(["bless", "a/results.json", "baseline.json"]) == 0
    return root


@pytest.fixture
def blessed(workdir: Path, blessed_run: Path) -> dict:
    """A baseline blessed from a real run, as data, with ``a/results.json`` beside it (copied into
    ``workdir``, which holds the same claim file)."""
    assert (workdir / "claims" / "demo.yaml").read_bytes() == (blessed_run / "claims" / "demo.yaml").read_bytes()
    shutil.copytree(blessed_run / "a", workdir / "a")
    shutil.copyfile(blessed_run / "baseline.json", workdir / "baseline.json")
    return json.loads((workdir / "baseline.json").read_text())


def test_two_runs_give_identical_values(workdir: Path, blessed_run: Path) -> None:
    """A second run (here, of the same claim file) writes the first run's (the module's) values."""
    first = json.loads((blessed_run / "a" / "results.json").read_text())
    second = run(workdir, "b")
    strip = lambda record: [{k: v for k, v in e.items() if k != "duration_s"} for e in record["claims"]]
    assert strip(first) == strip(second)


def test_bless_then_diff_clean_then_flip(workdir: Path, blessed: dict, capsys: pytest.CaptureFixture[str]) -> None:
    assert claims_main(["bless", "a/results.json", "baseline.json"]) == 0
    assert claims_main(["diff", "baseline.json", "a/results.json"]) == 0
    write(workdir, threshold="1.5")  # 0.0's score is 1.0: now refuted
    run(workdir, "b")
    capsys.readouterr()
    assert claims_main(["diff", "baseline.json", "b/results.json"]) == 1
    out = capsys.readouterr().out
    assert "FLIP     prev-score: verdict supported -> refuted" in out


def test_new_and_missing_claims_are_reported(workdir: Path, blessed: dict) -> None:
    record = json.loads((workdir / "a" / "results.json").read_text())
    baseline = make_baseline(record)
    del baseline["claims"]["induction-heads"]
    baseline["claims"]["gone"] = dict(baseline["claims"]["prev-score"])
    report = diff(baseline, record)
    assert [d.claim_id for d in report.of_kind("new")] == ["induction-heads"]
    assert [d.claim_id for d in report.of_kind("missing")] == ["gone"]
    assert report.exit_code == 1


def test_corrupt_and_foreign_baselines_are_clear_errors(workdir: Path, blessed: dict, capsys: pytest.CaptureFixture[str]) -> None:
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


def test_pytest_baseline_reports_disappeared_claim(pytester: pytest.Pytester, blessed_run: Path) -> None:
    write(pytester.path)
    shutil.copyfile(blessed_run / "baseline.json", pytester.path / "baseline.json")
    text = CLAIMS.replace("THRESHOLD", "0.9").split("  - id: induction-heads")[0]
    (pytester.path / "claims" / "demo.yaml").write_text(text)
    result = pytester.runpytest_inprocess("claims", "-q", "--claims-baseline", "baseline.json")
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*MISSING induction-heads*"])


# --- unusable baselines and results files: a clear message, exit 2 ------------------------------------


def damaged(workdir: Path, baseline: dict, claim_id: str, **changes) -> str:
    """Write ``baseline`` with ``changes`` to ``claim_id``'s entry (``None`` deletes a key) as raw JSON text."""
    entry = baseline["claims"][claim_id]
    for key, value in changes.items():
        if value is None:
            entry.pop(key)
        else:
            entry[key] = value
    (workdir / "damaged.json").write_text(json.dumps(baseline))  # json writes NaN and Infinity as bare tokens
    return "damaged.json"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"verdict": None}, "claim 'prev-score': key 'verdict' must be one of supported, refuted, inconclusive, error, skipped, not '(missing)'"),
        ({"verdict": "passed"}, "claim 'prev-score': key 'verdict' must be one of"),
        ({"tolerance": {"abs": "tiny", "rel": 0.0}}, "claim 'prev-score': key 'tolerance.abs' must be a finite number >= 0, not 'tiny'"),
        ({"tolerance": {"abs": -1.0}}, "claim 'prev-score': key 'tolerance.abs' must be a finite number >= 0, not -1.0"),
        ({"tolerance": {"abs": float("inf")}}, "key 'tolerance.abs' must be a finite number >= 0, not inf"),
        ({"tolerance": 0.1}, "claim 'prev-score': key 'tolerance' must be an object"),
        ({"value": float("nan")}, "claim 'prev-score': key 'value' holds a non-finite number (the value is nan)"),
        ({"uncertainty": float("inf")}, "claim 'prev-score': key 'uncertainty' holds a non-finite number (the value is inf)"),
        ({"value": {"0.0": 1.0, "1.0": float("-inf")}}, "key 'value' holds a non-finite number ([1.0] is -inf)"),
    ],
)
def test_unusable_baseline_entries_are_clear_errors(workdir: Path, blessed: dict, capsys, changes: dict, message: str) -> None:
    path = damaged(workdir, blessed, "prev-score", **changes)
    assert claims_main(["diff", path, "a/results.json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"claims diff: baseline {path}: ") and message in err and "Traceback" not in err


def test_nan_baseline_is_refused_by_the_pytest_option(pytester: pytest.Pytester, blessed_run: Path) -> None:
    write(pytester.path)
    text = (blessed_run / "baseline.json").read_text()
    baseline = json.loads(text)
    baseline["claims"]["prev-score"]["value"] = float("nan")
    (pytester.path / "baseline.json").write_text(json.dumps(baseline))
    result = pytester.runpytest_inprocess("claims", "-q", "--claims-baseline", "baseline.json")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "claim 'prev-score': key 'value' holds a non-finite number" in result.stderr.str()


def test_non_finite_values_always_drift() -> None:
    """A NaN on either side never passes the drift check (every comparison with NaN is false)."""
    assert value_drift(float("nan"), 0.5, None, None, {"abs": 1.0, "rel": 0.0}) is not None
    assert value_drift(0.5, float("inf"), None, None, {"abs": 1.0, "rel": 0.0}) is not None
    assert value_drift({"a": float("nan")}, {"a": 0.5}, None, None, {"abs": 1.0}) is not None


def test_results_or_baseline_path_that_is_a_folder_is_a_clear_error(workdir: Path, blessed: dict, capsys) -> None:
    (workdir / "folder").mkdir()
    for command in (["diff", "baseline.json", "folder"], ["diff", "folder", "a/results.json"], ["bless", "folder", "b.json"],
                    ["report", "prev-score", "--results", "folder"]):
        assert claims_main(command) == 2, command
        err = capsys.readouterr().err
        assert "folder: is a folder, not a file" in err and "Traceback" not in err, command
    assert claims_main(["bless", "a/results.json", "folder"]) == 2
    assert capsys.readouterr().err.strip() == "claims bless: baseline folder is a folder; give the file to write"


def test_results_entry_without_verdict_is_a_clear_error(workdir: Path, blessed: dict, capsys) -> None:
    record = json.loads((workdir / "a" / "results.json").read_text())
    del record["claims"][1]["verdict"]
    (workdir / "broken.json").write_text(json.dumps(record))
    assert claims_main(["diff", "baseline.json", "broken.json"]) == 2
    assert "claim 'induction-heads': key 'verdict' must be one of" in capsys.readouterr().err
    assert claims_main(["bless", "broken.json", "b.json"]) == 2
    assert "claim 'induction-heads': key 'verdict'" in capsys.readouterr().err


def test_bless_update_replaces_only_the_files_the_run_measured(workdir: Path, blessed: dict) -> None:
    old = dict(blessed)
    old["claims"] = {**blessed["claims"], "other-file-claim": {**blessed["claims"]["prev-score"], "file": "claims/other.yaml"},
                     "deleted-from-this-file": {**blessed["claims"]["prev-score"]}}
    (workdir / "baseline.json").write_text(json.dumps(old))
    assert claims_main(["bless", "--update", "a/results.json", "baseline.json"]) == 0
    updated = json.loads((workdir / "baseline.json").read_text())["claims"]
    assert "other-file-claim" in updated
    assert "deleted-from-this-file" not in updated
    assert {k: v for k, v in updated.items() if k != "other-file-claim"} == blessed["claims"]
    assert list(updated) == sorted(updated)


def test_bless_update_from_a_filtered_run_keeps_the_files_other_claims(workdir: Path, blessed: dict) -> None:
    """A run filtered to one claim (``-k``) re-blesses that claim and loses none of its file's others."""
    stale = {**blessed["claims"]["prev-score"], "value": -1.0}
    (workdir / "baseline.json").write_text(json.dumps({**blessed, "claims": {**blessed["claims"], "prev-score": stale}}))
    assert claims_main(["run", "claims", "-k", "prev-score", "--out", "k", "--no-progress"]) == 0
    record = json.loads((workdir / "k" / "results.json").read_text())
    assert [e["id"] for e in record["claims"]] == ["prev-score"]
    assert record["provenance"]["spec_claim_ids"] == {"claims/demo.yaml": ["prev-score", "induction-heads"]}
    assert claims_main(["bless", "--update", "k/results.json", "baseline.json"]) == 0
    assert json.loads((workdir / "baseline.json").read_text())["claims"] == blessed["claims"]


def test_bless_update_without_claim_ids_replaces_each_measured_file_whole(workdir: Path, blessed: dict) -> None:
    record = json.loads((workdir / "a" / "results.json").read_text())
    record["claims"] = [e for e in record["claims"] if e["id"] == "prev-score"]
    del record["provenance"]["spec_claim_ids"]
    (workdir / "old.json").write_text(json.dumps(record))
    assert claims_main(["bless", "--update", "old.json", "baseline.json"]) == 0
    assert list(json.loads((workdir / "baseline.json").read_text())["claims"]) == ["prev-score"]


def test_bless_update_refuses_malformed_claim_ids(workdir: Path, blessed: dict, capsys) -> None:
    record = json.loads((workdir / "a" / "results.json").read_text())
    record["provenance"]["spec_claim_ids"] = {"claims/demo.yaml": "prev-score"}
    (workdir / "bad.json").write_text(json.dumps(record))
    before = (workdir / "baseline.json").read_bytes()
    assert claims_main(["bless", "--update", "bad.json", "baseline.json"]) == 2
    assert "key 'provenance.spec_claim_ids' must map each claim file to a list" in capsys.readouterr().err
    assert (workdir / "baseline.json").read_bytes() == before
