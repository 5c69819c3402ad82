"""``claims run``: checks made before any claim is measured, and what it prints while it runs."""

from __future__ import annotations

import contextlib
import io
import json
import os
import stat
import sys
from pathlib import Path

import pytest

import harness.frontends.preflight as preflight
import harness.runner as runner
from harness.frontends.cli import EXIT_INVALID, EXIT_OK, main

CLAIMS = """\
source: {course: project, chapter: tests}
model: planted-attn-2l
claims:
  - id: previous-token-head
    statement: Head 0.0 attends to the previous token.
    inputs: {repeated_random: {seq_len: 12, batch: 2, seed: 0}}
    metric: attention.detect
    params: {pattern: previous}
    expect: {equals: ["0.0"]}
  - id: induction-score
    statement: Head 1.0 is an induction head.
    inputs: {repeated_random: {seq_len: 12, batch: 2, seed: 0}}
    metric: attention.scores
    params: {pattern: induction}
    select: "1.0"
    expect: {">": 0.99}
    expected_verdict: refuted
"""


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "claims").mkdir()
    (tmp_path / "claims" / "demo.yaml").write_text(CLAIMS)
    return tmp_path


@pytest.fixture
def measured(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of the claims ``run_claim`` measures (still measured)."""
    calls: list[str] = []
    real = runner.run_claim

    def counting(loaded, claim, session):
        calls.append(claim.id)
        return real(loaded, claim, session)

    monkeypatch.setattr(runner, "run_claim", counting)
    return calls


def terminals(monkeypatch: pytest.MonkeyPatch, on_terminal: bool) -> None:
    monkeypatch.setattr(sys.stdout, "isatty", lambda: on_terminal)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: on_terminal)


# --- printing ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def log_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int, str, str]:
    """One ``claims run`` of the demo claims with its output going to a log (not a terminal), into
    ``new/deeper``, a folder that does not exist yet: the working folder, exit code, stdout and
    stderr (the tests below only read it)."""
    root = tmp_path_factory.mktemp("log-run")
    (root / "claims").mkdir()
    (root / "claims" / "demo.yaml").write_text(CLAIMS)
    out, err = io.StringIO(), io.StringIO()  # not terminals: isatty() is False
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        patch.chdir(root)
        code = main(["run", "claims", "--out", "new/deeper"])
    return root, code, out.getvalue(), err.getvalue()


def test_run_in_a_log_prints_one_line_per_finished_claim(log_run: tuple[Path, int, str, str]) -> None:
    root, code, out, err = log_run
    assert code == EXIT_OK
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert len(lines) == 2
    first, second = lines
    assert first.startswith("[1/2] supported    previous-token-head  {0.0}  (") and first.endswith(" s)")
    assert second.startswith("[2/2] refuted      induction-score  ")
    seconds = float(second.rsplit("(", 1)[1].removesuffix(" s)"))
    record = json.loads((root / "new" / "deeper" / "results.json").read_text())
    assert seconds == pytest.approx(record["claims"][1]["duration_s"], abs=0.01)
    assert out.index("[2/2]") < out.index("2 as expected")
    assert "claims:" not in err  # no progress bar in a log


def test_run_in_a_log_flags_a_claim_not_as_expected(workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    terminals(monkeypatch, False)
    (workdir / "claims" / "demo.yaml").write_text(CLAIMS.replace("expected_verdict: refuted", "expected_verdict: supported"))
    assert main(["run", "claims", "--out", "out"]) == 1
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[2/2]")]
    assert line.endswith("NOT AS EXPECTED (expected supported)")


def test_run_on_a_terminal_draws_the_bar_instead_of_lines(workdir: Path, capsys: pytest.CaptureFixture[str], monkeypatch) -> None:
    terminals(monkeypatch, True)
    assert main(["run", "claims", "--out", "out"]) == EXIT_OK
    captured = capsys.readouterr()
    assert not [line for line in captured.out.splitlines() if line.startswith("[")]
    assert "claims:   0%" in captured.err and "0/2" in captured.err  # tqdm's bar, on stderr


# --- checks before measuring ----------------------------------------------------------------------


def test_out_that_is_a_file_is_refused_before_any_claim_is_measured(workdir: Path, capsys, measured) -> None:
    (workdir / "out").write_text("not a folder")
    assert main(["run", "claims", "--out", "out"]) == EXIT_INVALID
    assert measured == []
    assert capsys.readouterr().err.strip() == "claims run: output folder out is a file, not a folder"


def test_out_under_a_file_is_refused(workdir: Path, capsys, measured) -> None:
    (workdir / "file").write_text("")
    assert main(["run", "claims", "--out", "file/out"]) == EXIT_INVALID
    assert measured == [] and "output folder file/out cannot be created" in capsys.readouterr().err


def test_results_path_that_is_a_folder_is_refused_before_measuring(workdir: Path, capsys, measured) -> None:
    (workdir / "out" / "results.json").mkdir(parents=True)
    assert main(["run", "claims", "--out", "out"]) == EXIT_INVALID
    assert measured == []
    assert "output file out/results.json exists and is not a file" in capsys.readouterr().err


def test_out_that_cannot_be_written_is_refused_before_measuring(workdir: Path, capsys, measured, monkeypatch) -> None:
    locked = workdir / "locked"
    locked.mkdir()
    locked.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.name != "posix" or os.geteuid() == 0:  # permissions do not stop root: refuse the probe as the OS would
        def refused(**kwargs):
            raise PermissionError(13, "Permission denied", kwargs.get("dir"))

        monkeypatch.setattr(preflight.tempfile, "NamedTemporaryFile", refused)
    try:
        assert main(["run", "claims", "--out", "locked"]) == EXIT_INVALID
    finally:
        locked.chmod(stat.S_IRWXU)
    assert measured == []
    assert capsys.readouterr().err.strip() == "claims run: output folder locked is not writable (Permission denied)"
    assert list(locked.iterdir()) == []  # the probe left nothing behind


def test_out_is_created_and_the_probe_leaves_nothing(log_run: tuple[Path, int, str, str]) -> None:
    root, code, _, _ = log_run
    assert code == EXIT_OK
    assert sorted(p.name for p in (root / "new" / "deeper").iterdir()) == ["report.html", "report.md", "results.json"]


def test_selection_of_no_claim_is_an_error(workdir: Path, capsys, measured) -> None:
    assert main(["run", "claims", "-k", "inductoin", "--out", "out"]) == EXIT_INVALID
    assert measured == [] and not (workdir / "out").exists()
    assert capsys.readouterr().err.strip() == "claims run: no claim id contains 'inductoin' in claims"


def test_run_on_a_folder_without_claim_files_is_an_error(workdir: Path, capsys, measured) -> None:
    (workdir / "claims" / "empty").mkdir()
    assert main(["run", "claims/empty", "--out", "out"]) == EXIT_INVALID
    assert measured == [] and "no claim files (*.yaml, *.yml) under claims/empty" in capsys.readouterr().err


def test_unreadable_claim_file_is_a_located_error(workdir: Path, capsys, monkeypatch) -> None:
    path = workdir / "claims" / "demo.yaml"
    path.chmod(0)
    if os.name != "posix" or os.geteuid() == 0:  # permissions do not stop root: refuse the read as the OS would
        real = Path.read_bytes

        def read_bytes(self: Path) -> bytes:
            if self.name == "demo.yaml":
                raise PermissionError(13, "Permission denied", str(self))
            return real(self)

        monkeypatch.setattr(Path, "read_bytes", read_bytes)
    try:
        assert main(["run", "claims", "--out", "out"]) == EXIT_INVALID
        assert main(["validate", "claims"]) == EXIT_INVALID
    finally:
        path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    err = capsys.readouterr().err
    assert "claims/demo.yaml:1:1: cannot read the file: Permission denied" in err and "Traceback" not in err
