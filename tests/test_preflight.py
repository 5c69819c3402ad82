"""Checks before a run: paths that name claim files, an output folder that can be written; in the
pytest plugin as in the ``claims`` command."""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.frontends.preflight import PreflightError, claim_files, writable_out

pytest_plugins = ["pytester"]

CLAIM = """\
source: {course: project}
model: planted-attn-2l
claims:
  - id: c1
    statement: Head 0.0 attends to the previous token.
    inputs: {repeated_random: {seq_len: 12, batch: 2, seed: 0}}
    metric: attention.scores
    params: {pattern: previous}
    select: "0.0"
    expect: {">": 0.5}
"""


def test_claim_files_of_folders_files_and_globs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("claims/a.yaml", "claims/sub/b.yml", "claims/sub/notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    assert claim_files(["claims"]) == [Path("claims/a.yaml"), Path("claims/sub/b.yml")]
    assert claim_files(["claims/sub/*.yml", "claims/sub/b.yml"]) == [Path("claims/sub/b.yml")]  # each once
    assert claim_files(["claims/s*"]) == [Path("claims/sub/b.yml")]  # a matched folder gives its claim files
    with pytest.raises(PreflightError, match=r"^no claim files \(\*\.yaml, \*\.yml\) under claims/sub/$"):
        (tmp_path / "claims/sub/b.yml").unlink()
        claim_files(["claims/sub/"])
    with pytest.raises(PreflightError, match="^no such file or folder: claim$"):
        claim_files(["claim"])


def test_writable_out_refuses_a_file(tmp_path: Path) -> None:
    (tmp_path / "out").write_text("")
    with pytest.raises(PreflightError, match="is a file, not a folder"):
        writable_out(tmp_path / "out", ["results.json"])


def test_plugin_refuses_a_claims_folder_without_claim_files(pytester: pytest.Pytester) -> None:
    (pytester.path / "claims" / "toy").mkdir(parents=True)
    (pytester.path / "claims" / "arena").mkdir(parents=True)
    (pytester.path / "claims" / "arena" / "a.yaml").write_text(CLAIM)
    result = pytester.runpytest_inprocess("claims/toy", "-q")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "no claim files (*.yaml, *.yml) under claims/toy" in result.stderr.str()


def test_plugin_refuses_an_unwritable_claims_out_before_running(pytester: pytest.Pytester) -> None:
    (pytester.path / "claims").mkdir()
    (pytester.path / "claims" / "a.yaml").write_text(CLAIM)
    (pytester.path / "out").write_text("a file")
    result = pytester.runpytest_inprocess("claims", "-q", "--claims-out", "out")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--claims-out: output folder out is a file, not a folder" in result.stderr.str()
    assert "passed" not in result.stdout.str()  # nothing ran
